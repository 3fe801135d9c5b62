//! The read API's answers as JSON, built from the store's bytes: chunks are parsed without
//! copying their tags, and image records go into an answer as stored. Repository answers
//! are kept (`answers.rs`) and reused while the published index is unchanged; those of
//! large repositories are streamed chunk by chunk instead of built whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::answers::{AnswerKey, Answers};
use super::metrics::ApiMetrics;
use crate::cache::keys::{self, Scope};
use futures::StreamExt;
use xxhash_rust::xxh3::xxh3_128;

use crate::cache::store::{
    ImageRecord, MetadataStore, READ_ATTEMPTS, ReadError, RepositoryHead, chunk_view,
    not_cached_help,
};
use crate::cache::{CacheError, CacheMetrics, CacheReader};
use crate::image::{Digest, ImageRef, Reference, Repository};

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

/// Builds the read API's answers from a store, keeping recent repository answers.
pub struct ReadApi<B> {
    store: Arc<MetadataStore<B>>,
    answers: Answers,
    metrics: CacheMetrics,
    api_metrics: ApiMetrics,
}

impl<B: CacheReader> ReadApi<B> {
    /// Answers from `store`, keeping none (see [`Self::with_answer_cache`]).
    pub fn new(store: Arc<MetadataStore<B>>) -> Self {
        ReadApi {
            store,
            answers: Answers::new(0),
            metrics: CacheMetrics::default(),
            api_metrics: ApiMetrics::default(),
        }
    }

    /// Keeps up to `bytes` of repository answers, each reused for as long as the
    /// repository's head in the cache is unchanged.
    pub fn with_answer_cache(mut self, bytes: usize) -> Self {
        self.answers = Answers::new(bytes);
        self
    }

    /// Records answers reused and built in `regcache_cache_answers_total`.
    pub fn with_metrics(mut self, metrics: CacheMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records the registry API's requests in `regcache_api_registry_requests_total`.
    pub fn with_api_metrics(mut self, metrics: ApiMetrics) -> Self {
        self.api_metrics = metrics;
        self
    }

    pub(crate) fn api_metrics(&self) -> &ApiMetrics {
        &self.api_metrics
    }

    pub fn store(&self) -> &Arc<MetadataStore<B>> {
        &self.store
    }

    /// The read API's repository answer ([`RepositoryAnswer`]) as JSON, whole: see
    /// [`Self::repository_body`].
    pub async fn repository_json(
        &self,
        scope: &Scope,
        repository: &Repository,
        label_times: bool,
    ) -> Result<Bytes, ReadError>
    where
        B: 'static,
    {
        match self
            .repository_body(scope, repository, label_times, usize::MAX)
            .await?
        {
            RepositoryBody::Whole(body) => Ok(body),
            RepositoryBody::Stream(mut parts) => {
                let mut out = Vec::new();
                while let Some(part) = parts.next().await {
                    out.extend_from_slice(&part?);
                }
                Ok(out.into())
            }
        }
    }

    /// The read API's repository answer ([`RepositoryAnswer`]), built from the stored
    /// bytes: chunks are parsed without copying their tags, and image records go into the
    /// answer verbatim unless the timestamp-label decorator applies (forced by
    /// `label_times`, or by the allowlist), which re-serialises each distinct image once.
    ///
    /// An answer of a repository of more than `stream_over` tags is streamed: built one
    /// chunk at a time as the client reads it (tags, then the images of each chunk's tags
    /// not listed yet), so serving it holds a chunk and its images, not the answer.
    /// Smaller answers are built whole and kept for as long as the published index is the
    /// same (the head's freshness is added on each read).
    pub async fn repository_body(
        &self,
        scope: &Scope,
        repository: &Repository,
        label_times: bool,
        stream_over: usize,
    ) -> Result<RepositoryBody, ReadError>
    where
        B: 'static,
    {
        let name = repository.canonical();
        let decorate = label_times || self.store.timestamp_labels_apply(&name);
        let answer_key = AnswerKey {
            scope: scope.to_string(),
            repository: name.clone(),
            decorated: decorate,
        };
        let mut last_head = None;
        for _ in 0..READ_ATTEMPTS {
            let head = self
                .store
                .head_to_read(scope, repository, last_head.as_ref())
                .await?;
            if let Some(answer) = self.answers.get(&answer_key, head.generation) {
                self.metrics.answer(true, self.answers.bytes());
                return Ok(RepositoryBody::Whole(with_freshness(&answer, &head)));
            }
            let mut build = AnswerBuild::new(self.store.clone(), scope, repository, decorate, head);
            if build.head.tag_count as usize > stream_over {
                self.metrics.answer(false, self.answers.bytes());
                let parts = futures::stream::unfold(build, |mut b| async move {
                    b.next_part()
                        .await
                        .map(|part| (part.map(Bytes::from).map_err(PartError::into_read), b))
                });
                return Ok(RepositoryBody::Stream(Box::pin(parts)));
            }
            build.streamed = false;
            let mut out = Vec::new();
            let moved = loop {
                match build.next_part().await {
                    None => break false,
                    Some(Ok(part)) => out.extend_from_slice(&part),
                    Some(Err(PartError::Moved)) => break true,
                    Some(Err(PartError::Read(e))) => return Err(e),
                }
            };
            if moved {
                last_head = Some(build.head);
                continue;
            }
            let out = Bytes::from(out);
            if build.complete {
                self.answers
                    .put(answer_key, build.head.generation, out.clone());
            }
            self.metrics.answer(false, self.answers.bytes());
            return Ok(RepositoryBody::Whole(with_freshness(&out, &build.head)));
        }
        Err(self.store.not_cached(repository, last_head.as_ref()))
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
                self.store.digest_of_tag(scope, repository, &tag).await?,
                Some(tag),
            ),
        };
        let not_cached = || ReadError::ImageNotCached {
            repository: name.clone(),
            digest: digest.to_string(),
            help: not_cached_help(&name),
        };
        let entry = self
            .store
            .get(&keys::image(scope, &digest))
            .await?
            .ok_or_else(not_cached)?;
        if label_times || self.store.timestamp_labels_apply(&name) {
            let record: ImageRecord =
                serde_json::from_slice(&entry.value).map_err(|e| CacheError::Corrupt {
                    key: keys::image(scope, &digest),
                    detail: e.to_string(),
                })?;
            let info = self.store.info(&name, tag.as_deref(), record, label_times);
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
}

/// A repository answer, whole or as parts to send in order.
pub enum RepositoryBody {
    Whole(Bytes),
    Stream(futures::stream::BoxStream<'static, Result<Bytes, ReadError>>),
}

/// Why a part of an answer could not be built.
enum PartError {
    /// A chunk the head names is gone: a newer index replaced it.
    Moved,
    Read(ReadError),
}

impl PartError {
    fn into_read(self) -> ReadError {
        match self {
            PartError::Moved => ReadError::Cache(CacheError::Corrupt {
                key: "tag index".to_string(),
                detail: "the index was replaced while its answer was sent; read it again"
                    .to_string(),
            }),
            PartError::Read(e) => e,
        }
    }
}

impl From<CacheError> for PartError {
    fn from(e: CacheError) -> Self {
        PartError::Read(e.into())
    }
}

/// The answer without its freshness, and its closing brace: everything up to the images'
/// closing brace. Kept answers are stored so, and [`with_freshness`] ends them.
fn with_freshness(answer: &[u8], head: &RepositoryHead) -> Bytes {
    let mut out = Vec::with_capacity(answer.len() + 128);
    out.extend_from_slice(answer);
    freshness(&mut out, head);
    out.into()
}

/// The head's freshness and the answer's closing brace.
fn freshness(out: &mut Vec<u8>, head: &RepositoryHead) {
    if let Some(t) = &head.last_update {
        out.extend_from_slice(b",\"lastUpdate\":");
        serde_json::to_writer(&mut *out, t).expect("times serialise");
    }
    if let Some(e) = &head.last_error {
        out.extend_from_slice(b",\"lastError\":");
        push_str(out, e);
    }
    out.push(b'}');
}

/// Where an answer's build is.
enum Step {
    Start,
    Tags(usize),
    Images(usize),
    End,
    Done,
}

/// Builds a repository answer part by part: the opening, each chunk's tags, each chunk's
/// images not listed before, then the end (freshness only when streamed).
struct AnswerBuild<B> {
    store: Arc<MetadataStore<B>>,
    scope: Scope,
    repository: Repository,
    decorate: bool,
    head: RepositoryHead,
    step: Step,
    /// Images listed so far, by XXH3-128 of the digest.
    listed: HashSet<u128>,
    /// Whether every image record was found and written.
    complete: bool,
    any_image: bool,
    /// Streamed answers end with the head's freshness; whole ones get it on each read.
    streamed: bool,
}

impl<B: CacheReader> AnswerBuild<B> {
    fn new(
        store: Arc<MetadataStore<B>>,
        scope: &Scope,
        repository: &Repository,
        decorate: bool,
        head: RepositoryHead,
    ) -> Self {
        AnswerBuild {
            store,
            scope: scope.clone(),
            repository: repository.clone(),
            decorate,
            head,
            step: Step::Start,
            listed: HashSet::new(),
            complete: true,
            any_image: false,
            streamed: true,
        }
    }

    /// Chunk `i`'s stored bytes; the caller checks them against the head
    /// ([`chunk_view`]).
    async fn chunk(&self, i: usize) -> Result<Bytes, PartError> {
        let key = keys::tag_chunk(&self.scope, &self.repository, &self.head.chunks[i].id);
        Ok(self.store.get(&key).await?.ok_or(PartError::Moved)?.value)
    }

    async fn next_part(&mut self) -> Option<Result<Vec<u8>, PartError>> {
        let result = match self.step {
            Step::Done => return None,
            Step::Start => {
                let mut out = b"{\"canonicalName\":".to_vec();
                push_str(&mut out, &self.repository.canonical());
                out.extend_from_slice(b",\"tags\":{");
                self.step = Step::Tags(0);
                Ok(out)
            }
            Step::Tags(i) if i == self.head.chunks.len() => {
                self.step = Step::Images(0);
                Ok(b"},\"images\":{".to_vec())
            }
            Step::Tags(i) => self.tags(i).await,
            Step::Images(i) if i == self.head.chunks.len() => {
                self.step = Step::End;
                Ok(b"}".to_vec())
            }
            Step::Images(i) => self.images(i).await,
            Step::End => {
                self.step = Step::Done;
                let mut out = Vec::new();
                if self.streamed {
                    freshness(&mut out, &self.head);
                }
                Ok(out)
            }
        };
        if result.is_err() {
            self.step = Step::Done;
        }
        Some(result)
    }

    async fn tags(&mut self, i: usize) -> Result<Vec<u8>, PartError> {
        let value = self.chunk(i).await?;
        let view = chunk_view(&value, &self.head.chunks[i]).ok_or(PartError::Moved)?;
        let mut out = Vec::with_capacity(value.len());
        for (n, t) in view.tags.iter().enumerate() {
            if n > 0 || i > 0 {
                out.push(b',');
            }
            push_str(&mut out, &t.tag);
            out.push(b':');
            match t.digest {
                Some(d) => push_str(&mut out, d),
                None => out.extend_from_slice(b"null"),
            }
        }
        self.step = Step::Tags(i + 1);
        Ok(out)
    }

    async fn images(&mut self, i: usize) -> Result<Vec<u8>, PartError> {
        let value = self.chunk(i).await?;
        let view = chunk_view(&value, &self.head.chunks[i]).ok_or(PartError::Moved)?;
        // A digest that does not parse names no image item; its tags still list it.
        let mut digests: Vec<Digest> = Vec::new();
        for d in view.tags.iter().filter_map(|t| t.digest) {
            if let Ok(d) = Digest::parse(d)
                && self.listed.insert(xxh3_128(d.as_str().as_bytes()))
            {
                digests.push(d);
            }
        }
        let image_keys: Vec<String> = digests
            .iter()
            .map(|d| keys::image(&self.scope, d))
            .collect();
        let records = if image_keys.is_empty() {
            HashMap::new()
        } else {
            self.store.get_many(&image_keys).await?
        };
        let mut out = Vec::new();
        for (digest, key) in digests.iter().zip(&image_keys) {
            let Some(entry) = records.get(key) else {
                self.complete = false;
                continue;
            };
            let mark = out.len();
            if self.any_image {
                out.push(b',');
            }
            push_str(&mut out, digest.as_str());
            out.push(b':');
            let written = if self.decorate {
                serde_json::from_slice::<ImageRecord>(&entry.value)
                    .map(|r| {
                        serde_json::to_writer(&mut out, &self.store.decorated(r))
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
                self.any_image = true;
            } else {
                self.complete = false;
                out.truncate(mark);
            }
        }
        self.step = Step::Images(i + 1);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheWriter;
    use crate::cache::decorate::TimestampLabels;
    use crate::cache::memory::MemoryCache;
    use crate::cache::store::TagEntry;
    use crate::cache::store::tests::{entry, later, record, repo};

    /// The repository answer for `repo()`, and how many images it lists.
    async fn answer(read: &ReadApi<MemoryCache>) -> (Bytes, usize) {
        let body = read
            .repository_json(&Scope::public(), &repo(), false)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let images = v["images"].as_object().unwrap().len();
        (body, images)
    }

    #[tokio::test]
    async fn repository_answers_are_reused_until_the_index_changes() {
        let mut metrics = crate::telemetry::MetricsRegistry::default();
        let cache_metrics = CacheMetrics::register(metrics.root());
        let store = Arc::new(MetadataStore::new(MemoryCache::new(4096)));
        let read = ReadApi::new(store.clone())
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
            store.put_image(&scope, &rec, &[], later()).await.unwrap();
        }
        let entries = vec![entry("a", &d1), entry("b", &d2)];
        store
            .publish_index(&scope, &repo(), &entries, Utc::now(), later())
            .await
            .unwrap();
        let (first, images) = answer(&read).await;
        assert_eq!(images, 2);

        // The head is unchanged: the kept answer is served, though a record has gone.
        let d2_key = keys::image(&scope, &d2);
        store.backend().delete(&d2_key).await.unwrap();
        assert_eq!(answer(&read).await.0, first);
        assert_eq!((answers("reused"), answers("built")), (1, 1));
        // Kept without the head's freshness, which each read adds.
        let kept: usize = metrics
            .encode()
            .lines()
            .find_map(|l| {
                l.strip_prefix("regcache_cache_answer_cache_bytes ")?
                    .parse()
                    .ok()
            })
            .unwrap();
        assert!(kept > 0 && kept < first.len(), "{kept} of {}", first.len());

        // A pass that changed no tag (an error recorded, or the same index published
        // again): the same generation, so the kept answer is served with the new freshness.
        store
            .record_error(&scope, &repo(), "registry down", later())
            .await
            .unwrap();
        let (errored, images) = answer(&read).await;
        assert_eq!(images, 2, "the kept answer");
        assert!(
            std::str::from_utf8(&errored)
                .unwrap()
                .contains("registry down")
        );
        let now = Utc::now() + chrono::Duration::seconds(5);
        store
            .publish_index(&scope, &repo(), &entries, now, later())
            .await
            .unwrap();
        let (again, _) = answer(&read).await;
        let v: serde_json::Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(v["lastUpdate"], serde_json::to_value(now).unwrap());
        assert!(v.get("lastError").is_none());
        assert_eq!((answers("reused"), answers("built")), (3, 1));

        // A moved tag is a new generation: the answer is built afresh. It misses d2's
        // record, so it is not kept, and the record written again shows at the next read.
        let moved = vec![entry("a", &d2), entry("b", &d2)];
        store
            .publish_index(&scope, &repo(), &moved, Utc::now(), later())
            .await
            .unwrap();
        assert_eq!(answer(&read).await.1, 0);
        let rec = record(&d2, "2024-01-01T00:00:00Z", None);
        store.put_image(&scope, &rec, &[], later()).await.unwrap();
        assert_eq!(answer(&read).await.1, 1);
        assert_eq!((answers("reused"), answers("built")), (3, 3));

        // Without an answer cache every read is built from memcached.
        let uncached = Arc::new(MetadataStore::new(MemoryCache::new(4096)));
        let uncached_read = ReadApi::new(uncached.clone());
        uncached
            .put_image(&scope, &rec, &[], later())
            .await
            .unwrap();
        uncached
            .publish_index(&scope, &repo(), &entries[1..], Utc::now(), later())
            .await
            .unwrap();
        assert_eq!(answer(&uncached_read).await.1, 1);
        uncached.backend().delete(&d2_key).await.unwrap();
        assert_eq!(answer(&uncached_read).await.1, 0);
    }

    /// The parts of a streamed answer, collected; the first error ends them.
    async fn streamed(read: &ReadApi<MemoryCache>) -> Result<Vec<Bytes>, ReadError> {
        let RepositoryBody::Stream(mut parts) = read
            .repository_body(&Scope::public(), &repo(), false, 0)
            .await
            .unwrap()
        else {
            panic!("an answer over stream_over tags is streamed");
        };
        let mut out = Vec::new();
        while let Some(part) = parts.next().await {
            out.push(part?);
        }
        Ok(out)
    }

    /// A streamed answer is the whole answer, sent a chunk at a time: the same tags,
    /// each image once, the freshness. A chunk replaced while it is streamed ends the
    /// stream with an error, never with a mix of two indexes.
    #[tokio::test]
    async fn a_streamed_answer_is_the_whole_answer_and_a_replaced_chunk_ends_it() {
        let store = Arc::new(MetadataStore::new(MemoryCache::new(4096)));
        let read = ReadApi::new(store.clone());
        let scope = Scope::public();
        let digests: Vec<Digest> = (0..5)
            .map(|i| Digest::sha256_of(format!("image {i}").as_bytes()))
            .collect();
        for d in &digests[..4] {
            let rec = record(d, "2024-01-01T00:00:00Z", None);
            store.put_image(&scope, &rec, &[], later()).await.unwrap();
        }
        // Images shared across chunks; the last is not cached.
        let entries: Vec<TagEntry> = (0..300)
            .map(|i| entry(&format!("t{i:03}"), &digests[i % 5]))
            .collect();
        let head = store
            .publish_index(&scope, &repo(), &entries, Utc::now(), later())
            .await
            .unwrap();
        assert!(head.chunks.len() > 2, "{} chunks", head.chunks.len());

        let whole = read.repository_json(&scope, &repo(), false).await.unwrap();
        let parts = streamed(&read).await.unwrap();
        assert!(parts.len() > 2 * head.chunks.len(), "{} parts", parts.len());
        let body: Vec<u8> = parts.concat();
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&whole).unwrap(),
            serde_json::from_slice(&body).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(b["tags"].as_object().unwrap().len(), 300);
        assert_eq!(b["images"].as_object().unwrap().len(), 4);
        assert!(b["lastUpdate"].is_string());

        // A chunk gone mid-stream (a newer index retired it): an error, not a mix.
        let last = keys::tag_chunk(&scope, &repo(), &head.chunks.last().unwrap().id);
        store.backend().delete(&last).await.unwrap();
        assert!(streamed(&read).await.is_err());
    }

    #[tokio::test]
    async fn repository_json_lists_each_image_once_as_stored() {
        let store = Arc::new(MetadataStore::new(MemoryCache::new(4096)));
        let read = ReadApi::new(store.clone());
        let scope = Scope::public();
        let (d1, d2) = (Digest::sha256_of(b"one"), Digest::sha256_of(b"two"));
        let rec = record(&d1, "2024-01-01T00:00:00Z", Some("2024-05-06T07:08:09Z"));
        store.put_image(&scope, &rec, &[], later()).await.unwrap();
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
        assert!(head.chunks.len() > 1, "{} chunks", head.chunks.len());

        let body = read.repository_json(&scope, &repo(), false).await.unwrap();
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
        let decorated = read.repository_json(&scope, &repo(), true).await.unwrap();
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
            read.repository_json(&other, &repo(), false).await,
            Err(ReadError::NotCached { .. })
        ));
    }

    #[tokio::test]
    async fn image_json_answers_as_image_does() {
        let scope = Scope::public();
        let d = Digest::sha256_of(b"img");
        let rec = record(&d, "1970-01-01T00:00:00Z", Some("2024-05-06T07:08:09Z"));
        for patterns in [vec![], vec!["ghcr.io/org/*"]] {
            let store = Arc::new(
                MetadataStore::new(MemoryCache::new(4096))
                    .with_timestamp_labels(TimestampLabels::new(&patterns).unwrap()),
            );
            let read = ReadApi::new(store.clone());
            store.put_image(&scope, &rec, &[], later()).await.unwrap();
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
                    serde_json::from_slice(&read.image_json(&scope, &image, false).await.unwrap())
                        .unwrap();
                assert_eq!(got, want, "{patterns:?} {reference}");
            }
            let missing = ImageRef::parse("ghcr.io/org/app:nope").unwrap();
            assert!(matches!(
                read.image_json(&scope, &missing, false).await,
                Err(ReadError::TagNotFound { .. })
            ));
        }
    }
}
