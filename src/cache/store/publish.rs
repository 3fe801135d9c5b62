//! Writing: image records, and tag indexes published as a new generation of chunks under
//! a head written last; failures recorded without touching the published data.

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::keys::{self, Scope};
use super::schema::content_value;
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
}
