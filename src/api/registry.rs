//! The registry API: the cache read through the OCI distribution API under `/v2/`, so that
//! agents read it with the registry clients they already have (skopeo, crane, Flux,
//! Argo CD Image Updater). Read-only; reads never reach the upstream registry.
//!
//! Served: `GET /v2/`; `GET /v2/<name>/tags/list` (with `n` and `last` pagination and a
//! `Link` header); `GET` and `HEAD` of `/v2/<name>/manifests/<tag or digest>` and of
//! `/v2/<name>/blobs/<digest>` for config blobs, byte for byte as the upstream registry sent
//! them, with `Accept` honoured as the distribution registry does. Layer blobs are not
//! kept: `BLOB_UNKNOWN`. Every other method answers `UNSUPPORTED` (read-only).
//!
//! Names (`docs/api.md`):
//! - `<namespace>/<watch>` is one ImageRepositoryWatch (`payments/api`);
//! - `<upstream-host>/<repository>` is the repository of the watches that cover it, when
//!   the first segment holds a dot or an underscore, which a namespace name cannot
//!   (`ghcr.io/org/app`, `docker.io/library/nginx`). A colon cannot appear in an image
//!   reference's path, so a port is written `_PORT` (`registry.example.com_5000/team/app`,
//!   `localhost_5000/app`); a host name never holds an underscore, so this is unambiguous.
//!   `:PORT` is taken too, for callers that are not registry clients. A host with neither a
//!   dot nor a port is reached through a watch's name.
//!
//! Errors are the distribution spec's JSON (`{"errors": [{"code", "message"}]}`).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::Caller;
use super::token::{SERVICE, TOKEN_TTL, pull_scopes};
use super::{ApiError, Identity, Reason, Shared};
use crate::cache::CacheReader;
use crate::cache::store::ReadError;
use crate::image::{Digest, Platform, RawContent, Repository};
use crate::registry::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::warmer::Target;

/// Sent on every answer under `/v2/`, as registries do; clients check it on `/v2/`.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// One error code of the distribution spec, with the status it goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    NameUnknown,
    NameInvalid,
    ManifestUnknown,
    BlobUnknown,
    DigestInvalid,
    PaginationNumberInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    /// Not in the spec's table, but what the distribution registry answers when a backend
    /// it needs is down (here: memcached, or the Kubernetes API for a review).
    Unavailable,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::Unavailable => "UNAVAILABLE",
        }
    }

    /// The metric label: the code in lower case.
    fn label(self) -> &'static str {
        match self {
            Code::NameUnknown => "name_unknown",
            Code::NameInvalid => "name_invalid",
            Code::ManifestUnknown => "manifest_unknown",
            Code::BlobUnknown => "blob_unknown",
            Code::DigestInvalid => "digest_invalid",
            Code::PaginationNumberInvalid => "pagination_number_invalid",
            Code::Unauthorized => "unauthorized",
            Code::Denied => "denied",
            Code::Unsupported => "unsupported",
            Code::Unavailable => "unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::NameUnknown | Code::ManifestUnknown | Code::BlobUnknown => StatusCode::NOT_FOUND,
            // As the distribution registry answers a write to a read-only registry.
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::NameInvalid | Code::DigestInvalid | Code::PaginationNumberInvalid => {
                StatusCode::BAD_REQUEST
            }
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error answer of the registry API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryError {
    pub code: Code,
    pub message: String,
    /// `WWW-Authenticate` of a 401: the token endpoint's Bearer challenge, or Basic.
    challenge: Option<String>,
}

impl RegistryError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            message: message.into(),
            challenge: None,
        }
    }

    /// A 401 challenges the client as registries do: Bearer, naming regcache's token
    /// endpoint and, on a repository's route, the scope to ask for.
    fn challenging<B: CacheReader>(
        mut self,
        s: &Shared<B>,
        headers: &HeaderMap,
        name: Option<&str>,
    ) -> Self {
        if self.code == Code::Unauthorized {
            let mut challenge = format!(
                "Bearer realm=\"{}\",service=\"{SERVICE}\"",
                realm(s, headers)
            );
            if let Some(name) = name {
                challenge.push_str(&format!(",scope=\"repository:{name}:pull\""));
            }
            self.challenge = Some(challenge);
        }
        self
    }

    /// The read API's error for a repository name: a name regcache does not know or has
    /// not cached is `NAME_UNKNOWN`.
    fn from_api(e: ApiError) -> Self {
        let code = match e.reason {
            Reason::NotCached | Reason::NotFound | Reason::TagNotFound => Code::NameUnknown,
            Reason::BadRequest => Code::NameInvalid,
            Reason::Unauthorized => Code::Unauthorized,
            Reason::Forbidden => Code::Denied,
            Reason::CacheUnavailable | Reason::Unavailable => Code::Unavailable,
        };
        RegistryError::new(code, e.message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            errors: [ErrorEntry {
                code: self.code.as_str(),
                message: &self.message,
            }],
        };
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
        if self.code == Code::Unauthorized {
            // The token endpoint itself takes Basic credentials: the password of a
            // docker-registry Secret, a Kubernetes token.
            let challenge = self
                .challenge
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or_else(|| HeaderValue::from_static("Basic realm=\"regcache\""));
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// Counts one answer in `regcache_api_registry_requests_total`.
fn counted<B: CacheReader>(
    s: &Shared<B>,
    route: &'static str,
    answer: Result<Response, RegistryError>,
) -> Result<Response, RegistryError> {
    let result = match &answer {
        Ok(_) => "ok",
        Err(e) => e.code.label(),
    };
    s.read.api_metrics().registry_request(route, result);
    answer
}

/// `GET /v2/`: the API is here, and (with authentication on) the caller is known.
pub(super) async fn base<B: CacheReader + 'static>(
    State(s): State<Arc<Shared<B>>>,
    headers: HeaderMap,
) -> Result<Response, RegistryError> {
    let answer = match s.authenticate(&headers).await {
        Ok(_) => Ok(([API_VERSION], axum::Json(serde_json::json!({}))).into_response()),
        Err(e) => Err(RegistryError::from_api(e).challenging(&s, &headers, None)),
    };
    counted(&s, "base", answer)
}

/// The token endpoint's URL: configured, or `/v2/token` where the client reached us.
fn realm<B: CacheReader>(s: &Shared<B>, headers: &HeaderMap) -> String {
    if let Some(realm) = &s.registry.token_realm {
        return realm.clone();
    }
    let scheme = if s.registry.tls { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['"', ' ', ',']))
        .unwrap_or("localhost");
    format!("{scheme}://{host}/v2/token")
}

#[derive(Serialize)]
struct TokenAnswer {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
}

/// `GET /v2/token?service=regcache&scope=repository:NAME:pull`: a registry token for the
/// named repositories the caller may read. The caller presents a Kubernetes token (Basic
/// password or Bearer); names it may not read are left out of the token (as registries
/// grant the allowed subset), and reading them later answers `DENIED`.
pub(super) async fn token<B: CacheReader + 'static>(
    State(s): State<Arc<Shared<B>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, RegistryError> {
    let answer = issue(&s, &headers, query.as_deref()).await;
    counted(&s, "token", answer)
}

async fn issue<B: CacheReader + 'static>(
    s: &Shared<B>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, RegistryError> {
    let (Some(auth), Some(keys)) = (&s.auth, &s.registry.token_keys) else {
        return Err(RegistryError::new(
            Code::Unsupported,
            "authentication is off (--api-auth none): the registry API needs no token",
        ));
    };
    // Only a Kubernetes token is exchanged: a registry token cannot extend itself.
    let caller: Caller = auth
        .authenticate(headers)
        .await
        .map_err(RegistryError::from_api)?;
    let identity = Some(Identity::Reviewed(caller.clone()));
    let mut granted = std::collections::BTreeSet::new();
    for name in pull_scopes(query) {
        match resolve(s, &identity, headers, &name).await {
            Ok(target) => {
                granted.insert(target.id.clone());
            }
            Err(e) if e.code == Code::Unavailable => return Err(e),
            Err(_) => {}
        }
    }
    let now = chrono::Utc::now();
    tracing::debug!(user = caller.username(), watches = ?granted, "registry token issued");
    let token = keys.issue(caller.username(), granted, now.timestamp().max(0) as u64);
    Ok(axum::Json(TokenAnswer {
        access_token: token.clone(),
        token,
        expires_in: TOKEN_TTL.as_secs(),
        issued_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
    .into_response())
}

/// Everything under `/v2/<name>/`: the name is all segments before the route's own.
pub(super) async fn route<B: CacheReader + 'static>(
    State(s): State<Arc<Shared<B>>>,
    headers: HeaderMap,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, RegistryError> {
    let route = if path.ends_with("/tags/list") {
        "tags_list"
    } else if path.contains("/manifests/") {
        "manifests"
    } else if path.contains("/blobs/") {
        "blobs"
    } else {
        "other"
    };
    let answer = answer(&s, &headers, route, &path, query.as_deref()).await;
    counted(&s, route, answer)
}

async fn answer<B: CacheReader + 'static>(
    s: &Shared<B>,
    headers: &HeaderMap,
    route: &str,
    path: &str,
    query: Option<&str>,
) -> Result<Response, RegistryError> {
    // The repository name, and the tag or digest after the route's own segments.
    let (name, reference) = match route {
        "tags_list" => (path.strip_suffix("/tags/list"), ""),
        "manifests" => path
            .rsplit_once("/manifests/")
            .map_or((None, ""), |(n, r)| (Some(n), r)),
        "blobs" => path
            .rsplit_once("/blobs/")
            .map_or((None, ""), |(n, r)| (Some(n), r)),
        _ => (None, ""),
    };
    let caller = s
        .authenticate(headers)
        .await
        .map_err(|e| RegistryError::from_api(e).challenging(s, headers, name))?;
    match (route, name) {
        ("tags_list", Some(name)) => {
            let target = resolve(s, &caller, headers, name).await?;
            tags_list(s, &target, name, query).await
        }
        ("manifests", Some(name)) => {
            let target = resolve(s, &caller, headers, name).await?;
            manifest(s, &target, reference, headers).await
        }
        ("blobs", Some(name)) => {
            let target = resolve(s, &caller, headers, name).await?;
            blob(s, &target, reference).await
        }
        _ => Err(RegistryError::new(
            Code::Unsupported,
            format!("regcache's registry API has no route /v2/{path}"),
        )),
    }
}

/// Anything but `GET` and `HEAD` under `/v2/`: the registry API is read-only.
pub(super) async fn read_only<B: CacheReader + 'static>(
    State(s): State<Arc<Shared<B>>>,
) -> Result<Response, RegistryError> {
    let answer = Err(RegistryError::new(
        Code::Unsupported,
        "regcache's registry API is read-only: push to the upstream registry",
    ));
    counted(&s, "write", answer)
}

/// The media types an `Accept` header names (parameters and `q` ignored, as the
/// distribution registry does).
struct Accepted(Vec<String>);

impl Accepted {
    fn of(headers: &HeaderMap) -> Self {
        Accepted(
            headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .collect(),
        )
    }

    fn takes(&self, media_type: &str) -> bool {
        self.0.iter().any(|t| t == media_type)
    }
}

/// The content a manifest request is answered with, after `Accept`, as the distribution
/// registry chooses it: an OCI manifest or index only to a client that accepts its type
/// (else `MANIFEST_UNKNOWN`); by tag, a Docker manifest list to a client that does not
/// accept lists is answered with its linux/amd64 manifest, and a Docker manifest to a client
/// that does not accept it is not converted to schema1 (regcache cannot sign one).
async fn negotiate<B: CacheReader + 'static>(
    s: &Shared<B>,
    target: &Target,
    content: RawContent,
    by_tag: bool,
    accepted: &Accepted,
) -> Result<RawContent, RegistryError> {
    let refuse = |what: &str, wanted: &str| {
        RegistryError::new(
            Code::ManifestUnknown,
            format!("{what} found, but the Accept header does not include {wanted}"),
        )
    };
    match content.media_type.as_str() {
        OCI_MANIFEST if !accepted.takes(OCI_MANIFEST) => Err(refuse("OCI manifest", OCI_MANIFEST)),
        OCI_INDEX if !accepted.takes(OCI_INDEX) => Err(refuse("OCI index", OCI_INDEX)),
        DOCKER_MANIFEST if by_tag && !accepted.takes(DOCKER_MANIFEST) => Err(refuse(
            "Docker image manifest (regcache does not convert it to schema1)",
            DOCKER_MANIFEST,
        )),
        DOCKER_MANIFEST_LIST if by_tag && !accepted.takes(DOCKER_MANIFEST_LIST) => {
            let store = s.read.store();
            let record = store
                .get_image_record(&target.scope, &content.digest)
                .await
                .map_err(|e| RegistryError::from_api(ReadError::from(e).into()))?;
            let default = Platform::new("linux", "amd64", None);
            let child = record
                .and_then(|r| {
                    r.platforms
                        .into_iter()
                        .find(|p| p.platform.as_ref().is_some_and(|p| default.matches(p)))
                })
                .ok_or_else(|| {
                    RegistryError::new(
                        Code::ManifestUnknown,
                        format!(
                            "Docker manifest list found, but the Accept header does not include \
                             {DOCKER_MANIFEST_LIST} and no linux/amd64 image of it is cached"
                        ),
                    )
                })?;
            let child = cached_content(s, target, &child.digest, Code::ManifestUnknown).await?;
            if child.media_type == DOCKER_MANIFEST && !accepted.takes(DOCKER_MANIFEST) {
                return Err(refuse(
                    "Docker image manifest (regcache does not convert it to schema1)",
                    DOCKER_MANIFEST,
                ));
            }
            Ok(child)
        }
        _ => Ok(content),
    }
}

/// A content item of the watch's scope; `code` when it is not cached.
async fn cached_content<B: CacheReader + 'static>(
    s: &Shared<B>,
    target: &Target,
    digest: &Digest,
    code: Code,
) -> Result<RawContent, RegistryError> {
    s.read
        .store()
        .get_content(&target.scope, digest)
        .await
        .map_err(|e| RegistryError::from_api(ReadError::from(e).into()))?
        .ok_or_else(|| {
            RegistryError::new(
                code,
                format!(
                    "{digest} of {} is not cached (regcache keeps what it fetched to describe \
                     the watched tags; see the watch's status)",
                    target.repository
                ),
            )
        })
}

/// A digest in a request path: `DIGEST_INVALID` when it is not one.
fn parse_digest(reference: &str) -> Result<Digest, RegistryError> {
    Digest::parse(reference).map_err(|e| {
        RegistryError::new(
            Code::DigestInvalid,
            format!("{reference:?} is not a digest: {e}"),
        )
    })
}

/// Requests by digest are answered only for digests of the watch's repository: a tag's
/// image, or one of its platform manifests or config blobs.
async fn check_member<B: CacheReader + 'static>(
    s: &Shared<B>,
    target: &Target,
    digest: &Digest,
    code: Code,
) -> Result<(), RegistryError> {
    let member = s
        .read
        .store()
        .references(&target.scope, &target.repository, digest)
        .await
        .map_err(|e| RegistryError::from_api(e.into()))?;
    if member {
        return Ok(());
    }
    Err(RegistryError::new(
        code,
        format!(
            "{digest} is not among the cached images of {}",
            target.repository
        ),
    ))
}

/// `GET` and `HEAD` of `/v2/<name>/manifests/<reference>`.
async fn manifest<B: CacheReader + 'static>(
    s: &Shared<B>,
    target: &Target,
    reference: &str,
    headers: &HeaderMap,
) -> Result<Response, RegistryError> {
    let by_tag = !reference.contains(':');
    let digest = if by_tag {
        s.read
            .store()
            .digest_of_tag(&target.scope, &target.repository, reference)
            .await
            .map_err(|e| match e {
                ReadError::TagNotFound { .. } => RegistryError::new(
                    Code::ManifestUnknown,
                    format!("{}:{reference} is not a cached tag", target.repository),
                ),
                e => RegistryError::from_api(e.into()),
            })?
    } else {
        let digest = parse_digest(reference)?;
        check_member(s, target, &digest, Code::ManifestUnknown).await?;
        digest
    };
    let content = cached_content(s, target, &digest, Code::ManifestUnknown).await?;
    let content = negotiate(s, target, content, by_tag, &Accepted::of(headers)).await?;
    Ok(serve(content))
}

/// `GET` and `HEAD` of `/v2/<name>/blobs/<digest>`: config blobs (and manifests, which
/// registries serve as blobs too). Layers are not kept.
async fn blob<B: CacheReader + 'static>(
    s: &Shared<B>,
    target: &Target,
    reference: &str,
) -> Result<Response, RegistryError> {
    let digest = parse_digest(reference)?;
    let unknown = || {
        RegistryError::new(
            Code::BlobUnknown,
            format!(
                "regcache serves metadata only (manifests and config blobs); {digest} is not a \
                 cached config blob of {}: pull layers from the upstream registry",
                target.repository
            ),
        )
    };
    let content = match s.read.store().get_content(&target.scope, &digest).await {
        Ok(Some(content)) => content,
        Ok(None) => return Err(unknown()),
        Err(e) => return Err(RegistryError::from_api(ReadError::from(e).into())),
    };
    check_member(s, target, &digest, Code::BlobUnknown)
        .await
        .map_err(|e| {
            if e.code == Code::BlobUnknown {
                unknown()
            } else {
                e
            }
        })?;
    Ok(serve(RawContent {
        media_type: crate::image::BLOB_MEDIA_TYPE.to_string(),
        ..content
    }))
}

/// The answer for a manifest or blob: its bytes and the headers registries send. For
/// `HEAD`, the server drops the body and keeps the headers.
fn serve(content: RawContent) -> Response {
    let digest = content.digest.to_string();
    let mut response = content.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    if let Ok(v) = HeaderValue::from_str(&content.media_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest) {
        headers.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, v);
    }
    response
}

/// The upstream registry a request's `Host` stands for, if it is mapped to one.
fn mapped_upstream<'a, B: CacheReader>(s: &'a Shared<B>, headers: &HeaderMap) -> Option<&'a str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = crate::image::host_name(host);
    let first_label = host.split('.').next().unwrap_or(host);
    s.registry
        .upstreams
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(host) || name.eq_ignore_ascii_case(first_label))
        .map(|(_, upstream)| upstream.as_str())
}

/// The watch a registry name addresses, if the caller may read it. On a host mapped to an
/// upstream registry, every name is a repository of that upstream.
async fn resolve<B: CacheReader + 'static>(
    s: &Shared<B>,
    caller: &Option<Identity>,
    headers: &HeaderMap,
    name: &str,
) -> Result<Arc<Target>, RegistryError> {
    if let Some(upstream) = mapped_upstream(s, headers) {
        let repository = Repository::parse(&format!("{upstream}/{name}"))
            .map_err(|e| RegistryError::new(Code::NameInvalid, format!("{name}: {e}")))?;
        return s
            .readable_target(caller, &repository)
            .await
            .map_err(RegistryError::from_api);
    }
    match name_kind(name)? {
        Name::Upstream => {
            let repository = Repository::parse(&upstream_name(name))
                .map_err(|e| RegistryError::new(Code::NameInvalid, format!("{name}: {e}")))?;
            s.readable_target(caller, &repository)
                .await
                .map_err(RegistryError::from_api)
        }
        Name::Watch(namespace, watch) => s
            .readable_watch(caller, &format!("{namespace}/{watch}"))
            .await
            .map_err(RegistryError::from_api),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Name<'a> {
    /// `<namespace>/<watch>`.
    Watch(&'a str, &'a str),
    /// `<upstream-host>/<repository>`.
    Upstream,
}

fn name_kind(name: &str) -> Result<Name<'_>, RegistryError> {
    let first = name.split('/').next().unwrap_or_default();
    if first.contains(['.', '_', ':']) && name.contains('/') {
        return Ok(Name::Upstream);
    }
    match name.split_once('/') {
        Some((namespace, watch))
            if !namespace.is_empty() && !watch.is_empty() && !watch.contains('/') =>
        {
            Ok(Name::Watch(namespace, watch))
        }
        _ => Err(RegistryError::new(
            Code::NameUnknown,
            format!(
                "{name:?} names no watch: use <namespace>/<watch>, or the upstream \
                 <registry-host>/<repository> (a host with a dot or a port)"
            ),
        )),
    }
}

/// The upstream name a registry name spells: a trailing `_PORT` on the host is `:PORT`.
fn upstream_name(name: &str) -> String {
    let (host, rest) = name.split_once('/').unwrap_or((name, ""));
    let host = match host.rsplit_once('_') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}:{port}")
        }
        _ => host.to_string(),
    };
    format!("{host}/{rest}")
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<&'a str>,
}

/// `n` and `last` of a tags/list request.
fn pagination(query: Option<&str>) -> Result<(Option<usize>, Option<String>), RegistryError> {
    let (mut n, mut last) = (None, None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "n" => {
                n = Some(value.parse::<usize>().map_err(|_| {
                    RegistryError::new(
                        Code::PaginationNumberInvalid,
                        format!("n must be a number of tags (0 or more), not {value:?}"),
                    )
                })?)
            }
            "last" => last = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok((n, last))
}

async fn tags_list<B: CacheReader + 'static>(
    s: &Shared<B>,
    target: &Target,
    name: &str,
    query: Option<&str>,
) -> Result<Response, RegistryError> {
    let (n, last) = pagination(query)?;
    let (tags, more) = s
        .read
        .store()
        .tags_page(&target.scope, &target.repository, last.as_deref(), n)
        .await
        .map_err(|e| RegistryError::from_api(e.into()))?;
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let mut response = (
        [API_VERSION],
        axum::Json(TagList {
            name,
            tags: tags.clone(),
        }),
    )
        .into_response();
    if more && let Some(last) = tags.last() {
        let next = format!(
            "</v2/{name}/tags/list?n={}&last={}>; rel=\"next\"",
            n.unwrap_or(tags.len()),
            url::form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
        );
        if let Ok(value) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_watches_or_upstream_repositories() {
        assert_eq!(
            name_kind("payments/api").unwrap(),
            Name::Watch("payments", "api")
        );
        for upstream in [
            "ghcr.io/org/app",
            "registry.example.com_5000/team/app",
            "registry.example.com:5000/team/app",
            "localhost_5000/app",
            "docker.io/library/nginx",
        ] {
            assert_eq!(name_kind(upstream).unwrap(), Name::Upstream, "{upstream}");
        }
        assert_eq!(
            upstream_name("registry.example.com_5000/team/app"),
            "registry.example.com:5000/team/app"
        );
        assert_eq!(upstream_name("localhost_5000/app"), "localhost:5000/app");
        assert_eq!(upstream_name("ghcr.io/org/app"), "ghcr.io/org/app");
        assert_eq!(upstream_name("a_b.example/app"), "a_b.example/app");
        for unknown in ["nginx", "library/nginx/extra", "/api", "payments/"] {
            let e = name_kind(unknown).unwrap_err();
            assert_eq!(e.code, Code::NameUnknown, "{unknown}");
        }
    }

    #[test]
    fn pagination_numbers_are_checked() {
        assert_eq!(
            pagination(Some("n=2&last=v1")).unwrap(),
            (Some(2), Some("v1".into()))
        );
        assert_eq!(pagination(None).unwrap(), (None, None));
        let e = pagination(Some("n=-1")).unwrap_err();
        assert_eq!(e.code, Code::PaginationNumberInvalid);
        assert_eq!(e.code.status(), StatusCode::BAD_REQUEST);
    }
}
