//! Logs and the metrics registry: `tracing` to stderr (JSON or text), and the Prometheus
//! registry (`regcache_` prefix) that each module registers its own group into.
//!
//! Telemetry imports no other regcache module. Each module defines its metric families
//! and registers them into the sub-registry it is handed (`registry::RegistryMetrics`,
//! `cache::CacheMetrics`, `warmer::WarmerMetrics`, `controller::ReconcileMetrics`); the
//! runtime creates the registry and serves it on `/metrics`. No label ever carries a
//! credential: hosts, repository names, watch ids, request kinds, HTTP status codes and
//! error variant names only. `docs/metrics.md` lists every metric; a test checks the list
//! against a scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber. `filter` is a level or a full tracing filter
/// (`info`, `regcache=trace,info`).
pub(crate) fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let env_filter =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid --log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        // Colour codes only for a person at a terminal, never in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LogWriter);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// The progress display on screen, if any: log lines are written while it is hidden, so
/// they never tear it (`cli::progress` sets it).
static PROGRESS: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Sets (or clears) the progress display log lines must step around.
pub(crate) fn show_progress(bar: Option<indicatif::ProgressBar>) {
    *PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Standard error, stepping around the progress display. The fmt layer writes each line
/// with one `write_all`.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = PROGRESS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A gauge holding a float (rates, ages).
pub(crate) type GaugeF64 = Gauge<f64, AtomicU64>;
/// A family of histograms sharing one bucket layout.
pub(crate) type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// `result="..."`: success / failure, hit / miss and the like.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// `reason="..."`: an error variant's metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Buckets for request and reconcile durations: 5 ms .. ~80 s, a cached HEAD on loopback
/// up to a slow token endpoint or a huge page.
pub(crate) fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Buckets for item sizes: 64 B .. 16 MiB by 4x, an image record up to the largest
/// memcached item sizes.
pub(crate) fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(64.0, 4.0, 10))
}

/// The process's metrics registry, every group under `regcache_`.
#[derive(Debug)]
pub struct MetricsRegistry {
    registry: Registry,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regcache");
        registry.register_collector(Box::new(ProcessMemory));
        MetricsRegistry { registry }
    }
}

/// `regcache_process_resident_memory_bytes` and `..._peak_bytes`: the process's `VmRSS`
/// and `VmHWM`, read from `/proc/self/status` at each scrape (absent where there is none).
#[derive(Debug)]
struct ProcessMemory;

impl prometheus_client::collector::Collector for ProcessMemory {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return Ok(());
        };
        let kib = |field: &str| -> Option<i64> {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line[field.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
        };
        for (name, help, field) in [
            (
                "process_resident_memory",
                "Resident memory of the process (VmRSS)",
                "VmRSS:",
            ),
            (
                "process_resident_memory_peak",
                "Highest resident memory of the process so far (VmHWM)",
                "VmHWM:",
            ),
        ] {
            if let Some(k) = kib(field) {
                let gauge: Gauge = Gauge::default();
                gauge.set(k.saturating_mul(1024));
                let metric = encoder.encode_descriptor(
                    name,
                    help,
                    Some(&prometheus_client::registry::Unit::Bytes),
                    gauge.metric_type(),
                )?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

impl MetricsRegistry {
    /// The `regcache_<group>_` sub-registry a module registers its families into.
    pub fn group(&mut self, group: &str) -> &mut Registry {
        self.registry.sub_registry_with_prefix(group)
    }

    /// The registry itself, for a family named after its group alone
    /// (`regcache_reconcile_total`).
    pub fn root(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
