//! Pushes synthetic images, indexes, aliases and signatures into a registry over the
//! distribution API (no docker), handling anonymous, basic and bearer-token auth.

use super::{
    COSIGN_LAYER, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER, OCI_MANIFEST, sha256_digest,
};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Single-platform manifest flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    /// `application/vnd.oci.image.manifest.v1+json`
    Oci,
    /// `application/vnd.docker.distribution.manifest.v2+json`
    Docker,
}

impl ManifestKind {
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::Oci => OCI_MANIFEST,
            ManifestKind::Docker => DOCKER_MANIFEST,
        }
    }
    pub fn config_media_type(self) -> &'static str {
        match self {
            ManifestKind::Oci => OCI_CONFIG,
            ManifestKind::Docker => DOCKER_CONFIG,
        }
    }
    pub fn layer_media_type(self) -> &'static str {
        match self {
            ManifestKind::Oci => OCI_LAYER,
            ManifestKind::Docker => DOCKER_LAYER,
        }
    }
}

/// Multi-platform flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// `application/vnd.oci.image.index.v1+json` (children are OCI manifests)
    Oci,
    /// `application/vnd.docker.distribution.manifest.list.v2+json` (children Docker v2)
    DockerList,
}

impl IndexKind {
    pub fn media_type(self) -> &'static str {
        match self {
            IndexKind::Oci => OCI_INDEX,
            IndexKind::DockerList => DOCKER_LIST,
        }
    }
    pub fn child_kind(self) -> ManifestKind {
        match self {
            IndexKind::Oci => ManifestKind::Oci,
            IndexKind::DockerList => ManifestKind::Docker,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub os_version: Option<String>,
}

impl PlatformSpec {
    pub fn linux(architecture: &str, variant: Option<&str>) -> PlatformSpec {
        PlatformSpec {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }
    pub fn linux_amd64() -> PlatformSpec {
        Self::linux("amd64", None)
    }
    /// windows/amd64, os.version 10.0.17763.5458
    pub fn windows_amd64() -> PlatformSpec {
        PlatformSpec {
            os: "windows".into(),
            architecture: "amd64".into(),
            variant: None,
            os_version: Some("10.0.17763.5458".into()),
        }
    }
    /// linux/amd64, linux/arm64/v8, linux/arm/v7, windows/amd64.
    pub fn default_set() -> Vec<PlatformSpec> {
        vec![
            Self::linux("amd64", None),
            Self::linux("arm64", Some("v8")),
            Self::linux("arm", Some("v7")),
            Self::windows_amd64(),
        ]
    }
    /// `os/arch[/variant]`
    pub fn display(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
    /// The `platform` object of an index entry.
    pub fn to_json(&self) -> Value {
        Value::Object(self.json_fields())
    }
    /// `architecture`, `os` and, if set, `variant` and `os.version` (index entries and
    /// image configs spell them alike).
    fn json_fields(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("architecture".into(), json!(self.architecture));
        m.insert("os".into(), json!(self.os));
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        if let Some(v) = &self.os_version {
            m.insert("os.version".into(), json!(v));
        }
        m
    }
}

impl Default for PlatformSpec {
    fn default() -> Self {
        Self::linux_amd64()
    }
}

/// What image to synthesise.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub kind: ManifestKind,
    pub platform: PlatformSpec,
    /// Config `created` (RFC 3339); `None` omits it.
    pub created: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Delete the config blob after pushing the manifest (manifest points at a 404 blob).
    pub missing_config: bool,
    /// Put labels under `container_config.Labels` instead of `config.Labels`.
    pub use_container_config: bool,
    /// Varies the layer bytes (and config history) so images differ.
    pub seed: u64,
}

pub const DEFAULT_CREATED: &str = "2024-03-01T12:00:00Z";
pub const DEFAULT_OCI_CREATED_LABEL: &str = "2024-03-02T00:00:00Z";
pub const DEFAULT_LABEL_SCHEMA_DATE: &str = "2024-03-03T00:00:00Z";

impl ImageSpec {
    pub fn new(kind: ManifestKind) -> ImageSpec {
        let mut labels = BTreeMap::new();
        labels.insert(
            "org.opencontainers.image.created".to_string(),
            DEFAULT_OCI_CREATED_LABEL.to_string(),
        );
        labels.insert(
            "org.label-schema.build-date".to_string(),
            DEFAULT_LABEL_SCHEMA_DATE.to_string(),
        );
        ImageSpec {
            kind,
            platform: PlatformSpec::linux_amd64(),
            created: Some(DEFAULT_CREATED.to_string()),
            labels,
            missing_config: false,
            use_container_config: false,
            seed: 0,
        }
    }
    pub fn oci() -> ImageSpec {
        Self::new(ManifestKind::Oci)
    }
    pub fn docker() -> ImageSpec {
        Self::new(ManifestKind::Docker)
    }
    pub fn kind(mut self, kind: ManifestKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn platform(mut self, platform: PlatformSpec) -> Self {
        self.platform = platform;
        self
    }
    /// Config `created` (RFC 3339).
    pub fn created(mut self, rfc3339: &str) -> Self {
        self.created = Some(rfc3339.to_string());
        self
    }
    /// `Some(rfc3339)` or `None` (no `created` field).
    pub fn created_opt(mut self, created: Option<&str>) -> Self {
        self.created = created.map(str::to_string);
        self
    }
    /// Omit `created` from the config.
    pub fn no_created(mut self) -> Self {
        self.created = None;
        self
    }
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
    pub fn without_label(mut self, key: &str) -> Self {
        self.labels.remove(key);
        self
    }
    /// Replace all labels.
    pub fn labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }
    pub fn no_labels(mut self) -> Self {
        self.labels.clear();
        self
    }
    pub fn missing_config(mut self, yes: bool) -> Self {
        self.missing_config = yes;
        self
    }
    pub fn use_container_config(mut self, yes: bool) -> Self {
        self.use_container_config = yes;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl Default for ImageSpec {
    /// Same as `ImageSpec::new(ManifestKind::Oci)`.
    fn default() -> Self {
        Self::new(ManifestKind::Oci)
    }
}

/// A pushed single-platform image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    pub digest: String,
    pub media_type: String,
    /// Manifest size in bytes.
    pub size: u64,
    pub config_digest: String,
    pub created: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub manifest_bytes: Vec<u8>,
    pub platform: PlatformSpec,
    pub config_bytes: Vec<u8>,
    pub layer_digests: Vec<String>,
}

/// A pushed index / manifest list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedIndex {
    pub digest: String,
    pub media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub children: Vec<PushedImage>,
}

/// Talks to one registry. Cheap to share by reference across concurrent futures.
pub struct Pusher {
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    /// repo ("" for registry-wide) → bearer token
    tokens: Mutex<HashMap<String, String>>,
    basic: std::sync::atomic::AtomicBool,
}

type PushResult<T> = Result<T, String>;

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Resp {
    /// `Err("WHAT answered STATUS: BODY")` unless the status is `expected`.
    fn expect_status(&self, expected: u16, what: &str) -> PushResult<()> {
        if self.status == expected {
            return Ok(());
        }
        Err(format!(
            "{what} answered {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        ))
    }
}

impl Pusher {
    pub fn new(
        base_url: &str,
        credentials: Option<(String, String)>,
        ca_pem: Option<Vec<u8>>,
    ) -> Pusher {
        let client = super::http_client_builder(ca_pem.as_deref())
            .pool_max_idle_per_host(32)
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .expect("pusher client");
        Pusher {
            base: base_url.trim_end_matches('/').to_string(),
            client,
            credentials,
            tokens: Mutex::new(HashMap::new()),
            basic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Send with auth; on 401 obtain credentials (basic or bearer) and retry once.
    async fn send(
        &self,
        repo: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> PushResult<Resp> {
        let mut retried = false;
        loop {
            let mut rb = build();
            if let Some(tok) = self.tokens.lock().unwrap().get(repo) {
                rb = rb.bearer_auth(tok);
            } else if self.basic.load(std::sync::atomic::Ordering::Relaxed)
                && let Some((u, p)) = &self.credentials
            {
                rb = rb.basic_auth(u, Some(p));
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading body: {e}"))?;
            if status != 401 || retried {
                return Ok(Resp {
                    status,
                    headers,
                    body,
                });
            }
            retried = true;
            let challenge = headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if challenge.to_ascii_lowercase().starts_with("bearer") {
                let token = self.fetch_token(repo, &challenge).await?;
                self.tokens.lock().unwrap().insert(repo.to_string(), token);
            } else if challenge.to_ascii_lowercase().starts_with("basic") {
                if self.credentials.is_none() {
                    return Ok(Resp {
                        status,
                        headers,
                        body,
                    });
                }
                self.basic.store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                return Ok(Resp {
                    status,
                    headers,
                    body,
                });
            }
        }
    }

    async fn fetch_token(&self, repo: &str, challenge: &str) -> PushResult<String> {
        let params = parse_challenge(challenge);
        let realm = params
            .get("realm")
            .ok_or_else(|| format!("no realm in challenge {challenge:?}"))?;
        let mut url = url::Url::parse(realm).map_err(|e| format!("bad realm {realm}: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            if !repo.is_empty() {
                q.append_pair("scope", &format!("repository:{repo}:pull,push,delete"));
            } else if let Some(s) = params.get("scope") {
                q.append_pair("scope", s);
            }
            if let Some((u, _)) = &self.credentials {
                q.append_pair("account", u);
            }
        }
        let mut rb = self.client.get(url);
        if let Some((u, p)) = &self.credentials {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().await.map_err(|e| format!("token request: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("token body: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "token server answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("token json: {e}"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| "no token in response".to_string())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Upload a blob (skipped if it already exists); returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        self.try_push_blob(repo, bytes)
            .await
            .unwrap_or_else(|e| panic!("push_blob to {repo}: {e}"))
    }

    pub async fn try_push_blob(&self, repo: &str, bytes: &[u8]) -> PushResult<String> {
        let digest = sha256_digest(bytes);
        let head_url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let r = self.send(repo, || self.client.head(&head_url)).await?;
        if r.status == 200 {
            return Ok(digest);
        }
        let start_url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let r = self
            .send(repo, || {
                self.client.post(&start_url).header("content-length", "0")
            })
            .await?;
        r.expect_status(202, "upload start")?;
        let loc = r
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or("upload start without Location")?;
        let mut put_url = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            self.url(loc)
        };
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str("digest=");
        put_url.push_str(&digest.replace(':', "%3A"));
        let data = bytes::Bytes::copy_from_slice(bytes);
        let r = self
            .send(repo, || {
                self.client
                    .put(&put_url)
                    .header("content-type", "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        r.expect_status(201, "upload PUT")?;
        Ok(digest)
    }

    /// PUT a manifest under `reference` (tag or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        self.try_push_manifest(repo, reference, media_type, bytes)
            .await
            .unwrap_or_else(|e| panic!("push_manifest {repo}:{reference}: {e}"))
    }

    pub async fn try_push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> PushResult<String> {
        let digest = sha256_digest(bytes);
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let data = bytes::Bytes::copy_from_slice(bytes);
        let r = self
            .send(repo, || {
                self.client
                    .put(&url)
                    .header("content-type", media_type)
                    .body(data.clone())
            })
            .await?;
        r.expect_status(201, "manifest PUT")?;
        if let Some(d) = r
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && d != digest
        {
            return Err(format!("registry digest {d} != computed {digest}"));
        }
        Ok(digest)
    }

    /// DELETE a blob from a repository (panics unless 202).
    pub async fn delete_blob(&self, repo: &str, digest: &str) {
        self.delete(repo, "blobs", "blob", digest).await;
    }

    /// DELETE a manifest by digest (removes all its tags; panics unless 202).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        self.delete(repo, "manifests", "manifest", digest).await;
    }

    /// DELETE `/v2/REPO/SECTION/DIGEST`; panics (naming the `noun`) unless 202.
    async fn delete(&self, repo: &str, section: &str, noun: &str, digest: &str) {
        let url = self.url(&format!("/v2/{repo}/{section}/{digest}"));
        let r = self
            .send(repo, || self.client.delete(&url))
            .await
            .unwrap_or_else(|e| panic!("delete_{noun}: {e}"));
        assert_eq!(
            r.status,
            202,
            "delete {noun} {repo}@{digest}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// Authenticated GET of a manifest with every known Accept type:
    /// `(status, content-type, Docker-Content-Digest, body)`.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> (u16, Option<String>, Option<String>, Vec<u8>) {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let r = self
            .send(repo, || {
                self.client
                    .get(&url)
                    .header("accept", super::ACCEPT_MANIFESTS)
            })
            .await
            .unwrap_or_else(|e| panic!("get_manifest: {e}"));
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (
            r.status,
            h("content-type"),
            h("docker-content-digest"),
            r.body.to_vec(),
        )
    }

    /// Authenticated GET of a blob: status code.
    pub async fn blob_status(&self, repo: &str, digest: &str) -> u16 {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        self.send(repo, || self.client.get(&url))
            .await
            .unwrap_or_else(|e| panic!("blob_status: {e}"))
            .status
    }

    /// Authenticated tag list (all tags, sorted).
    pub async fn list_tags(&self, repo: &str) -> Vec<String> {
        let url = self.url(&format!("/v2/{repo}/tags/list"));
        let r = self
            .send(repo, || self.client.get(&url))
            .await
            .unwrap_or_else(|e| panic!("list_tags: {e}"));
        assert_eq!(r.status, 200, "tags/list {repo}");
        let v: Value = serde_json::from_slice(&r.body).expect("tags json");
        super::sorted_tags(&v)
    }

    /// Push config, layer and manifest under `tag` (a tag or a digest reference).
    pub async fn push_image(&self, repo: &str, tag: &str, spec: &ImageSpec) -> PushedImage {
        let layer = layer_bytes(spec.seed, &spec.platform);
        self.push_image_with_layer(repo, Some(tag), spec, &layer)
            .await
    }

    /// Push an image; `tag: None` pushes by digest.
    async fn push_image_with_layer(
        &self,
        repo: &str,
        tag: Option<&str>,
        spec: &ImageSpec,
        layer: &[u8],
    ) -> PushedImage {
        let layer_digest = sha256_digest(layer);
        let config = config_json(spec, &layer_digest);
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": spec.kind.media_type(),
            "config": {
                "mediaType": spec.kind.config_media_type(),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": spec.kind.layer_media_type(),
                "digest": layer_digest,
                "size": layer.len(),
            }],
        });
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        let digest = sha256_digest(&manifest_bytes);
        self.push_blob(repo, layer).await;
        self.push_blob(repo, &config).await;
        let reference = tag.unwrap_or(&digest).to_string();
        self.push_manifest(repo, &reference, spec.kind.media_type(), &manifest_bytes)
            .await;
        if spec.missing_config {
            self.delete_blob(repo, &config_digest).await;
        }
        PushedImage {
            digest,
            media_type: spec.kind.media_type().to_string(),
            size: manifest_bytes.len() as u64,
            config_digest,
            created: spec.created.clone(),
            labels: spec.labels.clone(),
            manifest_bytes,
            platform: spec.platform.clone(),
            config_bytes: config,
            layer_digests: vec![layer_digest],
        }
    }

    /// Push one child per platform (by digest), then the index under `tag`.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        kind: IndexKind,
        platforms: &[PlatformSpec],
    ) -> PushedIndex {
        let mut children = Vec::new();
        for (i, p) in platforms.iter().enumerate() {
            let day = i + 1;
            let spec = ImageSpec::new(kind.child_kind())
                .platform(p.clone())
                .created(&format!("2024-04-{day:02}T12:00:00Z"))
                .label(
                    "org.opencontainers.image.created",
                    &format!("2024-04-{day:02}T13:00:00Z"),
                )
                .label(
                    "org.label-schema.build-date",
                    &format!("2024-04-{day:02}T14:00:00Z"),
                )
                .label("org.opencontainers.image.ref.name", tag)
                .seed(seed_from(&format!("{repo}:{tag}:{i}")));
            let layer = layer_bytes(spec.seed, p);
            children.push(self.push_image_with_layer(repo, None, &spec, &layer).await);
        }
        let entries: Vec<Value> = children
            .iter()
            .map(|c| {
                json!({
                    "mediaType": c.media_type,
                    "digest": c.digest,
                    "size": c.size,
                    "platform": c.platform.to_json(),
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": kind.media_type(),
            "manifests": entries,
        });
        let manifest_bytes = serde_json::to_vec_pretty(&index).unwrap();
        let digest = self
            .push_manifest(repo, tag, kind.media_type(), &manifest_bytes)
            .await;
        PushedIndex {
            digest,
            media_type: kind.media_type().to_string(),
            manifest_bytes,
            children,
        }
    }

    /// Re-put the same manifest bytes under another tag (alias).
    pub async fn tag_existing(&self, repo: &str, image: &PushedImage, new_tag: &str) -> String {
        self.push_manifest(repo, new_tag, &image.media_type, &image.manifest_bytes)
            .await
    }

    /// Re-put raw manifest bytes under another tag.
    pub async fn tag_manifest(
        &self,
        repo: &str,
        media_type: &str,
        bytes: &[u8],
        new_tag: &str,
    ) -> String {
        self.push_manifest(repo, new_tag, media_type, bytes).await
    }

    /// Re-put an index under another tag.
    pub async fn tag_index(&self, repo: &str, index: &PushedIndex, new_tag: &str) -> String {
        self.push_manifest(repo, new_tag, &index.media_type, &index.manifest_bytes)
            .await
    }

    pub async fn alias_tags(&self, repo: &str, image: &PushedImage, tags: &[&str]) {
        for t in tags {
            self.tag_existing(repo, image, t).await;
        }
    }

    /// Cosign-style signature tag `sha256-<hex>.sig` for `subject_digest`.
    pub async fn push_signature_tag(&self, repo: &str, subject_digest: &str) -> PushedImage {
        let hex = subject_digest
            .strip_prefix("sha256:")
            .expect("sha256 subject digest");
        let tag = format!("sha256-{hex}.sig");
        let payload = json!({
            "critical": {
                "identity": {"docker-reference": repo},
                "image": {"docker-manifest-digest": subject_digest},
                "type": "cosign container image signature",
            },
            "optional": null,
        });
        let payload = serde_json::to_vec(&payload).unwrap();
        let layer_digest = self.push_blob(repo, &payload).await;
        let config = serde_json::to_vec(&json!({
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .unwrap();
        let config_digest = self.push_blob(repo, &config).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{
                "mediaType": COSIGN_LAYER,
                "digest": layer_digest,
                "size": payload.len(),
                "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDtest"},
            }],
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = self
            .push_manifest(repo, &tag, OCI_MANIFEST, &manifest_bytes)
            .await;
        PushedImage {
            digest,
            media_type: OCI_MANIFEST.to_string(),
            size: manifest_bytes.len() as u64,
            config_digest,
            created: None,
            labels: BTreeMap::new(),
            manifest_bytes,
            platform: PlatformSpec {
                os: String::new(),
                architecture: String::new(),
                variant: None,
                os_version: None,
            },
            config_bytes: config,
            layer_digests: vec![layer_digest],
        }
    }

    /// `n_distinct` OCI images (shared layer, distinct configs/created times) and
    /// `n_tags` tags `tag-00000`… spread round-robin over them (tag i → image i % n_distinct).
    /// Concurrent (16 requests in flight); ~200 tags/s on this machine.
    pub async fn push_many(
        &self,
        repo: &str,
        n_tags: usize,
        n_distinct: usize,
    ) -> Vec<(String, PushedImage)> {
        assert!(n_distinct >= 1 && n_distinct <= n_tags.max(1));
        let layer = layer_bytes(0x5eed, &PlatformSpec::linux_amd64());
        // Authenticate and upload the shared layer once, serially.
        self.push_blob(repo, &layer).await;
        let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap();
        let specs: Vec<ImageSpec> = (0..n_distinct)
            .map(|j| {
                let t = (base + chrono::Duration::minutes(j as i64))
                    .to_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                // The repository's name in a label: images of different repositories
                // are different images (distinct digests), as they are in the wild.
                ImageSpec::new(ManifestKind::Oci)
                    .created(&t)
                    .label("org.opencontainers.image.created", &t)
                    .label("org.opencontainers.image.title", repo)
                    .seed(j as u64)
            })
            .collect();
        let images: Vec<PushedImage> = futures::stream::iter(specs.iter().enumerate())
            .map(|(j, spec)| {
                let layer = &layer;
                async move {
                    let tag = format!("tag-{j:05}");
                    self.push_image_with_layer(repo, Some(&tag), spec, layer)
                        .await
                }
            })
            .buffered(16)
            .collect()
            .await;
        let _: Vec<String> = futures::stream::iter(n_distinct..n_tags)
            .map(|i| {
                let img = &images[i % n_distinct];
                async move { self.tag_existing(repo, img, &format!("tag-{i:05}")).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        (0..n_tags)
            .map(|i| (format!("tag-{i:05}"), images[i % n_distinct].clone()))
            .collect()
    }
}

/// Parse `Bearer realm="...",service="...",scope="..."`.
pub fn parse_challenge(header: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let rest = header.split_once(' ').map(|x| x.1).unwrap_or("");
    let re = regex::Regex::new(r#"(\w+)="([^"]*)""#).unwrap();
    for c in re.captures_iter(rest) {
        out.insert(c[1].to_ascii_lowercase(), c[2].to_string());
    }
    out
}

fn seed_from(s: &str) -> u64 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(s.as_bytes());
    u64::from_le_bytes(h[..8].try_into().unwrap())
}

/// A few hundred deterministic pseudo-random bytes (xorshift) for a layer.
pub fn layer_bytes(seed: u64, platform: &PlatformSpec) -> Vec<u8> {
    let mut x = seed ^ seed_from(&platform.display()) ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut out = b"regcache-test-layer\n".to_vec();
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn config_json(spec: &ImageSpec, layer_digest: &str) -> Vec<u8> {
    let mut m = spec.platform.json_fields();
    if let Some(c) = &spec.created {
        m.insert("created".into(), json!(c));
    }
    let labels = if spec.labels.is_empty() {
        json!({})
    } else {
        json!({ "Labels": spec.labels })
    };
    if spec.use_container_config {
        m.insert("config".into(), json!({}));
        m.insert("container_config".into(), labels);
    } else {
        m.insert("config".into(), labels);
    }
    m.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": [layer_digest]}),
    );
    let mut hist = serde_json::Map::new();
    if let Some(c) = &spec.created {
        hist.insert("created".into(), json!(c));
    }
    hist.insert(
        "created_by".into(),
        json!(format!("regcache-test seed={}", spec.seed)),
    );
    m.insert("history".into(), json!([Value::Object(hist)]));
    serde_json::to_vec(&Value::Object(m)).unwrap()
}
