//! regcache's schema on top of a byte cache: images by digest, tag indexes in chunks
//! published by a small head item, and the read API with its decorators.
//!
//! Chunks hold consecutive runs of the sorted tags and are named by the hash of their
//! content, so a chunk is never rewritten with other content. Publishing writes the chunks
//! that are new first and the head last; the chunks the new head no longer names are
//! deleted by the next publish. A reader reads the head, then the chunks it names, and
//! checks each against its id; a missing one sends the reader back to the head. So a reader
//! sees one whole index or none, never a mix.
//!
//! The head lists each chunk's first tag, so one tag is found by reading the head and one
//! chunk, and a whole index can be read (or written) one chunk at a time, even in a
//! repository of 200,000 tags.

mod publish;
mod read;
mod schema;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;

use serde::Serialize;

use super::decorate::TimestampLabels;
use super::keys;
use super::{CacheError, CacheMetrics, CacheReader, CacheWriter, Millis};
pub use publish::IndexWriter;
pub(crate) use read::not_cached_help;
pub use read::{ImageInfo, IndexCursor, ReadError, RepositoryMetadata};
pub use schema::{ChunkRef, Freshness, ImageRecord, RepositoryHead, TagEntry};
pub(crate) use schema::{TagView, chunk_id, chunk_view};

/// Room kept in each chunk for the key, the JSON wrapper and memcached's item header.
const CHUNK_OVERHEAD: usize = 512;
/// Largest size of a tag chunk (they average about half of it). Smaller than an item may
/// be: looking up one tag reads and parses one chunk, so 128 KiB (at most ~1,300 tags)
/// keeps that cheap, while 200,000 tags still take only ~300 chunks.
pub(crate) const DEFAULT_CHUNK_BYTES: usize = 128 << 10;
/// Chunks written or deleted at once.
const WRITE_CONCURRENCY: usize = 8;
/// How often a reader goes back to the head when a generation changes under it.
pub(crate) const READ_ATTEMPTS: usize = 4;
/// Most chunks a head may name; a head naming more is corrupt. A head names each chunk by
/// id and first tag (about 80 bytes), so this many fill memcached's default 1 MB item; at
/// the default chunk size it is ~8 million tags (a 200,000-tag repository takes ~300).
pub(crate) const MAX_CHUNKS: usize = 12_000;

/// regcache's view of a cache backend.
pub struct MetadataStore<B> {
    backend: B,
    timestamp_labels: TimestampLabels,
    chunk_bytes: usize,
    metrics: CacheMetrics,
}

impl<B: CacheReader> MetadataStore<B> {
    pub fn new(backend: B) -> Self {
        MetadataStore {
            backend,
            timestamp_labels: TimestampLabels::default(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            metrics: super::CacheMetrics::default(),
        }
    }

    /// Records `regcache_cache_*` into the process's metrics.
    pub fn with_metrics(mut self, metrics: super::CacheMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Every backend call goes through these four, which keep the cache metrics.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<super::Entry>, CacheError> {
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

    pub(crate) async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, super::Entry>, CacheError> {
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

    /// Target chunk size; never more than the backend's item limit allows.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes;
        self
    }

    pub fn with_timestamp_labels(mut self, labels: TimestampLabels) -> Self {
        self.timestamp_labels = labels;
        self
    }

    /// Whether the timestamp-label decorator applies to `repository` (canonical name) by
    /// the allowlist.
    pub(crate) fn timestamp_labels_apply(&self, repository: &str) -> bool {
        self.timestamp_labels.applies_to(repository)
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
}

impl<B: CacheWriter> MetadataStore<B> {
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

    async fn set_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        deadline: Millis,
    ) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(value).expect("schema types serialise");
        self.set(key, &bytes, deadline).await
    }
}
