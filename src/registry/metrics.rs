//! `regcache_registry_*`: the registry client's metric families.

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use crate::telemetry::{GaugeF64, HistogramFamily, seconds_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    host: String,
    kind: &'static str,
    status: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostKindLabels {
    host: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLimitLabels {
    host: String,
    /// The rule's host pattern, or `default`.
    rule: String,
    setting: &'static str,
}

/// Clones record into the same families.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<HostKindLabels>,
    rate_limit_backoffs: Family<HostLabels, Counter>,
    rate_limit: Family<HostLabels, GaugeF64>,
    host_limit: Family<HostLimitLabels, GaugeF64>,
    pull_quota_remaining: Family<HostLabels, GaugeF64>,
    pull_quota_limit: Family<HostLabels, GaugeF64>,
}

impl Default for RegistryMetrics {
    /// Families registered nowhere (tests, benchmarks, the command-line tools).
    fn default() -> Self {
        RegistryMetrics::register(&mut Registry::default())
    }
}

impl RegistryMetrics {
    /// Creates the families and registers them as `regcache_registry_*` into `registry`
    /// (the process's `regcache_` registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = RegistryMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds_histogram),
            rate_limit_backoffs: Family::default(),
            rate_limit: Family::default(),
            host_limit: Family::default(),
            pull_quota_remaining: Family::default(),
            pull_quota_limit: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("registry");
        r.register(
            "requests",
            "Requests sent to registries, by host, kind and HTTP status (or error when no answer came)",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from sending a registry request to its answer, body included",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "rate_limit_backoffs",
            "429 answers after which the host's request rate was halved",
            m.rate_limit_backoffs.clone(),
        );
        r.register(
            "rate_limit",
            "Current ceiling on requests per second to the host",
            m.rate_limit.clone(),
        );
        r.register(
            "host_limit",
            "The limits in force for a host (setting qps, burst, concurrency or counts_pulls) and the rule that set them",
            m.host_limit.clone(),
        );
        r.register(
            "pull_quota_remaining",
            "Pulls left in the registry's window, as its last manifest answer reported (RateLimit-Remaining)",
            m.pull_quota_remaining.clone(),
        );
        r.register(
            "pull_quota_limit",
            "The registry's pull quota per window, as its last manifest answer reported (RateLimit-Limit)",
            m.pull_quota_limit.clone(),
        );
        m
    }
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

    /// Records the pull quota `host` reported.
    pub(crate) fn pull_quota(&self, host: &str, quota: &super::quota::Quota) {
        let labels = HostLabels {
            host: host.to_string(),
        };
        self.pull_quota_remaining
            .get_or_create(&labels)
            .set(quota.remaining as f64);
        if let Some(limit) = quota.limit {
            self.pull_quota_limit
                .get_or_create(&labels)
                .set(limit as f64);
        }
    }

    /// Records the limits `rule` set for `host`.
    pub(crate) fn host_limits(
        &self,
        host: &str,
        rule: &str,
        settings: &super::limiter::LimiterSettings,
    ) {
        for (setting, value) in [
            ("qps", settings.max_rate),
            ("burst", settings.burst),
            ("concurrency", settings.concurrency as f64),
            ("counts_pulls", f64::from(u8::from(settings.counts_pulls))),
        ] {
            self.host_limit
                .get_or_create(&HostLimitLabels {
                    host: host.to_string(),
                    rule: rule.to_string(),
                    setting,
                })
                .set(value);
        }
    }
}
