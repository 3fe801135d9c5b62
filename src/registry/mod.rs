//! Registry client: the only module that speaks HTTP to registries.
//!
//! Distribution API v2 / OCI distribution: `/v2/` challenge, anonymous / basic / bearer auth
//! with a token cache, paginated tag lists, manifest HEAD and GET for every manifest kind,
//! config blobs. Every request passes the host's shared [`HostLimiter`], has a timeout and a
//! body cap, and every manifest and blob is checked against its digest.

pub mod auth;
mod describe;
mod error;
pub mod limiter;
pub mod limits;
pub mod manifest;
mod metrics;
mod operations;
pub mod quota;
mod token;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::credentials::Credential;
use crate::image::{Digest, Repository};
use auth::{Challenge, TokenCache};
pub use error::Error;
use error::Result;
use limiter::{HostLimiter, LimiterSettings};
use manifest::{ImageConfig, Manifest, MediaKind};
pub use metrics::RegistryMetrics;
pub use operations::next_link;
pub(crate) use transport::check_ca_bundle;
use transport::{error_chain, tls_config};

/// Header carrying a manifest's digest in distribution responses.
pub(crate) const DIGEST_HEADER: &str = "docker-content-digest";

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
    /// Registry host names connected to at a given address instead of being looked up
    /// (`--registry-host-address`); the port stays the one the name carries.
    pub host_addresses: Vec<(String, std::net::IpAddr)>,
    /// Per-host limits over `limiter` (the defaults): the first matching rule wins
    /// (`--registry-limits-file`, then [`limits::shipped`]).
    pub host_rules: Vec<limits::HostRule>,
    /// Of a pull quota a registry reports, what regcache leaves to others: at the reserve,
    /// manifest GETs wait (`--registry-pull-reserve`).
    pub pull_reserve: quota::Reserve,
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
            host_addresses: Vec::new(),
            host_rules: limits::shipped(),
            pull_reserve: quota::Reserve::default(),
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
    quotas: quota::Quotas,
    stats: RequestStats,
    metrics: RegistryMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Maps of plain values: a panic while holding one leaves nothing half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RegistryClient {
    /// A client recording into a metrics registry of its own (commands, tests).
    pub fn new(options: ClientOptions) -> Self {
        Self::with_metrics(options, RegistryMetrics::default())
    }

    /// A client recording `regcache_registry_*` into the process's metrics.
    pub fn with_metrics(options: ClientOptions, metrics: RegistryMetrics) -> Self {
        RegistryClient {
            inner: Arc::new(Inner {
                options,
                http: Mutex::new(HashMap::new()),
                limiters: Mutex::new(HashMap::new()),
                challenges: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                tokens: TokenCache::default(),
                quotas: quota::Quotas::default(),
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
        self.metrics.backoff(host, limiter.rate());
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
            .request(host, kind.label(), status, started.elapsed());
    }

    fn limiter(&self, host: &str) -> Arc<HostLimiter> {
        lock(&self.limiters)
            .entry(host.to_string())
            .or_insert_with(|| {
                let (settings, rule) =
                    limits::settings_for(&self.options.host_rules, &self.options.limiter, host);
                self.metrics.host_limits(host, &rule, &settings);
                Arc::new(HostLimiter::new(settings))
            })
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
        let mut builder = reqwest::Client::builder();
        for (name, ip) in &self.options.host_addresses {
            builder = builder.resolve(name, std::net::SocketAddr::new(*ip, 0));
        }
        let client = builder
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
    /// Requests that may be in flight to this repository's host at once; every pass on
    /// the host shares them.
    pub fn host_concurrency(&self) -> usize {
        self.inner
            .limiter(&transport::url_host(&self.base))
            .concurrency()
    }

    /// Whether a tag never seen before is best resolved by GET: one request that also
    /// brings the manifest a new image needs, where a HEAD would be followed by that GET.
    /// Not on a host that counts manifest GETs as pulls, nor once a host reported a pull
    /// quota for this identity: there an alias of a known image would spend a pull.
    pub fn resolves_new_tags_by_get(&self) -> bool {
        !self
            .inner
            .limiter(&transport::url_host(&self.base))
            .counts_pulls()
            && self.inner.quotas.current(&self.quota_key()).is_none()
    }

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

    /// Pull quotas count per identity: the host and the credential.
    fn quota_key(&self) -> String {
        format!(
            "{} {}",
            self.challenge_key(),
            hex::encode(self.credential.fingerprint())
        )
    }

    /// Records the pull quota a manifest answer reports.
    pub(crate) fn note_quota(&self, headers: &http::HeaderMap) {
        if let Some(q) = quota::parse(headers) {
            self.inner.quotas.record(&self.quota_key(), q);
            self.inner.metrics.pull_quota(&self.host, &q);
        }
    }

    /// Refuses a manifest GET while the identity's quota is at regcache's reserve.
    pub(crate) fn check_pull_quota(&self) -> Result<()> {
        let Some(q) = self.inner.quotas.current(&self.quota_key()) else {
            return Ok(());
        };
        let reserve = self.inner.options.pull_reserve.of(&q);
        if q.remaining > reserve {
            return Ok(());
        }
        Err(Error::PullQuotaReserved {
            host: self.host.clone(),
            remaining: q.remaining,
            limit: q.limit,
            reserve,
        })
    }
}
