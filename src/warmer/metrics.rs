//! `regcache_warmer_*`: passes, and what each warmed repository holds.

use std::collections::HashMap;
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

use crate::telemetry::{GaugeF64, ReasonLabels, ResultLabels};

/// One warmed repository: the watch that asks for it (`namespace/name`) and its canonical
/// name. Two watches of one repository (other namespaces, other credentials) are two
/// series, and deleting one watch removes only its own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RepositoryLabels {
    watch: String,
    repository: String,
}

/// One watch's passes by result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchResultLabels {
    watch: String,
    repository: String,
    result: &'static str,
}

fn pass_histogram() -> Histogram {
    // 10 ms .. ~90 min: a tiny repository up to a 200,000-tag cold pass.
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

/// Clones record into the same families.
#[derive(Debug, Clone)]
pub struct WarmerMetrics {
    passes: Family<ResultLabels, Counter>,
    pass_failures: Family<ReasonLabels, Counter>,
    pass_duration: Histogram,
    tags: Family<RepositoryLabels, Gauge>,
    images: Family<RepositoryLabels, Gauge>,
    watch_passes: Family<WatchResultLabels, Counter>,
    failing: Family<RepositoryLabels, Gauge>,
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

impl Default for WarmerMetrics {
    /// Families registered nowhere (tests, benchmarks).
    fn default() -> Self {
        WarmerMetrics::register(&mut Registry::default())
    }
}

impl WarmerMetrics {
    /// Creates the families and registers them as `regcache_warmer_*` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let updated = Arc::new(LastUpdates::default());
        let m = WarmerMetrics {
            passes: Family::default(),
            pass_failures: Family::default(),
            pass_duration: pass_histogram(),
            tags: Family::default(),
            images: Family::default(),
            watch_passes: Family::default(),
            failing: Family::default(),
            targets: Gauge::default(),
            updated: updated.clone(),
        };
        let r = registry.sub_registry_with_prefix("warmer");
        r.register(
            "passes",
            "Warm passes finished, by result (success, failure)",
            m.passes.clone(),
        );
        r.register(
            "pass_failures",
            "Failed warm passes, by the kind of the first failure",
            m.pass_failures.clone(),
        );
        r.register_with_unit(
            "pass_duration",
            "Duration of warm passes",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        r.register(
            "tags",
            "Tags in the repository's published index",
            m.tags.clone(),
        );
        r.register(
            "images",
            "Distinct images (digests) the repository's tags point at",
            m.images.clone(),
        );
        r.register(
            "watch_passes",
            "Warm passes finished per watch, by result (success, failure)",
            m.watch_passes.clone(),
        );
        r.register(
            "failing",
            "1 while the watch's latest pass failed (its lastError is set), else 0",
            m.failing.clone(),
        );
        r.register(
            "targets",
            "Watches planned into warm targets (every replica plans; only the leader warms)",
            m.targets.clone(),
        );
        r.register_collector(Box::new(DataAgeCollector(updated)));
        m
    }

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
        self.watch_passes
            .get_or_create(&WatchResultLabels {
                watch: labels.watch.clone(),
                repository: labels.repository.clone(),
                result,
            })
            .inc();
        self.failing
            .get_or_create(&labels)
            .set(i64::from(report.failure.is_some()));
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
        self.failing.remove(&labels);
        for result in ["success", "failure"] {
            self.watch_passes.remove(&WatchResultLabels {
                watch: labels.watch.clone(),
                repository: labels.repository.clone(),
                result,
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_sets_repository_series_and_forgetting_removes_them() {
        let mut registry = crate::telemetry::MetricsRegistry::default();
        let m = WarmerMetrics::register(registry.root());
        let at = Utc::now() - chrono::Duration::seconds(30);
        m.pass(&PassReport {
            watch: "team/app",
            repository: "r.example/app",
            failure: None,
            duration: Duration::from_millis(20),
            tags: Some(3),
            images: Some(2),
            last_update: Some(at),
        });
        m.pass(&PassReport {
            watch: "team/app",
            repository: "r.example/app",
            failure: Some("unauthorized"),
            duration: Duration::from_millis(20),
            tags: None,
            images: None,
            last_update: Some(at),
        });
        let text = registry.encode();
        let labels = "{watch=\"team/app\",repository=\"r.example/app\"}";
        assert!(
            text.contains(&format!("regcache_warmer_tags{labels} 3")),
            "{text}"
        );
        assert!(text.contains(&format!("regcache_warmer_images{labels} 2")));
        assert!(text.contains("regcache_warmer_passes_total{result=\"success\"} 1"));
        assert!(text.contains("regcache_warmer_passes_total{result=\"failure\"} 1"));
        assert!(text.contains("regcache_warmer_pass_failures_total{reason=\"unauthorized\"} 1"));
        for result in ["success", "failure"] {
            assert!(
                text.contains(&format!(
                    "regcache_warmer_watch_passes_total{{watch=\"team/app\",repository=\"r.example/app\",result=\"{result}\"}} 1"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains(&format!("regcache_warmer_failing{labels} 1")),
            "{text}"
        );
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("regcache_warmer_data_age_seconds{labels} ")))
            .expect("age series")
            .parse()
            .unwrap();
        assert!((30.0..3600.0).contains(&age), "{age}");

        m.forget("team/app", "r.example/app");
        let text = registry.encode();
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
}
