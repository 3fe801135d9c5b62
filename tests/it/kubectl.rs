//! kubectl-native views on the real API server, with the real kubectl: `get -o wide`,
//! `describe`, and the `kubectl regcache` plugin (the regcache binary under the name
//! `kubectl-regcache` on `PATH`, as krew installs plugins) against the real controller.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::cluster::Cluster;
use support::kube::{ready_is, watch_object};
use support::{ImageSpec, Kind, ManifestKind, Registry, RegistryAuth};

const NS: &str = "team";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/team/imagerepositorywatches";

#[tokio::test(flavor = "multi_thread")]
async fn wide_get_describe_and_the_plugin_show_and_rescan_a_watch() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    for (seed, (tag, created)) in [
        ("1.0.0", "2026-01-01T00:00:00Z"),
        ("1.1.0", "2026-06-01T00:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        pusher
            .push_image(
                "views/app",
                tag,
                &ImageSpec::new(ManifestKind::Oci)
                    .seed(seed as u64)
                    .created(created),
            )
            .await;
    }
    let proxy = registry.fault_proxy();
    let image = format!("{}/views/app", proxy.host());
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &[]).await;
    cluster
        .create(
            WATCHES,
            watch_object(
                NS,
                "app",
                json!({"image": image, "insecure": true, "interval": "1h"}),
            ),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let _controller = cluster.controller(
        &["--memcached", &memcached.addr()],
        dir.path().join("controller.log"),
    );
    let path = format!("{WATCHES}/app");
    let watch = cluster
        .wait_for(&path, Duration::from_secs(60), |w| {
            ready_is("True", "Succeeded")(w) && w["status"]["nextScan"].is_string()
        })
        .await;
    let next_scan = watch["status"]["nextScan"].as_str().unwrap().to_string();

    // `get -o wide`: the next scan and the newest tag.
    let wide = cluster.kubectl_ok(&["get", "irw", "-n", NS, "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert!(
        header.contains(&"NEXT SCAN") && header.contains(&"NEWEST TAG"),
        "{wide}"
    );
    let row = wide.lines().nth(1).unwrap();
    assert!(row.contains(&next_scan) && row.contains("1.1.0"), "{wide}");
    // Without -o wide, the columns people scan first.
    let narrow = cluster.kubectl_ok(&["get", "irw", "-n", NS]);
    assert!(!narrow.contains("NEXT SCAN"), "{narrow}");

    // `describe`: status fields by name, the Ready condition, and the Events.
    let described = cluster.kubectl_ok(&["describe", "irw", "app", "-n", NS]);
    for wanted in [
        "Latest Tags:",
        "1.1.0",
        "Next Scan:",
        "Tag Count:",
        "Conditions:",
        "Reason:",
        "Succeeded",
        "Events:",
    ] {
        assert!(described.contains(wanted), "no {wanted:?} in:\n{described}");
    }
    let events = described.split("Events:").nth(1).unwrap();
    assert!(
        events.contains("Succeeded") && events.contains("2 tags of"),
        "the Ready event is listed:\n{described}"
    );

    // The plugin: kubectl finds `kubectl-regcache` on PATH.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_regcache"),
        plugins.path().join("kubectl-regcache"),
    )
    .unwrap();
    let (ok, listed, err) = cluster.kubectl_with_plugins(plugins.path(), &["plugin", "list"]);
    assert!(ok && listed.contains("kubectl-regcache"), "{listed}\n{err}");

    let (ok, out, err) = cluster.kubectl_with_plugins(
        plugins.path(),
        &["regcache", "get", &format!("{image}:1.0.0"), "-n", NS],
    );
    assert!(ok, "{out}\n{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    for wanted in [NS, "app", "True", "2", &next_scan, "1.1.0"] {
        assert!(row.contains(wanted), "no {wanted:?} in:\n{out}");
    }
    let (ok, out, err) = cluster.kubectl_with_plugins(
        plugins.path(),
        &["regcache", "get", "ghcr.io/org/other", "-n", NS],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("no ImageRepositoryWatch in namespace team covers ghcr.io/org/other (-A looks in every namespace)"),
        "{err}"
    );

    // `rescan --wait` runs a pass now, an hour before its interval: one more tag list.
    let lists = proxy.count("GET", Kind::TagList);
    let (ok, out, err) = cluster.kubectl_with_plugins(
        plugins.path(),
        &[
            "regcache",
            "rescan",
            "app",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(
            "imagerepositorywatch.regcache.io/app rescan requested (regcache.io/requestedAt="
        ) && out.contains("pass done: Ready=True Succeeded: 2 tags of"),
        "{out}"
    );
    assert_eq!(proxy.count("GET", Kind::TagList), lists + 1, "one pass ran");
    let after = cluster.get(&path).await.unwrap();
    assert_ne!(after["status"]["nextScan"], next_scan, "{after:#}");
    assert_eq!(
        after["status"]["lastHandledRequestedAt"],
        after["metadata"]["annotations"]["regcache.io/requestedAt"]
    );
    // A watch that does not exist is an error naming it.
    let (ok, _, err) =
        cluster.kubectl_with_plugins(plugins.path(), &["regcache", "rescan", "nope", "-n", NS]);
    assert!(!ok && err.contains("nope"), "{err}");
}
