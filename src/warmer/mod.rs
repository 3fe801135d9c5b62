//! The warmer: schedules a pass per target, runs them concurrently within a bound, and
//! reports an outcome per pass. It owns scheduling; the registry client owns requests and
//! per-host limits; the cache owns storage.

mod decide;
pub mod filter;
pub mod glob;
mod metrics;
pub mod pass;
pub mod schedule;
mod target;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cache::CacheWriter;
use crate::cache::store::MetadataStore;
use crate::image::Repository;
use crate::registry::{RegistryClient, RequestKind};
pub use metrics::{PassReport, WarmerMetrics};
pub use pass::PassOptions;
use schedule::jittered;
pub(crate) use target::TargetId;
pub use target::{CloudSource, FailureKind, Outcome, Priority, TagChange, TagChangeKind, Target};

#[derive(Debug, Clone)]
pub struct WarmerOptions {
    /// Passes running at once.
    pub concurrency: usize,
    pub pass: PassOptions,
    /// First retry delay after a failed pass; doubles per failure up to the target's
    /// interval (and never past `max_backoff`).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long shutdown waits for passes in flight before abandoning them. An abandoned
    /// pass has published nothing: a generation becomes visible only with its head.
    pub shutdown_grace: Duration,
}

impl Default for WarmerOptions {
    fn default() -> Self {
        WarmerOptions {
            concurrency: 4,
            pass: PassOptions::default(),
            min_backoff: Duration::from_millis(750),
            max_backoff: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

struct Slot {
    target: Arc<Target>,
    next_due: Instant,
    priority: Option<Priority>,
    failures: u32,
    running: bool,
    /// Bumped on every change of the target, so a pass of an old version is not used to
    /// reschedule a newer one.
    version: u64,
    /// Set when the target changed or was asked for while its pass ran.
    again: bool,
}

struct Shared<B> {
    metrics: WarmerMetrics,
    registry: RegistryClient,
    store: Arc<MetadataStore<B>>,
    options: WarmerOptions,
    slots: Mutex<HashMap<TargetId, Slot>>,
    /// One lock per published index (scope and repository), taken for a whole pass.
    index_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wake: Notify,
    changes: broadcast::Sender<(TargetId, TagChange)>,
}

impl<B: CacheWriter> Shared<B> {
    /// One pass of `target`. Targets that write the same index — two watches of one
    /// namespace that log in as the same user, one with a wrong password — take turns: a
    /// pass reads the index head and writes it back at its end, and two at once would let
    /// one's failure record replace the other's freshly published head.
    async fn run_pass(&self, target: &Target) -> Outcome {
        let lock = {
            let mut locks = self.index_locks.lock().unwrap_or_else(|e| e.into_inner());
            // Locks no pass holds or waits for are dropped, so the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks
                .entry(crate::cache::keys::repository_head(
                    &target.scope,
                    &target.repository,
                ))
                .or_default()
                .clone()
        };
        let _turn = lock.lock().await;
        let outcome = pass::run(&self.registry, &self.store, &self.options.pass, target).await;
        // Cloud credentials the registry refused are not reused: the next pass signs in.
        if let (Some(cloud), Some(FailureKind::Unauthorized)) = (&target.cloud, outcome.failure) {
            cloud.sign_in.forget(&cloud.login).await;
        }
        outcome
    }
}

/// Handle to the warmer; cheap to clone.
pub struct Warmer<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Warmer<B> {
    fn clone(&self) -> Self {
        Warmer {
            shared: self.shared.clone(),
        }
    }
}

impl<B: CacheWriter + 'static> Warmer<B> {
    /// A warmer recording into a metrics registry of its own (tests, benchmarks).
    pub fn new(
        registry: RegistryClient,
        store: Arc<MetadataStore<B>>,
        options: WarmerOptions,
    ) -> Self {
        Self::with_metrics(registry, store, options, WarmerMetrics::default())
    }

    /// A warmer recording `regcache_warmer_*` into the process's metrics.
    pub fn with_metrics(
        registry: RegistryClient,
        store: Arc<MetadataStore<B>>,
        options: WarmerOptions,
        metrics: WarmerMetrics,
    ) -> Self {
        Warmer {
            shared: Arc::new(Shared {
                metrics,
                registry,
                store,
                options,
                slots: Mutex::new(HashMap::new()),
                index_locks: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                changes: broadcast::channel(1024).0,
            }),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<TargetId, Slot>> {
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a finished pass. A pass whose target was removed or changed meanwhile
    /// counts, but does not touch the repository's series.
    fn record(&self, outcome: &Outcome, current: bool) {
        tracing::debug!(
            watch = %outcome.id,
            repository = %outcome.repository,
            tags = outcome.tags,
            images_updated = outcome.images_updated,
            published = outcome.published,
            requests = %request_summary(&outcome.requests),
            error = outcome.error.as_deref(),
            current,
            "warm pass finished"
        );
        let published = current && outcome.published;
        self.shared.metrics.pass(&PassReport {
            watch: &outcome.id,
            repository: &outcome.repository,
            failure: outcome
                .error
                .as_ref()
                .map(|_| outcome.failure.unwrap_or(FailureKind::Other).metric_label()),
            duration: outcome.duration,
            tags: published.then_some(outcome.tags),
            images: published.then_some(outcome.images),
            last_update: outcome.last_update.filter(|_| current),
        });
    }

    /// Adds a target, or replaces it. A new or changed target is due now; an unchanged one
    /// keeps its schedule.
    /// The registry client the passes use (its request counts, for progress displays).
    pub fn registry(&self) -> &RegistryClient {
        &self.shared.registry
    }

    pub fn upsert(&self, target: Target) {
        let mut slots = self.slots();
        match slots.get_mut(&target.id) {
            Some(slot) if !slot.target.differs(&target) => {
                slot.target = Arc::new(target);
            }
            Some(slot) => {
                if slot.target.repository != target.repository {
                    // The watch now names another repository: the old one's series go.
                    self.shared
                        .metrics
                        .forget(&target.id, &slot.target.repository.canonical());
                }
                slot.target = Arc::new(target);
                slot.version += 1;
                slot.next_due = Instant::now();
                slot.failures = 0;
                slot.again = slot.running;
            }
            None => {
                slots.insert(
                    target.id.clone(),
                    Slot {
                        target: Arc::new(target),
                        next_due: Instant::now(),
                        priority: None,
                        failures: 0,
                        running: false,
                        version: 0,
                        again: false,
                    },
                );
            }
        }
        let n = slots.len();
        drop(slots);
        self.shared.metrics.targets(n);
        self.shared.wake.notify_one();
    }

    /// Stops warming a target. A pass in flight finishes but its outcome is dropped.
    pub fn remove(&self, id: &str) -> bool {
        let mut slots = self.slots();
        let removed = slots.remove(id);
        let n = slots.len();
        drop(slots);
        if let Some(slot) = &removed {
            let m = &self.shared.metrics;
            m.targets(n);
            m.forget(id, &slot.target.repository.canonical());
        }
        self.shared.wake.notify_one();
        removed.is_some()
    }

    /// Asks for a pass of `id` ahead of the queue.
    pub fn request(&self, id: &str, priority: Priority) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(id) else {
            return false;
        };
        slot.priority = Some(priority);
        slot.next_due = Instant::now();
        slot.again = slot.running;
        drop(slots);
        self.shared.wake.notify_one();
        true
    }

    /// Asks for a pass of every target of `repository`; returns their ids.
    pub fn request_repository(&self, repository: &Repository, priority: Priority) -> Vec<TargetId> {
        let ids = self.targets_of(repository);
        for id in &ids {
            self.request(id, priority);
        }
        ids
    }

    /// The targets that warm `repository`.
    pub fn targets_of(&self, repository: &Repository) -> Vec<TargetId> {
        self.slots()
            .values()
            .filter(|s| &s.target.repository == repository)
            .map(|s| s.target.id.clone())
            .collect()
    }

    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.slots().values().map(|s| s.target.clone()).collect()
    }

    /// Tag changes (new tags, moved tags) as passes find them.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<(TargetId, TagChange)> {
        self.shared.changes.subscribe()
    }

    /// Runs one pass of a target now, outside the schedule (standalone `--once`, tests).
    pub async fn warm_now(&self, target: &Target) -> Outcome {
        let outcome = self.shared.run_pass(target).await;
        self.record(&outcome, true);
        self.publish_changes(&outcome);
        outcome
    }

    fn publish_changes(&self, outcome: &Outcome) {
        for c in &outcome.changes {
            let _ = self.shared.changes.send((outcome.id.clone(), c.clone()));
        }
    }

    /// Picks due targets (priority first, then earliest due) up to `free` of them.
    fn take_due(&self, free: usize) -> (Vec<(Arc<Target>, u64)>, Option<Instant>) {
        let now = Instant::now();
        let mut slots = self.slots();
        let mut due: Vec<(&TargetId, bool, Instant)> = slots
            .iter()
            .filter(|(_, s)| !s.running && s.next_due <= now)
            .map(|(id, s)| (id, s.priority.is_some(), s.next_due))
            .collect();
        due.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        let picked: Vec<TargetId> = due
            .into_iter()
            .take(free)
            .map(|(id, ..)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in picked {
            let slot = slots.get_mut(&id).expect("picked from the map");
            // A host closed by a long Retry-After: wait for it instead of holding a slot.
            let host = slot.target.repository.endpoint_host().to_string();
            if let Some(pause) = self.shared.registry.limiter(&host).closed_for()
                && pause > self.shared.registry.options().max_rate_limit_wait
            {
                slot.next_due = now + pause;
                continue;
            }
            slot.running = true;
            slot.priority = None;
            slot.again = false;
            out.push((slot.target.clone(), slot.version));
        }
        let next = slots
            .values()
            .filter(|s| !s.running)
            .map(|s| s.next_due)
            .min();
        (out, next)
    }

    /// Schedules the target's next pass after `outcome`, and notes when in it.
    fn reschedule(&self, outcome: &mut Outcome, version: u64) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&outcome.id) else {
            return false; // removed meanwhile
        };
        slot.running = false;
        if slot.version != version || slot.again {
            slot.next_due = Instant::now();
            outcome.next_pass = Some(chrono::Utc::now());
            return slot.version == version;
        }
        let options = &self.shared.options;
        let interval = slot.target.interval;
        let seed = format!("{}@{:?}", slot.target.id, std::time::SystemTime::now());
        let wait = match (&outcome.error, outcome.retry_after) {
            (_, Some(pause)) => pause,
            (Some(_), None) => {
                slot.failures = slot.failures.saturating_add(1);
                options
                    .min_backoff
                    .saturating_mul(1 << (slot.failures - 1).min(20))
                    .min(options.max_backoff)
                    .min(interval)
            }
            (None, None) => {
                slot.failures = 0;
                jittered(interval, options.pass.policy.jitter, &seed)
            }
        };
        slot.next_due = Instant::now() + wait;
        outcome.next_pass = chrono::Duration::from_std(wait)
            .ok()
            .and_then(|w| chrono::Utc::now().checked_add_signed(w));
        true
    }

    /// Runs the schedule until `shutdown` resolves, sending each pass's outcome.
    pub async fn run(
        self,
        outcomes: mpsc::UnboundedSender<Outcome>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut running: JoinSet<(Outcome, u64)> = JoinSet::new();
        loop {
            let free = self
                .shared
                .options
                .concurrency
                .max(1)
                .saturating_sub(running.len());
            let (start, next) = self.take_due(free);
            for (target, version) in start {
                let shared = self.shared.clone();
                running.spawn(async move {
                    let outcome = shared.run_pass(&target).await;
                    (outcome, version)
                });
            }
            let sleep = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(sleep), if running.len() < self.shared.options.concurrency.max(1) => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    match done {
                        Ok((mut outcome, version)) => {
                            let current = self.reschedule(&mut outcome, version);
                            self.record(&outcome, current);
                            if current {
                                self.publish_changes(&outcome);
                                let _ = outcomes.send(outcome);
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "warm pass task failed"),
                    }
                }
            }
        }
        // Let passes in flight finish for a while; abandon the rest (they have published
        // nothing half-done: a generation appears only with its head).
        let grace = tokio::time::sleep(self.shared.options.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut grace => {
                    running.abort_all();
                    break;
                }
                done = running.join_next() => match done {
                    Some(Ok((mut outcome, version))) => {
                        let current = self.reschedule(&mut outcome, version);
                        self.record(&outcome, current);
                        if current {
                            let _ = outcomes.send(outcome);
                        }
                    }
                    Some(Err(_)) => {}
                    None => break,
                }
            }
        }
    }
}

/// A pass's requests for its log line, retries included: `tag_list=1,manifest_get=3`.
fn request_summary(requests: &BTreeMap<RequestKind, u64>) -> String {
    let parts: Vec<String> = requests
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{}={n}", k.label()))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}
