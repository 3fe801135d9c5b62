//! `regcache_api_*`: the read API's metric families.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use crate::telemetry::{HistogramFamily, seconds_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResultLabels {
    route: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

/// Clones record into the same families.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    registry_requests: Family<RouteResultLabels, Counter>,
    request_duration: HistogramFamily<ApiLabels>,
}

impl Default for ApiMetrics {
    /// Families registered nowhere (tests, benchmarks).
    fn default() -> Self {
        ApiMetrics::register(&mut Registry::default())
    }
}

impl ApiMetrics {
    /// Creates the families and registers them as `regcache_api_*` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ApiMetrics {
            registry_requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds_histogram),
        };
        let r = registry.sub_registry_with_prefix("api");
        r.register_with_unit(
            "request_duration",
            "Time to answer a request, to the answer's headers (a streamed body is not \
             included), by api: read (/api/v1/), registry (/v2/), webhook (/hooks/), other",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "registry_requests",
            "Requests the registry API (/v2/) answered, by route (base, tags_list, manifests, \
             blobs, other) and result (ok, or the distribution error code in lower case)",
            m.registry_requests.clone(),
        );
        m
    }

    /// One request answered by the API `api` (`read`, `registry`, `webhook`, `other`).
    pub(crate) fn request(&self, api: &'static str, elapsed: Duration) {
        self.request_duration
            .get_or_create(&ApiLabels { api })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn registry_request(&self, route: &'static str, result: &'static str) {
        self.registry_requests
            .get_or_create(&RouteResultLabels { route, result })
            .inc();
    }
}
