//! The HTTP/1 servers the harness writes itself (token server, fault proxy, webhook sink):
//! hyper on a background std thread with its own tokio runtime, so they work from sync
//! and async tests alike; stopped (and the thread joined) on drop.

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
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| handler(req));
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(TokioIo::new(stream), svc)
                                        .await;
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
