//! Discovery end to end: the real `regcache controller` binary against a real API server,
//! installed by its Helm chart with `discovery.enabled` and running under the chart's RBAC,
//! with the real registry and memcached. Workloads are real API objects (no controller
//! manager runs, so they make no Pods; discovery reads their templates).

use crate::support;

use std::time::Duration;

use regcache::controller::discovery::plan::watch_name;
use regcache::image::Repository;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::kube::{deployment_object, pull_secret, ready_is, watch_object};
use support::{CANARY_PASSWORD, ImageSpec, ManifestKind, Registry, RegistryAuth};

const NS: &str = "shop";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/shop/imagerepositorywatches";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";
const CRONJOBS: &str = "/apis/batch/v1/namespaces/shop/cronjobs";

fn deployment(name: &str, images: &[&str], secret: Option<&str>) -> Value {
    deployment_object(NS, name, 1, images, secret)
}

/// Discovery's writes of watches (not their status): (verb, name), from the audit log.
fn discovery_writes(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == cluster.user.as_str())
        .filter(|e| e["objectRef"]["resource"] == "imagerepositorywatches")
        .filter(|e| e["objectRef"]["subresource"].is_null())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "patch" | "update" | "delete")
            )
        })
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or_default().to_string(),
                e["objectRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The names of the discovered watches in the namespace (`None` while the API server
/// answers 429 as its storage for watches starts).
async fn discovered(cluster: &Cluster) -> Option<Vec<String>> {
    let list = cluster
        .get(&format!(
            "{WATCHES}?labelSelector=regcache.io%2Fdiscovered%3Dtrue"
        ))
        .await?;
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    Some(names)
}

async fn wait_for_discovered(cluster: &Cluster, wanted: &[&str]) {
    let mut wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let names = discovered(cluster).await;
        if names.as_ref() == Some(&wanted) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "discovered watches {names:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_repositories_become_watches_that_follow_them_and_yield_to_hand_written_ones() {
    let registry = Registry::start(RegistryAuth::Basic);
    let pusher = registry.pusher();
    let mut pushed = std::collections::HashMap::new();
    for repository in ["shop/web", "shop/proxy", "shop/report"] {
        let image = pusher
            .push_image(repository, "v1", &ImageSpec::new(ManifestKind::Oci))
            .await;
        pushed.insert(repository, image);
    }
    let host = registry.host();
    let image = |r: &str| format!("{host}/{r}");
    let name = |r: &str| watch_name(&Repository::parse(&image(r)).unwrap());
    let (web, proxy, report) = (name("shop/web"), name("shop/proxy"), name("shop/report"));

    let cluster = Cluster::install(&[NS, "elsewhere"], &["discovery.enabled=true"]).await;
    cluster
        .merge_patch(
            &format!("/api/v1/namespaces/{NS}"),
            json!({"metadata": {"labels": {"regcache.io/discover": "true"}}}),
        )
        .await;
    cluster
        .create(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            pull_secret(NS, "regcred", &host, CANARY_PASSWORD),
        )
        .await;
    // A namespace without the label is not looked at.
    cluster
        .create(
            "/apis/apps/v1/namespaces/elsewhere/deployments",
            deployment_object(
                "elsewhere",
                "other",
                1,
                &[&format!("{}:v1", image("shop/report"))],
                None,
            ),
        )
        .await;
    let memcached = support::Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let _controller = cluster.controller(
        &[
            "--memcached",
            &memcached.addr(),
            "--discovery-grace-period=4s",
            &format!("--discovery-insecure-registry={host}"),
        ],
        dir.path().join("controller.log"),
    );

    // 1. A Deployment of two repositories (one pinned by digest) with a pull secret: two
    //    watches with that secret, warmed and Ready.
    let pinned = format!("{}@{}", image("shop/proxy"), pushed["shop/proxy"].digest);
    cluster
        .create(
            DEPLOYMENTS,
            deployment(
                "storefront",
                &[&format!("{}:v1", image("shop/web")), &pinned],
                Some("regcred"),
            ),
        )
        .await;
    wait_for_discovered(&cluster, &[&web, &proxy]).await;
    for (watch, repository) in [(&web, "shop/web"), (&proxy, "shop/proxy")] {
        let w = cluster
            .wait_for(
                &format!("{WATCHES}/{watch}"),
                Duration::from_secs(60),
                ready_is("True", "Succeeded"),
            )
            .await;
        assert_eq!(w["spec"]["image"], image(repository), "{w:#}");
        assert_eq!(
            w["spec"]["pullSecrets"],
            json!([{"name": "regcred"}]),
            "{w:#}"
        );
        assert_eq!(w["spec"]["insecure"], true, "{w:#}");
        assert_eq!(w["status"]["tagCount"], 1, "{w:#}");
        assert_eq!(w["metadata"]["labels"]["regcache.io/discovered"], "true");
        let managers: Vec<&str> = w["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["subresource"].is_null())
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["regcache-discovery"], "{w:#}");
    }
    let writes = discovery_writes(&cluster);
    assert_eq!(writes.len(), 2, "one apply per watch: {writes:?}");

    // 2. Scaling and restarting the workload write nothing.
    let storefront = format!("{DEPLOYMENTS}/storefront");
    cluster
        .merge_patch(&storefront, json!({"spec": {"replicas": 5}}))
        .await;
    cluster
        .merge_patch(
            &storefront,
            json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-12-01T12:00:00Z"}}}}}),
        )
        .await;
    // Another workload of the same repository, and a CronJob of a third.
    cluster
        .create(
            DEPLOYMENTS,
            deployment("worker", &[&format!("{}:v1", image("shop/web"))], None),
        )
        .await;
    cluster
        .create(
            CRONJOBS,
            json!({
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "nightly", "namespace": NS},
                "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "initContainers": [{"name": "report", "image": format!("{}:v1", image("shop/report"))}],
                    "containers": [{"name": "c", "image": format!("{}:v1", image("shop/web"))}]}}}}},
            }),
        )
        .await;
    wait_for_discovered(&cluster, &[&web, &proxy, &report]).await;
    // Past discovery's settling time, nothing more is written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut writes = discovery_writes(&cluster);
    writes.sort();
    let mut wanted: Vec<(String, String)> = [&web, &proxy, &report]
        .into_iter()
        .map(|n| ("patch".to_string(), n.clone()))
        .collect();
    wanted.sort();
    assert_eq!(
        writes, wanted,
        "one apply per watch; scaling and restarting wrote nothing"
    );
    let elsewhere = cluster
        .get("/apis/regcache.io/v1alpha1/namespaces/elsewhere/imagerepositorywatches")
        .await
        .unwrap();
    assert_eq!(
        elsewhere["items"],
        json!([]),
        "an unlabelled namespace gets none"
    );

    // 3. The last workload of a repository goes: its watch is marked, and deleted after the
    //    grace period. A repository another workload still uses keeps its watch.
    cluster.delete(&format!("{CRONJOBS}/nightly")).await;
    let marked = cluster
        .wait_for(
            &format!("{WATCHES}/{report}"),
            Duration::from_secs(30),
            |w| w["metadata"]["annotations"]["regcache.io/unusedSince"].is_string(),
        )
        .await;
    let since = marked["metadata"]["annotations"]["regcache.io/unusedSince"].clone();
    wait_for_discovered(&cluster, &[&web, &proxy]).await;
    let deleted_after = chrono::Utc::now()
        - chrono::DateTime::parse_from_rfc3339(since.as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
    assert!(
        deleted_after >= chrono::Duration::seconds(3),
        "deleted {deleted_after} after it was marked unused; the grace period is 4s"
    );
    cluster.delete(&storefront).await;
    wait_for_discovered(&cluster, &[&web]).await;
    let w = cluster
        .get(&format!("{WATCHES}/{web}"))
        .await
        .expect("kept");
    assert!(
        w["metadata"]["annotations"]["regcache.io/unusedSince"].is_null(),
        "the worker still uses it: {w:#}"
    );

    // 4. A watch written by hand for a repository replaces its discovered watch, and is
    //    never touched.
    cluster
        .create(
            WATCHES,
            watch_object(
                NS,
                "my-web",
                json!({"image": image("shop/web"), "pullSecrets": [{"name": "regcred"}],
                       "insecure": true, "interval": "1h"}),
            ),
        )
        .await;
    wait_for_discovered(&cluster, &[]).await;
    cluster
        .wait_for(
            &format!("{WATCHES}/my-web"),
            Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    assert!(
        !discovery_writes(&cluster)
            .iter()
            .any(|(_, n)| n == "my-web"),
        "the hand-written watch was written by discovery"
    );
    cluster.assert_nothing_forbidden();
}
