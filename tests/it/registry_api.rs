//! The registry API read by real registry clients: `regcache standalone` warms a real
//! registry (through a counting proxy), then skopeo and crane read regcache as they read
//! any registry and must get what they get from the upstream, while the upstream sees
//! nothing.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ImageSpec, ManifestKind, Registry, RegistryAuth};

/// `skopeo list-tags` of `reference` (plain HTTP allowed); its tags, sorted.
fn skopeo_tags(reference: &str) -> Vec<String> {
    let out = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo list-tags {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("skopeo prints JSON");
    let mut tags: Vec<String> = answer["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

/// `crane ls` of `reference` (plain HTTP allowed); its tags, sorted.
fn crane_tags(reference: &str) -> Vec<String> {
    let crane = support::apiserver::testbin().join("crane");
    let out = Command::new(&crane)
        .args(["ls", "--insecure", reference])
        .env("HOME", "/nonexistent")
        .output()
        .expect("run crane (scripts/testbin.sh builds it)");
    assert!(
        out.status.success(),
        "crane ls {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    tags.sort();
    tags
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_and_crane_list_the_same_tags_through_regcache_and_the_upstream_sees_no_request() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let pushed = ["1.0.0", "1.2.0", "2.0.0-rc.1", "latest", "v1"];
    for (i, tag) in pushed.iter().enumerate() {
        pusher
            .push_image(
                "rapi/app",
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(i as u64),
            )
            .await;
    }
    let proxy = registry.fault_proxy();
    let host = proxy.host();
    let memcached = support::Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("watch.yaml");
    std::fs::write(
        &watch,
        format!(
            "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: app}}\nspec: {{image: {host}/rapi/app, insecure: true, interval: 1h}}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("regcache.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["standalone", "--watches"])
        .arg(&watch)
        .args(["--memcached", &memcached.addr()])
        .args(["--api-bind-address", "127.0.0.1:0"])
        .args(["--metrics-bind-address", "127.0.0.1:0"])
        .args(["--health-probe-bind-address", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start regcache standalone");
    let api = support::wait_for_listener(&log, "read API").await;

    // Warmed: every tag resolved.
    let http = support::http_client(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = support::get_json(
            &http,
            &format!("http://{api}/api/v1/repositories/{host}/rapi/app"),
        )
        .await;
        if answer["tags"]
            .as_object()
            .is_some_and(|t| t.len() == pushed.len() && t.values().all(Value::is_string))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not warmed: {answer}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let upstream = skopeo_tags(&format!("{}/rapi/app", registry.host()));
    assert_eq!(upstream.len(), pushed.len(), "{upstream:?}");
    assert_eq!(
        crane_tags(&format!("{}/rapi/app", registry.host())),
        upstream
    );
    proxy.reset_counts();
    // Standalone watches live in namespace `default`.
    // The upstream host's port is written `_PORT`: a colon cannot appear in a path.
    let upstream_name = format!("{}/rapi/app", host.replace(':', "_"));
    for name in ["default/app".to_string(), upstream_name] {
        assert_eq!(
            skopeo_tags(&format!("{api}/{name}")),
            upstream,
            "skopeo {name}"
        );
        assert_eq!(
            crane_tags(&format!("{api}/{name}")),
            upstream,
            "crane {name}"
        );
    }
    assert_eq!(
        proxy.total(),
        0,
        "reads through regcache reached the upstream: {:?}",
        proxy.seen()
    );
    let _ = child.kill();
    let _ = child.wait();
}
