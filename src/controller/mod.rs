//! The Kubernetes controller: turns each `ImageRepositoryWatch` (and the Secrets and
//! ServiceAccount it names) into a warmer target, and the warmer's outcomes into status.
//!
//! Reconcile reads like a pipeline: resolve (I/O) → plan (pure) → hand to the warmer →
//! desired status (pure) → one status patch, only when something changed. Outcomes from
//! the warmer come back as reconcile triggers for their watch.

pub mod discovery;
pub mod leader;
mod metrics;
pub mod plan;
pub mod resolve;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::cache::CacheWriter;
use crate::crd::{ImageRepositoryWatch, ImageRepositoryWatchStatus, REQUESTED_AT_ANNOTATION};
use crate::warmer::{Outcome, Priority, Warmer};
pub use metrics::ReconcileMetrics;
use plan::{Defaults, desired_status, plan, target_id};

/// Field manager of regcache's status writes.
pub(crate) const FIELD_MANAGER: &str = "regcache-controller";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
}

impl ControllerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "kube_api",
        }
    }
}

/// What reconcile needs.
pub struct Context<B> {
    pub client: Client,
    pub warmer: Warmer<B>,
    pub defaults: Defaults,
    recorder: Recorder,
    latest: Mutex<HashMap<String, Outcome>>,
    /// Only the leader warms and writes status; followers still plan every watch so their
    /// read API knows each watch's repository and scope.
    leading: Arc<std::sync::atomic::AtomicBool>,
    failures: Mutex<HashMap<String, u32>>,
    /// Per watch, the `regcache.io/requestedAt` value a pass was last asked for. The
    /// store may not have the status that records it yet when the pass's outcome comes
    /// back; without this, that reconcile asked for a second pass.
    rescans: Mutex<HashMap<String, String>>,
    /// Set once the first complete list of watches is in (`/readyz` waits for it).
    pub watches_listed: Arc<std::sync::atomic::AtomicBool>,
    /// `regcache_reconcile_*`.
    pub metrics: ReconcileMetrics,
    /// Reconciles running at once (`--concurrent-reconciles`). Unbounded, 1,000 watches
    /// appearing together held 1,000 API requests and their buffers at once.
    pub concurrent_reconciles: u16,
    /// Discovery of the repositories workloads use (`--discovery`); off when `None`.
    pub discovery: Option<discovery::Options>,
}

impl<B> Context<B> {
    pub fn new(client: Client, warmer: Warmer<B>, defaults: Defaults, instance: String) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_string(),
                instance: Some(instance),
            },
        );
        Context {
            client,
            warmer,
            defaults,
            recorder,
            latest: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            rescans: Mutex::new(HashMap::new()),
            leading: Arc::default(),
            watches_listed: Arc::default(),
            metrics: ReconcileMetrics::default(),
            concurrent_reconciles: 8,
            discovery: None,
        }
    }

    /// Whether the first complete list of watches is in.
    pub fn watches_are_listed(&self) -> bool {
        self.watches_listed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The flag [`Self::is_leading`] reads, for the read API's webhook forwarding.
    pub fn leading_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.leading.clone()
    }

    fn latest(&self, id: &str) -> Option<Outcome> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Records a pass's outcome for its watch's next reconcile.
    pub fn record_outcome(&self, mut outcome: Outcome) {
        // Status reads counts, errors and latest tags only. The per-tag changes were already
        // published when the pass finished; kept here they would hold one entry per tag of
        // every watch's first pass for as long as the process runs.
        outcome.changes = Vec::new();
        outcome.requests = Default::default();
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(outcome.id.clone(), outcome);
    }
}

/// One reconcile of one watch, counted in `regcache_reconcile_*`.
pub async fn reconcile<B: CacheWriter + 'static>(
    watch: Arc<ImageRepositoryWatch>,
    ctx: Arc<Context<B>>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let metrics = ctx.metrics.clone();
    // Instrumented rather than entered: an entered span would stay on the worker thread
    // across awaits and name this watch in other tasks' lines.
    let span =
        tracing::info_span!("reconcile", watch = %target_id(&watch), image = %watch.spec.image);
    let result = reconcile_watch(watch, ctx).instrument(span).await;
    metrics.reconciled(
        result.as_ref().err().map(ControllerError::metric_label),
        started.elapsed(),
    );
    result
}

async fn reconcile_watch<B: CacheWriter + 'static>(
    watch: Arc<ImageRepositoryWatch>,
    ctx: Arc<Context<B>>,
) -> Result<Action, ControllerError> {
    let id = target_id(&watch);
    let resolved = resolve::resolve(&ctx.client, &watch)
        .await
        .map_err(ControllerError::Kube)?;
    let planned = resolved.and_then(|r| plan(&watch, &r, &ctx.defaults));
    let requested_at = watch.annotations().get(REQUESTED_AT_ANNOTATION).cloned();
    let current = watch.status.clone().unwrap_or_default();
    match &planned {
        Ok(target) if !watch.spec.suspend => {
            ctx.warmer.upsert(target.clone());
            if let Some(value) = &requested_at
                && current.last_handled_requested_at.as_ref() != Some(value)
            {
                let mut rescans = ctx.rescans.lock().unwrap_or_else(|e| e.into_inner());
                if rescans.get(&id) != Some(value) {
                    ctx.warmer.request(&id, Priority::ManualRescan);
                    rescans.insert(id.clone(), value.clone());
                }
            }
        }
        // Invalid, waiting for a secret, or suspended: not warmed until the watch or what it
        // names changes. Cached data stays.
        _ => {
            ctx.warmer.remove(&id);
            ctx.latest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }
    let outcome = ctx.latest(&id);
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let desired = desired_status(
        &watch,
        &planned,
        outcome.as_ref(),
        requested_at.as_deref(),
        &now,
    );
    let patch = desired != current && ctx.is_leading();
    if patch {
        patch_status(&ctx.client, &watch, &desired)
            .await
            .map_err(ControllerError::Kube)?;
        ctx.metrics.status_patched();
        announce(&ctx, &watch, &current, &desired).await;
    }
    tracing::debug!(
        ready = ?desired.ready().map(|c| (&c.status, &c.reason)),
        status_patched = patch,
        "reconciled"
    );
    ctx.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    Ok(Action::await_change())
}

async fn patch_status(
    client: &Client,
    watch: &ImageRepositoryWatch,
    status: &ImageRepositoryWatchStatus,
) -> Result<(), kube::Error> {
    let api: Api<ImageRepositoryWatch> =
        Api::namespaced(client.clone(), &watch.namespace().unwrap_or_default());
    // Server-side apply of the whole status: fields regcache no longer sets (a cleared
    // lastError) are removed, which a merge patch would leave behind.
    let body = json!({
        "apiVersion": ImageRepositoryWatch::api_version(&()),
        "kind": ImageRepositoryWatch::kind(&()),
        "status": status,
    });
    api.patch_status(
        &watch.name_any(),
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// An Event when the Ready condition changes status or reason, not on every pass.
async fn announce<B: CacheWriter + 'static>(
    ctx: &Context<B>,
    watch: &ImageRepositoryWatch,
    before: &ImageRepositoryWatchStatus,
    after: &ImageRepositoryWatchStatus,
) {
    let (Some(new), old) = (after.ready(), before.ready()) else {
        return;
    };
    if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
        return;
    }
    let event = Event {
        type_: if new.status == "False" {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: new.reason.clone(),
        note: Some(new.message.chars().take(1024).collect()),
        action: "Warm".to_string(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &watch.object_ref(&())).await {
        Ok(()) => ctx.metrics.event_published(),
        Err(e) => tracing::warn!(error = %e, "cannot publish event"),
    }
}

/// Flux's per-object backoff for transient failures: 750 ms doubling to 15 min, reset by
/// a successful reconcile.
pub(crate) fn error_policy<B>(
    watch: Arc<ImageRepositoryWatch>,
    error: &ControllerError,
    ctx: Arc<Context<B>>,
) -> Action {
    let id = target_id(&watch);
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(id.clone()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_millis(750)
        .saturating_mul(1 << (*n - 1).min(12))
        .min(Duration::from_secs(15 * 60));
    tracing::warn!(watch = %id, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Watches that reference a Secret (directly, or possibly through their namespace's
/// ServiceAccounts).
fn watches_of_secret(
    store: &Store<ImageRepositoryWatch>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ImageRepositoryWatch>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|w| w.namespace() == ns)
        .filter(|w| {
            w.spec.pull_secrets.iter().any(|r| r.name == name)
                || w.spec
                    .cert_secret_ref
                    .as_ref()
                    .is_some_and(|r| r.name == name)
                || w.spec.service_account_name.is_some()
        })
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

fn watches_of_account(
    store: &Store<ImageRepositoryWatch>,
    account: &PartialObjectMeta<ServiceAccount>,
) -> Vec<ObjectRef<ImageRepositoryWatch>> {
    let ns = account.namespace();
    let name = account.name_any();
    store
        .state()
        .iter()
        .filter(|w| w.namespace() == ns && w.spec.service_account_name.as_deref() == Some(&name))
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// Runs the controller and the warmer until `shutdown` resolves.
/// Runs the controller until `shutdown` resolves. Watches are planned from the start;
/// warming and status writes begin when `leadership` resolves.
pub async fn run<B: CacheWriter + 'static>(
    ctx: Arc<Context<B>>,
    namespace: Option<String>,
    leadership: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let watches: Api<ImageRepositoryWatch> = scoped(&client, namespace.as_deref());
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, namespace.as_deref());
    let accounts: Api<PartialObjectMeta<ServiceAccount>> = scoped(&client, namespace.as_deref());

    // The warmer reports outcomes; each becomes a reconcile of its watch.
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel::<Outcome>();
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel::<ObjectRef<ImageRepositoryWatch>>();
    let (stop_warmer, warmer_stopped) = tokio::sync::oneshot::channel::<()>();
    let (led_tx, led_rx) = mpsc::unbounded_channel::<()>();
    let warmer_ctx = ctx.clone();
    let warmer_task = tokio::spawn(async move {
        leadership.await;
        warmer_ctx
            .leading
            .store(true, std::sync::atomic::Ordering::SeqCst);
        warmer_ctx.metrics.leading();
        // Every watch's status is the leader's to write now.
        let _ = led_tx.send(());
        warmer_ctx
            .warmer
            .clone()
            .run(outcome_tx, async move {
                let _ = warmer_stopped.await;
            })
            .await;
    });

    // The store of watches fills from our own list-and-watch stream, which marks readiness
    // when the first list is complete. Awaiting the store's own readiness from another task
    // is no substitute: it wakes only the task that polled it last, and the controller's
    // runner waits on it to start reconciling.
    let (store, writer) = reflector::store();
    let listed_flag = ctx.watches_listed.clone();
    let listed = watcher(watches, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            use std::sync::atomic::Ordering;
            if matches!(event, Ok(watcher::Event::InitDone)) && !listed_flag.load(Ordering::SeqCst)
            {
                tracing::info!("watches listed");
                listed_flag.store(true, Ordering::SeqCst);
            }
        })
        .applied_objects();
    let controller = Controller::for_stream(errors_logged(listed, "watches"), store.clone())
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.concurrent_reconciles),
        );
    let outcome_ctx = ctx.clone();
    let outcome_store = store.clone();
    let outcomes_task = tokio::spawn(async move {
        let mut gc = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                outcome = outcome_rx.recv() => {
                    let Some(outcome) = outcome else { break };
                    let (ns, name) = outcome.id.split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
                    outcome_ctx.record_outcome(outcome);
                    let _ = trigger_tx.send(ObjectRef::new(&name).within(&ns));
                }
                _ = gc.tick() => {
                    // Watches deleted since their target was planned stop warming.
                    if outcome_ctx.watches_are_listed() {
                        let live: std::collections::HashSet<String> =
                            outcome_store.state().iter().map(|w| target_id(w)).collect();
                        for t in outcome_ctx.warmer.targets() {
                            if !live.contains(&t.id) {
                                tracing::info!(watch = %t.id, "watch deleted; warming stops");
                                outcome_ctx.warmer.remove(&t.id);
                            }
                        }
                        outcome_ctx
                            .rescans
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|id, _| live.contains(id));
                    }
                }
            }
        }
    });

    let discovery_task = ctx.discovery.clone().map(|options| {
        tokio::spawn(discovery::run(
            client.clone(),
            options,
            namespace.clone(),
            ctx.leading.clone(),
        ))
    });

    let secret_store = store.clone();
    let account_store = store.clone();
    // A Secret or ServiceAccount matters here only by name (which watches use it), so only
    // metadata is watched; a reconcile reads the data it needs. Watched whole, every Secret
    // of the cluster (Helm releases' too) went through the controller: 5,000 of 64 KiB cost
    // 60 MiB resident and a 166 MiB peak (`BENCH_SECRETS=5000 cargo bench --bench memory`).
    let secrets = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .touched_objects();
    let accounts = watcher(accounts, watcher::Config::default())
        .default_backoff()
        .touched_objects();
    controller
        .watches_stream(errors_logged(secrets, "secrets"), move |s| {
            watches_of_secret(&secret_store, &s)
        })
        .watches_stream(errors_logged(accounts, "serviceaccounts"), move |a| {
            watches_of_account(&account_store, &a)
        })
        .reconcile_on(tokio_stream_of(trigger_rx))
        .reconcile_all_on(tokio_stream_of(led_rx))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile trigger failed");
            }
        })
        .await;
    let _ = stop_warmer.send(());
    let _ = warmer_task.await;
    outcomes_task.abort();
    if let Some(task) = discovery_task {
        task.abort();
    }
}

/// The objects of kind `K` in `namespace`, or in every namespace.
pub(crate) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch stream that yields no errors: each is logged here and dropped, and the stream's
/// own back-off (applied before this) spaces the retries. Errors passed on would all meet
/// in the Controller's one back-off over every stream: after an API server restart, the
/// three watches' `410 Gone` (which a watcher answers by listing again) escalated it step
/// by step, and changes went unseen for a minute.
fn errors_logged<K: Send + 'static>(
    stream: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    stream.filter_map(move |item| async move {
        match item {
            Ok(object) => Some(Ok(object)),
            Err(watcher::Error::WatchError(e)) if e.code == 410 => {
                tracing::debug!(what, "watch expired (410 Gone); listing again");
                None
            }
            Err(e) => {
                tracing::warn!(what, error = %e, "watch failed; retrying");
                None
            }
        }
    })
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests;
