//! Fuzz properties: one function per untrusted-input family, each taking arbitrary bytes and
//! panicking when a property regcache relies on does not hold.
//!
//! Both runners call these same functions: the cargo-fuzz targets in `fuzz/` (coverage-guided,
//! libFuzzer) and `tests/it/fuzz.rs` (stable, replays `fuzz/corpus/` plus seeded mutations), so a
//! property is written once and a crashing input added to the corpus becomes a regression
//! test on stable. See `docs/fuzzing.md`.
//!
//! Not part of the supported API; public only so the fuzz crate can reach it.

mod cache;
mod credentials;
mod image;
mod registry;

pub use cache::{cache_store, cache_value};
pub use credentials::docker_config;
pub use image::{image_ref, tag_glob, webhook};
pub use registry::{image_config, manifest, www_authenticate};

/// A fuzz target: arbitrary bytes in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its directory under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("image_ref", image_ref),
    ("www_authenticate", www_authenticate),
    ("manifest", manifest),
    ("image_config", image_config),
    ("docker_config", docker_config),
    ("cache_value", cache_value),
    ("cache_store", cache_store),
    ("webhook", webhook),
    ("tag_glob", tag_glob),
];
