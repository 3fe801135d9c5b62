//! Flux's real image-reflector-controller (built by `scripts/testbin.sh` from its Go module
//! at a pinned release, 1.2.4) against a real API server, scanning regcache's registry API:
//! an ImageRepository points at regcache, a semver ImagePolicy picks the latest tag, and
//! the upstream registry behind regcache sees no request from the scans.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::apiserver::{ApiServer, tail, testbin};
use support::{ImageSpec, ManifestKind, Registry, RegistryAuth};

const FLUX: &str = "/apis/image.toolkit.fluxcd.io/v1/namespaces/default";

/// image-reflector-controller as a process, killed on drop; its log is printed when the
/// test fails.
struct ImageReflector {
    child: Child,
    log: PathBuf,
}

impl ImageReflector {
    /// Runs it with the admin's kubeconfig, watching every namespace, its Badger database
    /// in `dir`, and waits until its health endpoint says ready.
    fn start(kubeconfig: &Path, dir: &Path) -> ImageReflector {
        let log = dir.join("image-reflector-controller.log");
        let out = std::fs::File::create(&log).unwrap();
        let health = format!("127.0.0.1:{}", support::free_port());
        // controller-runtime takes no `--kubeconfig` flag here (Flux's flag set does not
        // include it): KUBECONFIG it is. RUNTIME_NAMESPACE is where Flux would run.
        let child = Command::new(testbin().join("image-reflector-controller"))
            .arg(format!("--storage-path={}", dir.join("storage").display()))
            .arg(format!("--metrics-addr=127.0.0.1:{}", support::free_port()))
            .arg(format!("--health-addr={health}"))
            .arg("--enable-leader-election=false")
            .arg("--watch-all-namespaces=true")
            .arg("--log-encoding=console")
            .arg("--log-level=debug")
            .env("KUBECONFIG", kubeconfig)
            .env("RUNTIME_NAMESPACE", "default")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start image-reflector-controller (scripts/testbin.sh builds it)");
        let mut controller = ImageReflector { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = controller.child.try_wait() {
                panic!(
                    "image-reflector-controller exited ({status}):\n{}",
                    tail(&controller.log, 60)
                );
            }
            if support::blocking_http_status(&health, "/readyz", Duration::from_secs(1))
                == Some(200)
            {
                return controller;
            }
            assert!(
                Instant::now() < deadline,
                "image-reflector-controller not ready in 60 s:\n{}",
                tail(&controller.log, 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ImageReflector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- image-reflector-controller log (last 80 lines) ---\n{}",
                tail(&self.log, 80)
            );
        }
    }
}

/// `kubectl apply -f` of `object`, written to a file in `dir`.
fn apply(server: &ApiServer, dir: &Path, object: &Value) {
    let file = dir.join(format!(
        "{}.json",
        object["kind"].as_str().unwrap().to_lowercase()
    ));
    std::fs::write(&file, object.to_string()).unwrap();
    server.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn image_reflector_controller_scans_regcache_and_its_semver_policy_picks_the_latest() {
    // Tags where lexical order (1.2.0), pre-release (2.0.0-rc.1) and non-semver tags
    // (latest, not-semver) would each give a wrong answer; `>=1.0.0` means 1.10.0.
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let tags = [
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0-rc.1",
        "latest",
        "not-semver",
    ];
    let mut pushed = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let spec = ImageSpec::new(ManifestKind::Oci).seed(100 + i as u64);
        pushed.push(pusher.push_image("rapi/flux", tag, &spec).await);
    }
    let want_digest = pushed[2].digest.clone();

    let proxy = registry.fault_proxy();
    let upstream = format!("{}/rapi/flux", proxy.host());
    let memcached = support::Memcached::start();
    let regcache = support::standalone::Standalone::start(&upstream, &memcached).await;
    regcache.wait_warmed(&upstream, tags.len()).await;
    let metrics = support::wait_for_listener(&regcache.log, "metrics").await;

    let server = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
    // testbin's `flux-image-reflector-crds` is a link to the directory; kubectl reads a
    // linked directory as a file ("is a directory"), so give it the real path.
    let crds = testbin()
        .join("flux-image-reflector-crds")
        .canonicalize()
        .unwrap();
    server.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
    let established = server.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/imagerepositories.image.toolkit.fluxcd.io",
        "crd/imagepolicies.image.toolkit.fluxcd.io",
        "--timeout=60s",
    ]);
    assert_eq!(
        established.matches("condition met").count(),
        2,
        "{established}"
    );

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let _controller = tokio::task::spawn_blocking({
        let (kubeconfig, dir) = (server.kubeconfig.clone(), dir.path().to_path_buf());
        move || ImageReflector::start(&kubeconfig, &dir)
    })
    .await
    .unwrap();

    // The ImageRepository names regcache's read API, watch `default/app`, over plain HTTP.
    // Measured with 1.2.4: a scan is `GET /v2/`, `GET /v2/default/app/tags/list?n=1000`,
    // and with the digest reflected `GET /v2/` and `HEAD .../manifests/1.10.0`. Each ping
    // first opens a TLS handshake to the same port, which fails on the plain listener: for
    // an http registry go-containerregistry races https against http. It takes a loopback
    // or RFC 1918 address as http even without `insecure`; a Service's DNS name needs
    // `insecure: true`.
    let image = format!("{}/default/app", regcache.api);
    // The proxy is in regcache's path: the warming went through it.
    assert!(proxy.total() > 0, "regcache warmed without the proxy");
    proxy.reset_counts();
    let scrape = |route: &'static str| {
        let metrics = metrics.clone();
        async move {
            support::scrape_metric(
                &metrics,
                &format!("regcache_api_registry_requests_total{{route=\"{route}\",result=\"ok\"}}"),
            )
            .await
        }
    };
    let (tag_lists_before, manifests_before) =
        (scrape("tags_list").await, scrape("manifests").await);
    apply(
        &server,
        dir.path(),
        &json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImageRepository",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"image": image, "interval": "1m", "insecure": true},
        }),
    );
    apply(
        &server,
        dir.path(),
        &json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {
                "imageRepositoryRef": {"name": "app"},
                "policy": {"semver": {"range": ">=1.0.0"}},
                // Resolve the chosen tag's digest too: a manifest request to regcache.
                "digestReflectionPolicy": "IfNotPresent",
            },
        }),
    );

    let ready = |object: &Value| {
        object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    let repository = server
        .wait_for(
            &format!("{FLUX}/imagerepositories/app"),
            Duration::from_secs(90),
            |r| ready(r) && r["status"]["lastScanResult"]["tagCount"] == tags.len(),
        )
        .await;
    let policy = server
        .wait_for(
            &format!("{FLUX}/imagepolicies/app"),
            Duration::from_secs(90),
            |p| ready(p) && p["status"]["latestRef"]["tag"].is_string(),
        )
        .await;
    let took = started.elapsed();
    eprintln!(
        "image-reflector-controller: scanned and chose in {took:?}\n\
         ImageRepository status: {:#}\nImagePolicy status: {:#}",
        repository["status"], policy["status"]
    );

    let latest = &policy["status"]["latestRef"];
    assert_eq!(latest["tag"], "1.10.0", "{policy:#}");
    assert_eq!(latest["digest"], want_digest.as_str(), "{policy:#}");
    // The policy names the image Flux scanned: regcache's address. Flux's
    // image-automation-controller can write the tag alone (a `{"$imagepolicy":
    // "default:app:tag"}` setter), so Git keeps naming the upstream image while the tag
    // comes from regcache.
    assert_eq!(latest["name"], image.as_str(), "{policy:#}");
    assert_eq!(
        repository["status"]["canonicalImageName"],
        image.as_str(),
        "{repository:#}"
    );
    // `latestTags` holds at most ten tags (in reverse name order); six were pushed: all.
    let mut latest_tags: Vec<&str> = repository["status"]["lastScanResult"]["latestTags"]
        .as_array()
        .expect("latestTags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    latest_tags.sort();
    let mut want_tags = tags.to_vec();
    want_tags.sort();
    assert_eq!(latest_tags, want_tags, "{repository:#}");

    // The upstream saw nothing of the scans, and regcache answered them (the tag list
    // and the digest lookup).
    assert_eq!(
        proxy.total(),
        0,
        "the scans reached the upstream: {:?}",
        proxy.seen()
    );
    assert!(
        scrape("tags_list").await > tag_lists_before,
        "regcache served no tags/list"
    );
    assert!(
        scrape("manifests").await > manifests_before,
        "regcache served no manifest"
    );
    let mut served = String::new();
    for route in ["base", "tags_list", "manifests", "blobs", "other"] {
        served += &format!("{route}={} ", scrape(route).await as u64);
    }
    eprintln!("regcache's registry API answered (ok, since start): {served}");
}
