//! Typed reads: image records, the head, whole indexes (one generation, never a mix), a
//! repository's metadata and one image, with the read-time decorators applied.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{self, Scope};
use super::publish::KnownChunk;
use super::schema::{ChunkRef, ChunkSchedule, chunk_view, parse_content};
use super::{ImageRecord, MetadataStore, READ_ATTEMPTS, RepositoryHead, TagEntry};
use crate::cache::decorate::created_time;
use crate::cache::{CacheError, CacheReader};
use crate::image::{Digest, ImageRef, PlatformImage, RawContent, Reference, Repository};

/// Chunks a walk over an index reads at once (at most 2 MiB at the default chunk size).
const WALK_BATCH: usize = 16;
/// Image records read at once when a walk needs them.
const RECORD_BATCH: usize = 1000;

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
pub(crate) fn not_cached_help(repository: &str) -> String {
    format!(
        "check that an ImageRepositoryWatch covers {repository} (its status shows why warming \
         fails), that regcache reaches memcached, and that you asked under the scope of the \
         watch's credentials"
    )
}

impl<B: CacheReader> MetadataStore<B> {
    pub async fn get_image_record(
        &self,
        scope: &Scope,
        digest: &Digest,
    ) -> Result<Option<ImageRecord>, CacheError> {
        self.get_json(&keys::image(scope, digest)).await
    }

    /// A manifest or config blob by digest, as the registry sent it. An item that does
    /// not hold that digest's content is corrupt.
    pub async fn get_content(
        &self,
        scope: &Scope,
        digest: &Digest,
    ) -> Result<Option<RawContent>, CacheError> {
        let key = keys::content(scope, digest);
        match self.get(&key).await? {
            None => Ok(None),
            Some(entry) => {
                parse_content(digest, entry.value)
                    .map(Some)
                    .ok_or_else(|| CacheError::Corrupt {
                        key,
                        detail: "not a manifest or blob with this digest".to_string(),
                    })
            }
        }
    }

    /// Whether `digest` belongs to the published images of `repository`: a tag's image,
    /// or a platform manifest or config blob of one. Walks the index a few chunks at a
    /// time, then reads the image records (a batch at a time) when the digest is not a
    /// tag's: what it holds is the distinct digests, not the index.
    pub async fn references(
        &self,
        scope: &Scope,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<bool, ReadError> {
        let wanted = digest.as_str();
        let (_, (found, tops)) = self
            .walk_index(
                scope,
                repository,
                None,
                || (false, std::collections::BTreeSet::new()),
                |(found, tops), tags| {
                    for d in tags.iter().filter_map(|t| t.digest) {
                        if d == wanted {
                            *found = true;
                            return ControlFlow::Break(());
                        }
                        if !tops.contains(d) {
                            tops.insert(d.to_string());
                        }
                    }
                    ControlFlow::Continue(())
                },
            )
            .await?;
        if found {
            return Ok(true);
        }
        let tops: Vec<Digest> = tops.iter().filter_map(|d| Digest::parse(d).ok()).collect();
        for batch in tops.chunks(RECORD_BATCH) {
            let keys: Vec<String> = batch.iter().map(|d| keys::image(scope, d)).collect();
            let found = self.get_many(&keys).await?;
            if found.values().any(|e| {
                serde_json::from_slice::<ImageRecord>(&e.value).is_ok_and(|r| {
                    r.platforms
                        .iter()
                        .any(|p| &p.digest == digest || p.config_digest.as_ref() == Some(digest))
                })
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One page of the published tags in byte order: those after `last`, at most `n`
    /// (all when `None`), and whether more follow. Reads only the chunks the page needs.
    pub async fn tags_page(
        &self,
        scope: &Scope,
        repository: &Repository,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<(Vec<String>, bool), ReadError> {
        let (_, page) = self
            .walk_index(
                scope,
                repository,
                last,
                || (Vec::new(), false),
                |(tags, more): &mut (Vec<String>, bool), chunk| {
                    for t in chunk {
                        if last.is_some_and(|l| t.tag.as_ref() <= l) {
                            continue;
                        }
                        if n.is_some_and(|n| tags.len() >= n) {
                            *more = n != Some(0);
                            return ControlFlow::Break(());
                        }
                        tags.push(t.tag.to_string());
                    }
                    ControlFlow::Continue(())
                },
            )
            .await?;
        Ok(page)
    }

    /// Walks the published index in tag order, a few chunks at a time, from the chunk
    /// that holds `from` (or the first), until `visit` breaks. When a chunk is gone (a
    /// newer index replaced it), the walk starts again from the new head with a fresh
    /// `init()` state: a walk never mixes two indexes.
    pub(crate) async fn walk_index<S>(
        &self,
        scope: &Scope,
        repository: &Repository,
        from: Option<&str>,
        init: impl Fn() -> S,
        mut visit: impl FnMut(&mut S, &[super::TagView<'_>]) -> ControlFlow<()>,
    ) -> Result<(RepositoryHead, S), ReadError> {
        let mut last_head = None;
        for _ in 0..READ_ATTEMPTS {
            let head = self
                .head_to_read(scope, repository, last_head.as_ref())
                .await?;
            let start = from.and_then(|t| head.chunk_index(t)).unwrap_or(0);
            let mut state = init();
            let mut moved = false;
            'walk: for batch in head.chunks[start..].chunks(WALK_BATCH) {
                let keys: Vec<String> = batch
                    .iter()
                    .map(|c| keys::tag_chunk(scope, repository, &c.id))
                    .collect();
                let found = self.get_many(&keys).await?;
                for (chunk, key) in batch.iter().zip(&keys) {
                    let Some(view) = found.get(key).and_then(|e| chunk_view(&e.value, chunk))
                    else {
                        moved = true;
                        break 'walk;
                    };
                    if visit(&mut state, &view.tags).is_break() {
                        break 'walk;
                    }
                }
            }
            if !moved {
                return Ok((head, state));
            }
            last_head = Some(head);
        }
        Err(self.not_cached(repository, last_head.as_ref()))
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
    pub(super) async fn get_head(&self, key: &str) -> Result<Option<RepositoryHead>, CacheError> {
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

    /// The head and every tag entry of one generation, or `None` when nothing is
    /// published (or what was published is gone).
    pub async fn read_index(
        &self,
        scope: &Scope,
        repository: &Repository,
    ) -> Result<Option<(RepositoryHead, Vec<TagEntry>)>, CacheError> {
        self.read_chunks(scope, repository, true).await
    }

    /// The index readers are served: NotCached, saying why, unless a pass has completed
    /// (a head with only an error, or one whose chunks are gone, is not an answer). Its
    /// entries carry tags and digests; their schedule, the warmer's own, is not read.
    pub async fn published_index(
        &self,
        scope: &Scope,
        repository: &Repository,
    ) -> Result<(RepositoryHead, Vec<TagEntry>), ReadError> {
        let Some((head, entries)) = self.read_chunks(scope, repository, false).await? else {
            let head = self.head(scope, repository).await.ok().flatten();
            return Err(self.not_cached(repository, head.as_ref()));
        };
        if head.last_update.is_none() {
            return Err(self.not_cached(repository, Some(&head)));
        }
        Ok((head, entries))
    }

    /// Reads every chunk, and with `schedules` each chunk's schedule (a schedule that is
    /// missing leaves its tags due now); readers of the published index skip them.
    async fn read_chunks(
        &self,
        scope: &Scope,
        repository: &Repository,
        schedules: bool,
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
            let keys: Vec<String> = head
                .chunks
                .iter()
                .flat_map(|c| {
                    let chunk = keys::tag_chunk(scope, repository, &c.id);
                    let schedule = schedules.then(|| keys::tag_schedule(scope, repository, &c.id));
                    std::iter::once(chunk).chain(schedule)
                })
                .collect();
            let found = if keys.is_empty() {
                HashMap::new()
            } else {
                self.get_many(&keys).await?
            };
            let mut entries = Vec::with_capacity(head.tag_count as usize);
            let mut complete = true;
            let per_chunk = if schedules { 2 } else { 1 };
            for (chunk, names) in head.chunks.iter().zip(keys.chunks(per_chunk)) {
                let Some(value) = found.get(&names[0]) else {
                    complete = false;
                    break;
                };
                let schedule = names.get(1).and_then(|k| found.get(k));
                match chunk_entries(chunk, &value.value, schedule.map(|e| &e.value[..])) {
                    Some(tags) => entries.extend(tags),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                if !entries.windows(2).all(|w| w[0].tag < w[1].tag) {
                    return Err(CacheError::Corrupt {
                        key: keys::repository_head(scope, repository),
                        detail: "the head's chunks overlap".to_string(),
                    });
                }
                return Ok(Some((head, entries)));
            }
        }
        Ok(None)
    }

    pub(crate) fn not_cached(
        &self,
        repository: &Repository,
        head: Option<&RepositoryHead>,
    ) -> ReadError {
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

    pub(crate) fn info(
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
        let (head, entries) = self.published_index(scope, repository).await?;
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
            Reference::Tag(tag) => (
                self.digest_of_tag(scope, repository, &tag).await?,
                Some(tag),
            ),
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

    /// `record` with the timestamp-label decorator applied.
    pub(crate) fn decorated(&self, mut record: ImageRecord) -> ImageRecord {
        record.created = created_time(true, &record.labels, record.created);
        for p in &mut record.platforms {
            p.created = created_time(true, &p.labels, p.created);
        }
        record
    }

    /// The head a read attempt follows. NotCached when nothing was ever fetched, or when
    /// it names the same generation as the previous attempt (`last`), whose chunks were
    /// incomplete: evicted, not being replaced.
    pub(crate) async fn head_to_read(
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
    pub(crate) async fn digest_of_tag(
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
            let Some(chunk) = head.chunk_of(tag) else {
                return Err(tag_not_found());
            };
            let key = keys::tag_chunk(scope, repository, &chunk.id);
            let found = self.get(&key).await?;
            let Some(view) = found.as_ref().and_then(|e| chunk_view(&e.value, chunk)) else {
                last_head = Some(head);
                continue;
            };
            return view
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

/// The entries of `chunk` from its stored payload and schedule, or `None` when the payload
/// is not that chunk. A schedule that is missing or not the chunk's leaves every tag due
/// now, with no interval yet.
fn chunk_entries(chunk: &ChunkRef, value: &[u8], schedule: Option<&[u8]>) -> Option<Vec<TagEntry>> {
    let view = chunk_view(value, chunk)?;
    let due = schedule
        .and_then(|s| serde_json::from_slice::<ChunkSchedule>(s).ok())
        .filter(|s| s.chunk == chunk.id && s.due.len() == view.tags.len())
        .map(|s| s.due);
    let mut entries = Vec::with_capacity(view.tags.len());
    for (i, t) in view.tags.into_iter().enumerate() {
        let [fetched, deadline, interval] = due.as_ref().map_or([0; 3], |d| d[i]);
        entries.push(TagEntry {
            tag: t.tag.into_owned(),
            // A digest that does not parse is dropped: the tag is resolved again.
            digest: t.digest.and_then(|d| Digest::parse(d).ok()),
            fetched,
            deadline,
            interval: interval.max(0) as u64,
        });
    }
    Some(entries)
}

/// Reads the previous index one chunk at a time, in tag order, for a pass that walks its
/// tags in the same order: what it holds at once is a chunk, not the index.
pub struct IndexCursor<'s, B> {
    store: &'s MetadataStore<B>,
    scope: Scope,
    repository: Repository,
    head: Option<RepositoryHead>,
    next: usize,
    loaded: std::collections::VecDeque<TagEntry>,
    known: Vec<(String, KnownChunk)>,
    /// A chunk could not be read: the tags from there on count as not cached.
    lost: bool,
}

impl<'s, B: CacheReader> IndexCursor<'s, B> {
    /// Opens the index published for `repository`. A head that cannot be read counts as
    /// none: the pass then warms from scratch.
    pub async fn open(store: &'s MetadataStore<B>, scope: &Scope, repository: &Repository) -> Self {
        let head = store.head(scope, repository).await.unwrap_or_else(|e| {
            tracing::warn!(repository = %repository, error = %e, "cannot read the cached index; warming from scratch");
            None
        });
        IndexCursor {
            store,
            scope: scope.clone(),
            repository: repository.clone(),
            head,
            next: 0,
            loaded: Default::default(),
            known: Vec::new(),
            lost: false,
        }
    }

    /// The head the cursor reads.
    pub fn head(&self) -> Option<&RepositoryHead> {
        self.head.as_ref()
    }

    /// Every cached entry whose tag sorts at or before `last` and after those returned
    /// before, in tag order.
    pub async fn until(&mut self, last: &str) -> Vec<TagEntry> {
        while let Some(chunk) = self
            .head
            .as_ref()
            .and_then(|h| h.chunks.get(self.next))
            .filter(|c| !self.lost && c.first.as_str() <= last)
            .cloned()
        {
            self.next += 1;
            self.load(&chunk).await;
        }
        let n = self.loaded.partition_point(|e| e.tag.as_str() <= last);
        self.loaded.drain(..n).collect()
    }

    async fn load(&mut self, chunk: &ChunkRef) {
        let keys = [
            keys::tag_chunk(&self.scope, &self.repository, &chunk.id),
            keys::tag_schedule(&self.scope, &self.repository, &chunk.id),
        ];
        let found = match self.store.get_many_available(&keys).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(repository = %self.repository, error = %e, "cannot read the cached index; warming the rest from scratch");
                self.lost = true;
                return;
            }
        };
        let schedule = found.get(&keys[1]);
        let entries = found.get(&keys[0]).and_then(|value| {
            chunk_entries(chunk, &value.value, schedule.map(|e| &e.value[..]))
                .map(|entries| (value.deadline, entries))
        });
        match entries {
            Some((deadline, entries)) => {
                self.known.push((
                    chunk.id.clone(),
                    KnownChunk {
                        deadline,
                        schedule: schedule.map(|e| xxhash_rust::xxh3::xxh3_64(&e.value)),
                    },
                ));
                self.loaded.extend(entries);
            }
            None => {
                tracing::warn!(repository = %self.repository, chunk = %chunk.id, "a chunk of the cached index is missing; warming the rest from scratch");
                self.lost = true;
            }
        }
    }

    /// What the cursor learnt of the chunks read since the last call, for the writer of
    /// the next index ([`super::IndexWriter::remember`]).
    pub(crate) fn take_known(&mut self) -> Vec<(String, KnownChunk)> {
        std::mem::take(&mut self.known)
    }
}
