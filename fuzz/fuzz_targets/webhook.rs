#![no_main]
// The property lives in regcache::fuzzing::webhook, shared with the stable runner tests/it/fuzz.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::webhook(data));
