//! memcached server discovery from DNS SRV records, e.g. the headless Service of a
//! memcached StatefulSet (`_memcache._tcp.memcached.NAMESPACE.svc.cluster.local`).
//!
//! Servers are named by their SRV targets (`memcached-0.memcached.ns.svc...:11211`), not by
//! IP: a pod that restarts keeps its name, so its place on the hash ring does not move.
//! The list is refreshed periodically; a failed lookup keeps the last good list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use super::CacheError;
use super::memcached::Memcached;

pub struct SrvDiscovery {
    service: String,
    resolver: TokioResolver,
}

fn discovery_error(service: &str, detail: impl std::fmt::Display) -> CacheError {
    CacheError::Discovery {
        service: service.to_string(),
        detail: detail.to_string(),
    }
}

fn options() -> ResolverOpts {
    let mut o = ResolverOpts::default();
    o.timeout = Duration::from_secs(2);
    o.attempts = 2;
    // Every refresh must see the current answer, not one cached from the last refresh.
    o.cache_size = 0;
    o
}

impl SrvDiscovery {
    /// Uses the system resolver configuration (`/etc/resolv.conf`, as in a pod).
    pub fn system(service: &str) -> Result<Self, CacheError> {
        let mut builder = Resolver::builder(TokioRuntimeProvider::default())
            .map_err(|e| discovery_error(service, e))?;
        *builder.options_mut() = options();
        Ok(SrvDiscovery {
            service: service.to_string(),
            resolver: builder.build().map_err(|e| discovery_error(service, e))?,
        })
    }

    /// Asks one name server (UDP) directly.
    pub fn with_nameserver(service: &str, nameserver: SocketAddr) -> Result<Self, CacheError> {
        let mut connection = ConnectionConfig::udp();
        connection.port = nameserver.port();
        let config = ResolverConfig::from_parts(
            None,
            Vec::new(),
            vec![NameServerConfig::new(
                nameserver.ip(),
                true,
                vec![connection],
            )],
        );
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options();
        Ok(SrvDiscovery {
            service: service.to_string(),
            resolver: builder.build().map_err(|e| discovery_error(service, e))?,
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The servers the SRV records name, as sorted `TARGET:PORT`.
    pub async fn discover(&self) -> Result<Vec<String>, CacheError> {
        let lookup = self
            .resolver
            .lookup(self.service.as_str(), RecordType::SRV)
            .await
            .map_err(|e| discovery_error(&self.service, e))?;
        let mut servers: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => {
                    let target = srv.target.to_utf8();
                    let target = target.trim_end_matches('.');
                    (!target.is_empty()).then(|| format!("{target}:{}", srv.port))
                }
                _ => None,
            })
            .collect();
        if servers.is_empty() {
            return Err(discovery_error(&self.service, "no SRV records"));
        }
        servers.sort();
        servers.dedup();
        Ok(servers)
    }
}

/// Keeps `memcached`'s server list in step with DNS until `shutdown` resolves.
pub async fn refresh_servers(
    memcached: Arc<Memcached>,
    discovery: SrvDiscovery,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match discovery.discover().await {
            Ok(servers) => {
                memcached.set_servers(servers);
            }
            Err(e) => {
                tracing::warn!(error = %e, "memcached discovery failed; keeping the last server list")
            }
        }
    }
}
