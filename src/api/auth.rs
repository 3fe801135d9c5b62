//! Who may read: callers present a ServiceAccount token, which a TokenReview turns into a
//! user, and a SubjectAccessReview says whether that user may `get` the watch covering the
//! repository. Both answers are cached briefly under a SHA-256 of the token; the token
//! itself is never stored, logged or put into an error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::error::{ApiError, Reason};

/// How long a review answer is reused. Short, so a revoked token or a removed RoleBinding
/// stops working within half a minute, yet a polling client costs two API calls per 30 s.
pub(crate) const REVIEW_TTL: Duration = Duration::from_secs(30);
/// Every review call to the Kubernetes API gives up after this; the caller gets a 503.
pub(crate) const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Cached answers kept at most (per kind); past it, expired ones go, then all of them.
const MAX_CACHED: usize = 10_000;

/// The API group and resource a caller must be allowed to `get`.
const WATCH_GROUP: &str = "regcache.io";
const WATCH_RESOURCE: &str = "imagerepositorywatches";

pub(crate) type TokenHash = [u8; 32];

pub(crate) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two strings in time that depends on neither: both are hashed first, and the
/// hashes compared without an early exit.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (token_hash(a), token_hash(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The Kubernetes token a caller presents: `Authorization: Bearer <token>`, or the password
/// of `Authorization: Basic` (the user name is ignored), which is how registry clients send
/// the credentials of a docker-registry Secret.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = bearer_token(headers) {
        return Some(token.to_string());
    }
    use base64::Engine as _;
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (_, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// A reviewed caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    hash: TokenHash,
    user: UserInfo,
}

impl Caller {
    /// The Kubernetes user name (`system:serviceaccount:NS:NAME`).
    pub(crate) fn username(&self) -> &str {
        self.user.username.as_deref().unwrap_or_default()
    }
}

struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(expires, _)| *expires > Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, (now + REVIEW_TTL, value));
    }
}

/// TokenReview + SubjectAccessReview with their caches.
pub(crate) struct KubernetesAuth {
    client: kube::Client,
    /// `None`: the token was reviewed and rejected.
    users: Cache<TokenHash, Option<UserInfo>>,
    /// Keyed by token and watch id (`namespace/name`).
    access: Cache<(TokenHash, String), bool>,
}

impl KubernetesAuth {
    pub(crate) fn new(client: kube::Client) -> Self {
        KubernetesAuth {
            client,
            users: Cache::new(),
            access: Cache::new(),
        }
    }

    /// Reviews the request's bearer token: 401 without one or with one the API rejects.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(token) = presented_token(headers) else {
            return Err(ApiError::new(
                Reason::Unauthorized,
                "send a ServiceAccount token as `Authorization: Bearer <token>` (or as the \
                 password of Basic credentials)",
            ));
        };
        let token = token.as_str();
        let hash = token_hash(token);
        let user = match self.users.get(&hash) {
            Some(user) => user,
            None => {
                let user = self.token_review(token).await?;
                self.users.put(hash, user.clone());
                user
            }
        };
        match user {
            Some(user) => Ok(Caller { hash, user }),
            None => Err(ApiError::new(
                Reason::Unauthorized,
                "the Kubernetes API did not accept the bearer token",
            )),
        }
    }

    async fn token_review(&self, token: &str) -> Result<Option<UserInfo>, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await;
        let review = match answer {
            Ok(Ok(review)) => review,
            Ok(Err(e)) => return Err(unavailable("TokenReview", &e.to_string())),
            Err(_) => return Err(unavailable("TokenReview", "timed out")),
        };
        Ok(review
            .status
            .filter(|s| s.authenticated == Some(true))
            .map(|s| s.user.unwrap_or_default()))
    }

    /// Whether `caller` may `get` the watch `id` (`namespace/name`).
    pub(crate) async fn may_read(&self, caller: &Caller, id: &str) -> Result<bool, ApiError> {
        let key = (caller.hash, id.to_string());
        if let Some(allowed) = self.access.get(&key) {
            return Ok(allowed);
        }
        let (namespace, name) = id.split_once('/').unwrap_or(("", id));
        let user = &caller.user;
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(WATCH_GROUP.to_string()),
                    resource: Some(WATCH_RESOURCE.to_string()),
                    verb: Some("get".to_string()),
                    namespace: Some(namespace.to_string()),
                    name: Some(name.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await;
        let allowed = match answer {
            Ok(Ok(review)) => review.status.is_some_and(|s| s.allowed),
            Ok(Err(e)) => return Err(unavailable("SubjectAccessReview", &e.to_string())),
            Err(_) => return Err(unavailable("SubjectAccessReview", "timed out")),
        };
        tracing::debug!(
            user = user.username.as_deref().unwrap_or(""),
            watch = id,
            allowed,
            "access review"
        );
        self.access.put(key, allowed);
        Ok(allowed)
    }
}

fn unavailable(review: &str, detail: &str) -> ApiError {
    tracing::warn!(review, error = detail, "Kubernetes API review failed");
    ApiError::new(
        Reason::Unavailable,
        format!("the Kubernetes API did not answer a {review}: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_read_from_the_authorization_header_only_when_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", "bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc.def"));
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq("s3cret", "s3cret"));
        assert!(!constant_time_eq("s3cret", "s3cre"));
        assert!(!constant_time_eq("s3cret", "s3cres"));
        assert!(!constant_time_eq("", "x"));
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_expire() {
        let cache: Cache<u8, bool> = Cache::new();
        cache.put(1, true);
        assert_eq!(cache.get(&1), Some(true));
        tokio::time::advance(REVIEW_TTL + Duration::from_millis(1)).await;
        assert_eq!(cache.get(&1), None);
    }
}
