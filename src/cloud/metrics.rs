//! `regcache_cloud_*`: cloud sign-in's metric family.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    provider: &'static str,
    identity: &'static str,
    result: &'static str,
}

/// Clones record into the same family.
#[derive(Debug, Clone)]
pub struct CloudMetrics {
    sign_ins: Family<SignInLabels, Counter>,
}

impl Default for CloudMetrics {
    /// A family registered nowhere (tests, the command-line tools).
    fn default() -> Self {
        CloudMetrics::register(&mut Registry::default())
    }
}

impl CloudMetrics {
    /// Creates the family and registers it as `regcache_cloud_*` into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CloudMetrics {
            sign_ins: Family::default(),
        };
        registry.sub_registry_with_prefix("cloud").register(
            "sign_ins",
            "Cloud registry sign-ins, by provider, identity (controller, service_account) and \
             result (ok, error); credentials reused from the cache are not counted",
            m.sign_ins.clone(),
        );
        m
    }

    pub(super) fn sign_in(&self, provider: &'static str, identity: &'static str, ok: bool) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                provider,
                identity,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}
