//! A tiny HTTP sink for registry notifications (`notifications:` in the registry config).
//! Records every POSTed envelope; can be told to answer with an error status.

use super::server::{BackgroundServer, bind_loopback};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::Value;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request received by the sink.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

struct State {
    deliveries: Mutex<Vec<Delivery>>,
    status: AtomicU16,
}

/// See the module docs. Stops on drop.
pub struct WebhookSink {
    port: u16,
    state: Arc<State>,
    _server: BackgroundServer,
}

impl WebhookSink {
    pub fn start() -> WebhookSink {
        let (listener, port) = bind_loopback("webhook sink");
        let state = Arc::new(State {
            deliveries: Mutex::new(Vec::new()),
            status: AtomicU16::new(200),
        });
        let st = state.clone();
        let server = BackgroundServer::builder("webhook-sink").start(listener, move |req| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(req, &st).await) }
        });
        WebhookSink {
            port,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT/events`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }
    /// Status answered from now on (default 200); e.g. 500 to exercise retries.
    pub fn set_status(&self, code: u16) {
        self.state.status.store(code, Ordering::SeqCst);
    }
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }
    /// All events of all envelopes (`{"events":[...]}`), in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.deliveries()
            .iter()
            .filter_map(|d| serde_json::from_slice::<Value>(&d.body).ok())
            .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }
    pub fn clear(&self) {
        self.state.deliveries.lock().unwrap().clear();
    }
    /// Poll (async) until `pred(events)` holds or `timeout` passes; returns the events.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events();
            if pred(&ev) || Instant::now() > deadline {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    /// The `notifications:` section for a registry config pointing at this sink.
    pub fn registry_config(&self) -> String {
        format!(
            "notifications:\n  endpoints:\n    - name: regcache-test\n      url: {}\n      \
             headers:\n        X-Test: [regcache]\n      timeout: 2s\n      threshold: 3\n      \
             backoff: 200ms\n",
            self.url()
        )
    }
}

async fn handle(req: Request<hyper::body::Incoming>, st: &State) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    st.deliveries.lock().unwrap().push(Delivery {
        method,
        path,
        headers,
        body,
    });
    Response::builder()
        .status(st.status.load(Ordering::SeqCst))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends regcache's webhook endpoint on `api` (`HOST:PORT` of its read API) the
/// notification the distribution registry at `host` sends when `repository:tag` is pushed,
/// with the bearer `token`; returns the status and the JSON body (`Null` when not JSON).
pub async fn send_push(
    api: &str,
    token: &str,
    host: &str,
    repository: &str,
    tag: &str,
) -> (u16, Value) {
    let event = serde_json::json!({"events": [{"action": "push",
        "target": {"repository": repository,
                   "url": format!("http://{host}/v2/{repository}/manifests/{tag}")},
        "request": {"host": host}}]});
    let response = super::http_client(None)
        .post(format!("http://{api}/hooks/registry"))
        .bearer_auth(token)
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .body(event.to_string())
        .send()
        .await
        .expect("webhook request");
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}
