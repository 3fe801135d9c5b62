//! Writing: image records, and tag indexes published chunk by chunk under a head written
//! last; failures recorded without touching the published data.
//!
//! An index is written as a stream of sorted entries ([`IndexWriter`]): each chunk is
//! written as soon as it is cut, so a pass holds one chunk, not the index. Chunks are cut
//! where a tag's hash says (or at the size limit), so adding or moving one tag changes one
//! chunk; a chunk is named by the hash of its content, and one that the previous index
//! already holds is not written again. A pass that changes no tag writes no chunk and
//! publishes the same generation; only the warmer's schedule items and the head move.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::keys::{self, Scope};
use super::schema::{ChunkRef, ChunkSchedule, chunk_id, content_value};
use super::{
    CHUNK_OVERHEAD, Freshness, ImageRecord, MetadataStore, RepositoryHead, TagEntry,
    WRITE_CONCURRENCY,
};
use crate::cache::memcached::key_hash;
use crate::cache::{CacheError, CacheWriter, Millis};
use crate::image::{RawContent, Repository};

impl<B: CacheWriter> MetadataStore<B> {
    /// Stores an image's metadata under its digest, after the manifests and config blobs
    /// fetched to describe it (each under its own digest; one too large for an item is
    /// left out). The record is written last, so a record means its contents were written.
    pub async fn put_image(
        &self,
        scope: &Scope,
        record: &ImageRecord,
        contents: &[RawContent],
        deadline: Millis,
    ) -> Result<(), CacheError> {
        let limit = self.backend.item_limit().saturating_sub(CHUNK_OVERHEAD);
        let mut items = Vec::with_capacity(contents.len());
        for c in contents {
            let value = content_value(c);
            if value.len() > limit {
                tracing::debug!(digest = %c.digest, bytes = c.bytes.len(), "content too large for one cache item; not kept");
                continue;
            }
            items.push((keys::content(scope, &c.digest), value));
        }
        let writes = items
            .into_iter()
            .map(|(key, value)| async move { self.set(&key, &value, deadline).await });
        let results: Vec<Result<(), CacheError>> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), CacheError>>()?;
        self.set_json(&keys::image(scope, &record.digest), record, deadline)
            .await
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

    /// Publishes a repository's whole tag index with the repository's freshness. On
    /// failure the previous index stays published.
    pub async fn publish_index_with(
        &self,
        scope: &Scope,
        repository: &Repository,
        entries: &[TagEntry],
        freshness: &Freshness,
        deadline: Millis,
    ) -> Result<RepositoryHead, CacheError> {
        // A head that cannot be read is treated as absent.
        let previous = self
            .get_head(&keys::repository_head(scope, repository))
            .await
            .unwrap_or(None);
        let mut sorted: Vec<&TagEntry> = entries.iter().collect();
        sorted.sort_by(|a, b| a.tag.cmp(&b.tag));
        sorted.dedup_by(|a, b| a.tag == b.tag);
        let mut writer = self.index_writer(scope, repository, previous);
        for e in sorted {
            if let Err(err) = writer.push(e).await {
                writer.abandon().await;
                return Err(err);
            }
        }
        writer.finish(freshness, deadline).await
    }

    /// A writer of a new index over `previous` (the head the pass read, if any).
    pub fn index_writer(
        &self,
        scope: &Scope,
        repository: &Repository,
        previous: Option<RepositoryHead>,
    ) -> IndexWriter<'_, B> {
        let budget = self
            .backend
            .item_limit()
            .saturating_sub(CHUNK_OVERHEAD)
            .min(self.chunk_bytes)
            .max(1024);
        let previous_ids = previous
            .iter()
            .flat_map(|h| h.chunks.iter().map(|c| c.id.clone()))
            .collect();
        IndexWriter {
            store: self,
            scope: scope.clone(),
            repository: repository.clone(),
            previous,
            previous_ids,
            known: HashMap::new(),
            budget,
            // Chunks end on average at half the budget, for typical entries.
            cut_every: (budget / 2 / TYPICAL_ENTRY).max(2) as u64,
            now: Millis::now(),
            body: Vec::new(),
            due: Vec::new(),
            first: None,
            last: None,
            chunks: Vec::new(),
            written: Vec::new(),
            tag_count: 0,
        }
    }

    /// Best effort: what is not deleted expires with its TTL.
    async fn delete_chunks(&self, scope: &Scope, repository: &Repository, ids: &[String]) {
        let mut names = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            names.push(keys::tag_chunk(scope, repository, id));
            names.push(keys::tag_schedule(scope, repository, id));
        }
        futures::stream::iter(names.into_iter().map(|key| async move {
            let _ = self.delete(&key).await;
        }))
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
}

/// A chunk's entry in bytes, for choosing where chunks end: a tag of a dozen characters
/// and a sha256 digest.
const TYPICAL_ENTRY: usize = 100;
/// A chunk and its schedule are written to live this long...
pub(crate) const CHUNK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// ...and a chunk kept by a later index is written again once this old, so it never
/// expires while it is published.
const CHUNK_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// What a pass learnt of a chunk of the previous index while reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KnownChunk {
    /// The deadline the chunk was written with.
    pub(crate) deadline: Millis,
    /// XXH3-64 of its schedule item's payload; `None` when that item is missing.
    pub(crate) schedule: Option<u64>,
}

/// One tag as a chunk holds it.
#[derive(Serialize)]
struct ChunkTag<'a> {
    tag: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
}

/// Writes a new index from entries in tag order (see the module docs); the head is
/// written by [`IndexWriter::finish`], and nothing is visible to readers before it.
pub struct IndexWriter<'s, B> {
    store: &'s MetadataStore<B>,
    scope: Scope,
    repository: Repository,
    previous: Option<RepositoryHead>,
    previous_ids: HashSet<String>,
    known: HashMap<String, KnownChunk>,
    budget: usize,
    cut_every: u64,
    now: Millis,
    /// The chunk being filled: its payload so far and its tags' schedules.
    body: Vec<u8>,
    due: Vec<[i64; 3]>,
    first: Option<String>,
    last: Option<String>,
    chunks: Vec<ChunkRef>,
    /// Chunks written that the previous index does not name: deleted if the index is
    /// abandoned.
    written: Vec<String>,
    tag_count: u64,
}

impl<B: CacheWriter> IndexWriter<'_, B> {
    /// What the reader of the previous index learnt of its chunks, so that the chunks
    /// and schedules the new index keeps unchanged are not written again.
    pub(crate) fn remember(&mut self, known: impl IntoIterator<Item = (String, KnownChunk)>) {
        self.known.extend(known);
    }

    /// Adds the next entry; its tag must sort after the previous one's (a repeated tag
    /// is skipped). Writes a chunk when one is complete.
    pub async fn push(&mut self, entry: &TagEntry) -> Result<(), CacheError> {
        if let Some(last) = self.last.as_deref()
            && last >= entry.tag.as_str()
        {
            debug_assert!(
                last == entry.tag,
                "index entries out of order at {}",
                entry.tag
            );
            return Ok(());
        }
        let item = serde_json::to_vec(&ChunkTag {
            tag: &entry.tag,
            digest: entry.digest.as_ref().map(|d| d.as_str()),
        })
        .expect("schema types serialise");
        if self.first.is_some() && self.body.len() + item.len() + 3 > self.budget {
            self.cut().await?;
        }
        if self.first.is_none() {
            self.body.extend_from_slice(br#"{"tags":["#);
            self.first = Some(entry.tag.clone());
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(&item);
        self.due.push([
            entry.fetched,
            entry.deadline,
            entry.interval.min(i64::MAX as u64) as i64,
        ]);
        self.last = Some(entry.tag.clone());
        self.tag_count += 1;
        if self.body.len() >= self.budget / 8 && key_hash(&entry.tag).is_multiple_of(self.cut_every)
        {
            self.cut().await?;
        }
        Ok(())
    }

    /// Ends the chunk being filled and writes it and its schedule, each unless the
    /// previous index holds it as it is.
    async fn cut(&mut self) -> Result<(), CacheError> {
        let Some(first) = self.first.take() else {
            return Ok(());
        };
        let mut body = std::mem::take(&mut self.body);
        body.extend_from_slice(b"]}");
        let id = chunk_id(&body);
        let tags = self.due.len() as u32;
        let schedule = serde_json::to_vec(&ChunkSchedule {
            chunk: id.clone(),
            due: std::mem::take(&mut self.due),
        })
        .expect("schema types serialise");
        let known = self.known.get(&id).copied();
        let deadline = self.now.plus(CHUNK_LIFETIME);
        let fresh_until = self.now.plus(CHUNK_LIFETIME - CHUNK_REFRESH);
        let (store, scope, repository) = (self.store, &self.scope, &self.repository);
        if known.is_none_or(|k| k.deadline < fresh_until) {
            if !self.previous_ids.contains(&id) {
                self.written.push(id.clone());
            }
            store
                .set(&keys::tag_chunk(scope, repository, &id), &body, deadline)
                .await?;
        }
        if known.and_then(|k| k.schedule) != Some(xxh3_64(&schedule)) {
            store
                .set(
                    &keys::tag_schedule(scope, repository, &id),
                    &schedule,
                    deadline,
                )
                .await?;
        }
        self.chunks.push(ChunkRef { id, first, tags });
        Ok(())
    }

    /// Deletes the chunks this writer wrote that no published index names.
    pub async fn abandon(self) {
        self.store
            .delete_chunks(&self.scope, &self.repository, &self.written)
            .await;
    }

    /// Writes the last chunk, then the head that publishes the index with `freshness`;
    /// then deletes the chunks the previous pass retired. On failure the previous index
    /// stays published.
    pub async fn finish(
        mut self,
        freshness: &Freshness,
        deadline: Millis,
    ) -> Result<RepositoryHead, CacheError> {
        if let Err(e) = self.cut().await {
            self.abandon().await;
            return Err(e);
        }
        let ids: HashSet<&str> = self.chunks.iter().map(|c| c.id.as_str()).collect();
        let mut generation = Xxh3::new();
        for c in &self.chunks {
            generation.update(c.id.as_bytes());
        }
        let previous = self.previous.take().unwrap_or_default();
        let retired: Vec<String> = previous
            .chunks
            .iter()
            .map(|c| c.id.clone())
            .filter(|id| !ids.contains(id.as_str()))
            .collect();
        let to_delete: Vec<String> = previous
            .retired
            .iter()
            .filter(|id| !ids.contains(id.as_str()) && !retired.contains(id))
            .cloned()
            .collect();
        let head = RepositoryHead {
            canonical_name: self.repository.canonical(),
            generation: generation.digest().max(1),
            chunks: std::mem::take(&mut self.chunks),
            tag_count: self.tag_count,
            retired,
            last_update: freshness.last_update,
            last_error: freshness.last_error.clone(),
            last_error_at: freshness.last_error.as_ref().map(|_| Utc::now()),
        };
        let head_key = keys::repository_head(&self.scope, &self.repository);
        if let Err(e) = self.store.set_json(&head_key, &head, deadline).await {
            self.abandon().await;
            return Err(e);
        }
        self.store
            .delete_chunks(&self.scope, &self.repository, &to_delete)
            .await;
        Ok(head)
    }
}
