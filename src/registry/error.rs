//! Registry errors: typed, so callers never match on strings. No variant carries a secret.

use std::time::Duration;

use http::StatusCode;

use super::manifest::ParseError;

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
    #[error(
        "registry {host} has {remaining}{} pulls left in its window and regcache keeps {reserve} \
         for the cluster's own pulls (--registry-pull-reserve): manifest GETs wait until the \
         window frees pulls; HEADs go on",
        limit.map(|l| format!(" of {l}")).unwrap_or_default()
    )]
    PullQuotaReserved {
        host: String,
        remaining: u64,
        limit: Option<u64>,
        reserve: u64,
    },
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
            Error::PullQuotaReserved { .. } => "pull_quota_reserved",
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

pub(super) type Result<T, E = Error> = std::result::Result<T, E>;
