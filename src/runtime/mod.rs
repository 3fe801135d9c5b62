//! The runtime both long-running commands share (`regcache controller`, `regcache
//! standalone`): the metrics registry, the cache and the warmer over it, the listeners
//! (read API, `/metrics`, probes), the cache pinger behind `/readyz`, signals, and one
//! shutdown path driven by one cancellation token.
//!
//! Start-up is [`Runtime::start`] (cache, store, warmer), then [`Runtime::serve`]
//! (listeners); a command runs its own loop until [`Runtime::token`] is cancelled (by a
//! signal, see [`Runtime::cancel_on_signals`]) and ends with [`Runtime::shutdown`].

mod probes;
mod tls;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiMetrics, ReadApi};
use crate::cache::store::MetadataStore;
use crate::cache::{Backend, CacheError, CacheMetrics, CacheOptions};
use crate::controller::ReconcileMetrics;
use crate::registry::{ClientOptions, RegistryClient, RegistryMetrics};
use crate::telemetry::MetricsRegistry;
use crate::warmer::{Warmer, WarmerMetrics, WarmerOptions};
pub use probes::Readiness;
pub(crate) use probes::watch_cache;

/// Every metric family of the process, each module's group registered into one registry.
/// Clones record into the same families.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: RegistryMetrics,
    pub cache: CacheMetrics,
    pub warmer: WarmerMetrics,
    pub reconcile: ReconcileMetrics,
    pub api: ApiMetrics,
    pub cloud: crate::cloud::CloudMetrics,
    exposition: Arc<MetricsRegistry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut exposition = MetricsRegistry::default();
        let root = exposition.root();
        Metrics {
            registry: RegistryMetrics::register(root),
            cache: CacheMetrics::register(root),
            warmer: WarmerMetrics::register(root),
            reconcile: ReconcileMetrics::register(root),
            api: ApiMetrics::register(root),
            cloud: crate::cloud::CloudMetrics::register(root),
            exposition: Arc::new(exposition),
        }
    }

    /// The OpenMetrics text exposition of every group.
    pub fn encode(&self) -> String {
        self.exposition.encode()
    }
}

/// What the runtime needs from the command line.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub cache: CacheOptions,
    pub registry: ClientOptions,
    /// Passes run at once.
    pub concurrency: usize,
    /// Bytes of read API repository answers kept in the process.
    pub answer_cache_bytes: usize,
}

/// Addresses the long-running commands listen on.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub api: String,
    pub metrics: String,
    pub probes: String,
    /// The read API's certificate chain and key (PEM files): it serves HTTPS.
    pub api_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot listen on {address}: {reason}")]
    Bind { address: String, reason: String },
}

/// The parts a command runs on. Every background task it spawns stops when `token` is
/// cancelled.
pub struct Runtime {
    pub metrics: Metrics,
    pub store: Arc<MetadataStore<Backend>>,
    pub warmer: Warmer<Backend>,
    answer_cache_bytes: usize,
    token: CancellationToken,
    tasks: JoinSet<()>,
}

impl Runtime {
    /// Opens the cache and builds the store and warmer over it; every part records into
    /// one metrics registry.
    pub async fn start(options: &RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let metrics = Metrics::new();
        let token = CancellationToken::new();
        let backend = crate::cache::open(
            &options.cache,
            &metrics.cache,
            token.clone().cancelled_owned(),
        )
        .await?;
        let store = Arc::new(MetadataStore::new(backend).with_metrics(metrics.cache.clone()));
        let warmer = Warmer::with_metrics(
            RegistryClient::with_metrics(options.registry.clone(), metrics.registry.clone()),
            store.clone(),
            WarmerOptions {
                concurrency: options.concurrency.max(1),
                ..Default::default()
            },
            metrics.warmer.clone(),
        );
        Ok(Runtime {
            metrics,
            store,
            warmer,
            answer_cache_bytes: options.answer_cache_bytes,
            token,
            tasks: JoinSet::new(),
        })
    }

    /// The read API's answers from the store, keeping recent repository answers.
    pub fn read_api(&self) -> ReadApi<Backend> {
        ReadApi::new(self.store.clone())
            .with_answer_cache(self.answer_cache_bytes)
            .with_metrics(self.metrics.cache.clone())
            .with_api_metrics(self.metrics.api.clone())
    }

    /// Cancelled when the process should stop.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Binds the three listeners (all before serving any, so a taken port fails start-up
    /// whole) and serves the read API `api`, `/metrics` and the probes until the token is
    /// cancelled. `/readyz` waits for `watches_listed` and a cache that answers.
    pub async fn serve(
        &mut self,
        listen: &ListenOptions,
        api: axum::Router,
        watches_listed: Arc<AtomicBool>,
    ) -> Result<(), RuntimeError> {
        let tls = match &listen.api_tls {
            Some((cert, key)) => {
                Some(
                    tls::TlsFiles::load(cert, key).map_err(|reason| RuntimeError::Bind {
                        address: listen.api.clone(),
                        reason,
                    })?,
                )
            }
            None => None,
        };
        let api_listener = bind(&listen.api, "read API").await?;
        let metrics_listener = bind(&listen.metrics, "metrics").await?;
        let probe_listener = bind(&listen.probes, "health probes").await?;
        let readiness = Arc::new(Readiness::new(watches_listed));
        let api_listener = match tls {
            None => Some((api_listener, api)),
            Some(files) => {
                let shutdown = self.token.clone().cancelled_owned();
                self.tasks.spawn(async move {
                    if let Err(e) = tls::serve(api_listener, api, files, shutdown).await {
                        tracing::error!(error = %e, "listener failed");
                    }
                });
                None
            }
        };
        let routers = api_listener.into_iter().chain([
            (
                metrics_listener,
                probes::metrics_router(self.metrics.clone()),
            ),
            (probe_listener, probes::probes_router(readiness.clone())),
        ]);
        for (listener, router) in routers {
            let shutdown = self.token.clone().cancelled_owned();
            // A failing listener is logged: a probe listener that dies must not take the
            // warmer down with it.
            self.tasks.spawn(async move {
                if let Err(e) = serve(listener, router, shutdown).await {
                    tracing::error!(error = %e, "listener failed");
                }
            });
        }
        let (store, metrics, token) = (
            self.store.clone(),
            self.metrics.cache.clone(),
            self.token.clone(),
        );
        self.tasks.spawn(async move {
            tokio::select! {
                _ = watch_cache(store.backend(), &readiness, &metrics) => {}
                _ = token.cancelled() => {}
            }
        });
        Ok(())
    }

    /// Cancels the token on SIGTERM or Ctrl-C.
    pub fn cancel_on_signals(&mut self) {
        let token = self.token.clone();
        self.tasks.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = token.cancelled() => return,
            }
            tracing::info!("shutting down");
            token.cancel();
        });
    }

    /// Cancels the token (if nothing has yet) and waits for every background task: the
    /// listeners let requests in flight finish.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds a listener and logs its real address (`<what> listening address=HOST:PORT`), so
/// that port 0 can be used and the chosen port read from the log.
pub async fn bind(address: &str, what: &str) -> Result<tokio::net::TcpListener, RuntimeError> {
    let failed = |e: std::io::Error| RuntimeError::Bind {
        address: address.to_string(),
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(failed)?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(address = %bound, "{what} listening");
    Ok(listener)
}

/// Serves `router` until `shutdown` resolves, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
