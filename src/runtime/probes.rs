//! `/healthz`, `/readyz` and `/metrics`, and the cache pinger behind `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Metrics;
use crate::cache::{CacheMetrics, CacheReader};

/// What `/readyz` waits for: the first complete list of watches (the controller; standalone
/// has its files from the start) and a cache that answers.
#[derive(Debug)]
pub struct Readiness {
    watches_listed: Arc<AtomicBool>,
    cache: Mutex<Option<Result<(), String>>>,
}

impl Readiness {
    /// Ready once `watches_listed` is set (by whoever lists the watches) and the cache
    /// has answered.
    pub fn new(watches_listed: Arc<AtomicBool>) -> Self {
        Readiness {
            watches_listed,
            cache: Mutex::new(None),
        }
    }

    /// The result of the latest cache ping (the error's text names a server, never a
    /// secret).
    pub fn cache_checked(&self, result: Result<(), String>) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.watches_listed.load(Ordering::SeqCst) {
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
pub(crate) async fn watch_cache<B: CacheReader>(
    backend: &B,
    readiness: &Readiness,
    metrics: &CacheMetrics,
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
        metrics.reachable(ok);
        readiness.cache_checked(result);
        tokio::time::sleep(if ok { PING_WHILE_UP } else { PING_WHILE_DOWN }).await;
    }
}

/// `/metrics` in the OpenMetrics text format.
pub(crate) fn metrics_router(metrics: Metrics) -> axum::Router {
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
pub(crate) fn probes_router(readiness: Arc<Readiness>) -> axum::Router {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_synced_watches_and_a_cache_that_answered() {
        let listed = Arc::new(AtomicBool::new(false));
        let r = Readiness::new(listed.clone());
        assert_eq!(r.check().unwrap_err(), "watches not listed yet");
        listed.store(true, Ordering::SeqCst);
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
