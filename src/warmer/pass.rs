//! One warm pass over one target: list, filter, HEAD the due tags (or GET the new ones on
//! a host that does not count pulls), GET only unseen digests, publish. The request economy
//! of the refresh algorithm (`docs/design-notes.md`, Warmer) lives here; its decisions are
//! the pure functions of `decide.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;

use super::decide::{self, Fetched, Merged, TagPlan};
use super::schedule::{Change, RefreshPolicy};
use super::{FailureKind, Outcome, TagChange, TagChangeKind, Target};
use crate::cache::memcached::key_hash;
use crate::cache::store::{Freshness, ImageRecord, IndexCursor, MetadataStore, TagEntry};
use crate::cache::{CacheWriter, Millis};
use crate::credentials::Credential;
use crate::image::{Digest, Reference};
use crate::registry::{self, FetchedManifest, RegistryClient, RepositoryClient};

/// Image records never change (they are addressed by digest); they are kept as long as
/// the longest tag interval.
const IMAGE_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a pass decides. It sends as many requests at once as its host allows (the host
/// limiter's concurrency, shared with the other passes on the host).
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub policy: RefreshPolicy,
}

/// What failed in a pass, kept to the first of each kind so `lastError` stays readable.
#[derive(Default)]
struct Failures {
    messages: Vec<String>,
    count: usize,
    rate_limited: Option<Duration>,
    first: Option<FailureKind>,
}

impl Failures {
    fn add(&mut self, what: String, e: &registry::Error) {
        self.count += 1;
        self.first.get_or_insert(FailureKind::of(e));
        if let registry::Error::RateLimited { retry_after, .. } = e {
            self.rate_limited = Some(retry_after.unwrap_or(Duration::from_secs(60)));
        }
        if self.messages.len() < 3 {
            self.messages.push(format!("{what}: {e}"));
        }
    }

    fn add_cache(&mut self, what: String, e: &crate::cache::CacheError) {
        self.count += 1;
        self.first.get_or_insert(FailureKind::Cache);
        if self.messages.len() < 3 {
            self.messages.push(format!("{what}: {e}"));
        }
    }

    fn summary(&self) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let mut s = self.messages.join("; ");
        if self.count > self.messages.len() {
            s.push_str(&format!(
                " (and {} more failures)",
                self.count - self.messages.len()
            ));
        }
        Some(s)
    }
}

/// Runs one pass. Never panics on registry or cache failures: they end up in the
/// outcome's `error` and the cache keeps its previous data.
pub async fn run<B: CacheWriter>(
    registry: &RegistryClient,
    store: &MetadataStore<B>,
    options: &PassOptions,
    target: &Target,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::new(target);
    let now = Millis::now();
    let scope = &target.scope;
    let repository = &target.repository;
    let head_deadline = now.plus(target.interval);

    // A cloud login signs in first; a failure there makes no registry request.
    let credential = match &target.cloud {
        None => Ok(target.credential.clone()),
        Some(cloud) => {
            match registry.repository(repository, Credential::Anonymous, &target.endpoint) {
                Ok(anonymous) => cloud
                    .sign_in
                    .credential(&cloud.login, &anonymous)
                    .await
                    .map_err(|e| (Some(FailureKind::CredentialsUnavailable), e.to_string())),
                Err(e) => Err((None, e.to_string())),
            }
        }
    };
    let rc = credential.and_then(|c| {
        registry
            .repository(repository, c, &target.endpoint)
            .map_err(|e| (None, e.to_string()))
    });
    let rc = match rc {
        Ok(rc) => rc,
        Err((failure, message)) => {
            outcome.failure = failure;
            return finish_failed(
                store,
                target,
                outcome,
                started,
                message,
                None,
                head_deadline,
            )
            .await;
        }
    };
    let (rc, pass) = rc.for_pass();

    // 1. List and filter.
    let listed = match rc.list_tags().await {
        Ok(t) => t,
        Err(e) => {
            outcome.requests = pass.stats.snapshot();
            let retry = match &e {
                registry::Error::RateLimited { retry_after, .. } => *retry_after,
                _ => None,
            };
            outcome.failure = Some(FailureKind::of(&e));
            let msg = format!("listing tags of {}: {e}", repository);
            return finish_failed(store, target, outcome, started, msg, retry, head_deadline).await;
        }
    };
    outcome.listed = listed.len();
    let filtered = target.filter.apply(listed);
    outcome.excluded = filtered.excluded + filtered.over_budget;
    let mut kept = filtered.kept;
    // The index is kept in byte order, so it is read and written in that order.
    kept.sort_unstable();
    kept.dedup();

    // 2. The cached index, read and written again one window of tags at a time.
    let mut cursor = IndexCursor::open(store, scope, repository).await;
    let previous_head = cursor.head().cloned();
    let mut writer = store.index_writer(scope, repository, previous_head.clone());
    let mut window = Window {
        rc: &rc,
        store,
        target,
        options,
        now,
        in_flight: rc.host_concurrency(),
        failures: Failures::default(),
        records: HashMap::new(),
        outcome: &mut outcome,
        latest: Vec::new(),
        images: HashSet::new(),
    };
    let mut written = Ok(());
    for tags in kept.chunks(WINDOW) {
        let last = tags.last().expect("chunks are not empty");
        let previous: HashMap<String, TagEntry> = cursor
            .until(last)
            .await
            .into_iter()
            .map(|e| (e.tag.clone(), e))
            .collect();
        writer.remember(cursor.take_known());
        let entries = window.warm(tags, &previous).await;
        for entry in entries.values() {
            window.count(entry);
            written = writer.push(entry).await;
            if written.is_err() {
                break;
            }
        }
        if written.is_err() {
            break;
        }
    }
    drop(kept);

    // 3. Publish: the index moves forward; lastUpdate only if nothing failed.
    let Window {
        failures,
        latest,
        images,
        ..
    } = window;
    outcome.latest_tags = latest.into_iter().map(|(_, t)| t).collect();
    outcome.images = images.len();
    outcome.failure = failures.first;
    outcome.requests = pass.stats.snapshot();
    let error = failures.summary();
    let freshness = Freshness {
        last_update: if error.is_none() {
            Some(Utc::now())
        } else {
            previous_head.as_ref().and_then(|h| h.last_update)
        },
        last_error: error.clone(),
    };
    let published = match written {
        Ok(()) => writer.finish(&freshness, head_deadline).await,
        Err(e) => {
            writer.abandon().await;
            Err(e)
        }
    };
    match published {
        Ok(head) => {
            outcome.published = true;
            outcome.index_changed = previous_head.is_none_or(|h| h.generation != head.generation);
            outcome.last_update = head.last_update;
            outcome.error = error;
        }
        Err(e) => {
            outcome.failure.get_or_insert(FailureKind::Cache);
            outcome.last_update = previous_head.and_then(|h| h.last_update);
            outcome.error = Some(match error {
                Some(err) => format!("{err}; caching the tag index: {e}"),
                None => format!("caching the tag index of {repository}: {e}"),
            });
        }
    }
    outcome.retry_after = failures.rate_limited;
    outcome.duration = started.elapsed();
    outcome
}

/// Tags warmed at once: a pass holds this many tags' entries, and the previous index's
/// chunks that cover them, never the whole index.
const WINDOW: usize = 2048;
/// Image records kept between windows, so that tags of one image in many windows read its
/// record once; past this many they are read again as needed.
const RECORDS_KEPT: usize = 4096;
/// Tag changes an outcome lists (events, logs); `changed` counts them all.
const CHANGES_KEPT: usize = 1000;

/// What a pass carries from one window of tags to the next.
struct Window<'p, B> {
    rc: &'p RepositoryClient,
    store: &'p MetadataStore<B>,
    target: &'p Target,
    options: &'p PassOptions,
    now: Millis,
    in_flight: usize,
    failures: Failures,
    records: HashMap<Digest, ImageRecord>,
    outcome: &'p mut Outcome,
    /// The ten tags created last so far, newest first.
    latest: Vec<(chrono::DateTime<Utc>, String)>,
    /// The distinct images the index points at, by digest hash.
    images: HashSet<u64>,
}

impl<B: CacheWriter> Window<'_, B> {
    /// Counts an entry of the new index in the outcome.
    fn count(&mut self, entry: &TagEntry) {
        self.outcome.tags += 1;
        match &entry.digest {
            None => self.outcome.missing += 1,
            Some(d) => {
                self.images.insert(key_hash(d.as_str()));
                if let Some(created) = self.records.get(d).and_then(|r| r.created) {
                    note_latest(&mut self.latest, created, &entry.tag);
                }
            }
        }
    }

    /// Warms one window of `kept` tags (sorted) against their `previous` entries, and
    /// returns the window's entries of the new index. Once the host said stop (a 429),
    /// later windows send no request and keep what was cached.
    async fn warm(
        &mut self,
        kept: &[String],
        prev: &HashMap<String, TagEntry>,
    ) -> BTreeMap<String, TagEntry> {
        let (rc, store, target, now) = (self.rc, self.store, self.target, self.now);
        let (scope, repository) = (&target.scope, &target.repository);
        if self.records.len() > RECORDS_KEPT {
            self.records.clear();
        }
        let missing: Vec<Digest> = decide::cached_digests(kept, prev)
            .into_iter()
            .filter(|d| !self.records.contains_key(d))
            .collect();
        if !missing.is_empty() {
            self.records.extend(
                store
                    .cached_images(scope, &missing)
                    .await
                    .unwrap_or_default(),
            );
        }

        // Decide per tag.
        let TagPlan {
            mut entries,
            to_resolve,
            to_fetch,
        } = decide::plan_tags(kept, prev, &self.records, &target.platforms, now);
        if self.failures.rate_limited.is_some() {
            // The host asked us to stop: the rest of the pass waits for next time.
            decide::keep_cached(to_resolve.iter().map(String::as_str), prev, &mut entries);
            return entries;
        }
        let mut to_fetch: HashMap<Digest, Option<FetchedManifest>> =
            to_fetch.into_iter().map(|d| (d, None)).collect();

        // Resolve the due tags: by HEAD, or a tag never seen before by GET where the host
        // does not count GETs as pulls. Each request's future is built only when the
        // stream polls for it: a future holds the whole request state machine (several
        // KiB). The closure owns what it captures, so the pass future stays `Send` when
        // spawned.
        let head_rc = rc.clone();
        let jobs: Vec<(String, bool)> = to_resolve
            .iter()
            .map(|t| (t.clone(), !prev.contains_key(t)))
            .collect();
        let mut heads = futures::stream::iter(jobs)
            .map(move |(tag, new)| {
                let rc = head_rc.clone();
                async move {
                    let by_get = new && rc.resolves_new_tags_by_get();
                    let r = rc
                        .resolve_manifest(&Reference::Tag(tag.clone()), by_get)
                        .await;
                    (tag, r)
                }
            })
            .buffer_unordered(self.in_flight);
        // Manifests that came with their tag's resolution, one per digest: used if the
        // digest's image is not cached, dropped at the end of the window otherwise.
        let mut bodies: HashMap<Digest, FetchedManifest> = HashMap::new();
        let mut resolved: Vec<(String, Option<Digest>)> = Vec::new();
        while let Some((tag, result)) = heads.next().await {
            match result {
                Ok(head) => {
                    if let Some(fetched) = head.fetched
                        && !self.records.contains_key(&head.digest)
                    {
                        bodies.entry(head.digest.clone()).or_insert(fetched);
                    }
                    resolved.push((tag, Some(head.digest)));
                }
                Err(registry::Error::ManifestUnknown { .. }) => resolved.push((tag, None)),
                Err(e) => {
                    let stop = matches!(e, registry::Error::RateLimited { .. });
                    self.failures
                        .add(format!("resolving {repository}:{tag}"), &e);
                    // The tag keeps what was cached before.
                    if let Some(p) = prev.get(&tag) {
                        entries.insert(tag, p.clone());
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        // Requests still in flight after a 429 are cancelled here.
        drop(heads);
        decide::keep_cached(
            decide::unanswered(&to_resolve, &resolved),
            prev,
            &mut entries,
        );
        drop(to_resolve);

        // Which resolved digests need metadata: those not cached (one batched read).
        let new_digests: Vec<Digest> = resolved
            .iter()
            .filter_map(|(_, d)| d.clone())
            .filter(|d| !self.records.contains_key(d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !new_digests.is_empty() {
            match store.cached_images(scope, &new_digests).await {
                Ok(found) => self.records.extend(found),
                Err(e) => tracing::warn!(error = %e, "cannot read cached images; fetching them"),
            }
        }
        for d in decide::digests_to_get(&resolved, &self.records, &target.platforms) {
            let fetched = bodies.remove(&d);
            to_fetch.entry(d).or_insert(fetched);
        }
        drop(bodies);

        if self.failures.rate_limited.is_some() {
            // A 429 stopped the HEADs: nothing is fetched, resolved tags keep what was cached.
            decide::keep_cached(resolved.iter().map(|(t, _)| t.as_str()), prev, &mut entries);
            return entries;
        }

        // GET each needed digest once, however many tags point at it.
        let jobs: Vec<_> = to_fetch
            .into_iter()
            .map(|(digest, fetched)| {
                let known = self
                    .records
                    .get(&digest)
                    .map(|r| r.platforms.clone())
                    .unwrap_or_default();
                (digest, fetched, known)
            })
            .collect();
        // Built lazily, like the HEADs above. Each job caches its image itself, so the
        // writes to memcached overlap the other jobs' requests instead of pausing them.
        let image_deadline = now.plus(IMAGE_DEADLINE);
        let (fetch_rc, platforms) = (rc.clone(), target.platforms.clone());
        let mut fetches = futures::stream::iter(jobs)
            .map(move |(digest, fetched, known)| {
                let (rc, platforms) = (fetch_rc.clone(), platforms.clone());
                async move {
                    let r = match fetch_image(&rc, &digest, fetched, &platforms, &known).await {
                        Ok(metadata) => {
                            let record = ImageRecord::from(&metadata);
                            let stored = store
                                .put_image(scope, &record, &metadata.contents, image_deadline)
                                .await;
                            Ok(stored.map(|()| record))
                        }
                        Err(e) => Err(e),
                    };
                    (digest, r)
                }
            })
            .buffer_unordered(self.in_flight);
        let mut unknown: HashSet<Digest> = HashSet::new();
        let mut failed: HashSet<Digest> = HashSet::new();
        while let Some((digest, result)) = fetches.next().await {
            match result {
                Ok(Ok(record)) => {
                    self.outcome.images_updated += 1;
                    self.records.insert(digest, record);
                }
                Ok(Err(e)) => {
                    self.failures
                        .add_cache(format!("caching {repository}@{digest}"), &e);
                    failed.insert(digest);
                }
                Err(registry::Error::ManifestUnknown { .. }) => {
                    unknown.insert(digest);
                }
                Err(e) => {
                    // A 429, or the pull quota at the reserve: the other GETs would meet the
                    // same answer.
                    let stop = matches!(
                        e,
                        registry::Error::RateLimited { .. }
                            | registry::Error::PullQuotaReserved { .. }
                    );
                    let tags: Vec<&str> = resolved
                        .iter()
                        .filter(|(_, d)| d.as_ref() == Some(&digest))
                        .map(|(t, _)| t.as_str())
                        .chain(
                            entries
                                .values()
                                .filter(|e| e.digest.as_ref() == Some(&digest))
                                .map(|e| e.tag.as_str()),
                        )
                        .take(3)
                        .collect();
                    self.failures.add(
                        format!("fetching {repository}@{digest} (tag {})", tags.join(", ")),
                        &e,
                    );
                    failed.insert(digest);
                    if stop {
                        break;
                    }
                }
            }
        }
        drop(fetches);
        // Digests neither fetched nor failed were abandoned after a 429.
        let fetched = Fetched {
            records: &self.records,
            failed: &failed,
            unknown: &unknown,
        };
        for (tag, d) in &resolved {
            let previous = prev.get(tag);
            match decide::merge_resolved(
                &self.options.policy,
                tag,
                d.as_ref(),
                previous,
                &fetched,
                now,
            ) {
                Merged::Updated(entry, change) => {
                    note_change(self.outcome, tag, previous, &entry, change);
                    entries.insert(tag.clone(), entry);
                }
                Merged::Kept(entry) => {
                    entries.insert(tag.clone(), entry);
                }
                Merged::Dropped => {}
            }
        }
        entries
    }
}

/// Keeps `latest` the ten tags created last, newest first (ties by tag name).
fn note_latest(
    latest: &mut Vec<(chrono::DateTime<Utc>, String)>,
    created: chrono::DateTime<Utc>,
    tag: &str,
) {
    let at = latest.partition_point(|(c, t)| *c > created || (*c == created && t.as_str() < tag));
    if at < 10 {
        latest.insert(at, (created, tag.to_string()));
        latest.truncate(10);
    }
}

async fn fetch_image(
    rc: &RepositoryClient,
    digest: &Digest,
    fetched: Option<FetchedManifest>,
    platforms: &[crate::image::Platform],
    known: &[crate::image::PlatformImage],
) -> Result<crate::image::ImageMetadata, registry::Error> {
    let reference = Reference::Digest(digest.clone());
    let top = match fetched {
        Some(f) => f,
        None => rc.get_manifest(&reference).await?,
    };
    rc.describe(&reference, top, platforms, known).await
}

fn note_change(
    outcome: &mut Outcome,
    tag: &str,
    previous: Option<&TagEntry>,
    entry: &TagEntry,
    change: Change,
) {
    let kind = match change {
        Change::New => TagChangeKind::New,
        Change::Moved => TagChangeKind::Moved,
        Change::Unchanged | Change::Missing => return,
    };
    outcome.changed += 1;
    if outcome.changes.len() >= CHANGES_KEPT {
        return;
    }
    outcome.changes.push(TagChange {
        tag: tag.to_string(),
        kind,
        from: previous.and_then(|p| p.digest.clone()),
        to: entry.digest.clone(),
    });
}

/// A pass that could not even list tags: the index stays, the error is recorded.
async fn finish_failed<B: CacheWriter>(
    store: &MetadataStore<B>,
    target: &Target,
    mut outcome: Outcome,
    started: Instant,
    message: String,
    retry_after: Option<Duration>,
    deadline: Millis,
) -> Outcome {
    let head = store
        .record_error(&target.scope, &target.repository, &message, deadline)
        .await;
    outcome.last_update = head.ok().and_then(|h| h.last_update);
    outcome.error = Some(message);
    outcome.retry_after = retry_after;
    outcome.duration = started.elapsed();
    outcome
}
