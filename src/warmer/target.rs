//! What goes into the warmer and comes out of it: a target per watch, an outcome per pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::filter::TagFilter;
use crate::cache::keys::Scope;
use crate::cloud::{CloudLogin, SignIn};
use crate::credentials::Credential;
use crate::image::{Digest, Platform, Repository};
use crate::registry::{Endpoint, RequestKind};

/// Identifies a target: `namespace/name` of its watch (or of its manifest in standalone).
pub(crate) type TargetId = String;

/// Everything the warmer needs to keep one repository warm.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: TargetId,
    pub repository: Repository,
    /// Credentials for the registry; with `cloud`, the pass signs in instead.
    pub credential: Credential,
    /// A cloud login that issues this target's registry credentials before each pass.
    pub cloud: Option<CloudSource>,
    pub scope: Scope,
    pub endpoint: Endpoint,
    pub filter: TagFilter,
    /// Platforms of multi-platform images to keep; empty for all.
    pub platforms: Vec<Platform>,
    /// How often to list tags.
    pub interval: Duration,
    /// Report created times from timestamp labels when reading this repository.
    pub timestamp_labels: bool,
}

impl Target {
    /// Whether a new version of the target changes what a pass does (so it runs now).
    pub(super) fn differs(&self, other: &Target) -> bool {
        self.repository != other.repository
            || self.credential != other.credential
            || self.cloud.as_ref().map(|c| &c.login) != other.cloud.as_ref().map(|c| &c.login)
            || self.scope != other.scope
            || self.endpoint != other.endpoint
            || self.platforms != other.platforms
            || self.interval != other.interval
            || format!("{:?}", self.filter) != format!("{:?}", other.filter)
    }
}

/// A cloud login and the sign-in service that serves it.
#[derive(Clone)]
pub struct CloudSource {
    pub login: CloudLogin,
    pub sign_in: Arc<SignIn>,
}

impl std::fmt::Debug for CloudSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CloudSource").field(&self.login).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TagChangeKind {
    New,
    Moved,
}

/// A tag that appeared or moved to another digest in a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagChange {
    pub tag: String,
    pub kind: TagChangeKind,
    pub from: Option<Digest>,
    pub to: Option<Digest>,
}

/// What kind of failure ended or spoiled a pass, for status reasons and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    /// Cloud sign-in failed: no registry request was made.
    CredentialsUnavailable,
    Unauthorized,
    RateLimited,
    /// The registry's pull quota is down to regcache's reserve: GETs wait, HEADs go on.
    PullQuotaReserved,
    RepositoryNotFound,
    RegistryUnavailable,
    Cache,
    Other,
}

impl FailureKind {
    /// A short stable name, for metrics labels.
    pub fn metric_label(self) -> &'static str {
        match self {
            FailureKind::CredentialsUnavailable => "credentials_unavailable",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::PullQuotaReserved => "pull_quota_reserved",
            FailureKind::RepositoryNotFound => "repository_not_found",
            FailureKind::RegistryUnavailable => "registry_unavailable",
            FailureKind::Cache => "cache",
            FailureKind::Other => "other",
        }
    }

    pub fn of(e: &crate::registry::Error) -> FailureKind {
        use crate::registry::Error as E;
        match e {
            E::Unauthorized { .. } | E::Forbidden { .. } => FailureKind::Unauthorized,
            E::RateLimited { .. } => FailureKind::RateLimited,
            E::PullQuotaReserved { .. } => FailureKind::PullQuotaReserved,
            E::NameUnknown { .. } => FailureKind::RepositoryNotFound,
            E::Connect { .. }
            | E::Timeout { .. }
            | E::Transport { .. }
            | E::Server { .. }
            | E::Tls { .. }
            | E::TokenEndpoint { .. } => FailureKind::RegistryUnavailable,
            _ => FailureKind::Other,
        }
    }
}

/// What one pass did, for status, events, metrics and logs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub id: TargetId,
    pub repository: String,
    /// Tags listed by the registry.
    pub listed: usize,
    /// Tags in the published index (after filters and budget).
    pub tags: usize,
    /// Left out by filters or the budget.
    pub excluded: usize,
    /// Tags whose manifest the registry reports unknown.
    pub missing: usize,
    /// Image records fetched and cached in this pass.
    pub images_updated: usize,
    /// Distinct images (digests) the published index points at.
    pub images: usize,
    /// Whether this pass published an index (`tags` and `images` describe the cache).
    pub published: bool,
    pub requests: BTreeMap<RequestKind, u64>,
    /// The first thousand tag changes (new tags, moved tags) of the pass.
    pub changes: Vec<TagChange>,
    /// Every tag change of the pass: new tags and moved tags.
    pub changed: usize,
    /// Whether the published index changed (tags added, moved or removed): a pass that
    /// changed nothing publishes the same generation.
    pub index_changed: bool,
    pub error: Option<String>,
    /// The kind of the first failure, when `error` is set.
    pub failure: Option<FailureKind>,
    /// The ten most recently created tags, newest first.
    pub latest_tags: Vec<String>,
    pub last_update: Option<DateTime<Utc>>,
    /// Set after a 429: the host asked for this pause.
    pub retry_after: Option<Duration>,
    pub duration: Duration,
    /// When the scheduler runs the next pass (set once the pass is rescheduled).
    pub next_pass: Option<DateTime<Utc>>,
}

impl Outcome {
    pub(super) fn new(target: &Target) -> Outcome {
        Outcome {
            id: target.id.clone(),
            repository: target.repository.canonical(),
            listed: 0,
            tags: 0,
            excluded: 0,
            missing: 0,
            images_updated: 0,
            images: 0,
            published: false,
            requests: BTreeMap::new(),
            changes: Vec::new(),
            changed: 0,
            index_changed: false,
            error: None,
            failure: None,
            latest_tags: Vec::new(),
            last_update: None,
            retry_after: None,
            duration: Duration::ZERO,
            next_pass: None,
        }
    }

    pub fn requests_of(&self, kind: RequestKind) -> u64 {
        self.requests.get(&kind).copied().unwrap_or(0)
    }
}

/// Why a pass was asked for out of turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    ManualRescan,
    Webhook,
    RotatedSecret,
}
