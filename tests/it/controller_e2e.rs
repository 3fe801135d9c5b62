//! End to end: the real `regcache controller` binary against the Kubernetes API emulator,
//! with the real token-auth registry and real memcached.

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use serde_json::{Value, json};
use support::kube::{ControllerProcess, Emulator, pull_secret, ready_is};
use support::{CANARY_PASSWORD, ImageSpec, ManifestKind, Registry, RegistryAuth, TEST_USER};

const NS: &str = "team";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/team/imagerepositorywatches";
const SECRETS: &str = "/api/v1/namespaces/team/secrets";

/// Annotates the watch for a rescan and waits until the controller has handled it.
async fn request_rescan(emulator: &Emulator, path: &str, value: &str) {
    emulator
        .merge_patch(
            path,
            json!({"metadata": {"annotations": {"regcache.io/requestedAt": value}}}),
        )
        .await;
    emulator
        .wait_for(path, Duration::from_secs(30), |w| {
            w["status"]["lastHandledRequestedAt"] == value
        })
        .await;
}

/// Status writes the emulator received (no-ops included) and the changes they made.
async fn status_writes(emulator: &Emulator) -> (u64, u64) {
    let c = emulator.counters().await;
    let key = "regcache.io/v1alpha1/imagerepositorywatches/status";
    (
        c["writes"][key].as_u64().unwrap_or(0),
        c["changes"][key].as_u64().unwrap_or(0),
    )
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
    let emulator = Emulator::start();
    let host = registry.host();
    emulator
        .create(SECRETS, pull_secret(NS, "regcred", &host, CANARY_PASSWORD))
        .await;
    emulator
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
    let controller = ControllerProcess::start(
        &emulator.kubeconfig,
        &["--memcached", &memcached.addr(), "--log-level", "debug"],
        dir.path().join("controller.log"),
    );
    let path = format!("{WATCHES}/app");
    let watch = emulator
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

    // Rotate to a wrong password: the pass fails, Ready goes False, data stays cached.
    emulator
        .merge_patch(
            &format!("{SECRETS}/regcred"),
            json!({"data": pull_secret(NS, "regcred", &host, "wrong-password")["data"]}),
        )
        .await;
    let failed = emulator
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
    emulator
        .merge_patch(
            &format!("{SECRETS}/regcred"),
            json!({"data": pull_secret(NS, "regcred", &host, CANARY_PASSWORD)["data"]}),
        )
        .await;
    let recovered = emulator
        .wait_for(
            &path,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    assert!(
        recovered["status"].get("lastError").is_none(),
        "{recovered:#}"
    );

    // A quiet minute: nothing is due for an hour, so the controller must not write status
    // at all, although every write it made came back to it as a watch event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = status_writes(&emulator).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = status_writes(&emulator).await;
    assert_eq!(
        after, before,
        "status writes (writes, changes) during a quiet minute"
    );

    // A rescan on request.
    request_rescan(&emulator, &path, "now-1").await;

    // Events mark the transitions (Progressing → Succeeded → Unauthorized → Succeeded), not
    // every pass; and no credential shows in logs, status or events.
    let events = emulator
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
    let watch = emulator.get(&path).await.unwrap();
    for (what, text) in [
        ("controller logs", controller.logs()),
        ("watch", watch.to_string()),
        ("events", events.to_string()),
    ] {
        assert!(!text.contains(CANARY_PASSWORD), "canary in {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_condition_and_resumes_when_fixed() {
    let registry = Registry::start(RegistryAuth::Basic);
    registry
        .pusher()
        .push_image("e2e/bad", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let memcached = support::Memcached::start();
    let emulator = Emulator::start();
    let host = registry.host();
    let watch = |name: &str, spec: Value| {
        json!({
            "apiVersion": "regcache.io/v1alpha1",
            "kind": "ImageRepositoryWatch",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        })
    };
    emulator
        .create(
            WATCHES,
            watch("bad-image", json!({"image": "Not/Valid:tag"})),
        )
        .await;
    emulator
        .create(
            WATCHES,
            watch(
                "missing-secret",
                json!({"image": format!("{host}/e2e/bad"), "pullSecrets": [{"name": "later"}], "insecure": true}),
            ),
        )
        .await;
    emulator
        .create(
            SECRETS,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque", "namespace": NS},
                   "type": "Opaque", "data": {"password": base64::engine::general_purpose::STANDARD.encode(CANARY_PASSWORD)}}),
        )
        .await;
    emulator
        .create(
            WATCHES,
            watch(
                "wrong-type",
                json!({"image": format!("{host}/e2e/bad"), "pullSecrets": [{"name": "opaque"}], "insecure": true}),
            ),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(
        &emulator.kubeconfig,
        &["--memcached", &memcached.addr()],
        dir.path().join("controller.log"),
    );
    let bad = emulator
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
    let wrong = emulator
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
    emulator
        .wait_for(
            &missing,
            Duration::from_secs(60),
            ready_is("False", "SecretNotFound"),
        )
        .await;

    // The secret appears: warming resumes by itself.
    let mut secret = pull_secret(NS, "regcred", &host, CANARY_PASSWORD);
    secret["metadata"]["name"] = json!("later");
    emulator.create(SECRETS, secret).await;
    let ok = emulator
        .wait_for(
            &missing,
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    assert_eq!(ok["status"]["tagCount"], 1);

    // Deleting the watch stops its warming.
    emulator.delete(&missing).await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_warms_and_another_takes_over() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry
        .pusher()
        .push_image("e2e/ha", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let memcached = support::Memcached::start();
    let emulator = Emulator::start();
    let host = registry.host();
    emulator
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
    let args = |name: &'static str| {
        vec![
            "--memcached".to_string(),
            memcached.addr(),
            "--leader-elect".to_string(),
            "--leader-election-namespace".to_string(),
            NS.to_string(),
            "--lease-duration".to_string(),
            "6s".to_string(),
            "--lease-retry".to_string(),
            "300ms".to_string(),
            "--pod-name".to_string(),
            name.to_string(),
        ]
    };
    let start = |name: &'static str| {
        let a = args(name);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ControllerProcess::start(
            &emulator.kubeconfig,
            &a,
            dir.path().join(format!("{name}.log")),
        )
    };
    let mut first = start("replica-a");
    emulator
        .wait_for(
            "/apis/coordination.k8s.io/v1/namespaces/team/leases/regcache-leader",
            Duration::from_secs(30),
            |l| l["spec"]["holderIdentity"] == "replica-a",
        )
        .await;
    let mut second = start("replica-b");
    let path = format!("{WATCHES}/ha");
    emulator
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

    first.kill();
    emulator
        .wait_for(
            "/apis/coordination.k8s.io/v1/namespaces/team/leases/regcache-leader",
            Duration::from_secs(30),
            |l| l["spec"]["holderIdentity"] == "replica-b",
        )
        .await;
    // The new leader acts: a requested rescan is handled.
    request_rescan(&emulator, &path, "after-failover").await;
    assert!(second.logs().contains("became leader"));
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
    let emulator = Emulator::start();
    let host = registry.host();
    emulator
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
                "--leader-elect",
                "--leader-election-namespace",
                NS,
                "--lease-retry",
                "300ms",
                "--pod-name",
                name,
                "--api-auth",
                "none",
                "--webhook-token",
                HOOK_TOKEN,
            ];
            ControllerProcess::start(
                &emulator.kubeconfig,
                &args,
                dir.path().join(format!("{name}.log")),
            )
        })
        .collect();
    let path = format!("{WATCHES}/hook");
    emulator
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
            let bytes = http
                .get(format!("{api}/api/v1/repositories/{host}/e2e/hook"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap_or_default();
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
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
}
