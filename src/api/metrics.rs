//! `regcache_api_*`: the read API's metric families.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResultLabels {
    route: &'static str,
    result: &'static str,
}

/// Clones record into the same families.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    registry_requests: Family<RouteResultLabels, Counter>,
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
        };
        registry.sub_registry_with_prefix("api").register(
            "registry_requests",
            "Requests the registry API (/v2/) answered, by route (base, tags_list, manifests, \
             blobs, other) and result (ok, or the distribution error code in lower case)",
            m.registry_requests.clone(),
        );
        m
    }

    pub(crate) fn registry_request(&self, route: &'static str, result: &'static str) {
        self.registry_requests
            .get_or_create(&RouteResultLabels { route, result })
            .inc();
    }
}
