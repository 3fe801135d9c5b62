//! HTTPS for the read API: a certificate chain and key from PEM files (a Secret that
//! cert-manager fills, mounted as files), reloaded when either file changes, so a renewed
//! certificate is served without a restart. Kubernetes tokens reach the read API (as Bearer
//! or Basic credentials); over plain HTTP anyone on the path could read them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The files, and the server configuration built from them.
pub(super) struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    config: Arc<rustls::ServerConfig>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl TlsFiles {
    /// Reads both files; the error says which file and what is wrong with it.
    pub(super) fn load(cert: &Path, key: &Path) -> Result<TlsFiles, String> {
        let stamp = (modified(cert), modified(key));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "TLS certificate {}: no PEM certificate in it",
                cert.display()
            ));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("TLS key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                format!(
                    "TLS certificate {} and key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            config: Arc::new(config),
            stamp,
        })
    }

    fn changed(&self) -> bool {
        (modified(&self.cert), modified(&self.key)) != self.stamp
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets requests in flight
/// finish; reloads the certificate when its files change (a broken new pair is logged and
/// the previous one kept).
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    files: TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let rustls = RustlsConfig::from_config(files.config.clone());
    let reloading = rustls.clone();
    let reload = tokio::spawn(async move {
        let mut files = files;
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            if !files.changed() {
                continue;
            }
            match TlsFiles::load(&files.cert, &files.key) {
                Ok(new) => {
                    reloading.reload_from_config(new.config.clone());
                    tracing::info!(cert = %new.cert.display(), "TLS certificate reloaded");
                    files = new;
                }
                Err(e) => {
                    // Half-written during a renewal, most likely: tried again when they change.
                    tracing::warn!(error = %e, "cannot reload the TLS certificate; serving the previous one");
                    files.stamp = (modified(&files.cert), modified(&files.key));
                }
            }
        }
    });
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(Duration::from_secs(30)));
    });
    let result = axum_server::from_tcp_rustls(listener.into_std()?, rustls)?
        .handle(handle)
        .serve(router.into_make_service())
        .await;
    reload.abort();
    result
}
