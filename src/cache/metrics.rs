//! `regcache_cache_*`: the cache's metric families (the metadata store, the memcached
//! backend, the read API's answer cache).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::telemetry::{HistogramFamily, ResultLabels, bytes_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpReasonLabels {
    op: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Clones record into the same families.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    operations: Family<OperationLabels, Counter>,
    misses: Family<KindLabels, Counter>,
    errors: Family<OpReasonLabels, Counter>,
    item_size: HistogramFamily<KindLabels>,
    reachable: Gauge,
    answers: Family<ResultLabels, Counter>,
    answer_bytes: Gauge,
}

impl Default for CacheMetrics {
    /// Families registered nowhere (tests, benchmarks, the command-line tools).
    fn default() -> Self {
        CacheMetrics::register(&mut Registry::default())
    }
}

impl CacheMetrics {
    /// Creates the families and registers them as `regcache_cache_*` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CacheMetrics {
            operations: Family::default(),
            misses: Family::default(),
            errors: Family::default(),
            item_size: Family::new_with_constructor(bytes_histogram),
            reachable: Gauge::default(),
            answers: Family::default(),
            answer_bytes: Gauge::default(),
        };
        // At zero from the start, so a hit rate can be computed from the first answer.
        for result in ["reused", "built"] {
            m.answers.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        let r = registry.sub_registry_with_prefix("cache");
        r.register(
            "operations",
            "Cache operations by op (get per key, set, delete) and result (hit, miss, ok, error)",
            m.operations.clone(),
        );
        r.register(
            "misses",
            "Keys read and not found, by item kind",
            m.misses.clone(),
        );
        r.register(
            "errors",
            "Failed cache operations, by op and reason",
            m.errors.clone(),
        );
        r.register_with_unit(
            "item_size",
            "Size of items written, by item kind",
            Unit::Bytes,
            m.item_size.clone(),
        );
        r.register(
            "reachable",
            "1 when the last cache ping succeeded, else 0",
            m.reachable.clone(),
        );
        r.register(
            "answers",
            "Read API repository answers, by result (reused from the answer cache, built)",
            m.answers.clone(),
        );
        r.register_with_unit(
            "answer_cache",
            "Bytes of repository answers the answer cache holds",
            Unit::Bytes,
            m.answer_bytes.clone(),
        );
        m
    }
    /// A read API repository answer: `reused` from the answer cache, or `built` from
    /// memcached's items; `held` is the answer cache's size afterwards.
    pub fn answer(&self, reused: bool, held: usize) {
        let result = if reused { "reused" } else { "built" };
        self.answers.get_or_create(&ResultLabels { result }).inc();
        self.answer_bytes.set(held as i64);
    }

    /// Keys read: `hits` found, `misses` not (counted per key; a multi-get of n keys is n
    /// operations).
    pub fn read(&self, kind: &'static str, hits: u64, misses: u64) {
        if hits > 0 {
            self.operation("get", "hit", hits);
        }
        if misses > 0 {
            self.operation("get", "miss", misses);
            self.misses
                .get_or_create(&KindLabels { kind })
                .inc_by(misses);
        }
    }

    /// An item written, with its size in bytes.
    pub fn write(&self, kind: &'static str, bytes: usize) {
        self.operation("set", "ok", 1);
        self.item_size
            .get_or_create(&KindLabels { kind })
            .observe(bytes as f64);
    }

    pub fn delete(&self) {
        self.operation("delete", "ok", 1);
    }

    /// A failed operation; `reason` is the cache error's metric label.
    pub fn error(&self, op: &'static str, reason: &'static str) {
        self.operation(op, "error", 1);
        self.errors
            .get_or_create(&OpReasonLabels { op, reason })
            .inc();
    }

    /// The outcome of the last readiness ping.
    pub fn reachable(&self, ok: bool) {
        self.reachable.set(i64::from(ok));
    }

    fn operation(&self, op: &'static str, result: &'static str, n: u64) {
        self.operations
            .get_or_create(&OperationLabels { op, result })
            .inc_by(n);
    }
}
