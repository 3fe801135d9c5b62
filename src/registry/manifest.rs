//! Manifest kinds and parsing: OCI manifest and index, Docker v2 manifest and list,
//! Docker schema1 (read-only), and the image config blob.
//!
//! OCI and Docker v2 documents share one shape, so both parse into `oci-spec`'s
//! `ImageManifest` / `ImageIndex`. The config blob is read with a small lenient struct
//! instead: `oci-spec`'s `ImageConfiguration` requires `rootfs`/`os`/`architecture` (absent
//! from many artifacts) and has no `container_config` (where older Docker builds put labels).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::image::{Digest, Platform, parse_time};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub(crate) const DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Sent as `Accept` on every manifest request. Without the OCI types some registries
/// (distribution among them) answer 404 for OCI content; without the Docker types, others
/// convert to schema1. Quality values rank the multi-platform kinds first.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, \
application/vnd.docker.distribution.manifest.v1+json;q=0.5";

/// The kinds of manifest regcache reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MediaKind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
    DockerSchema1,
    DockerSchema1Signed,
}

impl MediaKind {
    pub fn from_media_type(media_type: &str) -> Option<MediaKind> {
        // Drop parameters such as `; charset=utf-8`.
        let mt = media_type.split(';').next().unwrap_or("").trim();
        Some(match mt {
            OCI_MANIFEST => MediaKind::OciManifest,
            OCI_INDEX => MediaKind::OciIndex,
            DOCKER_MANIFEST => MediaKind::DockerManifest,
            DOCKER_MANIFEST_LIST => MediaKind::DockerManifestList,
            DOCKER_SCHEMA1 => MediaKind::DockerSchema1,
            DOCKER_SCHEMA1_SIGNED => MediaKind::DockerSchema1Signed,
            _ => return None,
        })
    }

    pub fn media_type(self) -> &'static str {
        match self {
            MediaKind::OciManifest => OCI_MANIFEST,
            MediaKind::OciIndex => OCI_INDEX,
            MediaKind::DockerManifest => DOCKER_MANIFEST,
            MediaKind::DockerManifestList => DOCKER_MANIFEST_LIST,
            MediaKind::DockerSchema1 => DOCKER_SCHEMA1,
            MediaKind::DockerSchema1Signed => DOCKER_SCHEMA1_SIGNED,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, MediaKind::OciIndex | MediaKind::DockerManifestList)
    }
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
    Schema1(Box<Schema1>),
}

/// Why a manifest could not be read. Messages never include the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("malformed {kind}: {detail}")]
    Malformed { kind: &'static str, detail: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    signatures: Option<serde_json::Value>,
}

fn malformed(kind: &'static str, e: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed {
        kind,
        detail: e.to_string(),
    }
}

/// Works out the kind from the `Content-Type` header, falling back to the body's own
/// `mediaType` and then its shape (some registries send `application/json`).
pub(crate) fn detect_kind(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<MediaKind, ParseError> {
    if let Some(kind) = content_type.and_then(MediaKind::from_media_type) {
        return Ok(kind);
    }
    let sniff: Sniff = serde_json::from_slice(body).map_err(|e| malformed("manifest", e))?;
    if let Some(mt) = sniff.media_type.as_deref() {
        return MediaKind::from_media_type(mt)
            .ok_or_else(|| ParseError::UnsupportedMediaType(mt.to_string()));
    }
    match sniff.schema_version {
        Some(1) if sniff.signatures.is_some() => Ok(MediaKind::DockerSchema1Signed),
        Some(1) => Ok(MediaKind::DockerSchema1),
        Some(2) if sniff.manifests.is_some() => Ok(MediaKind::OciIndex),
        Some(2) if sniff.config.is_some() => Ok(MediaKind::OciManifest),
        _ => Err(ParseError::UnsupportedMediaType(
            content_type.unwrap_or("(none)").to_string(),
        )),
    }
}

pub(crate) fn parse_manifest(kind: MediaKind, body: &[u8]) -> Result<Manifest, ParseError> {
    match kind {
        MediaKind::OciManifest | MediaKind::DockerManifest => {
            let m: ImageManifest =
                serde_json::from_slice(body).map_err(|e| malformed("image manifest", e))?;
            Ok(Manifest::Image(Box::new(m)))
        }
        MediaKind::OciIndex | MediaKind::DockerManifestList => {
            let m: ImageIndex =
                serde_json::from_slice(body).map_err(|e| malformed("image index", e))?;
            Ok(Manifest::Index(Box::new(m)))
        }
        MediaKind::DockerSchema1 | MediaKind::DockerSchema1Signed => {
            Ok(Manifest::Schema1(Box::new(Schema1::parse(body)?)))
        }
    }
}

/// The bytes a manifest's digest is computed over. For signed schema1 that is the
/// payload without the JWS signatures, rebuilt from the protected header's
/// `formatLength`/`formatTail`; for everything else, the body itself.
pub(crate) fn digest_payload(
    kind: MediaKind,
    body: &[u8],
) -> Result<std::borrow::Cow<'_, [u8]>, ParseError> {
    if kind != MediaKind::DockerSchema1Signed {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    #[derive(Deserialize)]
    struct Signed {
        signatures: Vec<Signature>,
    }
    #[derive(Deserialize)]
    struct Signature {
        protected: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Protected {
        format_length: usize,
        format_tail: String,
    }
    let signed: Signed =
        serde_json::from_slice(body).map_err(|e| malformed("schema1 manifest", e))?;
    let first = signed
        .signatures
        .first()
        .ok_or_else(|| malformed("schema1 manifest", "no signatures"))?;
    let protected = URL_SAFE_NO_PAD
        .decode(first.protected.trim_end_matches('='))
        .map_err(|e| malformed("schema1 signature", e))?;
    let protected: Protected =
        serde_json::from_slice(&protected).map_err(|e| malformed("schema1 signature", e))?;
    let tail = URL_SAFE_NO_PAD
        .decode(protected.format_tail.trim_end_matches('='))
        .map_err(|e| malformed("schema1 signature", e))?;
    if protected.format_length > body.len() {
        return Err(malformed(
            "schema1 signature",
            "formatLength past the end of the body",
        ));
    }
    let mut payload = body[..protected.format_length].to_vec();
    payload.extend_from_slice(&tail);
    Ok(std::borrow::Cow::Owned(payload))
}

/// Docker schema1: read-only support for the old format some registries still serve.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema1 {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub history: Vec<Schema1History>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema1History {
    pub v1_compatibility: String,
}

impl Schema1 {
    fn parse(body: &[u8]) -> Result<Schema1, ParseError> {
        serde_json::from_slice(body).map_err(|e| malformed("schema1 manifest", e))
    }

    /// The newest history entry holds the image's config, JSON in a string.
    pub fn config(&self) -> Result<ImageConfig, ParseError> {
        let first = self
            .history
            .first()
            .ok_or_else(|| malformed("schema1 manifest", "empty history"))?;
        let mut config = ImageConfig::parse(first.v1_compatibility.as_bytes())?;
        if config.architecture.is_none() && !self.architecture.is_empty() {
            config.architecture = Some(self.architecture.clone());
        }
        Ok(config)
    }
}

/// What regcache keeps from an image config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// The blob as the registry sent it (empty for a schema1 image's, which has none).
    pub raw: bytes::Bytes,
    pub created: Option<DateTime<Utc>>,
    pub labels: BTreeMap<String, String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub os_version: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default, rename = "os.version")]
    os_version: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    container_config: Option<RawRunConfig>,
}

#[derive(Deserialize, Default)]
struct RawRunConfig {
    #[serde(default, rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

impl ImageConfig {
    pub fn parse(body: &[u8]) -> Result<ImageConfig, ParseError> {
        let raw: RawConfig =
            serde_json::from_slice(body).map_err(|e| malformed("image config", e))?;
        // Labels live in `config.Labels`; images built by old Docker versions (and some
        // builders) only fill `container_config.Labels`.
        let labels = raw
            .config
            .and_then(|c| c.labels)
            .filter(|l| !l.is_empty())
            .or_else(|| raw.container_config.and_then(|c| c.labels))
            .unwrap_or_default();
        Ok(ImageConfig {
            raw: bytes::Bytes::new(),
            created: raw.created.as_deref().and_then(parse_time),
            labels,
            os: raw.os.filter(|s| !s.is_empty()),
            architecture: raw.architecture.filter(|s| !s.is_empty()),
            variant: raw.variant.filter(|s| !s.is_empty()),
            os_version: raw.os_version.filter(|s| !s.is_empty()),
        })
    }

    pub fn platform(&self) -> Option<Platform> {
        match (&self.os, &self.architecture) {
            (Some(os), Some(arch)) => Some(Platform::new(os, arch, self.variant.as_deref())),
            _ => None,
        }
    }
}

/// One entry of an index, as regcache sees it.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<Platform>,
    pub os_version: Option<String>,
    /// BuildKit attestations (`vnd.docker.reference.type: attestation-manifest`) and
    /// entries for `unknown/unknown` are not images to run.
    pub is_attestation: bool,
}

/// The entries of an index, with digests checked for syntax. `body` is the index itself:
/// `oci-spec` 0.10 reads `platform.os_version` where the spec says `os.version`, so that
/// one field is read from the raw document.
pub(crate) fn index_entries(
    index: &ImageIndex,
    body: &[u8],
) -> Result<Vec<IndexEntry>, ParseError> {
    #[derive(Deserialize)]
    struct RawIndex {
        #[serde(default)]
        manifests: Vec<RawEntry>,
    }
    #[derive(Deserialize)]
    struct RawEntry {
        #[serde(default)]
        platform: Option<RawPlatform>,
    }
    #[derive(Deserialize)]
    struct RawPlatform {
        #[serde(default, rename = "os.version")]
        os_version: Option<String>,
    }
    let os_versions: Vec<Option<String>> = serde_json::from_slice::<RawIndex>(body)
        .map(|r| {
            r.manifests
                .into_iter()
                .map(|m| m.platform.and_then(|p| p.os_version))
                .collect()
        })
        .unwrap_or_default();
    index
        .manifests()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let digest =
                Digest::parse(d.digest().as_ref()).map_err(|e| malformed("image index", e))?;
            let platform = d.platform().as_ref().map(|p| {
                Platform::new(
                    p.os().to_string().as_str(),
                    p.architecture().to_string().as_str(),
                    p.variant().as_deref(),
                )
            });
            let is_attestation = d
                .annotations()
                .as_ref()
                .and_then(|a| a.get("vnd.docker.reference.type"))
                .is_some_and(|t| t == "attestation-manifest")
                || platform
                    .as_ref()
                    .is_some_and(|p| p.os == "unknown" || p.architecture == "unknown");
            Ok(IndexEntry {
                digest,
                media_type: d.media_type().to_string(),
                size: d.size(),
                os_version: os_versions.get(i).cloned().flatten(),
                platform,
                is_attestation,
            })
        })
        .collect()
}

/// The config descriptor of an image manifest.
pub(crate) fn config_descriptor(manifest: &ImageManifest) -> Result<(Digest, u64), ParseError> {
    let d = manifest.config();
    let digest = Digest::parse(d.digest().as_ref()).map_err(|e| malformed("image manifest", e))?;
    Ok((digest, d.size()))
}

/// Whether an index entry is wanted: every platform when `wanted` is empty.
pub(crate) fn platform_wanted(platform: Option<&Platform>, wanted: &[Platform]) -> bool {
    match platform {
        None => wanted.is_empty(),
        Some(p) => wanted.is_empty() || wanted.iter().any(|w| w.matches(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_DIGEST: &str =
        "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";

    #[test]
    fn kind_from_header_body_or_shape() {
        let oci = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{CONFIG_DIGEST}","size":1}},"layers":[]}}"#
        );
        assert_eq!(
            detect_kind(
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                b""
            )
            .unwrap(),
            MediaKind::OciManifest
        );
        assert_eq!(
            detect_kind(Some("application/json"), oci.as_bytes()).unwrap(),
            MediaKind::OciManifest
        );
        assert_eq!(
            detect_kind(None, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            MediaKind::OciIndex
        );
        assert_eq!(
            detect_kind(None, br#"{"schemaVersion":1,"signatures":[]}"#).unwrap(),
            MediaKind::DockerSchema1Signed
        );
        assert!(matches!(
            detect_kind(
                Some("text/html"),
                br#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart"}"#
            ),
            Err(ParseError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            detect_kind(None, b"<html>"),
            Err(ParseError::Malformed { .. })
        ));
    }

    #[test]
    fn docker_manifest_parses_as_image() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{CONFIG_DIGEST}","size":7023}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{CONFIG_DIGEST}","size":32654}}]}}"#
        );
        let Manifest::Image(m) =
            parse_manifest(MediaKind::DockerManifest, body.as_bytes()).unwrap()
        else {
            panic!("not an image");
        };
        let (d, size) = config_descriptor(&m).unwrap();
        assert_eq!(d.as_str(), CONFIG_DIGEST);
        assert_eq!(size, 7023);
    }

    #[test]
    fn index_entries_and_platform_filter() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{CONFIG_DIGEST}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{CONFIG_DIGEST}","size":2,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{CONFIG_DIGEST}","size":3,"platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.17763.5458"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{CONFIG_DIGEST}","size":4,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}
            ]}}"#
        );
        let Manifest::Index(ix) =
            parse_manifest(MediaKind::DockerManifestList, body.as_bytes()).unwrap()
        else {
            panic!("not an index");
        };
        let entries = index_entries(&ix, body.as_bytes()).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[2].os_version.as_deref(), Some("10.0.17763.5458"));
        assert!(entries[3].is_attestation && !entries[0].is_attestation);
        let want = [Platform::parse("linux/arm64").unwrap()];
        let picked: Vec<u64> = entries
            .iter()
            .filter(|e| platform_wanted(e.platform.as_ref(), &want))
            .map(|e| e.size)
            .collect();
        assert_eq!(picked, vec![2], "arm64 and arm64/v8 are one platform");
        assert!(platform_wanted(entries[0].platform.as_ref(), &[]));
    }

    #[test]
    fn config_labels_and_fallback() {
        let c = ImageConfig::parse(
            br#"{"created":"2024-03-01T12:00:00.123456789Z","architecture":"arm","os":"linux","variant":"v7",
                "config":{"Labels":{"a":"1"}},"container_config":{"Labels":{"b":"2"}}}"#,
        )
        .unwrap();
        assert_eq!(c.labels.get("a").map(String::as_str), Some("1"));
        assert!(!c.labels.contains_key("b"));
        assert_eq!(
            c.created.unwrap().to_rfc3339(),
            "2024-03-01T12:00:00.123456789+00:00"
        );
        assert_eq!(
            c.platform().unwrap(),
            Platform::parse("linux/arm/v7").unwrap()
        );

        let old = ImageConfig::parse(
            br#"{"created":"not a date","config":{"Labels":null},"container_config":{"Labels":{"b":"2"}}}"#,
        )
        .unwrap();
        assert_eq!(old.labels.get("b").map(String::as_str), Some("2"));
        assert_eq!(old.created, None);
        assert_eq!(old.platform(), None);

        // Artifacts (Helm charts, signatures) have configs without os/rootfs.
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
        assert!(ImageConfig::parse(br#""text""#).is_err());
    }

    #[test]
    fn schema1_signed_payload_and_config() {
        // A signed schema1 manifest: the digest covers the body up to `formatLength`
        // followed by `formatTail`, i.e. the manifest without its signatures.
        let unsigned = r#"{
   "schemaVersion": 1,
   "name": "library/old",
   "tag": "1",
   "architecture": "amd64",
   "history": [
      {
         "v1Compatibility": "{\"created\":\"2016-01-02T03:04:05Z\",\"config\":{\"Labels\":{\"x\":\"y\"}},\"os\":\"linux\"}"
      }
   ]
}"#;
        let cut = unsigned.rfind('\n').unwrap();
        let (head, tail) = unsigned.split_at(cut);
        let protected = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"formatLength":{},"formatTail":"{}","time":"2016-01-02T03:04:05Z"}}"#,
            head.len(),
            URL_SAFE_NO_PAD.encode(tail)
        ));
        let signed = format!(
            "{head},\n   \"signatures\": [{{\"header\": {{}}, \"signature\": \"x\", \"protected\": \"{protected}\"}}]\n}}"
        );
        let kind = detect_kind(None, signed.as_bytes()).unwrap();
        assert_eq!(kind, MediaKind::DockerSchema1Signed);
        let payload = digest_payload(kind, signed.as_bytes()).unwrap();
        assert_eq!(&*payload, unsigned.as_bytes());
        let Manifest::Schema1(m) = parse_manifest(kind, signed.as_bytes()).unwrap() else {
            panic!("not schema1");
        };
        let c = m.config().unwrap();
        assert_eq!(c.labels.get("x").map(String::as_str), Some("y"));
        assert_eq!(
            c.platform().unwrap(),
            Platform::parse("linux/amd64").unwrap()
        );
        assert_eq!(c.created.unwrap().to_rfc3339(), "2016-01-02T03:04:05+00:00");
    }

    /// Found by the `image_config` fuzz property: a created time whose UTC form falls outside
    /// years 0000..=9999 was accepted, and then shown by the read API as `-0001-…` or
    /// `+10000-…`, which is not RFC 3339.
    #[test]
    fn created_times_outside_rfc3339_years_are_unknown() {
        for time in [
            "0000-01-01T00:00:00+23:59",
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
        ] {
            assert_eq!(parse_time(time), None, "{time}");
            let config = format!(r#"{{"created":"{time}","os":"linux","architecture":"amd64"}}"#);
            assert_eq!(ImageConfig::parse(config.as_bytes()).unwrap().created, None);
        }
        for time in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "1970-01-01T00:00:00-00:00",
        ] {
            let parsed = parse_time(time).unwrap_or_else(|| panic!("{time} refused"));
            let shown = serde_json::to_value(parsed).unwrap();
            assert_eq!(parse_time(shown.as_str().unwrap()), Some(parsed), "{shown}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(kind) = detect_kind(None, &body) {
                let _ = parse_manifest(kind, &body);
                let _ = digest_payload(kind, &body);
            }
            let _ = ImageConfig::parse(&body);
            let _ = digest_payload(MediaKind::DockerSchema1Signed, &body);
        }
    }
}
