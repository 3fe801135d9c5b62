//! Discovery (opt-in): the repositories that workloads' pod templates use become
//! `ImageRepositoryWatch` objects labelled `regcache.io/discovered: "true"`, server-side
//! applied under their own field manager, and deleted a grace period after the last
//! workload stopped using them. A watch written by hand for the same repository wins.
//!
//! Workloads are watched, not kept: each object is reduced to what it uses
//! ([`plan::PodUse`]) as it arrives. The leader compares what is wanted with the
//! discovered watches it knows (its own watch of them, updated by each write's answer) and
//! writes only the difference; an unchanged world writes nothing.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use super::scoped;
use crate::crd::ImageRepositoryWatch;
pub use plan::{DISCOVERED_LABEL, Options, Scope};
use plan::{Existing, NamespaceSettings, Owned, PodUse, Step, World};

/// Field manager of discovery's writes (status writes have their own).
pub const FIELD_MANAGER: &str = "regcache-discovery";

/// How long discovery waits after a change for the ones that come with it (a rollout
/// touches several objects) before it decides.
const SETTLE: Duration = Duration::from_millis(500);
/// How often it looks again without a change (leadership gained, a hand-written watch).
const TICK: Duration = Duration::from_secs(30);

/// Workloads of one kind, by (namespace, name), with the ones in use only.
#[derive(Default)]
struct Workloads {
    listed: bool,
    uses: HashMap<(String, String), PodUse>,
    /// Filled while the watch lists again; replaces `uses` when the list is complete.
    relisting: Option<HashMap<(String, String), PodUse>>,
}

#[derive(Default)]
struct State {
    workloads: BTreeMap<&'static str, Workloads>,
    namespaces: HashMap<String, NamespaceSettings>,
    namespaces_listed: bool,
    /// Watches labelled discovered, by (namespace, name).
    discovered: BTreeMap<(String, String), Existing>,
    /// Every other watch's `spec.image`, by (namespace, name): written by hand.
    hand_written: BTreeMap<(String, String), String>,
    watches_listed: bool,
}

type Shared = Arc<(Mutex<State>, Notify)>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // Plain maps: a panic while holding the lock leaves nothing half-updated.
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of<K: Resource>(object: &K) -> (String, String) {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// Folds one kind's watch events into the shared state; a change that matters wakes the
/// decision loop.
async fn follow<K>(
    shared: Shared,
    kind: &'static str,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    use_of: fn(&K) -> PodUse,
) where
    K: Resource + Send,
{
    let mut stream = std::pin::pin!(stream.default_backoff());
    lock(&shared).workloads.entry(kind).or_default();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(kind, error = %e, "discovery: watch failed; retrying");
                continue;
            }
        };
        let changed = {
            let mut state = lock(&shared);
            let w = state.workloads.entry(kind).or_default();
            match event {
                watcher::Event::Init => {
                    w.relisting = Some(HashMap::new());
                    false
                }
                watcher::Event::InitApply(o) => {
                    let u = use_of(&o);
                    if !u.repositories.is_empty() {
                        w.relisting.get_or_insert_default().insert(key_of(&o), u);
                    }
                    false
                }
                watcher::Event::InitDone => {
                    w.uses = w.relisting.take().unwrap_or_default();
                    w.listed = true;
                    true
                }
                watcher::Event::Apply(o) => {
                    let (key, u) = (key_of(&o), use_of(&o));
                    if u.repositories.is_empty() {
                        w.uses.remove(&key).is_some()
                    } else {
                        w.uses.insert(key, u.clone()).as_ref() != Some(&u)
                    }
                }
                watcher::Event::Delete(o) => w.uses.remove(&key_of(&o)).is_some(),
            }
        };
        if changed {
            shared.1.notify_one();
        }
    }
}

fn template_use(spec: Option<&PodSpec>) -> PodUse {
    spec.map(|s| plan::pod_use(s, false)).unwrap_or_default()
}

/// A Pod that a controller owns has its containers from the owner's template; only its
/// ephemeral containers (`kubectl debug`) are its own.
fn pod_use(pod: &Pod) -> PodUse {
    let owned = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    pod.spec
        .as_ref()
        .map(|s| plan::pod_use(s, owned))
        .unwrap_or_default()
}

/// Runs discovery until the task is dropped. Writes only while `leading`, and only once
/// every stream has listed (a partial view would mark watches unused).
pub async fn run(
    client: Client,
    options: Options,
    namespace: Option<String>,
    leading: Arc<AtomicBool>,
) {
    let shared: Shared = Arc::default();
    let ns = namespace.as_deref();
    let (deployments, statefulsets, daemonsets): (
        Api<Deployment>,
        Api<StatefulSet>,
        Api<DaemonSet>,
    ) = (
        scoped(&client, ns),
        scoped(&client, ns),
        scoped(&client, ns),
    );
    let (jobs, cronjobs, pods): (Api<Job>, Api<CronJob>, Api<Pod>) = (
        scoped(&client, ns),
        scoped(&client, ns),
        scoped(&client, ns),
    );
    let watches: Api<ImageRepositoryWatch> = scoped(&client, ns);
    let config = watcher::Config::default;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(follow(
        shared.clone(),
        "Deployment",
        watcher(deployments, config()),
        |o: &Deployment| template_use(o.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
    ));
    tasks.spawn(follow(
        shared.clone(),
        "StatefulSet",
        watcher(statefulsets, config()),
        |o: &StatefulSet| template_use(o.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
    ));
    tasks.spawn(follow(
        shared.clone(),
        "DaemonSet",
        watcher(daemonsets, config()),
        |o: &DaemonSet| template_use(o.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
    ));
    tasks.spawn(follow(
        shared.clone(),
        "Job",
        watcher(jobs, config()),
        |o: &Job| template_use(o.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
    ));
    tasks.spawn(follow(
        shared.clone(),
        "CronJob",
        watcher(cronjobs, config()),
        |o: &CronJob| {
            template_use(
                o.spec
                    .as_ref()
                    .and_then(|s| s.job_template.spec.as_ref())
                    .and_then(|s| s.template.spec.as_ref()),
            )
        },
    ));
    tasks.spawn(follow(
        shared.clone(),
        "Pod",
        watcher(pods, config()),
        pod_use,
    ));
    tasks.spawn(follow_watches(shared.clone(), watches));
    // Namespaces' labels and annotations; a namespaced controller cannot read its
    // Namespace (flags refuse `labelled` then) and uses the controller's defaults.
    if namespace.is_none() {
        tasks.spawn(follow_namespaces(shared.clone(), Api::all(client.clone())));
    } else {
        lock(&shared).namespaces_listed = true;
    }

    let mut next_deadline: Option<chrono::DateTime<Utc>> = None;
    let mut ready = false;
    loop {
        let wait = match next_deadline {
            // Not leading or not listed yet: look again soon.
            _ if !ready => Duration::from_secs(1),
            Some(d) => (d - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(100), TICK),
            None => TICK,
        };
        tokio::select! {
            _ = shared.1.notified() => tokio::time::sleep(SETTLE).await,
            _ = tokio::time::sleep(wait) => {}
        }
        ready = leading.load(Ordering::SeqCst);
        if !ready {
            continue;
        }
        let steps = {
            let state = lock(&shared);
            let listed = state.namespaces_listed
                && state.watches_listed
                && state.workloads.len() == 6
                && state.workloads.values().all(|w| w.listed);
            if !listed {
                ready = false;
                continue;
            }
            let hand_written: Vec<(&str, &str, &str)> = state
                .hand_written
                .iter()
                .map(|((ns, name), image)| (ns.as_str(), name.as_str(), image.as_str()))
                .collect();
            let world = World {
                uses: state
                    .workloads
                    .values()
                    .flat_map(|w| w.uses.iter().map(|((ns, _), u)| (ns.as_str(), u)))
                    .collect(),
                namespaces: &state.namespaces,
                hand_written,
                discovered: &state.discovered,
            };
            let (steps, next) = plan::steps(&world, &options, Utc::now());
            next_deadline = next;
            steps
        };
        for step in steps {
            execute(&client, &shared, step).await;
        }
    }
}

/// Keeps every watch as discovery compares them: the discovered ones (labelled) and the
/// repositories of those written by hand.
async fn follow_watches(shared: Shared, api: Api<ImageRepositoryWatch>) {
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    type Seen = (
        BTreeMap<(String, String), Existing>,
        BTreeMap<(String, String), String>,
    );
    let mut relisting: Option<Seen> = None;
    let is_discovered = |w: &ImageRepositoryWatch| {
        w.labels().get(DISCOVERED_LABEL).map(String::as_str) == Some("true")
    };
    while let Some(event) = stream.next().await {
        let mut state = lock(&shared);
        let changed = match event {
            Ok(watcher::Event::Init) => {
                relisting = Some(Seen::default());
                false
            }
            Ok(watcher::Event::InitApply(w)) => {
                let (discovered, hand_written) = relisting.get_or_insert_default();
                if is_discovered(&w) {
                    discovered.insert(key_of(&w), existing(&w));
                } else {
                    hand_written.insert(key_of(&w), w.spec.image.clone());
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                (state.discovered, state.hand_written) = relisting.take().unwrap_or_default();
                state.watches_listed = true;
                true
            }
            Ok(watcher::Event::Apply(w)) => {
                let key = key_of(&w);
                if is_discovered(&w) {
                    // Changed by someone else (not by its status): discovery looks again.
                    let hand_written = state.hand_written.remove(&key).is_some();
                    let new = existing(&w);
                    let before = state.discovered.insert(key, new.clone());
                    hand_written || before.map(|e| e.owned) != Some(new.owned)
                } else {
                    state.discovered.remove(&key);
                    state
                        .hand_written
                        .insert(key, w.spec.image.clone())
                        .as_ref()
                        != Some(&w.spec.image)
                }
            }
            Ok(watcher::Event::Delete(w)) => {
                // A discovered watch deleted by someone else comes back while in use.
                let key = key_of(&w);
                state.discovered.remove(&key).is_some() | state.hand_written.remove(&key).is_some()
            }
            Err(e) => {
                tracing::warn!(error = %e, "discovery: watch of watches failed; retrying");
                false
            }
        };
        if changed {
            shared.1.notify_one();
        }
    }
}

fn existing(w: &ImageRepositoryWatch) -> Existing {
    Existing {
        uid: w.metadata.uid.clone(),
        owned: Owned::of(
            &w.spec,
            w.annotations().get(plan::UNUSED_SINCE_ANNOTATION).cloned(),
        ),
    }
}

/// Keeps each Namespace's discovery label and annotations.
async fn follow_namespaces(shared: Shared, api: Api<kube::core::PartialObjectMeta<Namespace>>) {
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut relisting: Option<HashMap<String, NamespaceSettings>> = None;
    while let Some(event) = stream.next().await {
        let settings_of = |m: &kube::core::PartialObjectMeta<Namespace>| {
            let s = NamespaceSettings::from_metadata(m.labels(), m.annotations());
            for problem in &s.problems {
                tracing::warn!(namespace = %m.name_any(), "discovery: Namespace {}: {problem}; left out", m.name_any());
            }
            (m.name_any(), s)
        };
        let mut state = lock(&shared);
        match event {
            Ok(watcher::Event::Init) => relisting = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(m)) => {
                let (name, s) = settings_of(&m);
                relisting.get_or_insert_default().insert(name, s);
            }
            Ok(watcher::Event::InitDone) => {
                state.namespaces = relisting.take().unwrap_or_default();
                state.namespaces_listed = true;
                shared.1.notify_one();
            }
            Ok(watcher::Event::Apply(m)) => {
                let (name, s) = settings_of(&m);
                if state.namespaces.get(&name) != Some(&s) {
                    state.namespaces.insert(name, s);
                    shared.1.notify_one();
                }
            }
            Ok(watcher::Event::Delete(m)) => {
                state.namespaces.remove(&m.name_any());
                shared.1.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "discovery: watch of namespaces failed; retrying"),
        }
    }
}

/// One step, against the API. The answer updates what discovery knows at once, so the
/// next decision does not write the same thing again before the watch event arrives.
async fn execute(client: &Client, shared: &Shared, step: Step) {
    match step {
        Step::Apply {
            namespace,
            name,
            owned,
        } => {
            let api: Api<ImageRepositoryWatch> = Api::namespaced(client.clone(), &namespace);
            let mut metadata = json!({
                "name": name,
                "namespace": namespace,
                "labels": {DISCOVERED_LABEL: "true"},
            });
            if let Some(since) = &owned.unused_since {
                metadata["annotations"] = json!({plan::UNUSED_SINCE_ANNOTATION: since});
            }
            let body = json!({
                "apiVersion": ImageRepositoryWatch::api_version(&()),
                "kind": ImageRepositoryWatch::kind(&()),
                "metadata": metadata,
                "spec": owned.spec,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(&name, &params, &Patch::Apply(body)).await {
                Ok(w) => {
                    tracing::info!(
                        watch = %format!("{namespace}/{name}"),
                        image = %owned.spec.image,
                        unused_since = owned.unused_since.as_deref().unwrap_or(""),
                        "discovery: watch applied"
                    );
                    lock(shared)
                        .discovered
                        .insert((namespace, name), existing(&w));
                }
                Err(e) => tracing::warn!(
                    watch = %format!("{namespace}/{name}"),
                    error = %e,
                    "discovery: cannot apply the discovered watch"
                ),
            }
        }
        Step::Delete {
            namespace,
            name,
            uid,
            why,
        } => {
            let api: Api<ImageRepositoryWatch> = Api::namespaced(client.clone(), &namespace);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    tracing::info!(watch = %format!("{namespace}/{name}"), why, "discovery: watch deleted");
                    lock(shared).discovered.remove(&(namespace, name));
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    lock(shared).discovered.remove(&(namespace, name));
                }
                Err(e) => tracing::warn!(
                    watch = %format!("{namespace}/{name}"),
                    error = %e,
                    "discovery: cannot delete the discovered watch"
                ),
            }
        }
    }
}
