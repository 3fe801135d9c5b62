//! Argo CD Image Updater's own registry client (registry-scanner v1.2.1, driven by
//! `tests/go/argocd-registry-client` as the updater drives it) reading regcache through a
//! registries.conf entry: the image keeps its upstream name, `api_url` points at regcache
//! under a host name mapped to that upstream (`--registry-upstream`), and `credentials`
//! hold a ServiceAccount token as a docker-registry Secret would. regcache runs as the
//! chart installs it on a real API server, with `--api-auth kubernetes`.

use crate::support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::apiserver::testbin;
use support::cluster::Cluster;
use support::kube::ready_is;
use support::{ImageSpec, IndexKind, ManifestKind, PlatformSpec, Registry, RegistryAuth};

const NS: &str = "team";

/// Runs the client with `conf` on `image`; its JSON answer (stdout), or its error (stderr),
/// and every request it made (the `HTTP ...` lines it writes to stderr).
fn scan(
    conf: &Path,
    image: &str,
    credentials: Option<&str>,
    args: &[&str],
) -> (Result<Value, String>, Vec<String>) {
    let mut command = Command::new(testbin().join("argocd-registry-client"));
    command
        .arg("--registries-conf")
        .arg(conf)
        .args(["--image", image])
        .args(args);
    match credentials {
        Some(c) => command.env("REGCACHE_CREDS", c),
        None => command.env_remove("REGCACHE_CREDS"),
    };
    let out = command
        .output()
        .expect("run argocd-registry-client (scripts/testbin.sh builds it)");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let requests = stderr
        .lines()
        .filter(|l| l.starts_with("HTTP "))
        .map(str::to_string)
        .collect();
    let answer = if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("the client's JSON"))
    } else {
        Err(stderr)
    };
    (answer, requests)
}

/// A registries.conf with one entry: images under `prefix` are read from `api_url`.
fn registries_conf(
    dir: &Path,
    file: &str,
    prefix: &str,
    api_url: &str,
    creds: bool,
) -> std::path::PathBuf {
    let mut entry = format!(
        "registries:\n- name: entry\n  prefix: {prefix}\n  api_url: {api_url}\n  insecure: yes\n"
    );
    if creds {
        entry += "  credentials: env:REGCACHE_CREDS\n";
    }
    let path = dir.join(file);
    std::fs::write(&path, entry).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_image_updater_reads_regcache_through_registries_conf() {
    // Semver tags in an order where lexical sorting and pre-releases mislead, a Docker list
    // (the updater picks its linux/amd64 child), and tags that are not semver.
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let repo = "rapi/argo";
    let singles = [
        ("1.0.0", "2024-01-01T00:00:00Z"),
        ("1.2.0", "2024-02-01T00:00:00Z"),
        ("2.0.0-rc.1", "2024-06-01T00:00:00Z"),
        ("latest", "2024-05-01T00:00:00Z"),
        ("not-semver", "2023-01-01T00:00:00Z"),
    ];
    for (i, (tag, created)) in singles.iter().enumerate() {
        let spec = ImageSpec::new(ManifestKind::Oci)
            .seed(200 + i as u64)
            .created(created);
        pusher.push_image(repo, tag, &spec).await;
    }
    let list = pusher
        .push_index(
            repo,
            "1.10.0",
            IndexKind::DockerList,
            &[
                PlatformSpec::linux_amd64(),
                PlatformSpec::linux("arm64", None),
            ],
        )
        .await;
    let proxy = registry.fault_proxy();
    let upstream_host = proxy.host();
    let image = format!("{upstream_host}/{repo}");

    // The baseline: the same client reading the upstream registry itself.
    let dir = tempfile::tempdir().unwrap();
    let direct = registries_conf(
        dir.path(),
        "direct.conf",
        &upstream_host,
        &format!("http://{}", registry.host()),
        false,
    );
    let (want, _) = scan(&direct, &image, None, &[]);
    let want = want.expect("the client reads the upstream");
    let (want_semver, _) = scan(
        &direct,
        &image,
        None,
        &["--strategy", "semver", "--tag", ">=1.0.0"],
    );
    let want_semver = want_semver.expect("semver against the upstream");
    let (want_newest, _) = scan(&direct, &image, None, &["--strategy", "newest-build"]);
    let want_newest = want_newest.expect("newest-build against the upstream");
    // The updater's semver choice is the Docker list's tag, and its digest is the list's.
    assert_eq!(want_semver["newestTag"], "1.10.0", "{want_semver:#}");
    assert_eq!(want["metadata"]["1.10.0"]["digest"], list.digest.as_str());

    // regcache as the chart installs it, watching the upstream repository in `team`, with
    // `localhost` mapped to the upstream: the client connects to localhost:PORT.
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &[]).await;
    let reader = cluster.service_account_token(NS, "image-updater").await;
    let outsider = cluster.service_account_token(NS, "outsider").await;
    cluster.grant_watch_reading(NS, (NS, "image-updater")).await;
    let watches = format!("/apis/regcache.io/v1alpha1/namespaces/{NS}/imagerepositorywatches");
    cluster
        .create(
            &watches,
            json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                   "metadata": {"name": "argo", "namespace": NS},
                   "spec": {"image": image, "insecure": true, "interval": "1h"}}),
        )
        .await;
    let controller = cluster.controller(
        &[
            "--memcached",
            &memcached.addr(),
            "--registry-upstream",
            &format!("localhost={upstream_host}"),
        ],
        dir.path().join("controller.log"),
    );
    cluster
        .wait_for(
            &format!("{watches}/argo"),
            std::time::Duration::from_secs(60),
            ready_is("True", "Succeeded"),
        )
        .await;
    let api = controller.address("read API").await;
    let port = api.rsplit_once(':').unwrap().1;
    let via = registries_conf(
        dir.path(),
        "regcache.conf",
        &upstream_host,
        &format!("http://localhost:{port}"),
        true,
    );
    assert!(proxy.total() > 0, "regcache warmed without the proxy");
    proxy.reset_counts();

    // Credentials as a docker-registry Secret holds them: any user, the token as password.
    let creds = format!("argocd:{reader}");
    let (got, requests) = scan(&via, &image, Some(&creds), &[]);
    let got = got.unwrap_or_else(|e| panic!("through regcache: {e}\n{}", controller.logs()));
    eprintln!("requests through regcache:\n{}", requests.join("\n"));
    assert_eq!(got["repository"], repo);
    assert_eq!(got["tags"], want["tags"]);
    assert_eq!(
        got["metadata"], want["metadata"],
        "digests and created times differ"
    );
    let (semver, _) = scan(
        &via,
        &image,
        Some(&creds),
        &["--strategy", "semver", "--tag", ">=1.0.0"],
    );
    let semver = semver.expect("semver through regcache");
    assert_eq!(semver["newestTag"], "1.10.0", "{semver:#}");
    assert_eq!(semver["tags"], want_semver["tags"]);
    let (newest, _) = scan(&via, &image, Some(&creds), &["--strategy", "newest-build"]);
    let newest = newest.expect("newest-build through regcache");
    assert_eq!(newest["newestTag"], want_newest["newestTag"], "{newest:#}");
    assert_eq!(newest["newest"], want_newest["newest"], "{newest:#}");

    // The URLs the client built: repository names without the registry host, resolved
    // against api_url; a token from regcache's endpoint after the challenge, then Bearer.
    let base = format!("http://localhost:{port}");
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("HTTP GET {base}/v2/token?"))
                && r.contains("auth=Basic")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("HTTP GET {base}/v2/{repo}/tags/list"))),
        "{requests:#?}"
    );
    for kind in ["manifests", "blobs"] {
        let prefix = format!("{base}/v2/{repo}/{kind}/");
        let calls: Vec<&String> = requests.iter().filter(|r| r.contains(&prefix)).collect();
        assert!(!calls.is_empty(), "no {kind} request: {requests:#?}");
        assert!(
            calls.iter().all(|r| r.ends_with("auth=Bearer")),
            "{kind} without the regcache token: {calls:#?}"
        );
    }
    assert!(
        requests.iter().all(|r| !r.contains(&upstream_host)),
        "the client went to the upstream: {requests:#?}"
    );
    assert_eq!(
        proxy.total(),
        0,
        "reads reached the upstream: {:?}",
        proxy.seen()
    );

    // A ServiceAccount that may not get the watch is refused, and no credentials at all
    // are refused too.
    let (denied, _) = scan(&via, &image, Some(&format!("argocd:{outsider}")), &[]);
    let denied = denied.expect_err("an outsider read the watch");
    assert!(denied.contains("denied"), "{denied}");
    let open = registries_conf(
        dir.path(),
        "anonymous.conf",
        &upstream_host,
        &format!("http://localhost:{port}"),
        false,
    );
    let (anonymous, _) = scan(&open, &image, None, &[]);
    let anonymous = anonymous.expect_err("read without credentials");
    assert!(anonymous.contains("unauthorized"), "{anonymous}");
    assert_eq!(proxy.total(), 0, "{:?}", proxy.seen());
}
