//! What the store keeps in the cache: image records, tag entries, the repository head,
//! and tag chunks (with the borrowed view readers parse them through).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::MAX_CHUNKS;
use crate::image::{Digest, ImageMetadata, Platform, PlatformImage, RawContent};

/// One image (manifest or index) by digest, shared by every tag and repository of a scope
/// that points at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub digest: Digest,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub platforms: Vec<PlatformImage>,
    /// For an index: every platform it lists; `platforms` holds those fetched so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_platforms: Vec<Platform>,
}

impl From<&ImageMetadata> for ImageRecord {
    fn from(m: &ImageMetadata) -> Self {
        ImageRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            created: m.created,
            labels: m.labels.clone(),
            platforms: m.platforms.clone(),
            available_platforms: m.available_platforms.clone(),
        }
    }
}

impl ImageRecord {
    /// Whether this record holds every platform in `wanted` (all when empty) that the
    /// image has. A single-platform image always covers.
    pub fn covers(&self, wanted: &[Platform]) -> bool {
        self.available_platforms
            .iter()
            .filter(|p| wanted.is_empty() || wanted.iter().any(|w| w.matches(p)))
            .all(|p| {
                self.platforms
                    .iter()
                    .any(|have| have.platform.as_ref().is_some_and(|h| h.matches(p)))
            })
    }
}

/// The freshness written with an index: `last_update` moves only when a pass completed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Freshness {
    pub last_update: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// One tag of a repository and its refresh state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEntry {
    pub tag: String,
    /// `None` when the registry reported the tag's manifest unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// When the tag was last resolved (Unix ms).
    pub fetched: i64,
    /// When it should be resolved again (Unix ms).
    pub deadline: i64,
    /// The current refresh interval (ms): doubles while the tag is unchanged, halves when
    /// it moves.
    pub interval: u64,
}

/// One chunk of a published index, as its head names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    /// 32 lower-case hex digits: XXH3-128 of the chunk's payload.
    pub id: String,
    /// The chunk's first tag; chunks hold consecutive runs of the sorted tags.
    pub first: String,
    /// How many tags it holds.
    pub tags: u32,
}

/// The small item readers start from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryHead {
    pub canonical_name: String,
    /// Names the published content: a hash of the chunk ids, so a pass that changes no
    /// tag publishes the same generation. 0 while no index has ever been published.
    pub generation: u64,
    #[serde(default)]
    pub chunks: Vec<ChunkRef>,
    pub tag_count: u64,
    /// Chunks the previous index held and this one does not: deleted by the next pass,
    /// so a reader still streaming the previous index finds them meanwhile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<DateTime<Utc>>,
}

impl RepositoryHead {
    /// Why a decoded head cannot be one regcache wrote, if it cannot.
    pub(super) fn invalid(&self) -> Option<String> {
        if self.chunks.len() > MAX_CHUNKS {
            return Some(format!(
                "the head names {} chunks, more than the {MAX_CHUNKS} regcache writes",
                self.chunks.len()
            ));
        }
        if self.generation == 0 && !self.chunks.is_empty() {
            return Some("the head names chunks under generation 0".to_string());
        }
        if let Some(id) = self
            .chunks
            .iter()
            .map(|c| &c.id)
            .chain(&self.retired)
            .find(|id| !is_chunk_id(id))
        {
            return Some(format!("the head names a chunk with the id {id:?}"));
        }
        if !self.chunks.windows(2).all(|w| w[0].first < w[1].first) {
            return Some("the head's chunks are not in tag order".to_string());
        }
        let total: u64 = self.chunks.iter().map(|c| u64::from(c.tags)).sum();
        if total != self.tag_count {
            return Some(format!(
                "the head counts {} tags but its chunks hold {total}",
                self.tag_count
            ));
        }
        None
    }

    /// The chunk that holds `tag` if any does: the last whose first tag is not after it.
    pub fn chunk_of(&self, tag: &str) -> Option<&ChunkRef> {
        self.chunk_index(tag).map(|i| &self.chunks[i])
    }

    /// The position of [`Self::chunk_of`] in `chunks`.
    pub fn chunk_index(&self, tag: &str) -> Option<usize> {
        let after = self.chunks.partition_point(|c| c.first.as_str() <= tag);
        after.checked_sub(1)
    }
}

/// Whether `id` has the form of a chunk id (32 lower-case hex digits).
pub(crate) fn is_chunk_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The id of a chunk payload.
pub(crate) fn chunk_id(payload: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(payload))
}

/// One tag of a chunk, borrowed from the chunk's bytes: what a read needs, nothing copied
/// (a tag is borrowed unless it holds a JSON escape; digests never do).
#[derive(Deserialize)]
pub(crate) struct TagView<'a> {
    #[serde(borrow)]
    pub(crate) tag: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) digest: Option<&'a str>,
}

/// A chunk as a reader sees it.
#[derive(Deserialize)]
pub(crate) struct ChunkView<'a> {
    #[serde(borrow)]
    pub(crate) tags: Vec<TagView<'a>>,
}

/// The chunk in `value` if it is the chunk `chunk` names: its content hashes to the id,
/// its tags are sorted, start with the first tag and number as many as the head says.
pub(crate) fn chunk_view<'a>(value: &'a [u8], chunk: &ChunkRef) -> Option<ChunkView<'a>> {
    if chunk_id(value) != chunk.id {
        return None;
    }
    serde_json::from_slice::<ChunkView>(value).ok().filter(|c| {
        c.tags.len() == chunk.tags as usize
            && c.tags.first().is_some_and(|t| t.tag == chunk.first)
            && c.tags.windows(2).all(|w| w[0].tag < w[1].tag)
    })
}

/// The schedule of one chunk's tags, in the chunk's order: `[fetched, deadline, interval]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChunkSchedule {
    pub(crate) chunk: String,
    pub(crate) due: Vec<[i64; 3]>,
}

/// A content item's payload: the media type, a line feed, then the bytes exactly as the
/// registry sent them (not JSON: manifests and blobs are served byte for byte).
pub(super) fn content_value(content: &RawContent) -> Vec<u8> {
    let mut value = Vec::with_capacity(content.media_type.len() + 1 + content.bytes.len());
    value.extend_from_slice(content.media_type.as_bytes());
    value.push(b'\n');
    value.extend_from_slice(&content.bytes);
    value
}

/// A content item read back: `None` when the payload is not one regcache wrote.
pub(super) fn parse_content(digest: &Digest, value: bytes::Bytes) -> Option<RawContent> {
    let end = value.iter().position(|b| *b == b'\n')?;
    let media_type = std::str::from_utf8(&value[..end]).ok()?;
    let valid = !media_type.is_empty()
        && media_type.len() <= 255
        && media_type.bytes().all(|b| b.is_ascii_graphic());
    let bytes = value.slice(end + 1..);
    // Served under its digest, so it must be that digest's content.
    (valid && digest.verify(&bytes)).then(|| RawContent {
        digest: digest.clone(),
        media_type: media_type.to_string(),
        bytes,
    })
}
