//! The metadata regcache records about an image: what the registry client describes, the
//! cache stores and the read API answers.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use super::{Digest, Platform};

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
    /// The manifests and config blobs fetched to describe it, exactly as the registry sent
    /// them: the registry API serves them byte for byte. Not part of any JSON answer.
    #[serde(skip)]
    pub contents: Vec<RawContent>,
}

/// A manifest or config blob exactly as the registry sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawContent {
    pub digest: Digest,
    /// The manifest's media type; `application/octet-stream` for a blob, as registries
    /// serve blobs.
    pub media_type: String,
    pub bytes: bytes::Bytes,
}

/// The media type registries give blobs.
pub const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

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

/// RFC 3339 timestamps as found in configs and labels; `None` for anything else
/// (build dates in the wild are sometimes free text, which must not fail a pass).
///
/// The time must also be writable as RFC 3339 once in UTC, i.e. fall in years 0000..=9999:
/// `0000-01-01T00:00:00+01:00` is year -1 in UTC, which serde writes as `-0001-12-31T23:00:00Z`.
/// That is not RFC 3339, and clients of the read API that parse it strictly (Go's
/// `time.Time`) would refuse the whole response.
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| (0..=9999).contains(&t.year()))
}
