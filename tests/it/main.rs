//! regcache's integration tests, one module per area, in one test binary: the support code
//! (`tests/support`: real registries, memcached, the fault proxy, the token server, the
//! Kubernetes API emulator's client) compiles once, not once per area.
//!
//! Run one area with a filter: `cargo nextest run -E 'test(/^faults::/)'` or
//! `cargo test --test it faults::`.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod architecture;
mod argocd;
mod cache;
mod cli;
mod cloud;
mod conformance;
mod controller_e2e;
mod discovery;
mod faults;
mod flux;
mod fuzz;
mod kubectl;
mod kubernetes;
mod metrics;
mod packaging;
mod progress;
mod rbac;
mod registry;
mod registry_api;
mod security;
mod standalone;
mod support_selftest;
mod warmer;
