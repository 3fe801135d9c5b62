//! regcache: an always-warm cache of container-image metadata, fed by a Kubernetes operator.
//!
//! The crate is one library with a thin binary (`src/main.rs`). The modules and their order
//! are in `docs/architecture.md`: only `registry` speaks HTTP to registries, only `cache`
//! knows memcached, and a module imports only the modules below it.

pub mod api;
pub mod cache;
pub mod cli;
pub mod cloud;
pub mod controller;
pub mod crd;
pub mod credentials;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod image;
pub mod registry;
pub mod runtime;
pub mod standalone;
pub mod telemetry;
pub mod warmer;
