//! The fuzz properties on the stable toolchain: every input checked in under `fuzz/corpus/`
//! (seeds and past crashes alike), then seeded random mutations of them.
//!
//! cargo-fuzz explores far more (`scripts/fuzz.sh`, figures in `docs/fuzzing.md`); this
//! runner makes sure each property holds on the whole corpus in every `cargo test`, with no
//! nightly features. `REGCACHE_FUZZ_CASES` sets the mutations per target (default 2,000) and
//! `REGCACHE_FUZZ_SEED` their seed (default fixed, so a failure reproduces).

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regcache::fuzzing::{TARGETS, Target};

/// Bytes that move JSON, header and reference parsers into their edge cases.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"=",
    b"/",
    b"@",
    b"\0",
    b"null",
    b"-1",
    b"0",
    b"4294967295",
    b"18446744073709551615",
    b"1e308",
    b"sha256:",
    b"\xff",
    b"\xe2\x80\x8b",
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..6) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
            2 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            3 if at < out.len() => {
                let end = rng.random_range(at..=out.len().min(at + 16));
                out.drain(at..end);
            }
            4 if at < out.len() => {
                let end = rng.random_range(at..=out.len().min(at + 16));
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => {
                // Splice a piece of another input in.
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let to = rng.random_range(from..=other.len());
                    out.splice(at..at, other[from..to].iter().copied());
                }
            }
        }
    }
    out
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs one input; on a panic, saves the input where `scripts/fuzz.sh` would and says so.
fn run(name: &str, target: Target, input: &[u8], what: &str) {
    let result = std::panic::catch_unwind(|| target(input));
    if let Err(panic) = result {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/artifacts")
            .join(name);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("stable-crash-{:016x}", fnv1a(input)));
        let _ = std::fs::write(&path, input);
        std::panic::resume_unwind(Box::new(format!(
            "{name}: {what} fails (input saved to {}): {:?}",
            path.display(),
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
        )));
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    // FNV-1a: only names the saved file.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in TARGETS {
        let dir = corpus_dir(name);
        let inputs = corpus(name);
        assert!(
            inputs.len() >= 3,
            "{}: {} inputs; seed each target with real inputs",
            dir.display(),
            inputs.len()
        );
    }
}

#[test]
fn properties_hold_on_the_corpus_and_its_mutations() {
    let cases = env_number("REGCACHE_FUZZ_CASES", 2_000);
    let seed = env_number("REGCACHE_FUZZ_SEED", 0x7265_6763_6163_6865);
    for (name, target) in TARGETS {
        let inputs = corpus(name);
        for (path, bytes) in &inputs {
            run(
                name,
                *target,
                bytes,
                &format!("corpus file {}", path.display()),
            );
        }
        let mut rng = StdRng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
        for case in 0..cases {
            let (_, input) = &inputs[rng.random_range(0..inputs.len())];
            let (_, other) = &inputs[rng.random_range(0..inputs.len())];
            let mutated = mutate(&mut rng, input, other);
            run(
                name,
                *target,
                &mutated,
                &format!("mutation {case} (seed {seed})"),
            );
        }
    }
}
