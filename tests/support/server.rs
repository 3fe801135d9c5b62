//! The HTTP/1 servers the harness writes itself (token server, fault proxy, webhook sink,
//! cloud stand-ins): hyper on a background std thread with its own tokio runtime, so they
//! work from sync and async tests alike; stopped (and the thread joined) on drop. HTTPS
//! when given a certificate.

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

/// A non-blocking listener on `127.0.0.1:0` and its port; `what` names it in panics.
pub fn bind_loopback(what: &str) -> (std::net::TcpListener, u16) {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {what}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

/// How to run a [`BackgroundServer`]; see [`BackgroundServer::builder`].
pub struct ServerBuilder {
    name: String,
    worker_threads: Option<usize>,
    nodelay: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ServerBuilder {
    /// A multi-thread runtime with `n` workers (default: a current-thread runtime).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n);
        self
    }
    /// Set `TCP_NODELAY` on every accepted connection.
    pub fn nodelay(mut self, yes: bool) -> Self {
        self.nodelay = yes;
        self
    }

    /// Serve HTTPS with `cert` (its leaf certificate and key).
    pub fn tls(mut self, cert: &super::certs::CertPair) -> Self {
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&cert.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&cert.key_pem).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        self.tls = Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        self
    }

    /// Serve `listener` (from [`bind_loopback`]) until drop, one task per connection,
    /// answering each request with `handler`. A handler `Err` closes the connection
    /// without a response.
    pub fn start<H, F, B, E>(self, listener: std::net::TcpListener, handler: H) -> BackgroundServer
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let port = listener.local_addr().expect("local address").port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ServerBuilder {
            name,
            worker_threads,
            nodelay,
            tls,
        } = self;
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{port}"))
            .spawn(move || {
                let mut rt = match worker_threads {
                    Some(n) => {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(n);
                        b
                    }
                    None => tokio::runtime::Builder::new_current_thread(),
                };
                let rt = rt
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{name} runtime: {e}"));
                rt.block_on(async move {
                    let handler = Arc::new(handler);
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let mut shutdown = rx;
                    loop {
                        tokio::select! {
                            _ = &mut shutdown => break,
                            acc = listener.accept() => {
                                let Ok((stream, _)) = acc else { continue };
                                if nodelay {
                                    let _ = stream.set_nodelay(true);
                                }
                                let handler = handler.clone();
                                let tls = tls.clone();
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| handler(req));
                                    let http = hyper::server::conn::http1::Builder::new();
                                    match tls {
                                        None => {
                                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                                        }
                                        Some(tls) => {
                                            let Ok(stream) = tls.accept(stream).await else { return };
                                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                                        }
                                    }
                                });
                            }
                        }
                    }
                });
                rt.shutdown_background();
            })
            .unwrap_or_else(|e| panic!("spawn server thread: {e}"));
        BackgroundServer {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

/// A running server; see the module docs.
pub struct BackgroundServer {
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// `name` is used for the thread (`NAME-PORT`) and in panics.
    pub fn builder(name: &str) -> ServerBuilder {
        ServerBuilder {
            name: name.to_string(),
            worker_threads: None,
            nodelay: false,
            tls: None,
        }
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request a [`StandIn`] saw: method, path, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's form fields.
    pub fn form(&self, field: &str) -> Option<String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned())
    }
}

/// A cloud endpoint's stand-in: answers each request with the JSON `answer` gives for it,
/// and records every request.
pub struct StandIn {
    port: u16,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    _server: BackgroundServer,
}

impl StandIn {
    /// HTTPS with `tls`, else plain HTTP.
    pub fn start(
        name: &str,
        tls: Option<&super::certs::CertPair>,
        answer: fn(&Seen) -> (u16, serde_json::Value),
    ) -> StandIn {
        use http_body_util::BodyExt;
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let (listener, port) = bind_loopback(name);
        let record = seen.clone();
        let mut builder = BackgroundServer::builder(name);
        if let Some(cert) = tls {
            builder = builder.tls(cert);
        }
        let server = builder.start(listener, move |req: Request<Incoming>| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let request = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let (status, answer) = answer(&request);
                record.lock().unwrap().push(request);
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            answer.to_string(),
                        )))
                        .unwrap(),
                )
            }
        });
        StandIn {
            port,
            seen,
            _server: server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }
}
