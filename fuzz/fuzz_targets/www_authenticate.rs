#![no_main]
// The property lives in regcache::fuzzing::www_authenticate, shared with the stable runner tests/it/fuzz.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::www_authenticate(data));
