//! The read API: HTTP+JSON views of the cache for a repository, an image or a watch, the
//! registry webhook that asks for passes out of turn, and `/healthz`. Served by every
//! replica; documented for users and other languages in `docs/api.md`.
//!
//! The API answers only for repositories some watch (a warmer [`Target`]) covers, and reads
//! under that watch's scope, so a caller never reaches metadata warmed with credentials
//! through a watch it may not `get`.

mod answer;
mod answers;
mod auth;
mod error;
mod metrics;
mod registry;
mod token;
pub mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::cache::{CacheReader, CacheWriter};
use crate::credentials::Secret;
use crate::image::{ImageRef, Repository};
use crate::warmer::{Priority, Target, TargetId, Warmer};
pub use answer::{ReadApi, RepositoryAnswer};
use auth::{Caller, KubernetesAuth};
pub use error::{ApiError, Reason};
pub use metrics::ApiMetrics;
pub use token::TokenKeys;

/// Largest webhook body read. Registry notifications batch a few events; Harbor and Docker
/// Hub send one push each. 1 MiB is far above any of them.
pub(crate) const MAX_WEBHOOK_BODY: usize = 1 << 20;

/// Which watches exist: the read API answers only for repositories some watch covers.
pub trait WatchDirectory: Send + Sync + 'static {
    fn targets(&self) -> Vec<Arc<Target>>;
}

impl<B: CacheWriter + 'static> WatchDirectory for Warmer<B> {
    fn targets(&self) -> Vec<Arc<Target>> {
        Warmer::targets(self)
    }
}

/// Where webhook pushes go: whatever schedules passes (the warmer).
pub trait PassRequests: Send + Sync + 'static {
    /// The targets of `repository`.
    fn targets_of(&self, repository: &Repository) -> Vec<TargetId>;
    /// Asks for a pass of each target of `repository`; returns their ids.
    fn request_repository(&self, repository: &Repository, priority: Priority) -> Vec<TargetId>;
}

impl<B: CacheWriter + 'static> PassRequests for Warmer<B> {
    fn targets_of(&self, repository: &Repository) -> Vec<TargetId> {
        Warmer::targets_of(self, repository)
    }

    fn request_repository(&self, repository: &Repository, priority: Priority) -> Vec<TargetId> {
        Warmer::request_repository(self, repository, priority)
    }
}

/// How callers of the read endpoints are authenticated and authorised.
pub enum ApiAuth {
    /// Everyone may read everything (standalone mode, or behind an authenticating proxy).
    None,
    /// ServiceAccount bearer tokens, reviewed by the Kubernetes API: a caller may read a
    /// repository iff it may `get` the ImageRepositoryWatch that covers it.
    Kubernetes(kube::Client),
}

/// How the registry API (`/v2/`) is reached and signed in to.
#[derive(Debug, Default)]
pub struct RegistryApiOptions {
    /// Signs the registry tokens the token endpoint issues (with Kubernetes authentication).
    /// Replicas that share it accept each other's tokens; `None`: a key of this process.
    pub token_keys: Option<TokenKeys>,
    /// The token endpoint's URL as clients reach it (the challenge's `realm`); `None`:
    /// `/v2/token` on the scheme and `Host` of the challenged request.
    pub token_realm: Option<String>,
    /// Upstream registries by the host name agents connect with (`Host`, port aside):
    /// a request to one of these names a repository of that upstream without its host, as
    /// Argo CD Image Updater sends it (`ghcr-io.regcache.svc` -> `ghcr.io`).
    pub upstreams: Vec<(String, String)>,
    /// Whether the listener speaks TLS (for the default realm's scheme).
    pub tls: bool,
}

/// What the API serves from.
pub struct ApiState<B> {
    /// The answers, built from the cache.
    pub read: ReadApi<B>,
    pub directory: Arc<dyn WatchDirectory>,
    pub auth: ApiAuth,
    /// Where webhook pushes go (None: webhooks answer 503).
    pub warmer: Option<Arc<dyn PassRequests>>,
    /// A controller replica: pushes reach `warmer` only while this replica leads; otherwise
    /// they go to the leader through the API server (see [`Forward`]).
    pub forward: Option<Forward>,
    /// Shared token required by POST /hooks/registry (None: webhooks disabled, 404).
    pub webhook_token: Option<Secret>,
    pub registry: RegistryApiOptions,
}

/// How a controller replica that does not lead passes a webhook on: it sets
/// `regcache.io/requestedAt` on each covering watch, which the leader acts on as on any
/// requested rescan. Only the leader warms, and the registry's webhook may reach any replica
/// behind the Service.
pub struct Forward {
    pub client: kube::Client,
    pub leading: Arc<std::sync::atomic::AtomicBool>,
}

impl Forward {
    fn leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Asks the leader for a pass of each target by annotating its watch.
    async fn request(&self, ids: &[TargetId]) -> Result<(), ApiError> {
        use crate::crd::{ImageRepositoryWatch, REQUESTED_AT_ANNOTATION};
        let value = format!(
            "webhook {}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        );
        let patch = serde_json::json!({
            "metadata": {"annotations": {REQUESTED_AT_ANNOTATION: value}}
        });
        for id in ids {
            let Some((namespace, name)) = id.split_once('/') else {
                continue;
            };
            let api: kube::Api<ImageRepositoryWatch> =
                kube::Api::namespaced(self.client.clone(), namespace);
            api.patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|e| {
                ApiError::new(
                    Reason::Unavailable,
                    format!(
                        "cannot pass the push on to the leader (annotating \
                         ImageRepositoryWatch {id}): {e}"
                    ),
                )
            })?;
        }
        Ok(())
    }
}

struct Shared<B> {
    read: ReadApi<B>,
    directory: Arc<dyn WatchDirectory>,
    auth: Option<KubernetesAuth>,
    warmer: Option<Arc<dyn PassRequests>>,
    forward: Option<Forward>,
    webhook_token: Option<Secret>,
    registry: RegistryApiOptions,
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone)]
enum Identity {
    /// A Kubernetes token, reviewed: access is asked of the API server per watch.
    Reviewed(Caller),
    /// A regcache registry token: the watches it grants, reviewed when it was issued.
    Granted(std::collections::BTreeSet<String>),
}

type AppState<B> = State<Arc<Shared<B>>>;

/// The API's routes; `runtime::serve` serves them.
pub fn router<B: CacheReader + 'static>(state: ApiState<B>) -> Router {
    let shared = Arc::new(Shared {
        read: state.read,
        directory: state.directory,
        auth: match state.auth {
            ApiAuth::None => None,
            ApiAuth::Kubernetes(client) => Some(KubernetesAuth::new(client)),
        },
        warmer: state.warmer,
        forward: state.forward,
        webhook_token: state.webhook_token,
        registry: RegistryApiOptions {
            token_keys: Some(state.registry.token_keys.unwrap_or_else(TokenKeys::random)),
            ..state.registry
        },
    });
    let metrics = shared.read.api_metrics().clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/repositories/{*name}", get(repository::<B>))
        .route("/api/v1/images/{*reference}", get(image::<B>))
        .route(
            "/api/v1/namespaces/{namespace}/imagerepositorywatches/{name}",
            get(watch::<B>),
        )
        .route("/hooks/registry", post(registry_hook::<B>))
        // The registry API (`registry.rs`); axum answers HEAD from the GET handlers.
        .route("/v2/", get(registry::base::<B>))
        .route("/v2/token", get(registry::token::<B>))
        .route(
            "/v2/{*path}",
            get(registry::route::<B>).fallback(registry::read_only::<B>),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/api.md") })
        .layer(axum::middleware::from_fn(move |req, next| {
            timed(metrics.clone(), req, next)
        }))
        .with_state(shared)
}

/// Records how long the API took to answer `req`, by which API it went to.
async fn timed(
    metrics: ApiMetrics,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    let api = if path.starts_with("/api/") {
        "read"
    } else if path == "/v2" || path.starts_with("/v2/") {
        "registry"
    } else if path.starts_with("/hooks/") {
        "webhook"
    } else {
        "other"
    };
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    metrics.request(api, started.elapsed());
    response
}

impl<B: CacheReader + 'static> Shared<B> {
    /// `None` when authentication is off.
    /// The caller: a regcache registry token (checked here, never sent to the API server)
    /// or a Kubernetes token (reviewed). `None` when authentication is off.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        if let (Some(keys), Some(token)) = (&self.registry.token_keys, auth::bearer_token(headers))
            && token::is_regcache_token(token)
        {
            return keys
                .verify(token)
                .map(|watches| Some(Identity::Granted(watches)))
                .map_err(|e| ApiError::new(Reason::Unauthorized, e.to_string()));
        }
        auth.authenticate(headers)
            .await
            .map(|c| Some(Identity::Reviewed(c)))
    }

    async fn may_read(&self, caller: &Option<Identity>, id: &str) -> Result<bool, ApiError> {
        match (&self.auth, caller) {
            (Some(auth), Some(Identity::Reviewed(caller))) => auth.may_read(caller, id).await,
            (_, Some(Identity::Granted(watches))) => Ok(watches.contains(id)),
            _ => Ok(true),
        }
    }

    /// The first watch (by id) covering `repository` that the caller may read.
    async fn readable_target(
        &self,
        caller: &Option<Identity>,
        repository: &Repository,
    ) -> Result<Arc<Target>, ApiError> {
        let mut covering: Vec<Arc<Target>> = self
            .directory
            .targets()
            .into_iter()
            .filter(|t| &t.repository == repository)
            .collect();
        if covering.is_empty() {
            return Err(ApiError::not_found(format!(
                "no ImageRepositoryWatch covers {repository}"
            )));
        }
        // The directory's order is arbitrary; by id, the answer does not change per request.
        covering.sort_by(|a, b| a.id.cmp(&b.id));
        for target in covering {
            if self.may_read(caller, &target.id).await? {
                return Ok(target);
            }
        }
        Err(forbidden(&format!(
            "the ImageRepositoryWatch covering {repository}"
        )))
    }

    /// The watch `id` (`namespace/name`), if the caller may read it. Access is checked
    /// first: whether a watch exists is not told to callers who may not get it.
    async fn readable_watch(
        &self,
        caller: &Option<Identity>,
        id: &str,
    ) -> Result<Arc<Target>, ApiError> {
        if !self.may_read(caller, id).await? {
            return Err(forbidden(&format!("ImageRepositoryWatch {id}")));
        }
        self.directory
            .targets()
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no ImageRepositoryWatch {id} is warmed (it does not exist, or its spec is \
                     invalid: see its status)"
                ))
            })
    }
}

fn forbidden(what: &str) -> ApiError {
    ApiError::new(
        Reason::Forbidden,
        format!("you may not get {what} (verb get on imagerepositorywatches.regcache.io)"),
    )
}

fn path_value(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// An answer the store already wrote as JSON.
fn json_bytes(body: impl Into<Body>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body.into(),
    )
        .into_response()
}

/// Repository answers of more tags than this are streamed chunk by chunk (about 1 MB of
/// answer); smaller ones are built whole and kept.
const STREAM_OVER_TAGS: usize = 10_000;

/// A repository answer, whole or streamed. A streamed answer whose index is replaced
/// while it is sent ends early: the client sees a cut body, never a mix of two indexes.
fn json_body(body: answer::RepositoryBody) -> Response {
    match body {
        answer::RepositoryBody::Whole(bytes) => json_bytes(bytes),
        answer::RepositoryBody::Stream(parts) => json_bytes(Body::from_stream(parts)),
    }
}

async fn repository<B: CacheReader + 'static>(
    State(s): AppState<B>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authenticate(&headers).await?;
    let name = path_value(name)?;
    let repository = Repository::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let target = s.readable_target(&caller, &repository).await?;
    let body = s
        .read
        .repository_body(
            &target.scope,
            &repository,
            target.timestamp_labels,
            STREAM_OVER_TAGS,
        )
        .await?;
    Ok(json_body(body))
}

async fn image<B: CacheReader + 'static>(
    State(s): AppState<B>,
    headers: HeaderMap,
    reference: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authenticate(&headers).await?;
    let reference = path_value(reference)?;
    let image = ImageRef::parse(&reference).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let target = s.readable_target(&caller, &image.repository).await?;
    let body = s
        .read
        .image_json(&target.scope, &image, target.timestamp_labels)
        .await?;
    Ok(json_bytes(body))
}

async fn watch<B: CacheReader + 'static>(
    State(s): AppState<B>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = s.authenticate(&headers).await?;
    let Path((namespace, name)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let target = s
        .readable_watch(&caller, &format!("{namespace}/{name}"))
        .await?;
    let body = s
        .read
        .repository_body(
            &target.scope,
            &target.repository,
            target.timestamp_labels,
            STREAM_OVER_TAGS,
        )
        .await?;
    Ok(json_body(body))
}

#[derive(Serialize)]
struct Queued {
    queued: Vec<TargetId>,
}

/// The `token` query parameter, if any.
fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

async fn registry_hook<B: CacheReader + 'static>(
    State(s): AppState<B>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(expected) = &s.webhook_token else {
        return Err(ApiError::not_found(
            "registry webhooks are disabled (no webhook token is configured)",
        ));
    };
    let presented = auth::bearer_token(&headers)
        .map(str::to_string)
        .or_else(|| query_token(query.as_deref()));
    // An empty token never matches, even if one was configured by mistake.
    if !presented.is_some_and(|t| !t.is_empty() && auth::constant_time_eq(&t, expected.expose())) {
        return Err(ApiError::new(
            Reason::Unauthorized,
            "send the webhook token as `Authorization: Bearer <token>` or `?token=<token>`",
        ));
    }
    let body = axum::body::to_bytes(body, MAX_WEBHOOK_BODY)
        .await
        .map_err(|e| {
            ApiError::bad_request(format!(
                "cannot read the payload (at most {MAX_WEBHOOK_BODY} bytes): {e}"
            ))
        })?;
    let repositories = webhook::pushed_repositories(&body).map_err(ApiError::bad_request)?;
    let Some(warmer) = &s.warmer else {
        return Err(ApiError::new(
            Reason::Unavailable,
            "this replica does not warm; send webhooks to the leader's service",
        ));
    };
    let forward = s.forward.as_ref().filter(|f| !f.leading());
    let mut queued: Vec<TargetId> = match forward {
        None => repositories
            .iter()
            .flat_map(|r| warmer.request_repository(r, Priority::Webhook))
            .collect(),
        Some(forward) => {
            let covering: Vec<TargetId> = repositories
                .iter()
                .flat_map(|r| warmer.targets_of(r))
                .collect();
            forward.request(&covering).await?;
            covering
        }
    };
    queued.sort();
    queued.dedup();
    tracing::info!(
        repositories = ?repositories.iter().map(Repository::canonical).collect::<Vec<_>>(),
        queued = ?queued,
        forwarded_to_leader = forward.is_some(),
        "registry webhook"
    );
    Ok((StatusCode::ACCEPTED, axum::Json(Queued { queued })).into_response())
}
