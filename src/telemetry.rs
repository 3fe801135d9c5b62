//! Logs, metrics and probes: `tracing` to stderr (JSON or text), the Prometheus metrics
//! registry (`regcache_` prefix, one sub-group per module) served on `/metrics`, and the
//! `/healthz` and `/readyz` probes.
//!
//! Each module records its own group through the typed families here: `registry_` by the
//! registry client, `cache_` by the metadata store and memcached backend, `warmer_` by the
//! warmer, `reconcile_` by the controller. No label ever carries a credential: hosts,
//! repository names, watch ids, request kinds, HTTP status codes and error variant names
//! only. `docs/metrics.md` lists every metric; a test checks the list against a scrape.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogOptions};

/// Installs the global subscriber. `--log-level` takes a level or a full filter.
pub fn init(options: &LogOptions) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(&options.log_level)
        .map_err(|e| format!("invalid --log-level {:?}: {e}", options.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match options.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Binds a listener and logs its real address (`<what> listening address=HOST:PORT`), so
/// that port 0 can be used and the chosen port read from the log.
pub async fn listen(address: &str, what: &str) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(address = %bound, "{what} listening");
    Ok(listener)
}

type GaugeF64 = Gauge<f64, AtomicU64>;
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub host: String,
    pub kind: &'static str,
    pub status: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostKindLabels {
    pub host: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpReasonLabels {
    pub op: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// One warmed repository: the watch that asks for it (`namespace/name`) and its canonical
/// name. Two watches of one repository (other namespaces, other credentials) are two
/// series, and deleting one watch removes only its own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RepositoryLabels {
    pub watch: String,
    pub repository: String,
}

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~80 s: a cached HEAD on loopback up to a slow token endpoint or a huge page.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn pass_histogram() -> Histogram {
    // 10 ms .. ~90 min: a tiny repository up to a 200,000-tag cold pass.
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

fn bytes_histogram() -> Histogram {
    // 64 B .. 16 MiB, by 4x: an image record to the largest memcached item sizes.
    Histogram::new(exponential_buckets(64.0, 4.0, 10))
}

/// `regcache_registry_*`: what regcache asks of registries.
#[derive(Debug)]
pub struct RegistryMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<HostKindLabels>,
    rate_limit_backoffs: Family<HostLabels, Counter>,
    rate_limit: Family<HostLabels, GaugeF64>,
}

impl RegistryMetrics {
    /// One request sent (every attempt counts, retries included). `status` is the HTTP
    /// status code, or the error's metric label when no answer came.
    pub fn request(
        &self,
        host: &str,
        kind: &'static str,
        status: Cow<'static, str>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                host: host.to_string(),
                kind,
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&HostKindLabels {
                host: host.to_string(),
                kind,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The host answered 429: its limiter halved its rate (now `rate` requests/s).
    pub fn backoff(&self, host: &str, rate: f64) {
        let labels = HostLabels {
            host: host.to_string(),
        };
        self.rate_limit_backoffs.get_or_create(&labels).inc();
        self.rate_limit.get_or_create(&labels).set(rate);
    }

    /// The host limiter's current rate, requests/s.
    pub fn rate(&self, host: &str, rate: f64) {
        self.rate_limit
            .get_or_create(&HostLabels {
                host: host.to_string(),
            })
            .set(rate);
    }
}

/// `regcache_cache_*`: what regcache does with memcached (or the in-memory cache).
#[derive(Debug)]
pub struct CacheMetrics {
    operations: Family<OperationLabels, Counter>,
    misses: Family<KindLabels, Counter>,
    errors: Family<OpReasonLabels, Counter>,
    item_size: HistogramFamily<KindLabels>,
    reachable: Gauge,
    answers: Family<ResultLabels, Counter>,
    answer_bytes: Gauge,
}

impl CacheMetrics {
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

/// `regcache_warmer_*`: passes and what each repository holds.
#[derive(Debug)]
pub struct WarmerMetrics {
    passes: Family<ResultLabels, Counter>,
    pass_failures: Family<ReasonLabels, Counter>,
    pass_duration: Histogram,
    tags: Family<RepositoryLabels, Gauge>,
    images: Family<RepositoryLabels, Gauge>,
    targets: Gauge,
    updated: Arc<LastUpdates>,
}

/// What a finished pass reports to metrics.
#[derive(Debug, Clone)]
pub struct PassReport<'a> {
    pub watch: &'a str,
    pub repository: &'a str,
    /// `None` on success, else the failure kind's metric label.
    pub failure: Option<&'static str>,
    pub duration: Duration,
    /// Tags and distinct images in the published index; `None` when no index was published.
    pub tags: Option<usize>,
    pub images: Option<usize>,
    /// The repository data's last complete update (may predate this process).
    pub last_update: Option<DateTime<Utc>>,
}

impl WarmerMetrics {
    pub fn pass(&self, report: &PassReport<'_>) {
        let result = if report.failure.is_some() {
            "failure"
        } else {
            "success"
        };
        self.passes.get_or_create(&ResultLabels { result }).inc();
        if let Some(reason) = report.failure {
            self.pass_failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        self.pass_duration.observe(report.duration.as_secs_f64());
        let labels = RepositoryLabels {
            watch: report.watch.to_string(),
            repository: report.repository.to_string(),
        };
        if let Some(n) = report.tags {
            self.tags.get_or_create(&labels).set(n as i64);
        }
        if let Some(n) = report.images {
            self.images.get_or_create(&labels).set(n as i64);
        }
        if let Some(at) = report.last_update {
            self.updated.set(labels, at);
        }
    }

    /// Number of targets being warmed.
    pub fn targets(&self, n: usize) {
        self.targets.set(n as i64);
    }

    /// A target is no longer warmed: its series go.
    pub fn forget(&self, watch: &str, repository: &str) {
        let labels = RepositoryLabels {
            watch: watch.to_string(),
            repository: repository.to_string(),
        };
        self.tags.remove(&labels);
        self.images.remove(&labels);
        self.updated.remove(&labels);
    }
}

/// Each repository's last complete update; exported as an age computed at scrape time, so
/// the gauge grows between passes as the data does.
#[derive(Debug, Default)]
struct LastUpdates(Mutex<HashMap<RepositoryLabels, DateTime<Utc>>>);

impl LastUpdates {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RepositoryLabels, DateTime<Utc>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, labels: RepositoryLabels, at: DateTime<Utc>) {
        self.map().insert(labels, at);
    }

    fn remove(&self, labels: &RepositoryLabels) {
        self.map().remove(labels);
    }

    /// Ages at `now`, sorted by labels; never negative (clocks of other replicas that wrote
    /// the cached `lastUpdate` may run ahead).
    fn ages(&self, now: DateTime<Utc>) -> Vec<(RepositoryLabels, f64)> {
        let mut out: Vec<(RepositoryLabels, f64)> = self
            .map()
            .iter()
            .map(|(l, at)| {
                let age = (now - *at).num_milliseconds().max(0) as f64 / 1000.0;
                (l.clone(), age)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[derive(Debug)]
struct DataAgeCollector(Arc<LastUpdates>);

impl Collector for DataAgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family: Family<RepositoryLabels, GaugeF64> = Family::default();
        for (labels, age) in self.0.ages(Utc::now()) {
            family.get_or_create(&labels).set(age);
        }
        let metric = encoder.encode_descriptor(
            "data_age",
            "Time since the repository's data was last completely updated",
            Some(&Unit::Seconds),
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// `regcache_reconcile_*`: the controller's reconciles of ImageRepositoryWatches.
#[derive(Debug)]
pub struct ReconcileMetrics {
    total: Family<ResultLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    status_patches: Counter,
    events: Counter,
}

impl ReconcileMetrics {
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

    /// One Event published (only the leader publishes).
    pub fn event_published(&self) {
        self.events.inc();
    }
}

/// Every metric of the process, created once and shared (`Arc`) by the parts that record.
#[derive(Debug)]
pub struct Metrics {
    prometheus: Registry,
    pub registry: RegistryMetrics,
    pub cache: CacheMetrics,
    pub warmer: WarmerMetrics,
    pub reconcile: ReconcileMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut prometheus = Registry::with_prefix("regcache");

        let registry = RegistryMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds_histogram),
            rate_limit_backoffs: Family::default(),
            rate_limit: Family::default(),
        };
        {
            let r = prometheus.sub_registry_with_prefix("registry");
            r.register(
                "requests",
                "Requests sent to registries, by host, kind and HTTP status (or error when no answer came)",
                registry.requests.clone(),
            );
            r.register_with_unit(
                "request_duration",
                "Time from sending a registry request to its answer, body included",
                Unit::Seconds,
                registry.request_duration.clone(),
            );
            r.register(
                "rate_limit_backoffs",
                "429 answers after which the host's request rate was halved",
                registry.rate_limit_backoffs.clone(),
            );
            r.register(
                "rate_limit",
                "Current ceiling on requests per second to the host",
                registry.rate_limit.clone(),
            );
        }

        let cache = CacheMetrics {
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
            cache
                .answers
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        {
            let r = prometheus.sub_registry_with_prefix("cache");
            r.register(
                "operations",
                "Cache operations by op (get per key, set, delete) and result (hit, miss, ok, error)",
                cache.operations.clone(),
            );
            r.register(
                "misses",
                "Keys read and not found, by item kind",
                cache.misses.clone(),
            );
            r.register(
                "errors",
                "Failed cache operations, by op and reason",
                cache.errors.clone(),
            );
            r.register_with_unit(
                "item_size",
                "Size of items written, by item kind",
                Unit::Bytes,
                cache.item_size.clone(),
            );
            r.register(
                "reachable",
                "1 when the last cache ping succeeded, else 0",
                cache.reachable.clone(),
            );
            r.register(
                "answers",
                "Read API repository answers, by result (reused from the answer cache, built)",
                cache.answers.clone(),
            );
            r.register_with_unit(
                "answer_cache",
                "Bytes of repository answers the answer cache holds",
                Unit::Bytes,
                cache.answer_bytes.clone(),
            );
        }

        let updated = Arc::new(LastUpdates::default());
        let warmer = WarmerMetrics {
            passes: Family::default(),
            pass_failures: Family::default(),
            pass_duration: pass_histogram(),
            tags: Family::default(),
            images: Family::default(),
            targets: Gauge::default(),
            updated: updated.clone(),
        };
        {
            let r = prometheus.sub_registry_with_prefix("warmer");
            r.register(
                "passes",
                "Warm passes finished, by result (success, failure)",
                warmer.passes.clone(),
            );
            r.register(
                "pass_failures",
                "Failed warm passes, by the kind of the first failure",
                warmer.pass_failures.clone(),
            );
            r.register_with_unit(
                "pass_duration",
                "Duration of warm passes",
                Unit::Seconds,
                warmer.pass_duration.clone(),
            );
            r.register(
                "tags",
                "Tags in the repository's published index",
                warmer.tags.clone(),
            );
            r.register(
                "images",
                "Distinct images (digests) the repository's tags point at",
                warmer.images.clone(),
            );
            r.register(
                "targets",
                "Watches planned into warm targets (every replica plans; only the leader warms)",
                warmer.targets.clone(),
            );
            r.register_collector(Box::new(DataAgeCollector(updated)));
        }

        let reconcile = ReconcileMetrics {
            total: Family::default(),
            errors: Family::default(),
            duration: seconds_histogram(),
            status_patches: Counter::default(),
            events: Counter::default(),
        };
        // At zero from the start, so `increase()` sees the first failure. The Kubernetes
        // API is the only way a reconcile fails (`ControllerError`).
        reconcile
            .errors
            .get_or_create(&ReasonLabels { reason: "kube_api" })
            .inc_by(0);
        // The group's own counter, `regcache_reconcile_total`, sits above its sub-group.
        prometheus.register(
            "reconcile",
            "Reconciles of ImageRepositoryWatches, by result",
            reconcile.total.clone(),
        );
        {
            let r = prometheus.sub_registry_with_prefix("reconcile");
            r.register(
                "errors",
                "Failed reconciles, by reason",
                reconcile.errors.clone(),
            );
            r.register(
                "status_patches",
                "Statuses written to the Kubernetes API (only the leader writes)",
                reconcile.status_patches.clone(),
            );
            r.register(
                "events",
                "Events published (only the leader publishes)",
                reconcile.events.clone(),
            );
            r.register_with_unit(
                "duration",
                "Duration of reconciles",
                Unit::Seconds,
                reconcile.duration.clone(),
            );
        }

        Metrics {
            prometheus,
            registry,
            cache,
            warmer,
            reconcile,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.prometheus)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What `/readyz` waits for: the first complete list of watches (the controller; standalone
/// has its files from the start) and a cache that answers.
#[derive(Debug, Default)]
pub struct Readiness {
    watches_synced: AtomicBool,
    cache: Mutex<Option<Result<(), String>>>,
}

impl Readiness {
    pub fn watches_synced(&self) {
        self.watches_synced.store(true, Ordering::SeqCst);
    }

    /// Whether the first complete list of watches is in.
    pub fn watches_are_synced(&self) -> bool {
        self.watches_synced.load(Ordering::SeqCst)
    }

    /// The result of the latest cache ping (the error's text names a server, never a
    /// secret).
    pub fn cache_checked(&self, result: Result<(), String>) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.watches_are_synced() {
            return Err("watches not listed yet".to_string());
        }
        match &*self.cache.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Err("cache not checked yet".to_string()),
            Some(Err(e)) => Err(format!("cache unreachable: {e}")),
            Some(Ok(())) => Ok(()),
        }
    }
}

/// Cache pings for `/readyz`: quick while the cache has not answered, then at a calmer pace.
const PING_WHILE_DOWN: Duration = Duration::from_secs(1);
const PING_WHILE_UP: Duration = Duration::from_secs(10);

/// Pings the cache forever, recording each result for `/readyz` and the `reachable` gauge.
pub async fn watch_cache<B: crate::cache::CacheWriter>(
    backend: &B,
    readiness: &Readiness,
    metrics: &Metrics,
) {
    let mut was_ok: Option<bool> = None;
    loop {
        let result = backend.ping().await.map_err(|e| e.to_string());
        let ok = result.is_ok();
        if was_ok != Some(ok) {
            match &result {
                Ok(()) => tracing::info!("cache reachable"),
                Err(e) => tracing::warn!(error = %e, "cache unreachable"),
            }
        }
        was_ok = Some(ok);
        metrics.cache.reachable(ok);
        readiness.cache_checked(result);
        tokio::time::sleep(if ok { PING_WHILE_UP } else { PING_WHILE_DOWN }).await;
    }
}

/// `/metrics` in the OpenMetrics text format.
pub fn metrics_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// `/healthz` (the process serves: 200) and `/readyz` (200, or 503 with the reason).
pub fn probes_router(readiness: Arc<Readiness>) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.check() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
}

/// Serves `router` until `shutdown` resolves; failures are logged (a probe listener that
/// dies must not take the warmer down with it).
/// Serves `/metrics` and the probes on their listeners until `stop` turns true.
pub fn spawn_listeners(
    metrics_listener: tokio::net::TcpListener,
    probe_listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    [
        tokio::spawn(serve(
            metrics_listener,
            metrics_router(metrics),
            stopped(stop.clone()),
        )),
        tokio::spawn(serve(
            probe_listener,
            probes_router(readiness),
            stopped(stop),
        )),
    ]
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_is_prefixed_and_families_are_typed() {
        let m = Metrics::new();
        m.registry.request(
            "r.example:5000",
            "manifest_head",
            "200".into(),
            Duration::from_millis(3),
        );
        m.registry.backoff("r.example:5000", 50.0);
        m.cache.read("image", 2, 1);
        m.cache.write("tag_chunk", 1000);
        m.cache.error("set", "timeout");
        m.reconcile
            .reconciled(Some("kube_api"), Duration::from_millis(1));
        let text = m.encode();
        assert!(text.contains(
            "regcache_registry_requests_total{host=\"r.example:5000\",kind=\"manifest_head\",status=\"200\"} 1"
        ), "{text}");
        assert!(
            text.contains("regcache_registry_rate_limit_backoffs_total{host=\"r.example:5000\"} 1")
        );
        assert!(text.contains("regcache_registry_rate_limit{host=\"r.example:5000\"} 50.0"));
        assert!(text.contains("regcache_cache_operations_total{op=\"get\",result=\"hit\"} 2"));
        assert!(text.contains("regcache_cache_misses_total{kind=\"image\"} 1"));
        assert!(text.contains("regcache_cache_errors_total{op=\"set\",reason=\"timeout\"} 1"));
        assert!(text.contains("regcache_cache_item_size_bytes_count{kind=\"tag_chunk\"} 1"));
        assert!(
            text.contains("regcache_reconcile_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(text.contains("regcache_reconcile_errors_total{reason=\"kube_api\"} 1"));
        assert!(text.contains("# TYPE regcache_warmer_data_age_seconds gauge"));
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("regcache_"), "{line}");
        }
    }

    #[test]
    fn a_pass_sets_repository_series_and_forgetting_removes_them() {
        let m = Metrics::new();
        let at = Utc::now() - chrono::Duration::seconds(30);
        m.warmer.pass(&PassReport {
            watch: "team/app",
            repository: "r.example/app",
            failure: None,
            duration: Duration::from_millis(20),
            tags: Some(3),
            images: Some(2),
            last_update: Some(at),
        });
        m.warmer.pass(&PassReport {
            watch: "team/app",
            repository: "r.example/app",
            failure: Some("unauthorized"),
            duration: Duration::from_millis(20),
            tags: None,
            images: None,
            last_update: Some(at),
        });
        let text = m.encode();
        let labels = "{watch=\"team/app\",repository=\"r.example/app\"}";
        assert!(
            text.contains(&format!("regcache_warmer_tags{labels} 3")),
            "{text}"
        );
        assert!(text.contains(&format!("regcache_warmer_images{labels} 2")));
        assert!(text.contains("regcache_warmer_passes_total{result=\"success\"} 1"));
        assert!(text.contains("regcache_warmer_passes_total{result=\"failure\"} 1"));
        assert!(text.contains("regcache_warmer_pass_failures_total{reason=\"unauthorized\"} 1"));
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("regcache_warmer_data_age_seconds{labels} ")))
            .expect("age series")
            .parse()
            .unwrap();
        assert!((30.0..3600.0).contains(&age), "{age}");

        m.warmer.forget("team/app", "r.example/app");
        let text = m.encode();
        assert!(!text.contains("team/app"), "{text}");
    }

    #[test]
    fn ages_never_go_negative() {
        let u = LastUpdates::default();
        let now = Utc::now();
        let labels = |w: &str| RepositoryLabels {
            watch: w.to_string(),
            repository: "r/x".to_string(),
        };
        u.set(labels("a"), now - chrono::Duration::seconds(90));
        u.set(labels("b"), now + chrono::Duration::seconds(5));
        assert_eq!(u.ages(now), vec![(labels("a"), 90.0), (labels("b"), 0.0)]);
    }

    #[test]
    fn ready_needs_synced_watches_and_a_cache_that_answered() {
        let r = Readiness::default();
        assert_eq!(r.check().unwrap_err(), "watches not listed yet");
        r.watches_synced();
        assert_eq!(r.check().unwrap_err(), "cache not checked yet");
        r.cache_checked(Err("cannot reach memcached 127.0.0.1:1".into()));
        assert!(
            r.check()
                .unwrap_err()
                .starts_with("cache unreachable: cannot reach memcached")
        );
        r.cache_checked(Ok(()));
        assert_eq!(r.check(), Ok(()));
        r.cache_checked(Err("down".into()));
        assert!(r.check().is_err(), "follows the latest ping");
    }
}
