//! A plain-HTTP reverse proxy in front of a registry that counts requests by kind and
//! injects faults, plus server-side tag pagination (the Debian registry ignores `n=`).

use super::server::{BackgroundServer, bind_loopback};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request classification by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `/v2/`
    Ping,
    /// `/v2/NAME/tags/list`
    TagList,
    /// `/v2/NAME/manifests/REF`
    Manifest,
    /// `/v2/NAME/blobs/DIGEST`
    Blob,
    /// `/v2/NAME/blobs/uploads/...`
    Upload,
    Other,
}

impl Kind {
    /// Classify a request path (query ignored).
    pub fn classify(path: &str) -> Kind {
        let path = path.split('?').next().unwrap_or("");
        if path == "/v2/" || path == "/v2" {
            return Kind::Ping;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Kind::Other;
        };
        if rest.ends_with("/tags/list") {
            Kind::TagList
        } else if rest.contains("/blobs/uploads") {
            Kind::Upload
        } else if rest.contains("/manifests/") {
            Kind::Manifest
        } else if rest.contains("/blobs/") {
            Kind::Blob
        } else {
            Kind::Other
        }
    }
}

/// What to do to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (not forwarded).
    Status {
        code: u16,
        retry_after: Option<String>,
        body: Option<String>,
    },
    /// Wait, then forward normally.
    Delay(Duration),
    /// Forward; send the original headers (incl. Content-Length) but only `keep` body
    /// bytes, then abort the connection.
    TruncateBody { keep: usize },
    /// Close the connection without any response (not forwarded).
    Reset,
    /// Forward, but remove `Docker-Content-Digest` from the response.
    DropDigestHeader,
    /// Forward, but flip one byte of the body (same length).
    CorruptBody,
    /// Forward, but replace the body (Content-Length adjusted; Content-Type too if given).
    ReplaceBody {
        body: Vec<u8>,
        content_type: Option<String>,
    },
    /// Forward, but send the body in `chunk`-byte pieces with `pause` between them.
    SlowBody { chunk: usize, pause: Duration },
    /// Forward, but answer with a body of `bytes` spaces instead, with a matching
    /// `Content-Length` when `declare_length`, else streamed (chunked) without one.
    OversizedBody { bytes: usize, declare_length: bool },
    /// Answer `status` with `Location: {base}{path and query}` (not forwarded), as
    /// registries that serve blobs from object storage do.
    Redirect { status: u16, base: String },
    /// Forward, but replace the response's `Content-Type`.
    ContentType(String),
    /// Forward, but add (or replace) one response header, e.g. a `Link` to elsewhere.
    Header { name: String, value: String },
}

impl Fault {
    /// A bare status answer (empty body, no Retry-After).
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: None,
        }
    }
    /// A status answer with a distribution-style JSON error body.
    pub fn status_json(code: u16, error_code: &str, message: &str) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: Some(error_body(error_code, message)),
        }
    }
    /// 429 with `{"errors":[{"code":"TOOMANYREQUESTS",...}]}` and optional Retry-After.
    pub fn too_many(retry_after: Option<&str>) -> Fault {
        Fault::Status {
            code: 429,
            retry_after: retry_after.map(str::to_string),
            body: Some(error_body("TOOMANYREQUESTS", "too many requests")),
        }
    }
    /// 503 with a JSON error body and optional Retry-After.
    pub fn unavailable(retry_after: Option<&str>) -> Fault {
        Fault::Status {
            code: 503,
            retry_after: retry_after.map(str::to_string),
            body: Some(error_body("UNAVAILABLE", "service unavailable")),
        }
    }
    pub fn delay_ms(ms: u64) -> Fault {
        Fault::Delay(Duration::from_millis(ms))
    }
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string()
}

/// A fault applied to requests whose path+query matches `path` (and `method`, if set).
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<String>,
    /// Matched against path+query, e.g. `"/manifests/"` or `"^/v2/app/tags/list"`.
    pub path: regex::Regex,
    pub fault: Fault,
    /// `None` = forever; `Some(n)` = only the first `n` matching requests.
    pub times: Option<usize>,
}

impl Rule {
    /// Panics on an invalid regex.
    pub fn new(path_regex: &str, fault: Fault) -> Rule {
        Rule {
            method: None,
            path: regex::Regex::new(path_regex).expect("valid rule regex"),
            fault,
            times: None,
        }
    }
    /// Any request of this kind (by path classification).
    pub fn kind(kind: Kind, fault: Fault) -> Rule {
        let re = match kind {
            Kind::Ping => r"^/v2/?(\?|$)",
            Kind::TagList => r"^/v2/.+/tags/list(\?|$)",
            Kind::Manifest => r"^/v2/.+/manifests/[^/?]+(\?|$)",
            Kind::Blob => r"^/v2/.+/blobs/[^/?]+(\?|$)",
            Kind::Upload => r"^/v2/.+/blobs/uploads",
            Kind::Other => r"^(/[^v]|/v[^2]|/v2[^/])",
        };
        Rule::new(re, fault)
    }
    /// Only this method (case-insensitive), e.g. `"HEAD"`.
    pub fn method(mut self, method: &str) -> Rule {
        self.method = Some(method.to_ascii_uppercase());
        self
    }
    /// Only the first `n` matching requests.
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
}

/// Style of the `Link` header for paginated tag lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkStyle {
    /// `</v2/NAME/tags/list?last=X&n=N>; rel="next"` (GHCR, Quay, distribution)
    Relative,
    /// `<http://127.0.0.1:PORT/v2/NAME/tags/list?last=X&n=N>; rel="next"`
    Absolute,
}

/// Request counts by (method, kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub by: BTreeMap<(String, Kind), usize>,
}

impl Counts {
    pub fn get(&self, method: &str, kind: Kind) -> usize {
        self.by
            .get(&(method.to_ascii_uppercase(), kind))
            .copied()
            .unwrap_or(0)
    }
    /// All methods for `kind`.
    pub fn kind(&self, kind: Kind) -> usize {
        self.by
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }
    pub fn total(&self) -> usize {
        self.by.values().sum()
    }
}

/// One request the proxy saw (for debugging assertions).
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    pub kind: Kind,
    pub fault: Option<String>,
    /// Whether the request carried an `Authorization` header (its value is not kept).
    pub authorized: bool,
    /// When it arrived.
    pub at: std::time::Instant,
}

struct State {
    upstream: String,
    self_base: String,
    client: reqwest::Client,
    rules: Mutex<Vec<(Rule, usize)>>,
    counts: Mutex<Counts>,
    seen: Mutex<Vec<SeenRequest>>,
    paginate: Mutex<Option<(usize, LinkStyle)>>,
    /// Requests being handled now, and the most at once since the last reset.
    in_flight: std::sync::atomic::AtomicUsize,
    peak_in_flight: std::sync::atomic::AtomicUsize,
    /// Sent upstream instead of the client's `Authorization` (a blob host with its own
    /// access to the storage, like a pre-signed URL).
    upstream_authorization: Option<String>,
    /// Docker Hub's pull quota: (limit, manifest GETs counted in the window).
    pull_quota: Mutex<Option<(u64, u64)>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
struct ResetConnection;
impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: reset connection")
    }
}
impl std::error::Error for ResetConnection {}

/// See the module docs. Stops on drop.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    _server: BackgroundServer,
}

impl FaultProxy {
    /// Proxy to `upstream_base_url` (e.g. `registry.base_url()`), trusting
    /// `upstream_ca_pem` for an HTTPS upstream. Sync; usable from any test.
    pub fn start(upstream_base_url: &str, upstream_ca_pem: Option<&[u8]>) -> FaultProxy {
        Self::start_inner(upstream_base_url, upstream_ca_pem, None)
    }

    /// Like [`Self::start`], but every forwarded request carries `authorization` upstream
    /// instead of the client's: a separate blob host that needs no registry credentials
    /// from the client. [`SeenRequest::authorized`] tells whether a client sent any.
    pub fn start_authorizing(
        upstream_base_url: &str,
        upstream_ca_pem: Option<&[u8]>,
        authorization: &str,
    ) -> FaultProxy {
        Self::start_inner(
            upstream_base_url,
            upstream_ca_pem,
            Some(authorization.to_string()),
        )
    }

    fn start_inner(
        upstream_base_url: &str,
        upstream_ca_pem: Option<&[u8]>,
        upstream_authorization: Option<String>,
    ) -> FaultProxy {
        let (listener, port) = bind_loopback("proxy");
        let client = super::http_client_builder(upstream_ca_pem)
            .pool_max_idle_per_host(64)
            .build()
            .expect("proxy client");
        let state = Arc::new(State {
            upstream: upstream_base_url.trim_end_matches('/').to_string(),
            self_base: format!("http://127.0.0.1:{port}"),
            client,
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(Counts::default()),
            seen: Mutex::new(Vec::new()),
            paginate: Mutex::new(None),
            in_flight: Default::default(),
            peak_in_flight: Default::default(),
            upstream_authorization,
            pull_quota: Mutex::new(None),
        });
        let st = state.clone();
        let server = BackgroundServer::builder("fault-proxy")
            .worker_threads(2)
            .nodelay(true)
            .start(listener, move |req| {
                let st = st.clone();
                async move { handle(req, &st).await }
            });
        FaultProxy {
            port,
            state,
            _server: server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.state.self_base.clone()
    }
    pub fn upstream(&self) -> &str {
        &self.state.upstream
    }
    /// Rules are tried in insertion order; the first live match applies.
    pub fn add_rule(&self, rule: Rule) {
        self.state.rules.lock().unwrap().push((rule, 0));
    }
    pub fn clear_rules(&self) {
        self.state.rules.lock().unwrap().clear();
    }
    /// How often each rule (in insertion order) has fired.
    pub fn rule_hits(&self) -> Vec<usize> {
        self.state
            .rules
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| *n)
            .collect()
    }
    /// Answer `GET /v2/NAME/tags/list` with pages of at most `page_size` sorted tags.
    pub fn paginate_tags(&self, page_size: usize, style: LinkStyle) {
        assert!(page_size > 0, "page_size must be > 0");
        *self.state.paginate.lock().unwrap() = Some((page_size, style));
    }
    pub fn stop_paginating(&self) {
        *self.state.paginate.lock().unwrap() = None;
    }
    pub fn counts(&self) -> Counts {
        self.state.counts.lock().unwrap().clone()
    }
    pub fn reset_counts(&self) {
        *self.state.counts.lock().unwrap() = Counts::default();
        self.state.seen.lock().unwrap().clear();
        self.state
            .peak_in_flight
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }
    /// The most requests the proxy was handling at once since the last reset (a request
    /// counts until its answer's headers are sent).
    pub fn peak_in_flight(&self) -> usize {
        self.state
            .peak_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Requests with this method (case-insensitive) and kind, faulted ones included.
    pub fn count(&self, method: &str, kind: Kind) -> usize {
        self.state.counts.lock().unwrap().get(method, kind)
    }
    pub fn total(&self) -> usize {
        self.state.counts.lock().unwrap().total()
    }
    /// Plays Docker Hub's pull quota: every manifest answer carries `RateLimit-Limit:
    /// LIMIT;w=21600` and `RateLimit-Remaining: N;w=21600`; each manifest GET (not a HEAD)
    /// spends one pull, and with none left a GET answers 429 as Docker Hub does.
    pub fn set_pull_quota(&self, limit: u64) {
        *self.state.pull_quota.lock().unwrap() = Some((limit, 0));
    }
    /// A new window: every pull is available again.
    pub fn reset_pull_quota(&self) {
        if let Some((_, used)) = self.state.pull_quota.lock().unwrap().as_mut() {
            *used = 0;
        }
    }
    /// Every request since the last reset, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().clone()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed()
}

fn channel_body(rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(stream).boxed()
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

struct Upstream {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn new(st: &'a State) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = st.in_flight.fetch_add(1, SeqCst) + 1;
        st.peak_in_flight.fetch_max(now, SeqCst);
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    st: &State,
) -> Result<Response<Body>, ResetConnection> {
    let _in_flight = InFlight::new(st);
    let method = req.method().as_str().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let kind = Kind::classify(&pq);
    {
        let mut c = st.counts.lock().unwrap();
        *c.by.entry((method.clone(), kind)).or_insert(0) += 1;
    }
    let fault = {
        let mut rules = st.rules.lock().unwrap();
        let mut chosen = None;
        for (rule, used) in rules.iter_mut() {
            if rule.method.as_deref().is_some_and(|m| m != method) {
                continue;
            }
            if rule.times.is_some_and(|t| *used >= t) {
                continue;
            }
            if rule.path.is_match(&pq) {
                *used += 1;
                chosen = Some(rule.fault.clone());
                break;
            }
        }
        chosen
    };
    // Docker Hub's pull quota, when played: a GET spends a pull, a HEAD only reads it.
    let quota = match st.pull_quota.lock().unwrap().as_mut() {
        Some((limit, used)) if kind == Kind::Manifest => {
            if method == "GET" && *used >= *limit {
                return Ok(Response::builder()
                    .status(429)
                    .header("ratelimit-limit", format!("{limit};w=21600"))
                    .header("ratelimit-remaining", "0;w=21600")
                    .header("content-type", "application/json")
                    .body(full(error_body(
                        "TOOMANYREQUESTS",
                        "You have reached your pull rate limit.",
                    )))
                    .unwrap());
            }
            if method == "GET" {
                *used += 1;
            }
            Some((*limit, *limit - *used))
        }
        _ => None,
    };
    st.seen.lock().unwrap().push(SeenRequest {
        method: method.clone(),
        path_and_query: pq.clone(),
        kind,
        fault: fault.as_ref().map(|f| format!("{f:?}")),
        authorized: req.headers().contains_key("authorization"),
        at: std::time::Instant::now(),
    });

    match &fault {
        Some(Fault::Status {
            code,
            retry_after,
            body,
        }) => {
            let mut b = Response::builder()
                .status(*code)
                .header("docker-distribution-api-version", "registry/2.0");
            if let Some(ra) = retry_after {
                b = b.header("retry-after", ra.as_str());
            }
            let body = body.clone().unwrap_or_default();
            if !body.is_empty() {
                b = b.header("content-type", "application/json");
            }
            return Ok(b.body(full(body)).unwrap());
        }
        Some(Fault::Reset) => return Err(ResetConnection),
        Some(Fault::Redirect { status, base }) => {
            let location = format!("{}{pq}", base.trim_end_matches('/'));
            return Ok(Response::builder()
                .status(*status)
                .header("location", location)
                .header("docker-distribution-api-version", "registry/2.0")
                .body(full(Bytes::new()))
                .unwrap());
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }

    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| ResetConnection)?;

    let paginate = *st.paginate.lock().unwrap();
    let up = match paginate {
        Some((page_size, style)) if method == "GET" && kind == Kind::TagList => {
            paginated_tags(st, &parts.headers, &pq, page_size, style).await
        }
        _ => forward(st, &parts.method, &parts.headers, &pq, body).await,
    };
    let Some(mut up) = up else {
        // Upstream unreachable: look like a dead registry.
        return Err(ResetConnection);
    };

    let mut body = up.body;
    if let Some((limit, remaining)) = quota {
        for (name, value) in [
            ("ratelimit-limit", limit),
            ("ratelimit-remaining", remaining),
        ] {
            up.headers.insert(
                name,
                format!("{value};w=21600").parse().expect("header value"),
            );
        }
    }
    match &fault {
        Some(Fault::DropDigestHeader) => {
            up.headers.remove("docker-content-digest");
        }
        Some(Fault::CorruptBody) if !body.is_empty() => {
            let mut v = body.to_vec();
            let i = v.len() / 2;
            v[i] ^= 0x01;
            body = Bytes::from(v);
        }
        Some(Fault::ContentType(ct)) => {
            up.headers
                .insert("content-type", ct.parse().expect("content type"));
        }
        Some(Fault::Header { name, value }) => {
            up.headers.insert(
                http::HeaderName::try_from(name.as_str()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        Some(Fault::OversizedBody { .. }) if method != "HEAD" => {
            up.headers.remove("content-length");
            body = Bytes::new();
        }
        Some(Fault::ReplaceBody {
            body: new,
            content_type,
        }) => {
            body = Bytes::from(new.clone());
            up.headers
                .insert("content-length", http::HeaderValue::from(body.len() as u64));
            if let Some(ct) = content_type {
                up.headers
                    .insert("content-type", ct.parse().expect("content type"));
            }
        }
        _ => {}
    }

    let mut resp = Response::builder().status(up.status);
    for (k, v) in up.headers.iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        resp = resp.header(k, v);
    }
    let is_head = method == "HEAD";
    let out = match &fault {
        Some(Fault::TruncateBody { keep }) if !is_head => {
            let keep = (*keep).min(body.len());
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let part = body.slice(..keep);
            tokio::spawn(async move {
                if !part.is_empty() {
                    let _ = tx.send(Ok(part)).await;
                }
                // Give hyper a moment to flush what it has, then abort.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("fault: truncated body")))
                    .await;
            });
            channel_body(rx)
        }
        Some(Fault::SlowBody { chunk, pause }) if !is_head => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let chunk = (*chunk).max(1);
            let pause = *pause;
            tokio::spawn(async move {
                let mut off = 0;
                while off < body.len() {
                    let end = (off + chunk).min(body.len());
                    if tx.send(Ok(body.slice(off..end))).await.is_err() {
                        return;
                    }
                    off = end;
                    if off < body.len() {
                        tokio::time::sleep(pause).await;
                    }
                }
            });
            channel_body(rx)
        }
        Some(Fault::OversizedBody {
            bytes,
            declare_length,
        }) if !is_head => {
            if *declare_length {
                resp = resp.header("content-length", *bytes as u64);
            }
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let total = *bytes;
            tokio::spawn(async move {
                let piece = Bytes::from(vec![b' '; 64 * 1024]);
                let mut sent = 0;
                while sent < total {
                    let n = piece.len().min(total - sent);
                    // The client hanging up at its cap ends the stream.
                    if tx.send(Ok(piece.slice(..n))).await.is_err() {
                        return;
                    }
                    sent += n;
                }
            });
            channel_body(rx)
        }
        _ => full(body),
    };
    Ok(resp.body(out).unwrap())
}

async fn forward(
    st: &State,
    method: &http::Method,
    headers: &http::HeaderMap,
    pq: &str,
    body: Bytes,
) -> Option<Upstream> {
    let url = format!("{}{}", st.upstream, pq);
    let mut rb = st.client.request(method.clone(), &url);
    for (k, v) in headers.iter() {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || name == "host" || name == "content-length" {
            continue;
        }
        if name == "authorization" && st.upstream_authorization.is_some() {
            continue;
        }
        rb = rb.header(k, v);
    }
    if let Some(a) = &st.upstream_authorization {
        rb = rb.header("authorization", a);
    }
    if !body.is_empty() || matches!(*method, http::Method::PUT | http::Method::POST) {
        rb = rb.body(body);
    }
    let resp = rb.send().await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.ok()?;
    Some(Upstream {
        status,
        headers,
        body,
    })
}

async fn paginated_tags(
    st: &State,
    headers: &http::HeaderMap,
    pq: &str,
    page_size: usize,
    style: LinkStyle,
) -> Option<Upstream> {
    let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut fwd = http::HeaderMap::new();
    for h in ["authorization", "accept", "user-agent"] {
        if let Some(v) = headers.get(h) {
            fwd.insert(h, v.clone());
        }
    }
    let up = forward(st, &http::Method::GET, &fwd, path, Bytes::new()).await?;
    if up.status != 200 {
        return Some(up);
    }
    let v: serde_json::Value = serde_json::from_slice(&up.body).ok()?;
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let mut tags = super::sorted_tags(&v);
    if let Some(last) = get("last") {
        tags.retain(|t| *t > last);
    }
    let n = get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(page_size);
    let take = n.min(page_size);
    let more = tags.len() > take;
    tags.truncate(take);
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert(
        "docker-distribution-api-version",
        "registry/2.0".parse().unwrap(),
    );
    if more && let Some(last) = tags.last() {
        let prefix = match style {
            LinkStyle::Relative => String::new(),
            LinkStyle::Absolute => st.self_base.clone(),
        };
        let link = format!("<{prefix}{path}?last={last}&n={n}>; rel=\"next\"");
        headers.insert("link", link.parse().expect("link header"));
    }
    let body = serde_json::json!({"name": name, "tags": tags}).to_string();
    headers.insert("content-length", http::HeaderValue::from(body.len() as u64));
    Some(Upstream {
        status: 200,
        headers,
        body: Bytes::from(body),
    })
}
