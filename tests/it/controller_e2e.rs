//! End to end: the real `regcache controller` binary against a real API server (etcd and
//! kube-apiserver), installed by its Helm chart and running as the chart's ServiceAccount
//! under the chart's RBAC, with the real token-auth registry and real memcached.

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::kube::{ControllerProcess, KubeClient, pull_secret, ready_is};
use support::{CANARY_PASSWORD, ImageSpec, ManifestKind, Registry, RegistryAuth, TEST_USER};

const NS: &str = "team";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/team/imagerepositorywatches";
const SECRETS: &str = "/api/v1/namespaces/team/secrets";

/// Annotates the watch for a rescan and waits until the controller has handled it.
async fn request_rescan(cluster: &KubeClient, path: &str, value: &str) {
    cluster
        .merge_patch(
            path,
            json!({"metadata": {"annotations": {"regcache.io/requestedAt": value}}}),
        )
        .await;
    cluster
        .wait_for(path, Duration::from_secs(30), |w| {
            w["status"]["lastHandledRequestedAt"] == value
        })
        .await;
}

/// Status writes the API server served for watches (by its own request counter, no-ops
/// included).
async fn status_writes(cluster: &Cluster) -> f64 {
    let mut writes = 0.0;
    for verb in ["APPLY", "PATCH", "PUT"] {
        writes += cluster
            .request_count(&[
                ("resource", "imagerepositorywatches"),
                ("subresource", "status"),
                ("verb", verb),
            ])
            .await;
    }
    writes
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_with_pull_secret_warms_survives_rotation_and_does_not_loop() {
    let registry = Registry::start(RegistryAuth::Token);
    let pusher = registry.pusher();
    for (i, tag) in ["v1", "v2", "v3"].iter().enumerate() {
        pusher
            .push_image(
                "e2e/app",
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(i as u64),
            )
            .await;
    }
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &[]).await;
    let host = registry.host();
    cluster
        .create(SECRETS, pull_secret(NS, "regcred", &host, CANARY_PASSWORD))
        .await;
    cluster
        .create(
            WATCHES,
            json!({
                "apiVersion": "regcache.io/v1alpha1",
                "kind": "ImageRepositoryWatch",
                "metadata": {"name": "app", "namespace": NS},
                "spec": {"image": format!("{host}/e2e/app"), "pullSecrets": [{"name": "regcred"}],
                         "insecure": true, "interval": "1h"},
            }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let controller = cluster.controller(
        &["--memcached", &memcached.addr(), "--log-level", "debug"],
        dir.path().join("controller.log"),
    );
    let path = format!("{WATCHES}/app");
    // `kubectl wait` returns once the controller says Ready.
    let waited = cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "irw/app",
        "-n",
        NS,
        "--timeout=60s",
    ]);
    assert!(waited.contains("condition met"), "{waited}");
    let watch = cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    assert_eq!(watch["status"]["tagCount"], 3, "{watch:#}");
    assert!(watch["status"]["lastUpdate"].is_string());
    assert_eq!(
        watch["status"]["canonicalImageName"],
        format!("{host}/e2e/app")
    );
    assert_eq!(
        watch["status"]["observedGeneration"],
        watch["metadata"]["generation"]
    );
    let first_update = watch["status"]["lastUpdate"].clone();
    // `kubectl get irw` fills the printer columns from the status.
    let table = cluster.kubectl_ok(&["get", "irw", "-n", NS]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..4],
        ["app", &format!("{host}/e2e/app"), "3", "True"],
        "{table}"
    );

    // Rotate to a wrong password: the pass fails, Ready goes False, data stays cached.
    cluster
        .merge_patch(
            &format!("{SECRETS}/regcred"),
            json!({"data": pull_secret(NS, "regcred", &host, "wrong-password")["data"]}),
        )
        .await;
    let failed = cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("False", "Unauthorized"),
        )
        .await;
    let error = failed["status"]["lastError"].as_str().unwrap();
    assert!(error.contains(&host) && error.contains("401"), "{error}");
    assert_eq!(
        failed["status"]["lastUpdate"], first_update,
        "lastUpdate does not move"
    );
    let store = MetadataStore::new(Memcached::new(
        vec![memcached.addr()],
        MemcachedOptions::default(),
    ));
    let repository = Repository::parse(&format!("{host}/e2e/app")).unwrap();
    let scope = Scope::for_credential(&host, NS, &Credential::basic(TEST_USER, "any"));
    let cached = store
        .get_image_repository_metadata(&scope, &repository)
        .await
        .unwrap();
    assert_eq!(
        cached.tags,
        ["v1", "v2", "v3"],
        "cached data still readable"
    );

    // Fix it: recovers.
    cluster
        .merge_patch(
            &format!("{SECRETS}/regcred"),
            json!({"data": pull_secret(NS, "regcred", &host, CANARY_PASSWORD)["data"]}),
        )
        .await;
    let recovered = cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    // The controller's apply left `lastError` out, and the real server-side apply removed
    // the field it owned: gone, not stale.
    assert!(
        recovered["status"].get("lastError").is_none(),
        "{recovered:#}"
    );

    // A quiet minute: nothing is due for an hour, so the controller must not write status
    // at all, although every write it made came back to it as a watch event. The API
    // server's own request counter sees every write, no-ops too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (
        status_writes(&cluster).await,
        cluster.get(&path).await.unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = (
        status_writes(&cluster).await,
        cluster.get(&path).await.unwrap(),
    );
    assert!(
        before.0 > 0.0,
        "the counter sees the controller's status writes"
    );
    assert_eq!(after.0, before.0, "status writes during a quiet minute");
    assert_eq!(
        after.1["metadata"]["resourceVersion"], before.1["metadata"]["resourceVersion"],
        "the watch changed during a quiet minute"
    );

    // A spec change: observedGeneration follows it, and the status settles again.
    cluster
        .merge_patch(&path, json!({"spec": {"interval": "2h"}}))
        .await;
    let changed = cluster
        .wait_for(&path, Duration::from_secs(60), |w| {
            w["metadata"]["generation"] == 2 && w["status"]["observedGeneration"] == 2
        })
        .await;
    assert!(ready_is("True", "Succeeded")(&changed), "{changed:#}");

    // A rescan on request.
    request_rescan(&cluster, &path, "now-1").await;

    // Events mark the transitions (Progressing → Succeeded → Unauthorized → Succeeded), not
    // every pass; and no credential shows in logs, status or events.
    let events = cluster
        .get("/apis/events.k8s.io/v1/namespaces/team/events")
        .await
        .unwrap();
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == "app")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"Succeeded") && reasons.contains(&"Unauthorized"),
        "{reasons:?}"
    );
    assert!(
        reasons.len() <= 6,
        "an event per transition only: {reasons:?}"
    );
    let watch = cluster.get(&path).await.unwrap();
    for (what, text) in [
        ("controller logs", controller.logs()),
        ("watch", watch.to_string()),
        ("events", events.to_string()),
    ] {
        assert!(!text.contains(CANARY_PASSWORD), "canary in {what}");
    }
    cluster.assert_nothing_forbidden();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_condition_and_resumes_when_fixed() {
    let registry = Registry::start(RegistryAuth::Basic);
    registry
        .pusher()
        .push_image("e2e/bad", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &[]).await;
    let host = registry.host();
    let watch = |name: &str, spec: Value| {
        json!({
            "apiVersion": "regcache.io/v1alpha1",
            "kind": "ImageRepositoryWatch",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        })
    };
    cluster
        .create(
            WATCHES,
            // The schema lets it through (no tag, no digest, no space); regcache's parser
            // does not: a repository path is lower case.
            watch("bad-image", json!({"image": "Not/Valid"})),
        )
        .await;
    cluster
        .create(
            WATCHES,
            watch(
                "missing-secret",
                json!({"image": format!("{host}/e2e/bad"), "pullSecrets": [{"name": "later"}], "insecure": true}),
            ),
        )
        .await;
    cluster
        .create(
            SECRETS,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque", "namespace": NS},
                   "type": "Opaque", "data": {"password": base64::engine::general_purpose::STANDARD.encode(CANARY_PASSWORD)}}),
        )
        .await;
    cluster
        .create(
            WATCHES,
            watch(
                "wrong-type",
                json!({"image": format!("{host}/e2e/bad"), "pullSecrets": [{"name": "opaque"}], "insecure": true}),
            ),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let controller = cluster.controller(
        &["--memcached", &memcached.addr()],
        dir.path().join("controller.log"),
    );
    let bad = cluster
        .wait_for(
            &format!("{WATCHES}/bad-image"),
            Duration::from_secs(60),
            ready_is("False", "InvalidImage"),
        )
        .await;
    let msg = bad["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("team/bad-image") && msg.contains("Not/Valid"),
        "{msg}"
    );
    let wrong = cluster
        .wait_for(
            &format!("{WATCHES}/wrong-type"),
            Duration::from_secs(60),
            ready_is("False", "InvalidSecret"),
        )
        .await;
    let msg = wrong["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("team/opaque") && msg.contains("Opaque"),
        "{msg}"
    );
    assert!(!wrong.to_string().contains(CANARY_PASSWORD));
    let missing = format!("{WATCHES}/missing-secret");
    cluster
        .wait_for(
            &missing,
            Duration::from_secs(60),
            ready_is("False", "SecretNotFound"),
        )
        .await;

    // The secret appears: warming resumes by itself.
    let mut secret = pull_secret(NS, "regcred", &host, CANARY_PASSWORD);
    secret["metadata"]["name"] = json!("later");
    cluster.create(SECRETS, secret).await;
    let ok = cluster
        .wait_for(
            &missing,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    assert_eq!(ok["status"]["tagCount"], 1);

    // Deleting the watch stops its warming.
    cluster.delete(&missing).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !controller.logs().contains("watch deleted; warming stops") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(controller.logs().contains("team/missing-secret"));
    cluster.assert_nothing_forbidden();
}

/// Leader election on the real Lease API, with the chart's two replicas: one leads and the
/// other only plans; a leader that shuts down gracefully (SIGTERM, as Kubernetes stops a
/// Pod) releases the Lease, so the other takes over at its next retry; a killed leader is
/// replaced once its lease has run out, and not before.
#[tokio::test(flavor = "multi_thread")]
async fn one_leader_warms_and_another_takes_over() {
    const LEASE: Duration = Duration::from_secs(10);
    const RETRY: Duration = Duration::from_millis(500);
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry
        .pusher()
        .push_image("e2e/ha", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &["replicas=2"]).await;
    let host = registry.host();
    cluster
        .create(
            WATCHES,
            json!({
                "apiVersion": "regcache.io/v1alpha1",
                "kind": "ImageRepositoryWatch",
                "metadata": {"name": "ha", "namespace": NS},
                "spec": {"image": format!("{host}/e2e/ha"), "insecure": true, "interval": "1h"},
            }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        cluster.controller(
            &[
                "--memcached",
                &memcached.addr(),
                "--lease-duration",
                &format!("{}s", LEASE.as_secs()),
                "--lease-retry",
                &format!("{}ms", RETRY.as_millis()),
                "--pod-name",
                name,
            ],
            dir.path().join(format!("{name}.log")),
        )
    };
    let lease = cluster.lease_path();
    let held_by = |name: &'static str| move |l: &Value| l["spec"]["holderIdentity"] == name;
    let mut first = start("replica-a");
    cluster
        .wait_for(&lease, Duration::from_secs(30), held_by("replica-a"))
        .await;
    let mut second = start("replica-b");
    let path = format!("{WATCHES}/ha");
    cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(first.logs().contains("became leader"));
    assert!(!second.logs().contains("became leader"), "only one leader");
    // A follower plans every watch (it serves reads) but must not act on them: no status
    // write, no Event, no warm pass, no registry request; the leader did all four.
    for (metric, what) in [
        ("regcache_reconcile_status_patches_total", "status writes"),
        ("regcache_reconcile_events_total", "Events"),
        ("regcache_warmer_passes_total", "warm passes"),
        ("regcache_registry_requests_total", "registry requests"),
    ] {
        assert!(
            first.metric(metric).await > 0.0,
            "the leader made no {what}"
        );
        assert_eq!(second.metric(metric).await, 0.0, "the follower made {what}");
    }
    assert_eq!(
        second.metric("regcache_warmer_targets").await,
        1.0,
        "the follower plans"
    );
    assert!(second.is_running());

    // A graceful shutdown releases the Lease: the follower takes it well before the lease
    // would have run out.
    let stopped = std::time::Instant::now();
    let status = first
        .terminate(Duration::from_secs(20))
        .expect("the leader exits on SIGTERM");
    assert!(status.success(), "{status}: {}", first.logs());
    assert!(
        first.logs().contains("released the lease"),
        "{}",
        first.logs()
    );
    cluster
        .wait_for(
            &lease,
            LEASE + Duration::from_secs(20),
            held_by("replica-b"),
        )
        .await;
    let took = stopped.elapsed();
    assert!(
        took < LEASE,
        "the follower took a released lease only after {took:?} (lease {LEASE:?})"
    );
    // The new leader acts: a requested rescan is handled.
    request_rescan(&cluster, &path, "after-failover").await;
    assert!(second.logs().contains("became leader"));

    // A killed leader cannot release: its lease runs out first (it renewed at most a retry
    // before it died), then a candidate takes it at its next retry. Three seconds of slack
    // above that bound for a busy machine.
    let third = start("replica-c");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while third.metric("regcache_warmer_targets").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica-c never planned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill();
    let killed = std::time::Instant::now();
    cluster
        .wait_for(
            &lease,
            LEASE + Duration::from_secs(30),
            held_by("replica-c"),
        )
        .await;
    let took = killed.elapsed();
    assert!(
        took + RETRY + Duration::from_secs(1) >= LEASE,
        "a killed leader's lease was taken after {took:?}, before it ran out ({LEASE:?})"
    );
    assert!(
        took <= LEASE + RETRY + Duration::from_secs(3),
        "a killed leader was replaced only after {took:?} (lease {LEASE:?}, retry {RETRY:?})"
    );
    request_rescan(&cluster, &path, "after-kill").await;
    cluster.assert_nothing_forbidden();
}

/// Behind the chart's Service a registry's webhook reaches any replica, but only the
/// leader warms. Each of three replicas, sent a push in turn, must lead to a warm of the
/// pushed tag (the watch's interval is an hour: only the webhook can bring the tag in).
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_sent_to_any_of_three_replicas_warms_the_pushed_tag() {
    const HOOK_TOKEN: &str = "hook-s3cret";
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    pusher
        .push_image("e2e/hook", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let memcached = support::Memcached::start();
    let cluster =
        Cluster::install(&[NS], &["replicas=3", "webhookToken.existingSecret=hook"]).await;
    let host = registry.host();
    cluster
        .create(
            WATCHES,
            json!({
                "apiVersion": "regcache.io/v1alpha1",
                "kind": "ImageRepositoryWatch",
                "metadata": {"name": "hook", "namespace": NS},
                "spec": {"image": format!("{host}/e2e/hook"), "insecure": true, "interval": "1h"},
            }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<ControllerProcess> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|name| {
            let args = [
                "--memcached",
                &memcached.addr(),
                "--lease-retry",
                "300ms",
                "--pod-name",
                name,
                "--api-auth",
                "none",
                "--webhook-token",
                HOOK_TOKEN,
            ];
            cluster.controller(&args, dir.path().join(format!("{name}.log")))
        })
        .collect();
    let path = format!("{WATCHES}/hook");
    cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    let http = support::http_client(None);
    for (i, replica) in replicas.iter().enumerate() {
        let api = format!("http://{}", replica.address("read API").await);
        // Every replica plans the watch before it can tell which watches a push covers.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while replica.metric("regcache_warmer_targets").await < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {i} never planned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tag = format!("pushed-{i}");
        let pushed = pusher
            .push_image(
                "e2e/hook",
                &tag,
                &ImageSpec::new(ManifestKind::Oci).seed(10 + i as u64),
            )
            .await;
        let (status, body) = support::webhook::send_push(
            replica.address("read API").await.as_str(),
            HOOK_TOKEN,
            &host,
            "e2e/hook",
            &tag,
        )
        .await;
        assert_eq!(status, 202, "replica {i}: {body}");
        assert_eq!(body["queued"], json!(["team/hook"]), "replica {i}");
        // The tag, with its digest, is served (by this replica, from the shared cache).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer =
                support::get_json(&http, &format!("{api}/api/v1/repositories/{host}/e2e/hook"))
                    .await;
            if answer["tags"][&tag] == pushed.digest.as_str() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the push sent to replica {i} was not warmed: {answer:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.assert_nothing_forbidden();
}

/// The audit log's requests of the chart's ServiceAccount for watches: (verb, request URI).
fn watch_requests(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == cluster.user.as_str())
        .filter(|e| e["objectRef"]["resource"] == "imagerepositorywatches")
        .filter(|e| e["stage"] == "ResponseComplete" || e["verb"] == "watch")
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or_default().to_string(),
                e["requestURI"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Watch expiry and an API server restart, on the real thing. The API server runs without
/// its watch cache, so watches are served from etcd. It is stopped; meanwhile, through a
/// second API server on the same etcd, a watch is created, one changed and one deleted,
/// and etcd's history is compacted past the controller's last resourceVersion. The first
/// API server comes back on its port: the controller's watch from that resourceVersion gets
/// 410 Gone, it lists again, and acts on every change it missed.
#[tokio::test(flavor = "multi_thread")]
async fn watch_expiry_and_api_server_restart_lose_no_change() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    for repository in ["e2e/a", "e2e/b", "e2e/c"] {
        pusher
            .push_image(repository, "v1", &ImageSpec::new(ManifestKind::Oci))
            .await;
    }
    let host = registry.host();
    let memcached = support::Memcached::start();
    let server = tokio::task::spawn_blocking(|| {
        support::apiserver::ApiServer::start_with(support::apiserver::ApiServerOptions {
            no_watch_cache: true,
        })
    })
    .await
    .unwrap();
    let mut cluster = Cluster::install_on(server, &[NS], &[]).await;
    let watch = |name: &str| {
        json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"image": format!("{host}/e2e/{name}"), "insecure": true, "interval": "1h"}})
    };
    for name in ["a", "b"] {
        cluster.create(WATCHES, watch(name)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let controller = cluster.controller(
        &[
            "--memcached",
            &memcached.addr(),
            "--log-level",
            "info,kube_runtime=debug",
        ],
        dir.path().join("controller.log"),
    );
    for name in ["a", "b"] {
        cluster
            .wait_for(
                &format!("{WATCHES}/{name}"),
                Duration::from_secs(60),
                ready_is("True", "Succeeded"),
            )
            .await;
    }
    let second = tokio::task::block_in_place(|| cluster.second_apiserver());
    cluster.stop_apiserver();
    second.create(WATCHES, watch("c")).await;
    second
        .merge_patch(&format!("{WATCHES}/b"), json!({"spec": {"interval": "2h"}}))
        .await;
    second.delete(&format!("{WATCHES}/a")).await;
    cluster.compact_etcd().await;
    drop(second);
    let requests_before = watch_requests(&cluster).len();
    let restarting = chrono::Utc::now();
    tokio::task::block_in_place(|| cluster.restart_apiserver());
    let restarted = chrono::Utc::now();

    // Every change made while the controller could not watch is acted on, soon: each watch
    // stream backs off on its own. When their errors shared the Controller's one back-off,
    // the three 410s escalated it and the new watch was warmed 60 to 80 s after the
    // restart; now it is about a second. 30 s is slack for a busy machine.
    cluster
        .wait_for(
            &format!("{WATCHES}/c"),
            Duration::from_secs(30),
            ready_is("True", "Succeeded"),
        )
        .await;
    cluster
        .wait_for(&format!("{WATCHES}/b"), Duration::from_secs(60), |w| {
            w["metadata"]["generation"] == 2 && w["status"]["observedGeneration"] == 2
        })
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !controller
        .logs()
        .lines()
        .any(|l| l.contains("watch deleted; warming stops") && l.contains("team/a"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted watch was not noticed:\n{}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // How: it watched again from the resourceVersion it had seen last, which etcd had
    // compacted away (410 Gone), and then listed afresh.
    let after: Vec<(String, String)> = watch_requests(&cluster).split_off(requests_before);
    let resumed = after.iter().position(|(verb, uri)| {
        verb == "watch"
            && uri
                .split(['?', '&'])
                .filter_map(|p| p.strip_prefix("resourceVersion="))
                .any(|v| !v.is_empty() && v != "0")
    });
    let relisted = after.iter().rposition(|(verb, _)| verb == "list");
    assert!(
        resumed.is_some() && relisted > resumed,
        "expected a watch resumed from a resourceVersion, then a list; after the restart: {after:#?}"
    );
    for name in ["b", "c"] {
        let w = cluster.get(&format!("{WATCHES}/{name}")).await.unwrap();
        assert!(w["status"].get("lastError").is_none(), "{w:#}");
    }
    cluster.assert_nothing_forbidden_except(&[(restarting, restarted)]);
}

/// A registry that reports a pull quota counting down (Docker Hub's `RateLimit-Remaining`):
/// regcache stops manifest GETs at its reserve, goes on HEADing, says why in the watch's
/// status and in metrics, and GETs again once the window frees pulls.
#[tokio::test(flavor = "multi_thread")]
async fn manifest_gets_stop_at_the_pull_quota_reserve_and_resume_when_the_window_resets() {
    const TAGS: usize = 10;
    const LIMIT: u64 = 8;
    const RESERVE: u64 = 3;
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    for i in 0..TAGS {
        pusher
            .push_image(
                "quota/app",
                &format!("t{i:02}"),
                &ImageSpec::new(ManifestKind::Oci).seed(500 + i as u64),
            )
            .await;
    }
    let proxy = registry.fault_proxy();
    proxy.set_pull_quota(LIMIT);
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &[]).await;
    let path = format!("{WATCHES}/app");
    cluster
        .create(
            WATCHES,
            json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                   "metadata": {"name": "app", "namespace": NS},
                   "spec": {"image": format!("{}/quota/app", proxy.host()),
                            "insecure": true, "interval": "1h"}}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    // One request at a time, so that the GETs stop exactly at the reserve.
    let controller = cluster.controller(
        &[
            "--memcached",
            &memcached.addr(),
            &format!("--registry-pull-reserve={RESERVE}"),
            "--registry-concurrency=1",
        ],
        dir.path().join("controller.log"),
    );
    let gets = || proxy.count("GET", support::Kind::Manifest);
    let heads = || proxy.count("HEAD", support::Kind::Manifest);
    let reserved = cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("False", "PullQuotaReserved"),
        )
        .await;
    let message = reserved["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&format!("{RESERVE} of {LIMIT} pulls left"))
            && message.contains("--registry-pull-reserve"),
        "{reserved:#}"
    );
    assert_eq!(
        gets() as u64,
        LIMIT - RESERVE,
        "GETs up to the reserve, no further"
    );
    assert_eq!(heads(), TAGS, "every tag was HEADed");
    let metrics = controller.address("metrics").await;
    let remaining = support::scrape_metric(
        &metrics,
        &format!(
            "regcache_registry_pull_quota_remaining{{host=\"{}\"}}",
            proxy.host()
        ),
    )
    .await;
    assert_eq!(remaining, RESERVE as f64);

    // Another pass in the same window: HEADs go on, no GET.
    request_rescan(&cluster, &path, "1").await;
    cluster
        .wait_for(&path, Duration::from_secs(30), |_| heads() > TAGS)
        .await;
    let again = cluster
        .wait_for(
            &path,
            Duration::from_secs(30),
            ready_is("False", "PullQuotaReserved"),
        )
        .await;
    assert_eq!(gets() as u64, LIMIT - RESERVE, "{again:#}");

    // The window resets: the HEADs read the new quota and the rest is fetched.
    proxy.reset_pull_quota();
    request_rescan(&cluster, &path, "2").await;
    let done = cluster
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    assert_eq!(done["status"]["tagCount"], TAGS, "{done:#}");
    assert_eq!(
        gets(),
        TAGS,
        "each image fetched once: the rest after the reset"
    );
}
