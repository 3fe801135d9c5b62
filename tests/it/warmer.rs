//! The warmer against the real registry (behind the fault proxy, which counts requests)
//! and real memcached.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use regcache::cache::CacheWriter;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::{Digest, Platform, Repository};
use regcache::registry::limiter::LimiterSettings;
use regcache::registry::limits::HostRule;
use regcache::registry::{ClientOptions, RegistryClient, RequestKind};
use regcache::warmer::filter::TagFilter;
use regcache::warmer::schedule::RefreshPolicy;
use regcache::warmer::{
    Outcome, PassOptions, Priority, TagChangeKind, Target, Warmer, WarmerOptions,
};
use support::{
    Fault, FaultProxy, ImageSpec, IndexKind, Kind, ManifestKind, PlatformSpec, Registry,
    RegistryAuth, Rule,
};

/// Every tag is due again right after a pass (interval 0), so a second pass shows the
/// steady-state request pattern; or, with `new_tag`, a chosen first interval.
fn policy(new_tag: Duration) -> RefreshPolicy {
    RefreshPolicy {
        new_tag,
        min: Duration::ZERO,
        max: Duration::from_secs(7 * 86_400),
        jitter: 0.0,
    }
}

struct Rig {
    registry: Registry,
    proxy: FaultProxy,
    memcached: support::Memcached,
    warmer: Warmer<Memcached>,
    store: Arc<MetadataStore<Memcached>>,
}

fn rig(auth: RegistryAuth, new_tag: Duration) -> Rig {
    rig_with(auth, new_tag, |_| Vec::new())
}

/// A rig whose client has the host rules `rules` gives for the proxy's host.
fn rig_with(
    auth: RegistryAuth,
    new_tag: Duration,
    rules: impl FnOnce(&str) -> Vec<HostRule>,
) -> Rig {
    let registry = Registry::start(auth);
    let proxy = registry.fault_proxy();
    let memcached = support::Memcached::start();
    let store = Arc::new(MetadataStore::new(Memcached::new(
        vec![memcached.addr()],
        MemcachedOptions::default(),
    )));
    let client = RegistryClient::new(ClientOptions {
        retry_backoff: Duration::from_millis(10),
        max_rate_limit_wait: Duration::from_millis(500),
        limiter: LimiterSettings {
            max_rate: 10_000.0,
            burst: 1_000.0,
            ..LimiterSettings::default()
        },
        host_rules: rules(&proxy.host()),
        ..ClientOptions::default()
    });
    let warmer = Warmer::new(
        client,
        store.clone(),
        WarmerOptions {
            pass: PassOptions {
                policy: policy(new_tag),
            },
            min_backoff: Duration::from_millis(50),
            ..WarmerOptions::default()
        },
    );
    Rig {
        registry,
        proxy,
        memcached,
        warmer,
        store,
    }
}

impl Rig {
    async fn head(&self, target: &Target) -> regcache::cache::store::RepositoryHead {
        self.store
            .head(&target.scope, &target.repository)
            .await
            .unwrap()
            .expect("a published head")
    }

    fn target(&self, path: &str) -> Target {
        let repository = Repository::parse(&format!("{}/{path}", self.proxy.host())).unwrap();
        let credential = match self.registry.credentials() {
            Some((u, p)) => Credential::basic(u, p),
            None => Credential::Anonymous,
        };
        support::plain_target(
            &format!("default/{}", path.replace('/', "-")),
            repository.clone(),
            credential.clone(),
            Scope::for_credential(repository.host(), "default", &credential),
        )
    }
}

fn ok(outcome: &Outcome) {
    assert!(outcome.error.is_none(), "pass failed: {:?}", outcome.error);
    assert!(outcome.last_update.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_pass_is_complete_for_every_image_kind_then_steady_pass_is_heads_only() {
    let rig = rig(RegistryAuth::Basic, Duration::ZERO);
    let pusher = rig.registry.pusher();
    let repo = "kinds/app";
    let oci = pusher
        .push_image(repo, "oci", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let docker = pusher
        .push_image(
            repo,
            "docker",
            &ImageSpec::new(ManifestKind::Docker).use_container_config(true),
        )
        .await;
    let index = pusher
        .push_index(
            repo,
            "oci-index",
            IndexKind::Oci,
            &PlatformSpec::default_set(),
        )
        .await;
    let list = pusher
        .push_index(
            repo,
            "docker-list",
            IndexKind::DockerList,
            &PlatformSpec::default_set(),
        )
        .await;
    pusher.alias_tags(repo, &oci, &["latest", "1", "1.0"]).await;
    let broken = pusher
        .push_image(
            repo,
            "no-config",
            &ImageSpec::new(ManifestKind::Oci)
                .missing_config(true)
                .seed(42),
        )
        .await;
    pusher.push_signature_tag(repo, &oci.digest).await;

    let target = rig.target(repo);
    rig.proxy.reset_counts();
    let cold = rig.warmer.warm_now(&target).await;
    ok(&cold);
    assert_eq!(cold.listed, 9);
    assert_eq!(cold.excluded, 1, "the signature tag");
    assert_eq!(cold.tags, 8);
    assert_eq!(cold.changes.len(), 8);
    assert!(cold.changes.iter().all(|c| c.kind == TagChangeKind::New));
    // Minimum GETs: one per distinct manifest (5 top-level + 8 index children) and one per
    // distinct config (2 + 8 + 1 missing), however many tags alias them.
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 8);
    assert_eq!(rig.proxy.count("GET", Kind::Manifest), 5 + 8);
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 2 + 8 + 1);
    assert_eq!(cold.requests_of(RequestKind::ManifestGet), 13);

    let m = rig
        .store
        .get_image_repository_metadata(&target.scope, &target.repository)
        .await
        .unwrap();
    assert_eq!(m.tags.len(), 8);
    for (tag, digest, platforms) in [
        ("oci", &oci.digest, 1),
        ("latest", &oci.digest, 1),
        ("docker", &docker.digest, 1),
        ("oci-index", &index.digest, 4),
        ("docker-list", &list.digest, 4),
        ("no-config", &broken.digest, 1),
    ] {
        let image = &m.images[tag];
        assert_eq!(image.digest.as_str(), digest, "{tag}");
        assert_eq!(image.platforms.len(), platforms, "{tag}");
    }
    assert!(
        m.images["docker"]
            .labels
            .contains_key("org.opencontainers.image.created")
    );
    assert!(m.images["no-config"].platforms[0].config_missing);
    assert_eq!(
        m.images["oci-index"].platforms[1].platform,
        Some(Platform::parse("linux/arm64").unwrap())
    );

    // Every tag is due again; nothing changed: HEADs only.
    rig.proxy.reset_counts();
    let steady = rig.warmer.warm_now(&target).await;
    ok(&steady);
    assert_eq!(steady.tags, 8);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 8);
    assert_eq!(rig.proxy.count("GET", Kind::Manifest), 0);
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 0);
    assert!(steady.changes.is_empty());
    assert_eq!(steady.images_updated, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_cost_one_get_and_a_moved_tag_is_picked_up_with_a_halved_interval() {
    // Intervals of seconds, so a slow pass on a busy machine cannot reach a deadline early.
    let rig = rig(RegistryAuth::Anonymous, Duration::from_secs(2));
    let pusher = rig.registry.pusher();
    let image = pusher
        .push_image("alias", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let aliases: Vec<String> = (0..20).map(|i| format!("alias-{i}")).collect();
    pusher
        .alias_tags(
            "alias",
            &image,
            &aliases.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
    let target = rig.target("alias");
    rig.proxy.reset_counts();
    let cold = rig.warmer.warm_now(&target).await;
    ok(&cold);
    assert_eq!(cold.tags, 21);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 21);
    assert_eq!(
        rig.proxy.count("GET", Kind::Manifest),
        1,
        "one GET for 21 aliases"
    );
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 1);

    // Before the deadline nothing is asked but the tag list.
    rig.proxy.reset_counts();
    ok(&rig.warmer.warm_now(&target).await);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 0);
    assert_eq!(rig.proxy.count("GET", Kind::TagList), 1);

    // Due again and unchanged: interval doubles.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    ok(&rig.warmer.warm_now(&target).await);
    let entry = |entries: &[regcache::cache::store::TagEntry]| {
        entries.iter().find(|e| e.tag == "v1").unwrap().clone()
    };
    let (_, entries) = rig
        .store
        .read_index(&target.scope, &target.repository)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry(&entries).interval, 4000);

    // v1 moves; on its next due pass it is picked up and its interval halves.
    let moved = pusher
        .push_image(
            "alias",
            "v1",
            &ImageSpec::new(ManifestKind::Oci)
                .seed(99)
                .created("2025-01-01T00:00:00Z"),
        )
        .await;
    let mut changes = rig.warmer.subscribe_changes();
    tokio::time::sleep(Duration::from_millis(4100)).await;
    rig.proxy.reset_counts();
    let pass = rig.warmer.warm_now(&target).await;
    ok(&pass);
    let (_, entries) = rig
        .store
        .read_index(&target.scope, &target.repository)
        .await
        .unwrap()
        .unwrap();
    let v1 = entry(&entries);
    assert_eq!(
        v1.digest.as_ref().map(Digest::as_str),
        Some(moved.digest.as_str())
    );
    assert_eq!(v1.interval, 2000, "moved: halved from 4000");
    assert_eq!(
        rig.proxy.count("GET", Kind::Manifest),
        1,
        "only the new digest"
    );
    let change = pass
        .changes
        .iter()
        .find(|c| c.tag == "v1")
        .expect("moved tag reported");
    assert_eq!(change.kind, TagChangeKind::Moved);
    assert_eq!(
        change.from.as_ref().map(Digest::as_str),
        Some(image.digest.as_str())
    );
    let (id, notified) = changes.try_recv().expect("change notification");
    assert_eq!(
        (id.as_str(), notified.tag.as_str()),
        (target.id.as_str(), "v1")
    );
}

/// Manifest requests by reference form: (GETs by tag, GETs by digest).
fn manifest_gets(proxy: &FaultProxy) -> (usize, usize) {
    let gets: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET" && r.kind == Kind::Manifest)
        .collect();
    let by_digest = gets
        .iter()
        .filter(|r| r.path_and_query.contains("/manifests/sha256:"))
        .count();
    (gets.len() - by_digest, by_digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_does_not_count_pulls_has_new_tags_fetched_by_get_and_known_ones_headed() {
    let rig = rig_with(RegistryAuth::Anonymous, Duration::ZERO, |host| {
        vec![
            HostRule::new(host, None, None, None)
                .unwrap()
                .counting_pulls(Some(false)),
        ]
    });
    let pusher = rig.registry.pusher();
    let repo = "byget/app";
    let a = pusher
        .push_image(repo, "a", &ImageSpec::new(ManifestKind::Oci))
        .await;
    pusher.alias_tags(repo, &a, &["a1", "a2"]).await;
    let b = pusher
        .push_image(repo, "b", &ImageSpec::new(ManifestKind::Docker).seed(7))
        .await;
    let index = pusher
        .push_index(repo, "idx", IndexKind::Oci, &PlatformSpec::default_set())
        .await;
    let target = rig.target(repo);

    // Cold: each new tag is one GET by tag, no HEAD. Aliases cost their GET (as a HEAD
    // would) but one config; the index's children are fetched by digest.
    rig.proxy.reset_counts();
    let cold = rig.warmer.warm_now(&target).await;
    ok(&cold);
    assert_eq!(cold.tags, 5);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 0);
    assert_eq!(
        manifest_gets(&rig.proxy),
        (5, 4),
        "5 tags, 4 index children"
    );
    assert_eq!(
        rig.proxy.count("GET", Kind::Blob),
        2 + 4,
        "one config per image"
    );
    assert_eq!(cold.images_updated, 3);
    let m = rig
        .store
        .get_image_repository_metadata(&target.scope, &target.repository)
        .await
        .unwrap();
    for (tag, digest, platforms) in [
        ("a", &a.digest, 1),
        ("a2", &a.digest, 1),
        ("b", &b.digest, 1),
        ("idx", &index.digest, 4),
    ] {
        let image = &m.images[tag];
        assert_eq!(image.digest.as_str(), digest, "{tag}");
        assert_eq!(image.platforms.len(), platforms, "{tag}");
    }

    // Known tags are due again: HEADs only. A new alias of a known image is one GET by
    // tag and nothing else.
    pusher.alias_tags(repo, &a, &["a3"]).await;
    rig.proxy.reset_counts();
    let steady = rig.warmer.warm_now(&target).await;
    ok(&steady);
    assert_eq!(steady.tags, 6);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 5);
    assert_eq!(manifest_gets(&rig.proxy), (1, 0));
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 0);
    assert_eq!(steady.images_updated, 0);

    // Once the host reports a pull quota, GETs are pulls: a new tag is HEADed first and
    // its image fetched by digest.
    rig.proxy.set_pull_quota(1000);
    ok(&rig.warmer.warm_now(&target).await);
    let c = pusher
        .push_image(repo, "c", &ImageSpec::new(ManifestKind::Oci).seed(11))
        .await;
    rig.proxy.reset_counts();
    let pass = rig.warmer.warm_now(&target).await;
    ok(&pass);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 7);
    assert_eq!(manifest_gets(&rig.proxy), (0, 1));
    let m = rig
        .store
        .get_image_repository_metadata(&target.scope, &target.repository)
        .await
        .unwrap();
    assert_eq!(m.images["c"].digest.as_str(), c.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_and_budget_apply_before_any_manifest_request() {
    let rig = rig(RegistryAuth::Anonymous, Duration::ZERO);
    let pusher = rig.registry.pusher();
    pusher.push_many("filtered", 12, 3).await;
    let mut target = rig.target("filtered");
    target.filter = TagFilter::new(&["tag-*"], &["tag-00000"], Some(4), false).unwrap();
    rig.proxy.reset_counts();
    let outcome = rig.warmer.warm_now(&target).await;
    ok(&outcome);
    assert_eq!((outcome.listed, outcome.tags, outcome.excluded), (12, 4, 8));
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 4);
    let (_, entries) = rig
        .store
        .read_index(&target.scope, &target.repository)
        .await
        .unwrap()
        .unwrap();
    let tags: Vec<&str> = entries.iter().map(|e| e.tag.as_str()).collect();
    assert_eq!(
        tags,
        ["tag-00008", "tag-00009", "tag-00010", "tag-00011"],
        "highest four"
    );
}

/// Cold pass of `n` tags, then returns the target; every tag is due again afterwards.
async fn warmed(rig: &Rig, path: &str) -> Target {
    rig.registry.pusher().push_many(path, 6, 3).await;
    let target = rig.target(path);
    ok(&rig.warmer.warm_now(&target).await);
    target
}

async fn tags_cached(rig: &Rig, target: &Target) -> usize {
    rig.store
        .get_image_repository_metadata(&target.scope, &target.repository)
        .await
        .map(|m| m.images.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_mid_pass_keeps_data_and_the_next_pass_recovers() {
    let rig = rig(RegistryAuth::Anonymous, Duration::ZERO);
    // Many more due tags than HEADs in flight at once, so a pass that went on after the
    // 429 would show.
    const TAGS: usize = 40;
    rig.registry.pusher().push_many("limited", TAGS, 10).await;
    let target = rig.target("limited");
    ok(&rig.warmer.warm_now(&target).await);
    let before = rig.head(&target).await;
    // A new tag arrives, and the registry starts rate limiting manifest requests.
    rig.registry
        .pusher()
        .push_image("limited", "new", &ImageSpec::new(ManifestKind::Oci).seed(7))
        .await;
    rig.proxy
        .add_rule(Rule::kind(Kind::Manifest, Fault::too_many(Some("2"))).times(1));
    rig.proxy.reset_counts();
    let limited = rig.warmer.warm_now(&target).await;
    let err = limited.error.clone().expect("rate limited");
    assert!(err.contains("429"), "{err}");
    assert!(limited.retry_after.unwrap() >= Duration::from_secs(1));
    assert_eq!(
        limited.last_update, before.last_update,
        "lastUpdate does not move"
    );
    // The pass stopped at the 429: after it, only HEADs already in flight reached the
    // registry (at most the host's concurrency - 1), not the rest of the due tags. Two things see
    // to it, the pass ending at a rate-limit error and the host's limiter staying closed
    // for the pause; the registry must see the effect whichever one acts.
    let manifests: Vec<_> = rig
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.kind == Kind::Manifest)
        .collect();
    let limited_at = manifests
        .iter()
        .position(|r| r.fault.is_some())
        .expect("the 429 was served");
    let in_flight = LimiterSettings::default().concurrency - 1;
    assert!(
        manifests.len() - limited_at - 1 <= in_flight,
        "{} manifest requests after the 429, more than the {in_flight} in flight with it",
        manifests.len() - limited_at - 1
    );
    assert!(
        manifests.len() < TAGS + 1,
        "every due tag was HEADed despite the 429: {}",
        manifests.len()
    );
    assert_eq!(
        tags_cached(&rig, &target).await,
        TAGS,
        "previous data intact"
    );
    let head = rig.head(&target).await;
    assert!(head.last_error.as_deref().unwrap().contains("429"));

    tokio::time::sleep(limited.retry_after.unwrap()).await;
    let recovered = rig.warmer.warm_now(&target).await;
    ok(&recovered);
    assert_eq!(tags_cached(&rig, &target).await, TAGS + 1);
    let head = rig.head(&target).await;
    assert_eq!(head.last_error, None);
    assert!(head.last_update > before.last_update);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_down_truncated_bodies_and_resets_fail_the_pass_without_losing_data() {
    let mut rig = rig(RegistryAuth::Anonymous, Duration::ZERO);
    let target = warmed(&rig, "faulty").await;
    let before = rig.head(&target).await;

    let check_failed = |outcome: &Outcome, what: &str| {
        assert!(outcome.error.is_some(), "{what}: expected a failure");
        assert_eq!(outcome.last_update, before.last_update, "{what}");
    };
    // New content that needs GETs, so body faults bite.
    rig.registry
        .pusher()
        .push_index(
            "faulty",
            "multi",
            IndexKind::Oci,
            &PlatformSpec::default_set(),
        )
        .await;

    rig.proxy
        .add_rule(Rule::kind(Kind::Blob, Fault::TruncateBody { keep: 5 }));
    let o = rig.warmer.warm_now(&target).await;
    check_failed(&o, "truncated bodies");
    assert!(
        o.error.as_deref().unwrap().contains("multi"),
        "{:?}",
        o.error
    );
    assert_eq!(tags_cached(&rig, &target).await, 6);

    rig.proxy.clear_rules();
    rig.proxy
        .add_rule(Rule::kind(Kind::Manifest, Fault::Reset).method("HEAD"));
    let o = rig.warmer.warm_now(&target).await;
    check_failed(&o, "resets");
    assert_eq!(tags_cached(&rig, &target).await, 6);
    rig.proxy.clear_rules();

    rig.registry.stop();
    let o = rig.warmer.warm_now(&target).await;
    check_failed(&o, "registry down");
    assert_eq!(tags_cached(&rig, &target).await, 6);
    let head = rig.head(&target).await;
    assert!(head.last_error.is_some());

    rig.registry.restart();
    let o = rig.warmer.warm_now(&target).await;
    ok(&o);
    assert_eq!(tags_cached(&rig, &target).await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flushed_memcached_is_rewarmed_by_the_next_pass() {
    let rig = rig(RegistryAuth::Anonymous, Duration::from_secs(3600));
    let target = warmed(&rig, "flushed").await;
    rig.memcached.flush();
    assert_eq!(tags_cached(&rig, &target).await, 0);
    rig.proxy.reset_counts();
    let o = rig.warmer.warm_now(&target).await;
    ok(&o);
    assert_eq!(tags_cached(&rig, &target).await, 6);
    assert_eq!(
        rig.proxy.count("GET", Kind::Manifest),
        3,
        "each distinct image once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evicted_image_records_are_refetched_by_digest_without_heads() {
    let rig = rig(RegistryAuth::Anonymous, Duration::from_secs(3600));
    let target = warmed(&rig, "evicted").await;
    let (_, entries) = rig
        .store
        .read_index(&target.scope, &target.repository)
        .await
        .unwrap()
        .unwrap();
    let digest = entries[0].digest.clone().unwrap();
    rig.store
        .backend()
        .delete(&regcache::cache::keys::image(&target.scope, &digest))
        .await
        .unwrap();
    rig.proxy.reset_counts();
    ok(&rig.warmer.warm_now(&target).await);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 0);
    assert_eq!(rig.proxy.count("GET", Kind::Manifest), 1);
    assert_eq!(tags_cached(&rig, &target).await, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_selection_fetches_only_wanted_children_and_widens_on_demand() {
    let rig = rig(RegistryAuth::Anonymous, Duration::from_secs(3600));
    rig.registry
        .pusher()
        .push_index(
            "plat",
            "v1",
            IndexKind::DockerList,
            &PlatformSpec::default_set(),
        )
        .await;
    let mut target = rig.target("plat");
    target.platforms = vec![Platform::parse("linux/amd64").unwrap()];
    rig.proxy.reset_counts();
    ok(&rig.warmer.warm_now(&target).await);
    assert_eq!(
        rig.proxy.count("GET", Kind::Manifest),
        2,
        "index and one child"
    );
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 1);

    // Another watch in the same scope wants arm64 too: only the missing child is fetched.
    target
        .platforms
        .push(Platform::parse("linux/arm64").unwrap());
    rig.proxy.reset_counts();
    ok(&rig.warmer.warm_now(&target).await);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 0);
    assert_eq!(
        rig.proxy.count("GET", Kind::Manifest),
        2,
        "index again and the arm64 child"
    );
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 1);
    let m = rig
        .store
        .get_image_repository_metadata(&target.scope, &target.repository)
        .await
        .unwrap();
    assert_eq!(m.images["v1"].platforms.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_runs_targets_takes_priority_requests_and_stops() {
    let rig = rig(RegistryAuth::Anonymous, Duration::from_secs(3600));
    rig.registry.pusher().push_many("sched/a", 3, 1).await;
    rig.registry.pusher().push_many("sched/b", 3, 1).await;
    let (a, b) = (rig.target("sched/a"), rig.target("sched/b"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let warmer = rig.warmer.clone();
    let runner = tokio::spawn(warmer.run(tx, async move {
        let _ = stopped.await;
    }));
    rig.warmer.upsert(a.clone());
    rig.warmer.upsert(b.clone());
    let mut ids = vec![recv(&mut rx).await.id, recv(&mut rx).await.id];
    ids.sort();
    assert_eq!(ids, [a.id.clone(), b.id.clone()]);

    // Nothing is due for 5 minutes; a manual rescan runs now.
    assert!(rig.warmer.request(&a.id, Priority::ManualRescan));
    assert_eq!(recv(&mut rx).await.id, a.id);
    // A webhook for b's repository.
    let requested = rig
        .warmer
        .request_repository(&b.repository, Priority::Webhook);
    assert_eq!(requested, std::slice::from_ref(&b.id));
    assert_eq!(recv(&mut rx).await.id, b.id);

    // Removed targets are no longer warmed.
    assert!(rig.warmer.remove(&b.id));
    assert!(!rig.warmer.request(&b.id, Priority::ManualRescan));
    assert_eq!(rig.warmer.targets().len(), 1);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), runner)
        .await
        .expect("run stops on shutdown")
        .unwrap();
}

async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an outcome in time")
        .expect("channel open")
}

/// Two watches of one namespace logging in as the same user share a scope, so they write
/// one index. One has a wrong password: its pass must wait for the other's to end (a failure
/// record written in the middle of a publish would replace the published head), and the
/// good index stays readable.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_target_sharing_an_index_waits_for_the_other_pass() {
    let rig = rig(RegistryAuth::Basic, Duration::ZERO);
    rig.registry.pusher().push_many("shared/app", 6, 3).await;
    let good = rig.target("shared/app");
    let bad = Target {
        id: "default/wrong-password".to_string(),
        credential: Credential::basic(support::TEST_USER, "wrong-password"),
        cloud: None,
        ..good.clone()
    };
    assert_eq!(
        good.scope, bad.scope,
        "the same user in one namespace: one scope"
    );
    // The good pass spends a while on its HEADs; the bad one starts meanwhile.
    rig.proxy
        .add_rule(Rule::kind(Kind::Manifest, Fault::delay_ms(300)).method("HEAD"));
    let warmer = rig.warmer.clone();
    let good_pass = {
        let good = good.clone();
        tokio::spawn(async move { warmer.warm_now(&good).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rig.proxy.count("HEAD", Kind::Manifest) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the good pass never sent a HEAD"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = rig.warmer.warm_now(&bad).await;
    assert!(b.error.is_some(), "the wrong password fails");
    assert!(
        good_pass.is_finished(),
        "the failing pass ran while the other pass of the same index was under way"
    );
    ok(&good_pass.await.unwrap());
    let cached = rig
        .store
        .get_image_repository_metadata(&good.scope, &good.repository)
        .await
        .expect("the good index is still published");
    assert_eq!(cached.tags.len(), 6);
}

/// A pass that changes nothing publishes nothing: the same generation, no chunk written,
/// only the head and the warmer's own schedule items. A moved tag rewrites the one chunk
/// that holds it; the chunk it replaced is deleted by the publish after.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_that_changes_nothing_writes_no_chunk_and_a_moved_tag_rewrites_one() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let memcached = support::Memcached::start();
    // Small chunks, so the index has many.
    let store = Arc::new(
        MetadataStore::new(Memcached::new(
            vec![memcached.addr()],
            MemcachedOptions::default(),
        ))
        .with_chunk_bytes(2048),
    );
    let warmer = Warmer::new(
        RegistryClient::new(ClientOptions::default()),
        store.clone(),
        WarmerOptions {
            pass: PassOptions {
                policy: policy(Duration::ZERO),
            },
            ..WarmerOptions::default()
        },
    );
    let path = "steady/app";
    let pusher = registry.pusher();
    pusher.push_many(path, 200, 20).await;
    let repository = Repository::parse(&format!("{}/{path}", registry.host())).unwrap();
    let target = support::plain_target(
        "default/steady",
        repository.clone(),
        Credential::Anonymous,
        Scope::public(),
    );
    let head = || async {
        store
            .head(&target.scope, &repository)
            .await
            .unwrap()
            .expect("a published head")
    };
    let sets = || {
        memcached.stats()["cmd_set"]
            .parse::<u64>()
            .expect("cmd_set is a number")
    };

    let cold = warmer.warm_now(&target).await;
    ok(&cold);
    assert!(cold.index_changed);
    let first = head().await;
    let chunks = first.chunks.len();
    assert!(chunks >= 8, "{chunks} chunks");

    // Every tag is due and HEADed again, and none moved.
    let before = sets();
    let steady = warmer.warm_now(&target).await;
    ok(&steady);
    assert_eq!(steady.requests_of(RequestKind::ManifestHead), 200);
    assert!(!steady.index_changed);
    let second = head().await;
    assert_eq!(second.generation, first.generation, "the same generation");
    assert_eq!(second.chunks, first.chunks);
    assert!(second.last_update > first.last_update, "freshness moved");
    // The head, and each chunk's schedule (every tag was resolved again): no chunk.
    assert_eq!(sets() - before, 1 + chunks as u64);

    // One tag moves: one chunk is new, the others are kept.
    let moved = pusher
        .push_image(
            path,
            "tag-00123",
            &ImageSpec::new(ManifestKind::Oci).seed(777),
        )
        .await;
    let before = sets();
    let after_move = warmer.warm_now(&target).await;
    ok(&after_move);
    assert!(after_move.index_changed);
    assert_eq!(after_move.changed, 1);
    let third = head().await;
    assert_ne!(third.generation, second.generation);
    let old: Vec<&str> = second.chunks.iter().map(|c| c.id.as_str()).collect();
    let new: Vec<&str> = third.chunks.iter().map(|c| c.id.as_str()).collect();
    let replaced: Vec<&str> = old.iter().copied().filter(|id| !new.contains(id)).collect();
    assert_eq!(replaced.len(), 1, "one chunk replaced: {old:?} -> {new:?}");
    assert_eq!(new.iter().filter(|id| !old.contains(id)).count(), 1);
    assert_eq!(third.retired, [replaced[0]]);
    // The image, its contents, the new chunk, every schedule and the head.
    assert_eq!(
        sets() - before,
        1 + 2 + 1 + chunks as u64 + 1,
        "image record, manifest and config, one chunk, the schedules, the head"
    );
    let image = store
        .get_image(
            &target.scope,
            &regcache::image::ImageRef::parse(&format!("{repository}:tag-00123")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(image.digest.as_str(), moved.digest);

    // The replaced chunk stays while a reader may stream the previous index, and is gone
    // after the next publish.
    let key = regcache::cache::keys::tag_chunk(&target.scope, &repository, replaced[0]);
    assert!(memcached.get(&key).is_some());
    ok(&warmer.warm_now(&target).await);
    assert!(
        memcached.get(&key).is_none(),
        "the retired chunk is deleted"
    );
    assert!(head().await.retired.is_empty());
}
