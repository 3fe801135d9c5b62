//! Registry client: the only module that speaks HTTP to registries.
//!
//! Distribution API v2 / OCI distribution: `/v2/` challenge, anonymous / basic / bearer auth
//! with a token cache, paginated tag lists, manifest HEAD and GET for every manifest kind,
//! config blobs. Every request passes the host's shared [`HostLimiter`], has a timeout and a
//! body cap, and every manifest and blob is checked against its digest.

pub mod auth;
pub mod limiter;
pub mod manifest;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::credentials::{Credential, Secret};
use crate::image::{Digest, Platform, Reference, Repository};
use auth::{Challenge, TokenCache, TokenResponse};
use limiter::{HostLimiter, LimiterSettings};
use manifest::{ImageConfig, Manifest, MediaKind, ParseError};

/// Header carrying a manifest's digest in distribution responses.
pub const DIGEST_HEADER: &str = "docker-content-digest";

/// Client-wide settings. Defaults are for production; tests shorten the waits.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Whole request including the body: a registry that trickles bytes must not hold a
    /// pass forever.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Real manifests are a few KiB; indexes of many platforms reach ~100 KiB. 4 MiB is
    /// the cap distribution itself applies on push.
    pub max_manifest_bytes: usize,
    /// Configs carry history and env; 8 MiB leaves room for pathological but real ones.
    pub max_config_bytes: usize,
    /// One tag-list page. 200,000 tags of ~30 bytes fit in 8 MiB; registries that ignore
    /// `n=` send everything in one page.
    pub max_tag_page_bytes: usize,
    pub max_token_bytes: usize,
    /// `n=` asked for on tag lists. Registries may serve fewer (and some ignore it).
    pub tag_page_size: usize,
    /// Guard against a `Link` chain that never ends.
    pub max_tag_pages: usize,
    /// Retries of one request after a transient failure (connect, reset, truncated body,
    /// 5xx), each after `retry_backoff` doubled.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// A 429 whose pause is at most this long is waited out and the request retried;
    /// a longer one ends the request with [`Error::RateLimited`] so the caller can
    /// stop the pass and resume later.
    pub max_rate_limit_wait: Duration,
    pub limiter: LimiterSettings,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_tag_page_bytes: 16 << 20,
            max_token_bytes: 1 << 20,
            tag_page_size: 1000,
            max_tag_pages: 10_000,
            retries: 2,
            retry_backoff: Duration::from_millis(250),
            max_rate_limit_wait: Duration::from_secs(60),
            limiter: LimiterSettings::default(),
            user_agent: concat!("regcache/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// How to reach one registry: plain HTTP (`insecure`) or HTTPS trusting extra CAs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub insecure: bool,
    /// PEM bundle trusted in addition to the public roots.
    pub ca_pem: Option<Arc<Vec<u8>>>,
}

/// Kinds of request, for counting and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestKind {
    Ping,
    Token,
    TagList,
    ManifestHead,
    ManifestGet,
    BlobGet,
}

impl RequestKind {
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Ping,
        RequestKind::Token,
        RequestKind::TagList,
        RequestKind::ManifestHead,
        RequestKind::ManifestGet,
        RequestKind::BlobGet,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Ping => "ping",
            RequestKind::Token => "token",
            RequestKind::TagList => "tag_list",
            RequestKind::ManifestHead => "manifest_head",
            RequestKind::ManifestGet => "manifest_get",
            RequestKind::BlobGet => "blob_get",
        }
    }
}

/// Requests sent, by kind (every attempt counts, retries included).
#[derive(Debug, Default)]
pub struct RequestStats {
    counts: [AtomicU64; 6],
}

impl RequestStats {
    fn record(&self, kind: RequestKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: RequestKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> BTreeMap<RequestKind, u64> {
        RequestKind::ALL
            .iter()
            .map(|k| (*k, self.get(*k)))
            .collect()
    }

    pub fn total(&self) -> u64 {
        RequestKind::ALL.iter().map(|k| self.get(*k)).sum()
    }
}

/// Registry errors, typed so callers never match on strings. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry {host} refused the credentials ({identity}): {status}{}", hint(.detail))]
    Unauthorized {
        host: String,
        identity: String,
        status: StatusCode,
        detail: Option<String>,
    },
    #[error("registry {host} denied access to {repository} ({identity}): {status}{}", hint(.detail))]
    Forbidden {
        host: String,
        repository: String,
        identity: String,
        status: StatusCode,
        detail: Option<String>,
    },
    #[error("repository {repository} does not exist at registry {host}")]
    NameUnknown { host: String, repository: String },
    #[error("manifest {reference} is unknown in repository {repository}")]
    ManifestUnknown {
        repository: String,
        reference: String,
    },
    #[error("blob {digest} is missing from repository {repository}")]
    BlobUnknown { repository: String, digest: String },
    #[error("{url}: 404 Not Found")]
    NotFound { url: String },
    #[error("registry {host} is rate limiting (429 Too Many Requests){}", retry_hint(.retry_after))]
    RateLimited {
        host: String,
        retry_after: Option<Duration>,
    },
    #[error("request to {url} timed out (limit {limit:?})")]
    Timeout { url: String, limit: Duration },
    #[error("cannot connect to registry {host}: {detail}")]
    Connect { host: String, detail: String },
    #[error("TLS failure talking to registry {host}: {detail}")]
    Tls { host: String, detail: String },
    #[error("connection to registry {host} failed mid-request ({url}): {detail}")]
    Transport {
        host: String,
        url: String,
        detail: String,
    },
    #[error("registry {host} answered {status} for {url}")]
    Server {
        host: String,
        url: String,
        status: StatusCode,
    },
    #[error("unexpected {status} from {url}")]
    UnexpectedStatus { url: String, status: StatusCode },
    #[error("{what} from {url} is larger than the {limit}-byte limit")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: usize,
    },
    #[error("{what} from {url} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        url: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("invalid {what} from {url}: {source}")]
    Invalid {
        url: String,
        what: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("token endpoint {realm} for registry {host} failed: {detail}")]
    TokenEndpoint {
        host: String,
        realm: String,
        detail: String,
    },
    #[error(
        "registry {host} is HTTPS but names a plain-HTTP token realm, {realm}; regcache sends \
         credentials over plain HTTP only to a registry marked insecure"
    )]
    InsecureRealm { host: String, realm: String },
    #[error("{what} at {from} leads to another origin, {to}: {reason}")]
    CrossOrigin {
        what: &'static str,
        from: String,
        to: String,
        reason: &'static str,
    },
    #[error("CA bundle for registry {host} is unusable: {detail}")]
    InvalidCa { host: String, detail: String },
    #[error("{url} is not a distribution (v2) registry endpoint: {detail}")]
    NotARegistry { url: String, detail: String },
    #[error("{repository}@{digest} has no image for platform {wanted}; it has: {available}")]
    PlatformNotFound {
        repository: String,
        digest: String,
        wanted: String,
        available: String,
    },
}

fn hint(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry after {}s", d.as_secs_f64().ceil()))
        .unwrap_or_default()
}

impl Error {
    /// A short stable name per variant, for metrics labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Unauthorized { .. } => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::NameUnknown { .. } => "name_unknown",
            Error::ManifestUnknown { .. } => "manifest_unknown",
            Error::BlobUnknown { .. } => "blob_unknown",
            Error::NotFound { .. } => "not_found",
            Error::RateLimited { .. } => "rate_limited",
            Error::Timeout { .. } => "timeout",
            Error::Connect { .. } => "connect",
            Error::Tls { .. } => "tls",
            Error::Transport { .. } => "transport",
            Error::Server { .. } => "server_error",
            Error::UnexpectedStatus { .. } => "unexpected_status",
            Error::TooLarge { .. } => "too_large",
            Error::DigestMismatch { .. } => "digest_mismatch",
            Error::Invalid { .. } => "invalid",
            Error::TokenEndpoint { .. } => "token_endpoint",
            Error::CrossOrigin { .. } => "cross_origin",
            Error::InsecureRealm { .. } => "insecure_realm",
            Error::InvalidCa { .. } => "invalid_ca",
            Error::NotARegistry { .. } => "not_a_registry",
            Error::PlatformNotFound { .. } => "platform_not_found",
        }
    }

    /// Worth retrying the same request soon: the network or the server hiccuped.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::Connect { .. }
                | Error::Transport { .. }
                | Error::Server { .. }
                | Error::RateLimited { .. }
        )
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The answer to a manifest HEAD: what the tag points at now.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// Set when the registry sent no digest header and a GET had to be made instead; the
    /// manifest is then already here and need not be fetched again.
    pub fetched: Option<FetchedManifest>,
}

/// A manifest fetched and verified against its digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub kind: MediaKind,
    pub bytes: Bytes,
    pub manifest: Manifest,
}

/// Everything regcache records about one image (a manifest or an index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMetadata {
    pub canonical_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    /// For a single image, the config's `created`; for an index, the newest of its
    /// selected platforms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// For a single image, its config labels; for an index, those of its first selected
    /// platform (platform images of one build carry the same labels).
    pub labels: BTreeMap<String, String>,
    pub platforms: Vec<PlatformImage>,
    /// For an index: every platform it lists (attestations aside), fetched or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_platforms: Vec<Platform>,
}

/// One platform's image: a single manifest, or one entry of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    pub labels: BTreeMap<String, String>,
    /// The manifest names a config blob the registry does not have: the image exists but
    /// its created time and labels are unknown. Permanent, since the manifest is immutable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_missing: bool,
}

/// A client shared by every target: HTTP connections, host limiters, challenges, tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    http: Mutex<HashMap<Option<[u8; 32]>, reqwest::Client>>,
    limiters: Mutex<HashMap<String, Arc<HostLimiter>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    /// One in-flight ping or token request per key: sixteen concurrent first requests to a
    /// host must cost one ping and one token, not sixteen of each.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tokens: TokenCache,
    stats: RequestStats,
    metrics: Arc<crate::telemetry::Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Maps of plain values: a panic while holding one leaves nothing half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RegistryClient {
    /// A client recording into a metrics registry of its own (commands, tests).
    pub fn new(options: ClientOptions) -> Self {
        Self::with_metrics(options, Arc::default())
    }

    /// A client recording `regcache_registry_*` into the process's metrics.
    pub fn with_metrics(options: ClientOptions, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        RegistryClient {
            inner: Arc::new(Inner {
                options,
                http: Mutex::new(HashMap::new()),
                limiters: Mutex::new(HashMap::new()),
                challenges: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                tokens: TokenCache::default(),
                stats: RequestStats::default(),
                metrics,
            }),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// A handle for one repository with one credential and endpoint.
    pub fn repository(
        &self,
        repository: &Repository,
        credential: Credential,
        endpoint: &Endpoint,
    ) -> Result<RepositoryClient> {
        let host = repository.endpoint_host().to_string();
        let http = self.inner.http_client(&host, endpoint.ca_pem.as_deref())?;
        let scheme = if endpoint.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| Error::NotARegistry {
            url: format!("{scheme}://{host}/"),
            detail: e.to_string(),
        })?;
        Ok(RepositoryClient {
            inner: self.inner.clone(),
            repository: repository.clone(),
            scope: auth::pull_scope(repository.path()),
            credential,
            base,
            host,
            http,
            pass: None,
        })
    }

    /// The limiter shared by every request to `host` (as in a URL, `HOST[:PORT]`).
    pub fn limiter(&self, host: &str) -> Arc<HostLimiter> {
        self.inner.limiter(host)
    }

    pub fn stats(&self) -> &RequestStats {
        &self.inner.stats
    }

    /// Number of bearer tokens held.
    pub fn cached_tokens(&self) -> usize {
        self.inner.tokens.len()
    }
}

impl Inner {
    async fn flight(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let slot = lock(&self.flights).entry(key).or_default().clone();
        slot.lock_owned().await
    }

    fn known_challenge(&self, key: &str) -> Option<Challenge> {
        lock(&self.challenges).get(key).cloned()
    }

    /// A 429 from `host`: its limiter halves its rate and closes for the pause returned.
    fn rate_limited(&self, host: &str, retry_after: Option<Duration>) -> Duration {
        let limiter = self.limiter(host);
        let pause = limiter.on_rate_limited(retry_after);
        self.metrics.registry.backoff(host, limiter.rate());
        pause
    }

    /// Records one request sent to `host` that ended with `status` (an HTTP code or an
    /// error's metric label).
    fn observe(
        &self,
        host: &str,
        kind: RequestKind,
        status: std::borrow::Cow<'static, str>,
        started: std::time::Instant,
    ) {
        self.metrics
            .registry
            .request(host, kind.label(), status, started.elapsed());
    }

    fn limiter(&self, host: &str) -> Arc<HostLimiter> {
        lock(&self.limiters)
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(HostLimiter::new(self.options.limiter.clone())))
            .clone()
    }

    fn http_client(&self, host: &str, ca_pem: Option<&Vec<u8>>) -> Result<reqwest::Client> {
        let key = ca_pem.map(|pem| Sha256::digest(pem).into());
        if let Some(c) = lock(&self.http).get(&key) {
            return Ok(c.clone());
        }
        let tls = tls_config(ca_pem.map(Vec::as_slice)).map_err(|detail| Error::InvalidCa {
            host: host.to_string(),
            detail,
        })?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(self.options.request_timeout)
            .connect_timeout(self.options.connect_timeout)
            .user_agent(self.options.user_agent.clone())
            // send_once follows redirects itself, keeping credentials on their origin.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| Error::InvalidCa {
                host: host.to_string(),
                detail: error_chain(&e),
            })?;
        lock(&self.http).insert(key, client.clone());
        Ok(client)
    }
}

/// Checks a PEM CA bundle the way a client would load it, for validating user input early.
pub fn check_ca_bundle(pem: &[u8]) -> std::result::Result<(), String> {
    tls_config(Some(pem)).map(|_| ())
}

/// rustls with ring, the public web roots plus any extra CA; one crypto provider for the
/// whole process, chosen here rather than by whichever crate initialises first.
fn tls_config(ca_pem: Option<&[u8]>) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
            roots
                .add(cert)
                .map_err(|e| format!("certificate rejected ({e})"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate found in the CA bundle".to_string());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The source chain of an error, joined: reqwest's top-level message alone
/// ("error sending request") says nothing about what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// A response with its body read (within the cap).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Where the answer came from, after redirects.
    url: Url,
}

/// Redirects followed for one request; registries use one (blob storage), rarely two.
const MAX_REDIRECTS: usize = 5;

/// Body cap for error answers: enough for a distribution error document.
const ERROR_BODY_CAP: usize = 64 << 10;

#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    serde_json::from_slice::<ErrorDocument>(body)
        .map(|d| d.errors.into_iter().map(|e| (e.code, e.message)).collect())
        .unwrap_or_default()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (when.with_timezone(&Utc) - Utc::now())
        .num_milliseconds()
        .max(0);
    Some(Duration::from_millis(secs as u64))
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| target.to_string())
    })
}

/// A registry client bound to one repository, credential and endpoint.
#[derive(Clone)]
pub struct RepositoryClient {
    inner: Arc<Inner>,
    repository: Repository,
    credential: Credential,
    scope: String,
    base: Url,
    host: String,
    http: reqwest::Client,
    pass: Option<Arc<PassContext>>,
}

/// What one warm pass shares across its requests: its own request counts, and the config
/// blobs it already fetched (two manifests may share one config; it is fetched once).
#[derive(Debug, Default)]
pub struct PassContext {
    pub stats: RequestStats,
    configs: Mutex<HashMap<Digest, ImageConfig>>,
}

impl std::fmt::Debug for RepositoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryClient")
            .field("repository", &self.repository.canonical())
            .field("identity", &self.credential.identity())
            .field("base", &self.base.as_str())
            .finish()
    }
}

impl RepositoryClient {
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// A copy of this client whose requests are also counted in a fresh [`PassContext`].
    pub fn for_pass(&self) -> (RepositoryClient, Arc<PassContext>) {
        let pass = Arc::new(PassContext::default());
        let mut rc = self.clone();
        rc.pass = Some(pass.clone());
        (rc, pass)
    }

    fn record(&self, kind: RequestKind) {
        self.inner.stats.record(kind);
        if let Some(p) = &self.pass {
            p.stats.record(kind);
        }
    }

    fn url(&self, path: &str) -> Url {
        // Paths are built from a validated repository name and reference: always valid.
        self.base.join(path).expect("registry URL paths are valid")
    }

    fn challenge_key(&self) -> String {
        self.base.origin().ascii_serialization()
    }

    /// Asks `/v2/` which auth the registry wants, and remembers the answer per endpoint.
    pub async fn ping(&self) -> Result<Challenge> {
        let url = self.url("/v2/");
        let answer = self
            .send_once(
                RequestKind::Ping,
                Method::GET,
                url.clone(),
                None,
                None,
                ERROR_BODY_CAP,
            )
            .await?;
        let challenge = match answer.status {
            s if s.is_success() => Challenge::Anonymous,
            StatusCode::UNAUTHORIZED if answer.url.origin() != url.origin() => {
                return Err(foreign_challenge(&url, &answer.url));
            }
            StatusCode::UNAUTHORIZED => answer
                .headers
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_www_authenticate)
                .ok_or_else(|| Error::NotARegistry {
                    url: url.to_string(),
                    detail: "401 without a usable WWW-Authenticate challenge".to_string(),
                })?,
            StatusCode::TOO_MANY_REQUESTS => {
                let pause = self
                    .inner
                    .rate_limited(&self.host, retry_after(&answer.headers));
                return Err(Error::RateLimited {
                    host: self.host.clone(),
                    retry_after: Some(pause),
                });
            }
            s if s.is_server_error() => {
                return Err(Error::Server {
                    host: self.host.clone(),
                    url: url.to_string(),
                    status: s,
                });
            }
            s => {
                return Err(Error::NotARegistry {
                    url: url.to_string(),
                    detail: format!("answered {s}"),
                });
            }
        };
        lock(&self.inner.challenges).insert(self.challenge_key(), challenge.clone());
        Ok(challenge)
    }

    /// Sends one request (after the host limiter admits it) and reads the body within `cap`.
    ///
    /// Redirects are followed here, not by the HTTP library, so that `authorization` goes
    /// only to the origin (scheme, host, port) of `url`: a registry that sends a blob to
    /// object storage, or a request anywhere else, never hands its credentials over.
    async fn send_once(
        &self,
        kind: RequestKind,
        method: Method,
        url: Url,
        accept: Option<&str>,
        authorization: Option<&Secret>,
        cap: usize,
    ) -> Result<Answer> {
        let limiter_host = url_host(&url);
        let limiter = self.inner.limiter(&limiter_host);
        // A host closed by a long Retry-After fails fast instead of holding the caller.
        if let Some(pause) = limiter
            .closed_for()
            .filter(|p| *p > self.inner.options.max_rate_limit_wait)
        {
            return Err(Error::RateLimited {
                host: limiter_host,
                retry_after: Some(pause),
            });
        }
        limiter.acquire().await;
        self.inner
            .metrics
            .registry
            .rate(&limiter_host, limiter.rate());
        self.record(kind);
        let started = std::time::Instant::now();
        let failed = |e: Error| {
            self.inner
                .observe(&limiter_host, kind, e.metric_label().into(), started);
            e
        };
        let origin = url.origin();
        let mut hop = url;
        let mut redirects = 0;
        loop {
            let mut req = self.http.request(method.clone(), hop.clone());
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(a) = authorization.filter(|_| hop.origin() == origin) {
                req = req.header(header::AUTHORIZATION, a.expose());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| failed(self.classify(&hop, &e)))?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(location) = resp.headers().get(header::LOCATION)
            {
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|l| hop.join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                let redirect_error = |detail: String| Error::Invalid {
                    url: hop.to_string(),
                    what: what_of(kind),
                    source: ParseError::Malformed {
                        kind: "redirect",
                        detail,
                    },
                };
                let Some(next) = next else {
                    return Err(failed(redirect_error(
                        "Location is not an http(s) URL".to_string(),
                    )));
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(failed(redirect_error(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    ))));
                }
                hop = next;
                continue;
            }
            let headers = resp.headers().clone();
            let cap = if status.is_success() {
                cap
            } else {
                ERROR_BODY_CAP
            };
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                self.read_body(resp, cap, &hop, kind)
                    .await
                    .map_err(failed)?
            };
            self.inner.observe(
                &limiter_host,
                kind,
                status.as_str().to_string().into(),
                started,
            );
            return Ok(Answer {
                status,
                headers,
                body,
                url: hop,
            });
        }
    }

    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        cap: usize,
        url: &Url,
        kind: RequestKind,
    ) -> Result<Bytes> {
        let too_large = || Error::TooLarge {
            url: url.to_string(),
            what: what_of(kind),
            limit: cap,
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(url, &e))? {
            if buf.len() + chunk.len() > cap {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    fn classify(&self, url: &Url, e: &reqwest::Error) -> Error {
        let detail = error_chain(e);
        if e.is_timeout() {
            return Error::Timeout {
                url: url.to_string(),
                limit: self.inner.options.request_timeout,
            };
        }
        let tls = is_tls_error(e);
        if tls {
            return Error::Tls {
                host: url_host(url),
                detail,
            };
        }
        if e.is_connect() {
            return Error::Connect {
                host: url_host(url),
                detail,
            };
        }
        Error::Transport {
            host: url_host(url),
            url: url.to_string(),
            detail,
        }
    }

    /// The `Authorization` value for this repository, per the endpoint's challenge.
    async fn authorization(&self) -> Result<Option<Secret>> {
        if let Credential::RegistryToken(token) = &self.credential {
            return Ok(Some(Secret::new(format!("Bearer {}", token.expose()))));
        }
        let key = self.challenge_key();
        let challenge = match self.inner.known_challenge(&key) {
            Some(c) => c,
            None => {
                let _flight = self.inner.flight(format!("ping {key}")).await;
                match self.inner.known_challenge(&key) {
                    Some(c) => c,
                    None => self.ping().await?,
                }
            }
        };
        match challenge {
            Challenge::Anonymous => Ok(None),
            Challenge::Basic { .. } => Ok(basic_header(&self.credential)),
            Challenge::Bearer { realm, service, .. } => {
                let token = self.bearer_token(&realm, service.as_deref()).await?;
                Ok(Some(Secret::new(format!("Bearer {}", token.expose()))))
            }
        }
    }

    async fn bearer_token(&self, realm: &str, service: Option<&str>) -> Result<Secret> {
        let key_host = self.challenge_key();
        let cached = || {
            self.inner
                .tokens
                .get(&key_host, &self.scope, &self.credential)
        };
        if let Some(t) = cached() {
            return Ok(t);
        }
        let _flight = self
            .inner
            .flight(format!(
                "token {key_host} {} {}",
                self.scope,
                hex::encode(self.credential.fingerprint())
            ))
            .await;
        if let Some(t) = cached() {
            return Ok(t);
        }
        let token_error = |detail: String| Error::TokenEndpoint {
            host: self.host.clone(),
            realm: realm.to_string(),
            detail,
        };
        let mut url =
            Url::parse(realm).map_err(|e| token_error(format!("invalid realm URL ({e})")))?;
        // The realm is the registry's choice and may be another host (Docker Hub's is), but
        // credentials travel to it in the clear only when the registry itself is plain HTTP.
        match url.scheme() {
            "https" => {}
            "http" if self.base.scheme() == "http" || self.credential.is_anonymous() => {}
            "http" => {
                return Err(Error::InsecureRealm {
                    host: self.host.clone(),
                    realm: realm.to_string(),
                });
            }
            other => return Err(token_error(format!("realm scheme {other} is not http(s)"))),
        }
        let answer = match &self.credential {
            Credential::IdentityToken { token, .. } => {
                // OAuth2 refresh-token grant, as docker does with `identitytoken`.
                // Built before any await: the serializer is not Send.
                let body = {
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", token.expose())
                        .append_pair("client_id", "regcache")
                        .append_pair("scope", &self.scope);
                    if let Some(s) = service {
                        form.append_pair("service", s);
                    }
                    form.finish()
                };
                let token_host = url_host(&url);
                self.inner.limiter(&token_host).acquire().await;
                self.record(RequestKind::Token);
                let started = std::time::Instant::now();
                let failed = |e: Error| {
                    self.inner.observe(
                        &token_host,
                        RequestKind::Token,
                        e.metric_label().into(),
                        started,
                    );
                    e
                };
                let resp = self
                    .http
                    .post(url.clone())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| failed(self.classify(&url, &e)))?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = self
                    .read_body(
                        resp,
                        self.inner.options.max_token_bytes,
                        &url,
                        RequestKind::Token,
                    )
                    .await
                    .map_err(failed)?;
                self.inner.observe(
                    &token_host,
                    RequestKind::Token,
                    status.as_str().to_string().into(),
                    started,
                );
                Answer {
                    status,
                    headers,
                    body,
                    url: url.clone(),
                }
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &self.scope);
                }
                self.send_once(
                    RequestKind::Token,
                    Method::GET,
                    url.clone(),
                    None,
                    basic_header(&self.credential).as_ref(),
                    self.inner.options.max_token_bytes,
                )
                .await?
            }
        };
        match answer.status {
            s if s.is_success() => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(Error::Unauthorized {
                    host: self.host.clone(),
                    identity: self.credential.identity(),
                    status: s,
                    detail: Some("token endpoint refused them".to_string()),
                });
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let pause = self
                    .inner
                    .rate_limited(&url_host(&url), retry_after(&answer.headers));
                return Err(Error::RateLimited {
                    host: url_host(&url),
                    retry_after: Some(pause),
                });
            }
            s if s.is_server_error() => {
                return Err(Error::Server {
                    host: url_host(&url),
                    url: url.to_string(),
                    status: s,
                });
            }
            s => return Err(token_error(format!("answered {s}"))),
        }
        let parsed: TokenResponse = serde_json::from_slice(&answer.body).map_err(|e| {
            token_error(format!(
                "response is not a token document ({})",
                e.classify_name()
            ))
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| token_error("response has no token".to_string()))?;
        let token = Secret::new(token);
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(auth::DEFAULT_TOKEN_LIFETIME);
        self.inner.tokens.put(
            &key_host,
            &self.scope,
            &self.credential,
            token.clone(),
            lifetime,
        );
        Ok(token)
    }

    /// One logical request: auth, the retry policy, and status handling common to all
    /// kinds. Returns the successful answer or the non-success status for the caller
    /// to interpret (404 means different things for tags, manifests and blobs).
    async fn request(
        &self,
        kind: RequestKind,
        method: Method,
        url: Url,
        accept: Option<&str>,
        cap: usize,
    ) -> Result<Answer> {
        let options = &self.inner.options;
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            let retry = |attempt: &mut u32| {
                *attempt += 1;
                *attempt <= options.retries
            };
            // A failed ping or token request is retried like the request itself.
            let result = match self.authorization().await {
                Ok(authorization) => {
                    self.send_once(
                        kind,
                        method.clone(),
                        url.clone(),
                        accept,
                        authorization.as_ref(),
                        cap,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let answer = match result {
                Ok(a) => a,
                Err(Error::RateLimited {
                    retry_after: Some(pause),
                    ..
                }) if pause <= options.max_rate_limit_wait && retry(&mut attempt) => {
                    // The host's limiter stays closed for the pause; acquire() waits it out.
                    continue;
                }
                Err(e)
                    if e.is_transient()
                        && !matches!(e, Error::RateLimited { .. })
                        && retry(&mut attempt) =>
                {
                    tracing::debug!(url = %url, error = %e, attempt, "retrying registry request");
                    tokio::time::sleep(backoff(options.retry_backoff, attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match answer.status {
                // Another origin's challenge is not this registry's: learning it would send
                // this registry's credentials to whatever realm it names.
                StatusCode::UNAUTHORIZED if answer.url.origin() != url.origin() => {
                    return Err(foreign_challenge(&url, &answer.url));
                }
                StatusCode::UNAUTHORIZED => {
                    let challenge = answer
                        .headers
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(auth::parse_www_authenticate);
                    // A token may have been revoked or expired early, or the endpoint
                    // changed its scheme: learn the challenge again, then retry once.
                    if !reauthenticated && !matches!(self.credential, Credential::RegistryToken(_))
                    {
                        reauthenticated = true;
                        self.inner.tokens.invalidate(
                            &self.challenge_key(),
                            &self.scope,
                            &self.credential,
                        );
                        if let Some(c) = challenge {
                            lock(&self.inner.challenges).insert(self.challenge_key(), c);
                        } else {
                            lock(&self.inner.challenges).remove(&self.challenge_key());
                        }
                        continue;
                    }
                    let codes = error_codes(&answer.body);
                    return Err(Error::Unauthorized {
                        host: self.host.clone(),
                        identity: self.credential.identity(),
                        status: answer.status,
                        detail: codes.first().map(|(c, _)| c.clone()),
                    });
                }
                StatusCode::FORBIDDEN => {
                    let codes = error_codes(&answer.body);
                    return Err(Error::Forbidden {
                        host: self.host.clone(),
                        repository: self.repository.canonical(),
                        identity: self.credential.identity(),
                        status: answer.status,
                        detail: codes.first().map(|(c, _)| c.clone()),
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let pause = self
                        .inner
                        .rate_limited(&self.host, retry_after(&answer.headers));
                    tracing::warn!(host = %self.host, pause = ?pause, "registry rate limited us");
                    if pause <= options.max_rate_limit_wait && retry(&mut attempt) {
                        // The limiter is closed until the pause ends; acquire() waits.
                        continue;
                    }
                    return Err(Error::RateLimited {
                        host: self.host.clone(),
                        retry_after: Some(pause),
                    });
                }
                s if s.is_server_error() => {
                    if retry(&mut attempt) {
                        tokio::time::sleep(backoff(options.retry_backoff, attempt)).await;
                        continue;
                    }
                    return Err(Error::Server {
                        host: self.host.clone(),
                        url: url.to_string(),
                        status: s,
                    });
                }
                _ => return Ok(answer),
            }
        }
    }

    /// All tags, following `Link` pagination; order as the registry gives it, without
    /// duplicates.
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let options = &self.inner.options;
        let mut url = self.url(&format!("/v2/{}/tags/list", self.repository.path()));
        url.query_pairs_mut()
            .append_pair("n", &options.tag_page_size.to_string());
        let mut tags = Vec::new();
        let mut seen_tags = HashSet::new();
        let mut seen_urls = HashSet::new();
        for _ in 0..options.max_tag_pages {
            if !seen_urls.insert(url.to_string()) {
                return Err(Error::Invalid {
                    url: url.to_string(),
                    what: "tag list",
                    source: ParseError::Malformed {
                        kind: "tag list",
                        detail: "Link header loops back to a page already read".to_string(),
                    },
                });
            }
            let answer = self
                .request(
                    RequestKind::TagList,
                    Method::GET,
                    url.clone(),
                    Some("application/json"),
                    options.max_tag_page_bytes,
                )
                .await?;
            match answer.status {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => {
                    return Err(Error::NameUnknown {
                        host: self.host.clone(),
                        repository: self.repository.canonical(),
                    });
                }
                s => {
                    return Err(Error::UnexpectedStatus {
                        url: url.to_string(),
                        status: s,
                    });
                }
            }
            let page: TagList =
                serde_json::from_slice(&answer.body).map_err(|e| Error::Invalid {
                    url: url.to_string(),
                    what: "tag list",
                    source: ParseError::Malformed {
                        kind: "tag list",
                        detail: e.to_string(),
                    },
                })?;
            for tag in page.tags.unwrap_or_default() {
                if seen_tags.insert(tag.clone()) {
                    tags.push(tag);
                }
            }
            let next = answer
                .headers
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            match next {
                Some(next) => {
                    let next = url.join(&next).map_err(|e| Error::Invalid {
                        url: url.to_string(),
                        what: "tag list",
                        source: ParseError::Malformed {
                            kind: "Link header",
                            detail: e.to_string(),
                        },
                    })?;
                    // The next page must come from the same registry: another origin's
                    // tags are not this repository's, and the page request carries this
                    // registry's credentials.
                    if next.origin() != self.base.origin() {
                        return Err(Error::CrossOrigin {
                            what: "tag list Link",
                            from: self.base.origin().ascii_serialization(),
                            to: next.origin().ascii_serialization(),
                            reason: "regcache follows tag pages only within the registry's own origin",
                        });
                    }
                    url = next;
                }
                None => return Ok(tags),
            }
        }
        Err(Error::Invalid {
            url: url.to_string(),
            what: "tag list",
            source: ParseError::Malformed {
                kind: "tag list",
                detail: format!("more than {} pages", options.max_tag_pages),
            },
        })
    }

    fn manifest_url(&self, reference: &Reference) -> Url {
        self.url(&format!(
            "/v2/{}/manifests/{reference}",
            self.repository.path()
        ))
    }

    fn manifest_unknown(&self, reference: &Reference, body: &[u8]) -> Error {
        if error_codes(body).iter().any(|(c, _)| c == "NAME_UNKNOWN") {
            return Error::NameUnknown {
                host: self.host.clone(),
                repository: self.repository.canonical(),
            };
        }
        Error::ManifestUnknown {
            repository: self.repository.canonical(),
            reference: reference.to_string(),
        }
    }

    /// What a tag or digest points at, by HEAD (free on Docker Hub). Falls back to a GET
    /// when the registry sends no `Docker-Content-Digest`.
    pub async fn head_manifest(&self, reference: &Reference) -> Result<ManifestHead> {
        let url = self.manifest_url(reference);
        let answer = self
            .request(
                RequestKind::ManifestHead,
                Method::HEAD,
                url.clone(),
                Some(manifest::ACCEPT_MANIFESTS),
                0,
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(self.manifest_unknown(reference, &[])),
            s => {
                return Err(Error::UnexpectedStatus {
                    url: url.to_string(),
                    status: s,
                });
            }
        }
        let digest = answer
            .headers
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        match digest {
            Some(digest) => Ok(ManifestHead {
                digest,
                media_type: answer
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                size: answer
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                fetched: None,
            }),
            None => {
                let fetched = self.get_manifest(reference).await?;
                Ok(ManifestHead {
                    digest: fetched.digest.clone(),
                    media_type: Some(fetched.kind.media_type().to_string()),
                    size: Some(fetched.bytes.len() as u64),
                    fetched: Some(fetched),
                })
            }
        }
    }

    /// Fetches a manifest and checks it against the digest asked for, or else the one the
    /// registry advertised.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        let options = &self.inner.options;
        let url = self.manifest_url(reference);
        let answer = self
            .request(
                RequestKind::ManifestGet,
                Method::GET,
                url.clone(),
                Some(manifest::ACCEPT_MANIFESTS),
                options.max_manifest_bytes,
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(self.manifest_unknown(reference, &answer.body)),
            s => {
                return Err(Error::UnexpectedStatus {
                    url: url.to_string(),
                    status: s,
                });
            }
        }
        let invalid = |source| Error::Invalid {
            url: url.to_string(),
            what: "manifest",
            source,
        };
        let content_type = answer
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let kind = manifest::detect_kind(content_type, &answer.body).map_err(invalid)?;
        let payload = manifest::digest_payload(kind, &answer.body).map_err(invalid)?;
        let advertised = answer
            .headers
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => advertised,
        };
        let digest = match expected {
            Some(expected) if expected.verify(&payload) => expected,
            Some(expected) => {
                return Err(Error::DigestMismatch {
                    url: url.to_string(),
                    what: "manifest",
                    expected: expected.to_string(),
                    actual: Digest::sha256_of(&payload).to_string(),
                });
            }
            None => Digest::sha256_of(&payload),
        };
        drop(payload);
        let manifest = manifest::parse_manifest(kind, &answer.body).map_err(invalid)?;
        Ok(FetchedManifest {
            digest,
            kind,
            bytes: answer.body,
            manifest,
        })
    }

    /// Fetches and parses a config blob, verified against its digest.
    pub async fn get_config(&self, digest: &Digest) -> Result<ImageConfig> {
        if let Some(c) = self
            .pass
            .as_ref()
            .and_then(|p| lock(&p.configs).get(digest).cloned())
        {
            return Ok(c);
        }
        let config = self.fetch_config(digest).await?;
        if let Some(p) = &self.pass {
            lock(&p.configs).insert(digest.clone(), config.clone());
        }
        Ok(config)
    }

    async fn fetch_config(&self, digest: &Digest) -> Result<ImageConfig> {
        let url = self.url(&format!("/v2/{}/blobs/{digest}", self.repository.path()));
        let answer = self
            .request(
                RequestKind::BlobGet,
                Method::GET,
                url.clone(),
                None,
                self.inner.options.max_config_bytes,
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::BlobUnknown {
                    repository: self.repository.canonical(),
                    digest: digest.to_string(),
                });
            }
            s => {
                return Err(Error::UnexpectedStatus {
                    url: url.to_string(),
                    status: s,
                });
            }
        }
        if !digest.verify(&answer.body) {
            return Err(Error::DigestMismatch {
                url: url.to_string(),
                what: "config blob",
                expected: digest.to_string(),
                actual: Digest::sha256_of(&answer.body).to_string(),
            });
        }
        ImageConfig::parse(&answer.body).map_err(|source| Error::Invalid {
            url: url.to_string(),
            what: "config blob",
            source,
        })
    }

    /// Complete metadata for one reference: the manifest, and for an index each wanted
    /// platform's manifest; each image's config. `platforms` empty means all of them.
    pub async fn inspect(
        &self,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<ImageMetadata> {
        let top = self.get_manifest(reference).await?;
        let metadata = self.describe(reference, top, platforms, &[]).await?;
        // Asked for platforms the index does not have: say which it has.
        if metadata.platforms.is_empty() && !metadata.available_platforms.is_empty() {
            let list = |ps: &mut dyn Iterator<Item = &Platform>| {
                ps.map(Platform::to_string).collect::<Vec<_>>().join(", ")
            };
            return Err(Error::PlatformNotFound {
                repository: self.repository.canonical(),
                digest: metadata.digest.to_string(),
                wanted: list(&mut platforms.iter()),
                available: list(&mut metadata.available_platforms.iter()),
            });
        }
        Ok(metadata)
    }

    /// Builds [`ImageMetadata`] from an already fetched top-level manifest (a warm pass
    /// that learnt the manifest from a HEAD fallback does not fetch it twice). Platform
    /// images in `known` (by digest) are reused instead of fetched again. An index with
    /// none of the wanted platforms gives no platform images, only `available_platforms`.
    pub async fn describe(
        &self,
        reference: &Reference,
        top: FetchedManifest,
        platforms: &[Platform],
        known: &[PlatformImage],
    ) -> Result<ImageMetadata> {
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        let mut available = Vec::new();
        let images = match &top.manifest {
            Manifest::Image(_) | Manifest::Schema1(_) => {
                vec![self.platform_image(&top, None).await?]
            }
            Manifest::Index(index) => {
                let entries = manifest::index_entries(index, &top.bytes).map_err(|source| {
                    Error::Invalid {
                        url: self.manifest_url(reference).to_string(),
                        what: "image index",
                        source,
                    }
                })?;
                let wanted: Vec<_> = entries
                    .iter()
                    .filter(|e| !e.is_attestation)
                    .filter(|e| manifest::platform_wanted(e.platform.as_ref(), platforms))
                    .collect();
                available = entries
                    .iter()
                    .filter(|e| !e.is_attestation)
                    .filter_map(|e| e.platform.clone())
                    .collect();
                let children = wanted.iter().map(|entry| async move {
                    if let Some(k) = known.iter().find(|k| k.digest == entry.digest) {
                        return Ok(k.clone());
                    }
                    let child = self
                        .get_manifest(&Reference::Digest(entry.digest.clone()))
                        .await?;
                    if matches!(child.manifest, Manifest::Index(_)) {
                        return Err(Error::Invalid {
                            url: self
                                .manifest_url(&Reference::Digest(entry.digest.clone()))
                                .to_string(),
                            what: "image index",
                            source: ParseError::Malformed {
                                kind: "image index",
                                detail: "an index nested in an index is not supported".to_string(),
                            },
                        });
                    }
                    self.platform_image(&child, Some(entry)).await
                });
                futures::future::try_join_all(children).await?
            }
        };
        let created = images.iter().filter_map(|i| i.created).max();
        let labels = images.first().map(|i| i.labels.clone()).unwrap_or_default();
        Ok(ImageMetadata {
            canonical_name: self.repository.canonical(),
            tag,
            digest: top.digest.clone(),
            media_type: top.kind.media_type().to_string(),
            created,
            labels,
            platforms: images,
            available_platforms: available,
        })
    }

    async fn platform_image(
        &self,
        fetched: &FetchedManifest,
        entry: Option<&manifest::IndexEntry>,
    ) -> Result<PlatformImage> {
        let (config_digest, config, config_missing) = match &fetched.manifest {
            Manifest::Image(m) => {
                let (digest, _) =
                    manifest::config_descriptor(m).map_err(|source| Error::Invalid {
                        url: self
                            .manifest_url(&Reference::Digest(fetched.digest.clone()))
                            .to_string(),
                        what: "manifest",
                        source,
                    })?;
                match self.get_config(&digest).await {
                    Ok(c) => (Some(digest), c, false),
                    Err(Error::BlobUnknown { .. }) => (Some(digest), ImageConfig::default(), true),
                    Err(e) => return Err(e),
                }
            }
            Manifest::Schema1(s) => {
                let config = s.config().map_err(|source| Error::Invalid {
                    url: self
                        .manifest_url(&Reference::Digest(fetched.digest.clone()))
                        .to_string(),
                    what: "schema1 manifest",
                    source,
                })?;
                (None, config, false)
            }
            Manifest::Index(_) => unreachable!("callers pass image manifests only"),
        };
        let platform = entry
            .and_then(|e| e.platform.clone())
            .or_else(|| config.platform());
        Ok(PlatformImage {
            platform,
            os_version: entry
                .and_then(|e| e.os_version.clone())
                .or(config.os_version.clone()),
            digest: fetched.digest.clone(),
            media_type: fetched.kind.media_type().to_string(),
            config_digest,
            created: config.created,
            labels: config.labels,
            config_missing,
        })
    }
}

/// Whether a rustls error is anywhere in the chain. rustls errors arrive wrapped in
/// io::Errors (sometimes twice), whose `source()` skips the wrapped error, so each
/// io::Error is opened explicitly.
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    let inner = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref());
    if inner.is_some_and(|inner| is_tls_error(inner)) {
        return true;
    }
    e.source().is_some_and(is_tls_error)
}

/// A request to `asked` was redirected to `answered`, another origin, which asked for
/// credentials.
fn foreign_challenge(asked: &Url, answered: &Url) -> Error {
    Error::CrossOrigin {
        what: "redirect",
        from: asked.origin().ascii_serialization(),
        to: answered.origin().ascii_serialization(),
        reason: "that origin asked for credentials, and regcache sends a registry's \
                 credentials only to the registry's own origin",
    }
}

fn basic_header(credential: &Credential) -> Option<Secret> {
    use base64::Engine as _;
    match credential {
        Credential::Basic { username, password } => Some(Secret::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", password.expose()))
        ))),
        _ => None,
    }
}

fn url_host(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

fn what_of(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Ping => "ping response",
        RequestKind::Token => "token response",
        RequestKind::TagList => "tag list page",
        RequestKind::ManifestHead | RequestKind::ManifestGet => "manifest",
        RequestKind::BlobGet => "config blob",
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(6))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_forms() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r.example/v2/a/tags/list?last=b>;rel=next"#).as_deref(),
            Some("https://r.example/v2/a/tags/list?last=b")
        );
        assert_eq!(
            next_link(r#"</x>; rel="prev", </y>; rel="next""#).as_deref(),
            Some("/y")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let future = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(header::RETRY_AFTER, future.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), b * 2);
        assert_eq!(backoff(b, 3), b * 4);
    }

    #[test]
    fn error_codes_parse() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_codes(body)[0].0, "MANIFEST_UNKNOWN");
        assert!(error_codes(b"not json").is_empty());
    }

    #[test]
    fn bad_ca_is_a_clear_error() {
        assert!(
            tls_config(Some(b"not a pem"))
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(tls_config(None).is_ok());
    }
}
