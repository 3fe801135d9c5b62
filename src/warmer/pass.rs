//! One warm pass over one target: list, filter, HEAD the due tags, GET only unseen
//! digests, publish. The request economy of the refresh algorithm (`docs/design-notes.md`, Warmer) lives here;
//! its decisions are the pure functions of `decide.rs`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;

use super::decide::{self, Fetched, Merged, TagPlan};
use super::schedule::{Change, RefreshPolicy};
use super::{FailureKind, Outcome, TagChange, TagChangeKind, Target};
use crate::cache::store::{Freshness, ImageRecord, MetadataStore, TagEntry};
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
    let in_flight = rc.host_concurrency();

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
    let kept = filtered.kept;

    // 2. What the cache holds.
    let previous = store.read_index(scope, repository).await.unwrap_or_else(|e| {
        tracing::warn!(repository = %repository, error = %e, "cannot read the cached index; warming from scratch");
        None
    });
    let previous_head = previous.as_ref().map(|(h, _)| h.clone());
    let prev: HashMap<String, TagEntry> = previous
        .map(|(_, entries)| entries.into_iter().map(|e| (e.tag.clone(), e)).collect())
        .unwrap_or_default();
    let mut records: HashMap<Digest, ImageRecord> = store
        .cached_images(scope, &decide::cached_digests(&kept, &prev))
        .await
        .unwrap_or_default();

    // 3. Decide per tag.
    let TagPlan {
        mut entries,
        to_resolve,
        to_fetch,
    } = decide::plan_tags(&kept, &prev, &records, &target.platforms, now);
    let mut to_fetch: HashMap<Digest, Option<FetchedManifest>> =
        to_fetch.into_iter().map(|d| (d, None)).collect();

    // 4. HEAD the due tags.
    let mut failures = Failures::default();
    // Each HEAD's future is built only when the stream polls for it: a future holds the
    // whole request state machine (several KiB), so building one per tag up front costs
    // hundreds of MiB on a 50,000-tag repository. The closure owns what it captures, so
    // the pass future stays `Send` when spawned.
    let head_rc = rc.clone();
    let mut heads = futures::stream::iter(to_resolve.clone())
        .map(move |tag| {
            let rc = head_rc.clone();
            async move {
                let r = rc.head_manifest(&Reference::Tag(tag.clone())).await;
                (tag, r)
            }
        })
        .buffer_unordered(in_flight);
    let mut resolved: Vec<(String, Option<Digest>)> = Vec::new();
    while let Some((tag, result)) = heads.next().await {
        let tag = &tag;
        match result {
            Ok(head) => {
                if let Some(fetched) = head.fetched {
                    to_fetch.insert(head.digest.clone(), Some(fetched));
                }
                resolved.push((tag.clone(), Some(head.digest)));
            }
            Err(registry::Error::ManifestUnknown { .. }) => resolved.push((tag.clone(), None)),
            Err(e) => {
                let stop = matches!(e, registry::Error::RateLimited { .. });
                failures.add(format!("resolving {repository}:{tag}"), &e);
                // The tag keeps what was cached before.
                if let Some(p) = prev.get(tag) {
                    entries.insert(tag.clone(), p.clone());
                }
                if stop {
                    // The host asked us to stop: the rest of the pass waits for next time.
                    break;
                }
            }
        }
    }
    // Requests still in flight after a 429 are cancelled here.
    drop(heads);
    decide::keep_cached(
        decide::unanswered(&to_resolve, &resolved),
        &prev,
        &mut entries,
    );
    drop(to_resolve);

    // 5. Which resolved digests need metadata: those not cached (one batched read).
    let new_digests: Vec<Digest> = resolved
        .iter()
        .filter_map(|(_, d)| d.clone())
        .filter(|d| !records.contains_key(d))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !new_digests.is_empty() {
        match store.cached_images(scope, &new_digests).await {
            Ok(found) => records.extend(found),
            Err(e) => tracing::warn!(error = %e, "cannot read cached images; fetching them"),
        }
    }
    for d in decide::digests_to_get(&resolved, &records, &target.platforms) {
        to_fetch.entry(d).or_insert(None);
    }

    // 6. GET each needed digest once, however many tags point at it.
    if failures.rate_limited.is_none() {
        let jobs: Vec<_> = to_fetch
            .into_iter()
            .map(|(digest, fetched)| {
                let known = records
                    .get(&digest)
                    .map(|r| r.platforms.clone())
                    .unwrap_or_default();
                (digest, fetched, known)
            })
            .collect();
        // Built lazily, like the HEADs above.
        let (fetch_rc, platforms) = (rc.clone(), target.platforms.clone());
        let mut fetches = futures::stream::iter(jobs)
            .map(move |(digest, fetched, known)| {
                let (rc, platforms) = (fetch_rc.clone(), platforms.clone());
                async move {
                    let r = fetch_image(&rc, &digest, fetched, &platforms, &known).await;
                    (digest, r)
                }
            })
            .buffer_unordered(in_flight);
        let image_deadline = now.plus(IMAGE_DEADLINE);
        let mut unknown: HashSet<Digest> = HashSet::new();
        let mut failed: HashSet<Digest> = HashSet::new();
        while let Some((digest, result)) = fetches.next().await {
            match result {
                Ok(metadata) => {
                    let record = ImageRecord::from(&metadata);
                    match store
                        .put_image(scope, &record, &metadata.contents, image_deadline)
                        .await
                    {
                        Ok(()) => {
                            outcome.images_updated += 1;
                            records.insert(digest, record);
                        }
                        Err(e) => {
                            failures.add_cache(format!("caching {repository}@{digest}"), &e);
                            failed.insert(digest);
                        }
                    }
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
                    failures.add(
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
            records: &records,
            failed: &failed,
            unknown: &unknown,
        };
        for (tag, d) in &resolved {
            let previous = prev.get(tag);
            match decide::merge_resolved(&options.policy, tag, d.as_ref(), previous, &fetched, now)
            {
                Merged::Updated(entry, change) => {
                    note_change(&mut outcome, tag, previous, &entry, change);
                    entries.insert(tag.clone(), entry);
                }
                Merged::Kept(entry) => {
                    entries.insert(tag.clone(), entry);
                }
                Merged::Dropped => {}
            }
        }
    } else {
        // A 429 stopped the HEADs: nothing is fetched, resolved tags keep what was cached.
        decide::keep_cached(
            resolved.iter().map(|(t, _)| t.as_str()),
            &prev,
            &mut entries,
        );
    }

    // 7. Publish: the index moves forward; lastUpdate only if nothing failed.
    let entries: Vec<TagEntry> = entries.into_values().collect();
    outcome.latest_tags = latest_tags(&entries, &records);
    outcome.failure = failures.first;
    outcome.tags = entries.len();
    outcome.missing = entries.iter().filter(|e| e.digest.is_none()).count();
    outcome.images = entries
        .iter()
        .filter_map(|e| e.digest.as_ref())
        .collect::<HashSet<_>>()
        .len();
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
    match store
        .publish_index_with(scope, repository, &entries, &freshness, head_deadline)
        .await
    {
        Ok(head) => {
            outcome.published = true;
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

/// The ten tags whose images were created last, newest first (ties by tag name).
fn latest_tags(entries: &[TagEntry], records: &HashMap<Digest, ImageRecord>) -> Vec<String> {
    let mut dated: Vec<(chrono::DateTime<Utc>, &str)> = entries
        .iter()
        .filter_map(|e| {
            let created = e.digest.as_ref().and_then(|d| records.get(d))?.created?;
            Some((created, e.tag.as_str()))
        })
        .collect();
    dated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    dated
        .into_iter()
        .take(10)
        .map(|(_, t)| t.to_string())
        .collect()
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
