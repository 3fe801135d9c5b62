//! `regcache_reconcile_*`: the controller's reconciles of ImageRepositoryWatches.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::telemetry::{ReasonLabels, ResultLabels, seconds_histogram};

/// Clones record into the same families.
#[derive(Debug, Clone)]
pub struct ReconcileMetrics {
    total: Family<ResultLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    status_patches: Counter,
    events: Counter,
    leader: Gauge,
}

impl Default for ReconcileMetrics {
    /// Families registered nowhere (tests).
    fn default() -> Self {
        ReconcileMetrics::register(&mut Registry::default())
    }
}

impl ReconcileMetrics {
    /// Creates the families and registers them as `regcache_reconcile_*` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ReconcileMetrics {
            total: Family::default(),
            errors: Family::default(),
            duration: seconds_histogram(),
            status_patches: Counter::default(),
            events: Counter::default(),
            leader: Gauge::default(),
        };
        // At zero from the start, so `increase()` sees the first failure. The Kubernetes
        // API is the only way a reconcile fails (`ControllerError`).
        m.errors
            .get_or_create(&ReasonLabels { reason: "kube_api" })
            .inc_by(0);
        // The group's own counter, `regcache_reconcile_total`, sits above its sub-group.
        registry.register(
            "reconcile",
            "Reconciles of ImageRepositoryWatches, by result",
            m.total.clone(),
        );
        registry.register(
            "leader",
            "1 on the replica that warms and writes (the Lease holder), else 0",
            m.leader.clone(),
        );
        let r = registry.sub_registry_with_prefix("reconcile");
        r.register("errors", "Failed reconciles, by reason", m.errors.clone());
        r.register(
            "status_patches",
            "Statuses written to the Kubernetes API (only the leader writes)",
            m.status_patches.clone(),
        );
        r.register(
            "events",
            "Events published (only the leader publishes)",
            m.events.clone(),
        );
        r.register_with_unit(
            "duration",
            "Duration of reconciles",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    /// One reconcile; `error` is the controller error's metric label when it failed.
    pub fn reconciled(&self, error: Option<&'static str>, elapsed: Duration) {
        let result = if error.is_some() { "error" } else { "success" };
        self.total.get_or_create(&ResultLabels { result }).inc();
        if let Some(reason) = error {
            self.errors.get_or_create(&ReasonLabels { reason }).inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// One status written to the Kubernetes API (only the leader writes).
    pub fn status_patched(&self) {
        self.status_patches.inc();
    }

    /// This replica leads from now on (it exits when it loses the Lease).
    pub fn leading(&self) {
        self.leader.set(1);
    }

    /// One Event published (only the leader publishes).
    pub fn event_published(&self) {
        self.events.inc();
    }
}
