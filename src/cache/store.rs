//! regcache's schema on top of a byte cache: images by digest, tag indexes in chunks under a
//! generation published by a small head item, and the read API with its decorators.
//!
//! Publishing writes every chunk of a new generation first and the head last, then deletes
//! the previous generation's chunks. A reader reads the head, then that generation's chunks;
//! each chunk names its generation, and a missing or foreign chunk sends the reader back to
//! the head. So a reader sees one whole generation or none, never a mix.
//!
//! Tags are spread over chunks by `xxh3_64(tag) % chunks`, so one tag is found by reading
//! the head and one chunk, even in a repository of 200,000 tags.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::answers::{AnswerKey, Answers};
use super::decorate::{TimestampLabels, created_time};
use super::keys::{self, Scope};
use super::memcached::key_hash;
use super::{CacheError, CacheWriter, Millis};
use crate::image::{Digest, ImageRef, Platform, Reference, Repository};
use crate::image::{ImageMetadata, PlatformImage};

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

/// The small item readers start from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryHead {
    pub canonical_name: String,
    /// 0 while no index has ever been published.
    pub generation: u64,
    pub chunks: u32,
    pub tag_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<DateTime<Utc>>,
}

impl RepositoryHead {
    /// Why a decoded head cannot be one regcache wrote, if it cannot.
    fn invalid(&self) -> Option<String> {
        if self.chunks > MAX_CHUNKS {
            return Some(format!(
                "the head names {} chunks, more than the {MAX_CHUNKS} regcache writes",
                self.chunks
            ));
        }
        // A writer publishes `generation + 1` at least; nothing can follow the maximum.
        if self.generation == u64::MAX {
            return Some("the head's generation is at its maximum".to_string());
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagChunk {
    generation: u64,
    index: u32,
    tags: Vec<TagEntry>,
}

/// One tag of a chunk, borrowed from the chunk's bytes: what a read needs, nothing copied
/// (a tag is borrowed unless it holds a JSON escape; digests never do).
#[derive(Deserialize)]
struct TagView<'a> {
    #[serde(borrow)]
    tag: Cow<'a, str>,
    #[serde(default, borrow)]
    digest: Option<&'a str>,
}

/// A chunk as a reader sees it; `fetched`, `deadline` and `interval` are skipped.
#[derive(Deserialize)]
struct ChunkView<'a> {
    generation: u64,
    index: u32,
    #[serde(borrow)]
    tags: Vec<TagView<'a>>,
}

/// The chunk in `value` if it is chunk `index` of `generation`.
fn chunk_view(value: &[u8], generation: u64, index: u32) -> Option<ChunkView<'_>> {
    serde_json::from_slice::<ChunkView>(value)
        .ok()
        .filter(|c| c.generation == generation && c.index == index)
}

/// The bytes after the opening brace of a stored JSON object, if `value` is one; `None`
/// for anything else, so a damaged item is left out rather than spliced into an answer.
fn object_body(value: &[u8]) -> Option<&[u8]> {
    let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
    if value[start] != b'{' || serde_json::from_slice::<IgnoredAny>(value).is_err() {
        return None;
    }
    Some(&value[start + 1..])
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec never fails");
}

/// The read API's repository answer (`docs/api.md`): each tag names its digest, and each
/// cached image appears once, keyed by digest, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryAnswer {
    pub canonical_name: String,
    /// Every tag, sorted; `None` when the registry reported the tag's manifest unknown.
    pub tags: BTreeMap<String, Option<Digest>>,
    /// The cached images the tags point at.
    pub images: BTreeMap<Digest, ImageRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What the library returns for a repository: images by tag, decorators applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryMetadata {
    pub canonical_name: String,
    /// Every tag, sorted.
    pub tags: Vec<String>,
    /// Images by tag, for the tags whose image is cached.
    pub images: BTreeMap<String, ImageInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One image as the read API shows it (decorators applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub canonical_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    pub labels: BTreeMap<String, String>,
    pub platforms: Vec<PlatformImage>,
}

/// Reads that found nothing usable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Never fetched successfully (or evicted). `last_error` is the last failure while the
    /// repository has never been fetched successfully.
    #[error("{repository} is not cached{}; {help}", last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default())]
    NotCached {
        repository: String,
        last_error: Option<String>,
        help: String,
    },
    #[error("tag {tag} is not in the cached tags of {repository}")]
    TagNotFound { repository: String, tag: String },
    #[error("image {digest} of {repository} is not cached; {help}")]
    ImageNotCached {
        repository: String,
        digest: String,
        help: String,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl ReadError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReadError::NotCached { .. } => "not_cached",
            ReadError::TagNotFound { .. } => "tag_not_found",
            ReadError::ImageNotCached { .. } => "image_not_cached",
            ReadError::Cache(e) => e.metric_label(),
        }
    }
}

/// What to check when a repository is not cached.
pub fn not_cached_help(repository: &str) -> String {
    format!(
        "check that an ImageRepositoryWatch covers {repository} (its status shows why warming \
         fails), that regcache reaches memcached, and that you asked under the scope of the \
         watch's credentials"
    )
}

/// Room kept in each chunk for the key, the JSON wrapper and memcached's item header.
const CHUNK_OVERHEAD: usize = 512;
/// Target size of a tag chunk. Smaller than an item may be: looking up one tag reads and
/// parses one chunk, so 128 KiB (~900 tags) keeps that cheap, while a full read of 200,000
/// tags is still only ~300 keys in one multi-get.
pub const DEFAULT_CHUNK_BYTES: usize = 128 << 10;
/// Chunks written or deleted at once.
const WRITE_CONCURRENCY: usize = 8;
/// How often a reader goes back to the head when a generation changes under it.
const READ_ATTEMPTS: usize = 4;
/// Most chunks a head may name; a head naming more is corrupt. Readers size their multi-get
/// by the head, so without a bound a foreign head claiming 4 billion chunks makes one read
/// build 4 billion keys. regcache never writes near it: at the default chunk size it is
/// 8 GiB of tag index, ~50 million tags (a 200,000-tag repository takes ~40 chunks).
pub const MAX_CHUNKS: u32 = 1 << 16;

/// regcache's view of a cache backend.
pub struct MetadataStore<B> {
    backend: B,
    timestamp_labels: TimestampLabels,
    chunk_bytes: usize,
    metrics: super::CacheMetrics,
    /// Repository answers reused while their head is unchanged (`answers.rs`).
    answers: Answers,
}

impl<B: CacheWriter> MetadataStore<B> {
    pub fn new(backend: B) -> Self {
        MetadataStore {
            backend,
            timestamp_labels: TimestampLabels::default(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            metrics: super::CacheMetrics::default(),
            answers: Answers::new(0),
        }
    }

    /// Keeps up to `bytes` of read API repository answers in the process, each reused for
    /// as long as the repository's head in the cache is unchanged.
    pub fn with_answer_cache(mut self, bytes: usize) -> Self {
        self.answers = Answers::new(bytes);
        self
    }

    /// Records `regcache_cache_*` into the process's metrics.
    pub fn with_metrics(mut self, metrics: super::CacheMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Every backend call goes through these four, which keep the cache metrics.
    async fn get(&self, key: &str) -> Result<Option<super::Entry>, CacheError> {
        let kind = keys::kind_of(key);
        let result = self.backend.get(key).await;
        match &result {
            Ok(found) => {
                let hit = u64::from(found.is_some());
                self.metrics.read(kind, hit, 1 - hit);
            }
            Err(e) => self.metrics.error("get", e.metric_label()),
        }
        result
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, super::Entry>, CacheError> {
        let result = self.backend.get_many(keys).await;
        self.count_reads(keys, result)
    }

    /// [`CacheReader::get_many_available`], for warming: a down server's keys miss.
    async fn get_many_available(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, super::Entry>, CacheError> {
        let result = self.backend.get_many_available(keys).await;
        self.count_reads(keys, result)
    }

    /// Counts a batched read of `keys` in the cache metrics.
    fn count_reads(
        &self,
        keys: &[String],
        result: Result<HashMap<String, super::Entry>, CacheError>,
    ) -> Result<HashMap<String, super::Entry>, CacheError> {
        let kind = keys.first().map_or("other", |k| keys::kind_of(k));
        match &result {
            Ok(found) => {
                let hits = found.len() as u64;
                self.metrics
                    .read(kind, hits, (keys.len() as u64).saturating_sub(hits));
            }
            Err(e) => self.metrics.error("get", e.metric_label()),
        }
        result
    }

    async fn set(&self, key: &str, value: &[u8], deadline: Millis) -> Result<(), CacheError> {
        let result = self.backend.set(key, value, deadline).await;
        match &result {
            Ok(()) => self.metrics.write(keys::kind_of(key), value.len()),
            Err(e) => self.metrics.error("set", e.metric_label()),
        }
        result
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let result = self.backend.delete(key).await;
        match &result {
            Ok(()) => self.metrics.delete(),
            Err(e) => self.metrics.error("delete", e.metric_label()),
        }
        result
    }

    /// Target chunk size; never more than the backend's item limit allows.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes;
        self
    }

    pub fn with_timestamp_labels(mut self, labels: TimestampLabels) -> Self {
        self.timestamp_labels = labels;
        self
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(e) => {
                serde_json::from_slice(&e.value)
                    .map(Some)
                    .map_err(|err| CacheError::Corrupt {
                        key: key.to_string(),
                        detail: err.to_string(),
                    })
            }
        }
    }

    async fn set_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        deadline: Millis,
    ) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(value).expect("schema types serialise");
        self.set(key, &bytes, deadline).await
    }

    /// Stores an image's metadata under its digest.
    pub async fn put_image(
        &self,
        scope: &Scope,
        record: &ImageRecord,
        deadline: Millis,
    ) -> Result<(), CacheError> {
        self.set_json(&keys::image(scope, &record.digest), record, deadline)
            .await
    }

    pub async fn get_image_record(
        &self,
        scope: &Scope,
        digest: &Digest,
    ) -> Result<Option<ImageRecord>, CacheError> {
        self.get_json(&keys::image(scope, digest)).await
    }

    /// Which of `digests` are cached (one batched read), for warming: the records on a
    /// server that cannot answer count as not cached, so only they are fetched again.
    pub async fn cached_images(
        &self,
        scope: &Scope,
        digests: &[Digest],
    ) -> Result<HashMap<Digest, ImageRecord>, CacheError> {
        let keys: Vec<String> = digests.iter().map(|d| keys::image(scope, d)).collect();
        let found = self.get_many_available(&keys).await?;
        let mut out = HashMap::with_capacity(found.len());
        for (d, k) in digests.iter().zip(&keys) {
            if let Some(e) = found.get(k)
                && let Ok(r) = serde_json::from_slice::<ImageRecord>(&e.value)
            {
                out.insert(d.clone(), r);
            }
        }
        Ok(out)
    }

    pub async fn head(
        &self,
        scope: &Scope,
        repository: &Repository,
    ) -> Result<Option<RepositoryHead>, CacheError> {
        self.get_head(&keys::repository_head(scope, repository))
            .await
    }

    /// A head, checked: one that decodes but names an impossible index is corrupt too.
    async fn get_head(&self, key: &str) -> Result<Option<RepositoryHead>, CacheError> {
        match self.get_json::<RepositoryHead>(key).await? {
            Some(head) => match head.invalid() {
                Some(detail) => Err(CacheError::Corrupt {
                    key: key.to_string(),
                    detail,
                }),
                None => Ok(Some(head)),
            },
            None => Ok(None),
        }
    }

    /// Splits entries over chunks by tag hash, each chunk within the item limit, and
    /// writes each chunk's item. Entries are serialised once and moved, not copied, into
    /// their chunk: a 200,000-tag index is tens of MB of JSON.
    fn partition(&self, entries: &[TagEntry], generation: u64) -> Vec<Vec<u8>> {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| {
                (
                    key_hash(&e.tag),
                    serde_json::to_vec(e).expect("schema types serialise"),
                )
            })
            .collect();
        let budget = self
            .backend
            .item_limit()
            .saturating_sub(CHUNK_OVERHEAD)
            .min(self.chunk_bytes)
            .max(1024);
        let total: usize = encoded.iter().map(|(_, b)| b.len() + 1).sum();
        // Hashing does not fill chunks evenly; start with 30% headroom and grow if one
        // chunk still overflows.
        let mut n = ((total * 13 / 10) / budget + 1).max(1);
        let sizes = loop {
            let mut sizes = vec![0usize; n];
            for (h, b) in &encoded {
                sizes[(*h % n as u64) as usize] += b.len() + 1;
            }
            if sizes.iter().all(|s| *s <= budget) {
                break sizes;
            }
            n += n / 4 + 1;
        };
        // The chunk wrapper is written around the entries' JSON, so the index is not
        // serialised twice.
        let mut bodies: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let mut body = Vec::with_capacity(size + CHUNK_OVERHEAD);
                body.extend_from_slice(
                    format!(r#"{{"generation":{generation},"index":{i},"tags":["#).as_bytes(),
                );
                body
            })
            .collect();
        for (h, b) in encoded {
            let body = &mut bodies[(h % n as u64) as usize];
            if body.last() != Some(&b'[') {
                body.push(b',');
            }
            body.extend_from_slice(&b);
        }
        for body in &mut bodies {
            body.extend_from_slice(b"]}");
        }
        bodies
    }

    /// Publishes a repository's whole tag index after a complete pass.
    pub async fn publish_index(
        &self,
        scope: &Scope,
        repository: &Repository,
        entries: &[TagEntry],
        last_update: DateTime<Utc>,
        deadline: Millis,
    ) -> Result<RepositoryHead, CacheError> {
        let freshness = Freshness {
            last_update: Some(last_update),
            last_error: None,
        };
        self.publish_index_with(scope, repository, entries, &freshness, deadline)
            .await
    }

    /// Publishes a repository's whole tag index as a new generation, with the repository's
    /// freshness. On failure the previous generation stays published.
    pub async fn publish_index_with(
        &self,
        scope: &Scope,
        repository: &Repository,
        entries: &[TagEntry],
        freshness: &Freshness,
        deadline: Millis,
    ) -> Result<RepositoryHead, CacheError> {
        let head_key = keys::repository_head(scope, repository);
        // A head that cannot be read is treated as absent: the new generation is newer
        // than any we could have written (it is the current time in ms).
        let previous = self.get_head(&head_key).await.unwrap_or(None);
        // Never the maximum, which readers refuse: after a (foreign) head one below it,
        // numbering restarts from the clock. A valid head is below the maximum, so no overflow.
        let after_previous = previous
            .as_ref()
            .map(|h| h.generation + 1)
            .filter(|g| *g < u64::MAX)
            .unwrap_or(0);
        let generation = (Millis::now().0.max(0) as u64).max(after_previous);
        // Passes hand over entries already sorted by tag; only other callers pay for a copy.
        let sorted: std::borrow::Cow<'_, [TagEntry]> =
            if entries.is_sorted_by(|a, b| a.tag <= b.tag) {
                std::borrow::Cow::Borrowed(entries)
            } else {
                let mut v = entries.to_vec();
                v.sort_by(|a, b| a.tag.cmp(&b.tag));
                std::borrow::Cow::Owned(v)
            };
        let bodies = self.partition(&sorted, generation);
        let n = bodies.len() as u32;
        let writes = bodies.into_iter().enumerate().map(|(i, body)| {
            let key = keys::tag_chunk(scope, repository, generation, i as u32);
            async move { self.set(&key, &body, deadline).await }
        });
        let results: Vec<Result<(), CacheError>> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            self.delete_generation(scope, repository, generation, n)
                .await;
            return Err(err);
        }
        let head = RepositoryHead {
            canonical_name: repository.canonical(),
            generation,
            chunks: n,
            tag_count: sorted.len() as u64,
            last_update: freshness.last_update,
            last_error: freshness.last_error.clone(),
            last_error_at: freshness.last_error.as_ref().map(|_| Utc::now()),
        };
        if let Err(err) = self.set_json(&head_key, &head, deadline).await {
            self.delete_generation(scope, repository, generation, n)
                .await;
            return Err(err);
        }
        if let Some(prev) = previous.filter(|p| p.generation != 0 && p.generation != generation) {
            self.delete_generation(scope, repository, prev.generation, prev.chunks)
                .await;
        }
        Ok(head)
    }

    /// Best effort: what is not deleted expires with its TTL.
    async fn delete_generation(
        &self,
        scope: &Scope,
        repository: &Repository,
        generation: u64,
        chunks: u32,
    ) {
        let deletes = (0..chunks).map(|i| {
            let key = keys::tag_chunk(scope, repository, generation, i);
            async move {
                let _ = self.delete(&key).await;
            }
        });
        futures::stream::iter(deletes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    /// Records a failed pass: the published index stays as it was.
    pub async fn record_error(
        &self,
        scope: &Scope,
        repository: &Repository,
        error: &str,
        deadline: Millis,
    ) -> Result<RepositoryHead, CacheError> {
        let head_key = keys::repository_head(scope, repository);
        let mut head: RepositoryHead =
            self.get_head(&head_key)
                .await?
                .unwrap_or_else(|| RepositoryHead {
                    canonical_name: repository.canonical(),
                    ..RepositoryHead::default()
                });
        head.last_error = Some(error.to_string());
        head.last_error_at = Some(Utc::now());
        self.set_json(&head_key, &head, deadline).await?;
        Ok(head)
    }

    /// The head and every tag entry of one generation, or `None` when nothing is
    /// published (or what was published is gone).
    pub async fn read_index(
        &self,
        scope: &Scope,
        repository: &Repository,
    ) -> Result<Option<(RepositoryHead, Vec<TagEntry>)>, CacheError> {
        self.read_chunks(scope, repository, None).await
    }

    /// Reads all chunks, or only the chunk that holds `only_tag`.
    async fn read_chunks(
        &self,
        scope: &Scope,
        repository: &Repository,
        only_tag: Option<&str>,
    ) -> Result<Option<(RepositoryHead, Vec<TagEntry>)>, CacheError> {
        let mut last_generation = None;
        for _ in 0..READ_ATTEMPTS {
            let Some(head) = self.head(scope, repository).await? else {
                return Ok(None);
            };
            if head.generation == 0 {
                return Ok(Some((head, Vec::new())));
            }
            if last_generation == Some(head.generation) {
                // Same generation as the last attempt and still incomplete: evicted.
                return Ok(None);
            }
            last_generation = Some(head.generation);
            let wanted: Vec<u32> = match only_tag {
                Some(tag) if head.chunks > 0 => vec![(key_hash(tag) % head.chunks as u64) as u32],
                _ => (0..head.chunks).collect(),
            };
            let keys: Vec<String> = wanted
                .iter()
                .map(|i| keys::tag_chunk(scope, repository, head.generation, *i))
                .collect();
            let found = self.get_many(&keys).await?;
            let mut entries = Vec::new();
            let mut complete = true;
            for (i, key) in wanted.iter().zip(&keys) {
                let chunk = found
                    .get(key)
                    .and_then(|e| serde_json::from_slice::<TagChunk>(&e.value).ok());
                match chunk {
                    Some(c) if c.generation == head.generation && c.index == *i => {
                        entries.extend(c.tags)
                    }
                    _ => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                entries.sort_by(|a, b| a.tag.cmp(&b.tag));
                return Ok(Some((head, entries)));
            }
        }
        Ok(None)
    }

    fn not_cached(&self, repository: &Repository, head: Option<&RepositoryHead>) -> ReadError {
        let name = repository.canonical();
        ReadError::NotCached {
            // The error is worth showing only while nothing was ever fetched.
            last_error: head
                .filter(|h| h.last_update.is_none())
                .and_then(|h| h.last_error.clone()),
            help: not_cached_help(&name),
            repository: name,
        }
    }

    fn info(
        &self,
        canonical_name: &str,
        tag: Option<&str>,
        record: ImageRecord,
        label_times: bool,
    ) -> ImageInfo {
        let applies = label_times || self.timestamp_labels.applies_to(canonical_name);
        let platforms = record
            .platforms
            .into_iter()
            .map(|mut p| {
                p.created = created_time(applies, &p.labels, p.created);
                p
            })
            .collect();
        ImageInfo {
            canonical_name: canonical_name.to_string(),
            tag: tag.map(str::to_string),
            created: created_time(applies, &record.labels, record.created),
            digest: record.digest,
            media_type: record.media_type,
            labels: record.labels,
            platforms,
        }
    }

    /// The whole repository: tags, and each tag's image with decorators applied.
    pub async fn get_image_repository_metadata(
        &self,
        scope: &Scope,
        repository: &Repository,
    ) -> Result<RepositoryMetadata, ReadError> {
        self.repository_metadata(scope, repository, false).await
    }

    /// As [`Self::get_image_repository_metadata`]; `label_times` applies the
    /// timestamp-label decorator whatever the allowlist says (a watch asked for it).
    pub async fn repository_metadata(
        &self,
        scope: &Scope,
        repository: &Repository,
        label_times: bool,
    ) -> Result<RepositoryMetadata, ReadError> {
        let Some((head, entries)) = self.read_index(scope, repository).await? else {
            let head = self.head(scope, repository).await.ok().flatten();
            return Err(self.not_cached(repository, head.as_ref()));
        };
        if head.last_update.is_none() {
            return Err(self.not_cached(repository, Some(&head)));
        }
        let mut digests: Vec<Digest> = entries.iter().filter_map(|e| e.digest.clone()).collect();
        digests.sort();
        digests.dedup();
        let mut records = self.cached_images(scope, &digests).await?;
        // Tags pointing at one digest are counted so the last of them takes the record
        // itself instead of a copy.
        let mut uses: HashMap<&Digest, usize> = HashMap::new();
        for d in entries.iter().filter_map(|e| e.digest.as_ref()) {
            *uses.entry(d).or_default() += 1;
        }
        let name = repository.canonical();
        let mut images = BTreeMap::new();
        for e in &entries {
            let Some(d) = e.digest.as_ref() else { continue };
            let left = uses.get_mut(d).expect("counted above");
            *left -= 1;
            let record = if *left == 0 {
                records.remove(d)
            } else {
                records.get(d).cloned()
            };
            if let Some(record) = record {
                images.insert(
                    e.tag.clone(),
                    self.info(&name, Some(&e.tag), record, label_times),
                );
            }
        }
        Ok(RepositoryMetadata {
            canonical_name: name,
            tags: entries.into_iter().map(|e| e.tag).collect(),
            images,
            last_update: head.last_update,
            last_error: head.last_error,
        })
    }

    /// One image by tag (head and one chunk) or by digest (one item).
    pub async fn get_image(&self, scope: &Scope, image: &ImageRef) -> Result<ImageInfo, ReadError> {
        self.image(scope, image, false).await
    }

    /// As [`Self::get_image`], with the timestamp-label decorator forced by `label_times`.
    pub async fn image(
        &self,
        scope: &Scope,
        image: &ImageRef,
        label_times: bool,
    ) -> Result<ImageInfo, ReadError> {
        let repository = &image.repository;
        let name = repository.canonical();
        let (digest, tag) = match image.reference() {
            Reference::Digest(d) => (d, image.tag.clone()),
            Reference::Tag(tag) => {
                let Some((head, entries)) = self.read_chunks(scope, repository, Some(&tag)).await?
                else {
                    let head = self.head(scope, repository).await.ok().flatten();
                    return Err(self.not_cached(repository, head.as_ref()));
                };
                if head.last_update.is_none() {
                    return Err(self.not_cached(repository, Some(&head)));
                }
                let digest = entries
                    .into_iter()
                    .find(|e| e.tag == tag)
                    .and_then(|e| e.digest)
                    .ok_or_else(|| ReadError::TagNotFound {
                        repository: name.clone(),
                        tag: tag.clone(),
                    })?;
                (digest, Some(tag))
            }
        };
        let record = self
            .get_image_record(scope, &digest)
            .await?
            .ok_or_else(|| ReadError::ImageNotCached {
                repository: name.clone(),
                digest: digest.to_string(),
                help: not_cached_help(&name),
            })?;
        Ok(self.info(&name, tag.as_deref(), record, label_times))
    }
}

impl<B: CacheWriter> MetadataStore<B> {
    /// `record` with the timestamp-label decorator applied.
    fn decorated(&self, mut record: ImageRecord) -> ImageRecord {
        record.created = created_time(true, &record.labels, record.created);
        for p in &mut record.platforms {
            p.created = created_time(true, &p.labels, p.created);
        }
        record
    }

    /// The read API's repository answer ([`RepositoryAnswer`]) as JSON, built from the
    /// stored bytes: chunks are parsed without copying their tags, and image records go
    /// into the answer verbatim unless the timestamp-label decorator applies (forced by
    /// `label_times`, or by the allowlist), which re-serialises each distinct image once.
    pub async fn repository_json(
        &self,
        scope: &Scope,
        repository: &Repository,
        label_times: bool,
    ) -> Result<Bytes, ReadError> {
        let name = repository.canonical();
        let decorate = label_times || self.timestamp_labels.applies_to(&name);
        let answer_key = AnswerKey {
            scope: scope.to_string(),
            repository: name.clone(),
            decorated: decorate,
        };
        let mut last_head = None;
        for _ in 0..READ_ATTEMPTS {
            let head = self
                .head_to_read(scope, repository, last_head.as_ref())
                .await?;
            if let Some(answer) = self.answers.get(&answer_key, &head) {
                self.metrics.answer(true, self.answers.bytes());
                return Ok(answer);
            }
            let chunks = if head.generation == 0 { 0 } else { head.chunks };
            let chunk_keys: Vec<String> = (0..chunks)
                .map(|i| keys::tag_chunk(scope, repository, head.generation, i))
                .collect();
            let found = if chunk_keys.is_empty() {
                HashMap::new()
            } else {
                self.get_many(&chunk_keys).await?
            };
            let mut tags: Vec<TagView> = Vec::with_capacity(head.tag_count as usize);
            let mut complete = true;
            for (i, key) in (0..chunks).zip(&chunk_keys) {
                match found
                    .get(key)
                    .and_then(|e| chunk_view(&e.value, head.generation, i))
                {
                    Some(c) => tags.extend(c.tags),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                last_head = Some(head);
                continue;
            }
            tags.sort_unstable_by(|a, b| a.tag.cmp(&b.tag));
            let mut digests: Vec<Digest> = {
                let mut raw: Vec<&str> = tags.iter().filter_map(|t| t.digest).collect();
                raw.sort_unstable();
                raw.dedup();
                // A digest that does not parse names no image item; its tags still list it.
                raw.into_iter()
                    .filter_map(|d| Digest::parse(d).ok())
                    .collect()
            };
            digests.sort_unstable();
            let image_keys: Vec<String> = digests.iter().map(|d| keys::image(scope, d)).collect();
            let records = if image_keys.is_empty() {
                HashMap::new()
            } else {
                self.get_many(&image_keys).await?
            };

            let record_bytes: usize = records.values().map(|e| e.value.len()).sum();
            let mut out = Vec::with_capacity(256 + name.len() + tags.len() * 96 + record_bytes);
            out.extend_from_slice(b"{\"canonicalName\":");
            push_str(&mut out, &name);
            out.extend_from_slice(b",\"tags\":{");
            for (n, t) in tags.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                push_str(&mut out, &t.tag);
                out.push(b':');
                match t.digest {
                    Some(d) => push_str(&mut out, d),
                    None => out.extend_from_slice(b"null"),
                }
            }
            out.extend_from_slice(b"},\"images\":{");
            let mut first = true;
            // Every image record found and written: only then is the answer kept.
            let mut complete = records.len() == digests.len();
            for (digest, key) in digests.iter().zip(&image_keys) {
                let Some(entry) = records.get(key) else {
                    continue;
                };
                let mark = out.len();
                if !first {
                    out.push(b',');
                }
                push_str(&mut out, digest.as_str());
                out.push(b':');
                let written = if decorate {
                    serde_json::from_slice::<ImageRecord>(&entry.value)
                        .map(|r| {
                            serde_json::to_writer(&mut out, &self.decorated(r))
                                .expect("schema types serialise")
                        })
                        .is_ok()
                } else {
                    match object_body(&entry.value) {
                        Some(_) => {
                            out.extend_from_slice(&entry.value);
                            true
                        }
                        None => false,
                    }
                };
                if written {
                    first = false;
                } else {
                    complete = false;
                    out.truncate(mark);
                }
            }
            out.push(b'}');
            if let Some(t) = &head.last_update {
                out.extend_from_slice(b",\"lastUpdate\":");
                serde_json::to_writer(&mut out, t).expect("times serialise");
            }
            if let Some(e) = &head.last_error {
                out.extend_from_slice(b",\"lastError\":");
                push_str(&mut out, e);
            }
            out.push(b'}');
            let out = Bytes::from(out);
            if complete {
                self.answers.put(answer_key, head, out.clone());
            }
            self.metrics.answer(false, self.answers.bytes());
            return Ok(out);
        }
        Err(self.not_cached(repository, last_head.as_ref()))
    }

    /// The read API's answer for one image ([`ImageInfo`]) as JSON. By tag it reads the
    /// head and the tag's chunk (parsed without copying), then the image record, which is
    /// spliced into the answer as stored unless the timestamp-label decorator applies.
    pub async fn image_json(
        &self,
        scope: &Scope,
        image: &ImageRef,
        label_times: bool,
    ) -> Result<Vec<u8>, ReadError> {
        let repository = &image.repository;
        let name = repository.canonical();
        let (digest, tag) = match image.reference() {
            Reference::Digest(d) => (d, image.tag.clone()),
            Reference::Tag(tag) => (
                self.digest_of_tag(scope, repository, &tag).await?,
                Some(tag),
            ),
        };
        let not_cached = || ReadError::ImageNotCached {
            repository: name.clone(),
            digest: digest.to_string(),
            help: not_cached_help(&name),
        };
        let entry = self
            .get(&keys::image(scope, &digest))
            .await?
            .ok_or_else(not_cached)?;
        if label_times || self.timestamp_labels.applies_to(&name) {
            let record: ImageRecord =
                serde_json::from_slice(&entry.value).map_err(|e| CacheError::Corrupt {
                    key: keys::image(scope, &digest),
                    detail: e.to_string(),
                })?;
            let info = self.info(&name, tag.as_deref(), record, label_times);
            return Ok(serde_json::to_vec(&info).expect("schema types serialise"));
        }
        let body = object_body(&entry.value).ok_or_else(|| CacheError::Corrupt {
            key: keys::image(scope, &digest),
            detail: "the image record is not a JSON object".to_string(),
        })?;
        let mut out = Vec::with_capacity(64 + name.len() + entry.value.len());
        out.extend_from_slice(b"{\"canonicalName\":");
        push_str(&mut out, &name);
        if let Some(tag) = &tag {
            out.extend_from_slice(b",\"tag\":");
            push_str(&mut out, tag);
        }
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(body);
        Ok(out)
    }

    /// The head a read attempt follows. NotCached when nothing was ever fetched, or when
    /// it names the same generation as the previous attempt (`last`), whose chunks were
    /// incomplete: evicted, not being replaced.
    async fn head_to_read(
        &self,
        scope: &Scope,
        repository: &Repository,
        last: Option<&RepositoryHead>,
    ) -> Result<RepositoryHead, ReadError> {
        let Some(head) = self.head(scope, repository).await? else {
            return Err(self.not_cached(repository, None));
        };
        if head.last_update.is_none() || last.is_some_and(|h| h.generation == head.generation) {
            return Err(self.not_cached(repository, Some(&head)));
        }
        Ok(head)
    }

    /// The digest `tag` points at: the head, then the one chunk that holds the tag.
    async fn digest_of_tag(
        &self,
        scope: &Scope,
        repository: &Repository,
        tag: &str,
    ) -> Result<Digest, ReadError> {
        let mut last_head = None;
        for _ in 0..READ_ATTEMPTS {
            let head = self
                .head_to_read(scope, repository, last_head.as_ref())
                .await?;
            let tag_not_found = || ReadError::TagNotFound {
                repository: repository.canonical(),
                tag: tag.to_string(),
            };
            if head.generation == 0 || head.chunks == 0 {
                return Err(tag_not_found());
            }
            let index = (key_hash(tag) % head.chunks as u64) as u32;
            let key = keys::tag_chunk(scope, repository, head.generation, index);
            let found = self.get(&key).await?;
            let Some(chunk) = found
                .as_ref()
                .and_then(|e| chunk_view(&e.value, head.generation, index))
            else {
                last_head = Some(head);
                continue;
            };
            return chunk
                .tags
                .iter()
                .find(|t| t.tag == tag)
                .and_then(|t| t.digest)
                .and_then(|d| Digest::parse(d).ok())
                .ok_or_else(tag_not_found);
        }
        Err(self.not_cached(repository, last_head.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheReader;
    use crate::cache::memory::MemoryCache;
    use std::time::Duration;

    fn repo() -> Repository {
        Repository::parse("ghcr.io/org/app").unwrap()
    }

    fn entry(tag: &str, digest: &Digest) -> TagEntry {
        TagEntry {
            tag: tag.to_string(),
            digest: Some(digest.clone()),
            fetched: 1,
            deadline: 2,
            interval: 3,
        }
    }

    fn record(digest: &Digest, created: &str, label: Option<&str>) -> ImageRecord {
        let mut labels = BTreeMap::new();
        if let Some(l) = label {
            labels.insert(
                "org.opencontainers.image.created".to_string(),
                l.to_string(),
            );
        }
        ImageRecord {
            digest: digest.clone(),
            media_type: crate::registry::manifest::OCI_MANIFEST.to_string(),
            created: crate::image::parse_time(created),
            labels,
            platforms: Vec::new(),
            available_platforms: Vec::new(),
        }
    }

    fn later() -> Millis {
        Millis::now().plus(Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn small_chunks_round_trip_and_tag_lookup_reads_one_chunk() {
        let store = MetadataStore::new(MemoryCache::new(4096));
        let scope = Scope::public();
        let d = Digest::sha256_of(b"image");
        let entries: Vec<TagEntry> = (0..500).map(|i| entry(&format!("v{i}"), &d)).collect();
        store
            .put_image(&scope, &record(&d, "2024-01-01T00:00:00Z", None), later())
            .await
            .unwrap();
        let head = store
            .publish_index(&scope, &repo(), &entries, Utc::now(), later())
            .await
            .unwrap();
        assert!(head.chunks > 10, "{} chunks", head.chunks);
        let (_, read) = store.read_index(&scope, &repo()).await.unwrap().unwrap();
        let mut want = entries.clone();
        want.sort_by(|a, b| a.tag.cmp(&b.tag));
        assert_eq!(read, want);

        let hits_before = crate::cache::CacheStats::load(&store.backend().stats().hits);
        let info = store
            .get_image(&scope, &ImageRef::parse("ghcr.io/org/app:v42").unwrap())
            .await
            .unwrap();
        assert_eq!(info.digest, d);
        let hits = crate::cache::CacheStats::load(&store.backend().stats().hits) - hits_before;
        assert_eq!(hits, 3, "head, one chunk, one image");

        // Republishing replaces the generation and removes the old chunks.
        let before = store.backend().len();
        store
            .publish_index(&scope, &repo(), &entries[..10], Utc::now(), later())
            .await
            .unwrap();
        assert!(store.backend().len() < before);
        assert_eq!(
            store
                .read_index(&scope, &repo())
                .await
                .unwrap()
                .unwrap()
                .1
                .len(),
            10
        );
    }

    #[tokio::test]
    async fn not_cached_semantics_and_last_error() {
        let store = MetadataStore::new(MemoryCache::default());
        let scope = Scope::public();
        let err = store
            .get_image_repository_metadata(&scope, &repo())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ReadError::NotCached {
                    last_error: None,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("ImageRepositoryWatch"),
            "help text: {err}"
        );

        store
            .record_error(
                &scope,
                &repo(),
                "registry ghcr.io refused the credentials",
                later(),
            )
            .await
            .unwrap();
        let err = store
            .get_image_repository_metadata(&scope, &repo())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("last error: registry ghcr.io refused"),
            "{err}"
        );

        // Once fetched, an error no longer hides the data: it rides along.
        let d = Digest::sha256_of(b"x");
        store
            .put_image(&scope, &record(&d, "2024-01-01T00:00:00Z", None), later())
            .await
            .unwrap();
        store
            .publish_index(&scope, &repo(), &[entry("v1", &d)], Utc::now(), later())
            .await
            .unwrap();
        store
            .record_error(&scope, &repo(), "429 from ghcr.io", later())
            .await
            .unwrap();
        let m = store
            .get_image_repository_metadata(&scope, &repo())
            .await
            .unwrap();
        assert_eq!(m.tags, ["v1"]);
        assert_eq!(m.last_error.as_deref(), Some("429 from ghcr.io"));
        assert!(m.last_update.is_some());
        assert!(matches!(
            store
                .get_image(&scope, &ImageRef::parse("ghcr.io/org/app:v2").unwrap())
                .await,
            Err(ReadError::TagNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn timestamp_labels_decorate_on_read() {
        let scope = Scope::public();
        let d = Digest::sha256_of(b"reproducible");
        let rec = record(&d, "1970-01-01T00:00:00Z", Some("2024-05-06T07:08:09Z"));
        for (patterns, want) in [
            (vec![], "1970-01-01T00:00:00+00:00"),
            (vec!["ghcr.io/org/*"], "2024-05-06T07:08:09+00:00"),
        ] {
            let store = MetadataStore::new(MemoryCache::default())
                .with_timestamp_labels(TimestampLabels::new(&patterns).unwrap());
            store.put_image(&scope, &rec, later()).await.unwrap();
            let by_digest = ImageRef::parse(&format!("ghcr.io/org/app@{d}")).unwrap();
            let info = store.get_image(&scope, &by_digest).await.unwrap();
            assert_eq!(info.created.unwrap().to_rfc3339(), want, "{patterns:?}");
        }
    }

    /// A foreign or corrupt head naming 4 billion chunks (or the last generation) used to make
    /// a read build a key per chunk, gigabytes for one lookup, and a publish over it delete
    /// chunk by chunk, or overflow the generation. Such a head is now corrupt: reads report
    /// it at once, and the next publish replaces it.
    #[tokio::test]
    async fn a_head_naming_an_impossible_index_is_corrupt() {
        let scope = Scope::public();
        let key = keys::repository_head(&scope, &repo());
        let d = Digest::sha256_of(b"x");
        let cases = [
            (1, u32::MAX, true),
            (u64::MAX, 1, true),
            (7, MAX_CHUNKS + 1, true),
            // Valid, but the next generation would be the maximum (found by cargo-fuzz once
            // the maximum was refused).
            (u64::MAX - 1, 1, false),
        ];
        for (generation, chunks, corrupt) in cases {
            let store = MetadataStore::new(MemoryCache::default());
            let head = format!(
                r#"{{"canonicalName":"ghcr.io/org/app","generation":{generation},"chunks":{chunks},"tagCount":1,"lastUpdate":"2024-05-01T14:00:00Z"}}"#
            );
            store
                .backend()
                .set(&key, head.as_bytes(), later())
                .await
                .unwrap();

            let read = store.read_index(&scope, &repo()).await;
            assert_eq!(
                matches!(read, Err(CacheError::Corrupt { .. })),
                corrupt,
                "{generation}/{chunks}: {read:?}"
            );
            let by_tag = ImageRef::parse("ghcr.io/org/app:v1").unwrap();
            let image = store.get_image(&scope, &by_tag).await;
            assert_eq!(
                matches!(image, Err(ReadError::Cache(CacheError::Corrupt { .. }))),
                corrupt,
                "{generation}/{chunks}: {image:?}"
            );

            let entries = vec![entry("v1", &d)];
            let published = store
                .publish_index(&scope, &repo(), &entries, Utc::now(), later())
                .await
                .unwrap();
            assert!(published.generation < u64::MAX && published.chunks == 1);
            let (head, read) = store.read_index(&scope, &repo()).await.unwrap().unwrap();
            assert_eq!((head, read), (published, entries));
        }
    }

    /// The repository answer for `repo()`, and how many images it lists.
    async fn answer(store: &MetadataStore<MemoryCache>) -> (Bytes, usize) {
        let body = store
            .repository_json(&Scope::public(), &repo(), false)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let images = v["images"].as_object().unwrap().len();
        (body, images)
    }

    #[tokio::test]
    async fn repository_answers_are_reused_until_the_head_moves() {
        let mut metrics = crate::telemetry::MetricsRegistry::default();
        let cache_metrics = super::super::CacheMetrics::register(metrics.root());
        let store = MetadataStore::new(MemoryCache::new(4096))
            .with_answer_cache(1 << 20)
            .with_metrics(cache_metrics);
        let answers = |result: &str| {
            let line = format!("regcache_cache_answers_total{{result=\"{result}\"}} ");
            metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix(&line)?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {line}"))
        };
        let scope = Scope::public();
        let (d1, d2) = (Digest::sha256_of(b"one"), Digest::sha256_of(b"two"));
        for d in [&d1, &d2] {
            let rec = record(d, "2024-01-01T00:00:00Z", None);
            store.put_image(&scope, &rec, later()).await.unwrap();
        }
        let entries = vec![entry("a", &d1), entry("b", &d2)];
        store
            .publish_index(&scope, &repo(), &entries, Utc::now(), later())
            .await
            .unwrap();
        let (first, images) = answer(&store).await;
        assert_eq!(images, 2);

        // The head is unchanged: the kept answer is served, though a record has gone.
        let d2_key = keys::image(&scope, &d2);
        store.backend().delete(&d2_key).await.unwrap();
        assert_eq!(answer(&store).await.0, first);
        assert_eq!((answers("reused"), answers("built")), (1, 1));
        assert!(metrics.encode().contains(&format!(
            "regcache_cache_answer_cache_bytes {}",
            first.len()
        )));

        // A new head (an error recorded) is read afresh; that answer misses d2's record,
        // so it is not kept, and the record written again shows at the next read.
        store
            .record_error(&scope, &repo(), "registry down", later())
            .await
            .unwrap();
        let (fresh, images) = answer(&store).await;
        assert_eq!(images, 1);
        assert!(
            std::str::from_utf8(&fresh)
                .unwrap()
                .contains("registry down")
        );
        let rec = record(&d2, "2024-01-01T00:00:00Z", None);
        store.put_image(&scope, &rec, later()).await.unwrap();
        assert_eq!(answer(&store).await.1, 2);
        assert_eq!((answers("reused"), answers("built")), (1, 3));

        // Without an answer cache every read is built from memcached.
        let uncached = MetadataStore::new(MemoryCache::new(4096));
        uncached.put_image(&scope, &rec, later()).await.unwrap();
        uncached
            .publish_index(&scope, &repo(), &entries[1..], Utc::now(), later())
            .await
            .unwrap();
        assert_eq!(answer(&uncached).await.1, 1);
        uncached.backend().delete(&d2_key).await.unwrap();
        assert_eq!(answer(&uncached).await.1, 0);
    }

    #[tokio::test]
    async fn repository_json_lists_each_image_once_as_stored() {
        let store = MetadataStore::new(MemoryCache::new(4096));
        let scope = Scope::public();
        let (d1, d2) = (Digest::sha256_of(b"one"), Digest::sha256_of(b"two"));
        let rec = record(&d1, "2024-01-01T00:00:00Z", Some("2024-05-06T07:08:09Z"));
        store.put_image(&scope, &rec, later()).await.unwrap();
        let mut entries: Vec<TagEntry> = (0..300).map(|i| entry(&format!("a{i}"), &d1)).collect();
        // d2's image is not cached; "gone" has no manifest.
        entries.push(entry("b", &d2));
        entries.push(TagEntry {
            digest: None,
            ..entry("gone", &d1)
        });
        let head = store
            .publish_index(&scope, &repo(), &entries, Utc::now(), later())
            .await
            .unwrap();
        assert!(head.chunks > 1, "{} chunks", head.chunks);

        let body = store.repository_json(&scope, &repo(), false).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let tags = v["tags"].as_object().unwrap();
        assert_eq!(tags.len(), 302);
        assert_eq!(tags["a7"], d1.as_str());
        assert_eq!(tags["b"], d2.as_str());
        assert!(tags["gone"].is_null());
        let mut sorted: Vec<&String> = tags.keys().collect();
        sorted.sort();
        assert_eq!(tags.keys().collect::<Vec<_>>(), sorted);
        assert_eq!(v["images"].as_object().unwrap().len(), 1);
        // The stored record, byte for byte.
        let stored = store
            .backend()
            .get(&keys::image(&scope, &d1))
            .await
            .unwrap()
            .unwrap()
            .value;
        assert!(body.windows(stored.len()).any(|w| w == &stored[..]));
        assert_eq!(
            v["images"][d1.as_str()],
            serde_json::to_value(&rec).unwrap()
        );
        assert!(v["lastUpdate"].is_string());
        let answer: RepositoryAnswer = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer.images[&d1], rec);
        assert_eq!(answer.tags["gone"], None);

        // Label times re-serialise the record with the label's time.
        let decorated = store.repository_json(&scope, &repo(), true).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&decorated).unwrap();
        assert!(
            v["images"][d1.as_str()]["created"]
                .as_str()
                .unwrap()
                .starts_with("2024-05-06T07:08:09"),
            "{v}"
        );

        // Another scope sees nothing of this one.
        let other = Scope::for_credential(
            "ghcr.io",
            "team",
            &crate::credentials::Credential::basic("u", "p"),
        );
        assert!(matches!(
            store.repository_json(&other, &repo(), false).await,
            Err(ReadError::NotCached { .. })
        ));
    }

    #[tokio::test]
    async fn image_json_answers_as_image_does() {
        let scope = Scope::public();
        let d = Digest::sha256_of(b"img");
        let rec = record(&d, "1970-01-01T00:00:00Z", Some("2024-05-06T07:08:09Z"));
        for patterns in [vec![], vec!["ghcr.io/org/*"]] {
            let store = MetadataStore::new(MemoryCache::new(4096))
                .with_timestamp_labels(TimestampLabels::new(&patterns).unwrap());
            store.put_image(&scope, &rec, later()).await.unwrap();
            let entries: Vec<TagEntry> = (0..200).map(|i| entry(&format!("v{i}"), &d)).collect();
            store
                .publish_index(&scope, &repo(), &entries, Utc::now(), later())
                .await
                .unwrap();
            for reference in [
                "ghcr.io/org/app:v42".to_string(),
                format!("ghcr.io/org/app@{d}"),
            ] {
                let image = ImageRef::parse(&reference).unwrap();
                let want =
                    serde_json::to_value(store.get_image(&scope, &image).await.unwrap()).unwrap();
                let got: serde_json::Value =
                    serde_json::from_slice(&store.image_json(&scope, &image, false).await.unwrap())
                        .unwrap();
                assert_eq!(got, want, "{patterns:?} {reference}");
            }
            let missing = ImageRef::parse("ghcr.io/org/app:nope").unwrap();
            assert!(matches!(
                store.image_json(&scope, &missing, false).await,
                Err(ReadError::TagNotFound { .. })
            ));
        }
    }
}
