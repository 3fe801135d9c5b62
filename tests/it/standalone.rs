//! `regcache standalone --once` and `regcache get`, run as a user runs them, against the
//! harness registry in every auth mode and real memcached.

use crate::support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use serde_json::Value;
use support::{
    CANARY_PASSWORD, ImageSpec, IndexKind, ManifestKind, PlatformSpec, Registry, RegistryAuth,
    TEST_USER,
};

use support::run_regcache as regcache;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes a watch (and its pull secret and CA secret as the mode needs) into `dir`.
fn write_manifests(dir: &Path, registry: &Registry, name: &str, password: Option<&str>) {
    let host = registry.host();
    let mut docs = vec![format!(
        "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: {name}}}\nspec:\n  image: {host}/sa/app\n  insecure: {}\n{}{}",
        !registry.is_tls(),
        if password.is_some() {
            format!("  pullSecrets: [{{name: {name}-cred}}]\n")
        } else {
            String::new()
        },
        if registry.is_tls() {
            format!("  certSecretRef: {{name: {name}-ca}}\n")
        } else {
            String::new()
        },
    )];
    if let Some(pw) = password {
        let config = format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("{TEST_USER}:{pw}"))
        );
        docs.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-cred}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
            b64(&config)
        ));
    }
    if let Some(ca) = registry.ca_pem() {
        docs.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-ca}}\ndata:\n  ca.crt: {}\n",
            base64::engine::general_purpose::STANDARD.encode(ca)
        ));
    }
    std::fs::write(dir.join(format!("{name}.yaml")), docs.join("---\n")).unwrap();
}

fn inspect(registry: &Registry, tag: &str, dir: &Path) -> Value {
    let host = registry.host();
    let mut args = vec!["inspect".to_string(), format!("{host}/sa/app:{tag}")];
    if let Some(pw) = registry.credentials().map(|c| c.1) {
        let cfg = dir.join("docker-config.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
                b64(&format!("{TEST_USER}:{pw}"))
            ),
        )
        .unwrap();
        args.extend(["--docker-config".into(), cfg.display().to_string()]);
    }
    match registry.ca_file() {
        Some(ca) => args.extend(["--ca-file".into(), ca.display().to_string()]),
        None => args.extend(["--insecure-registry".into(), host.clone()]),
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = regcache(&args);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn once_matches_inspect_in_every_auth_mode() {
    let memcached = support::Memcached::start();
    for (auth, tls) in [
        (RegistryAuth::Anonymous, false),
        (RegistryAuth::Basic, false),
        (RegistryAuth::Token, false),
        (RegistryAuth::Basic, true),
    ] {
        let registry = Registry::start_with(auth, tls, None);
        let pusher = registry.pusher();
        pusher
            .push_image("sa/app", "single", &ImageSpec::new(ManifestKind::Docker))
            .await;
        pusher
            .push_index(
                "sa/app",
                "multi",
                IndexKind::Oci,
                &PlatformSpec::default_set(),
            )
            .await;
        let dir = tempfile::tempdir().unwrap();
        let password = registry.credentials().map(|c| c.1);
        write_manifests(dir.path(), &registry, "app", password.as_deref());
        let (ok, out, err) = regcache(&[
            "standalone",
            "--watches",
            &dir.path().display().to_string(),
            "--once",
            "-o",
            "json",
            "--memcached",
            &memcached.addr(),
        ]);
        assert!(ok, "{auth:?} tls={tls}: {err}\n{out}");
        let summary: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary[0]["tagCount"], 2, "{summary}");
        assert!(summary[0]["lastError"].is_null(), "{summary}");
        assert!(!err.contains(CANARY_PASSWORD) && !out.contains(CANARY_PASSWORD));

        // What the cache holds equals what `regcache inspect` reports for each tag.
        let host = registry.host();
        let credential = match &password {
            Some(p) => Credential::basic(TEST_USER, p.clone()),
            None => Credential::Anonymous,
        };
        let store = MetadataStore::new(Memcached::new(
            vec![memcached.addr()],
            MemcachedOptions::default(),
        ));
        let scope = Scope::for_credential(&host, "default", &credential);
        let repo = Repository::parse(&format!("{host}/sa/app")).unwrap();
        let cached = store
            .get_image_repository_metadata(&scope, &repo)
            .await
            .unwrap();
        for tag in ["single", "multi"] {
            let want = inspect(&registry, tag, dir.path());
            let got = serde_json::to_value(&cached.images[tag]).unwrap();
            for field in ["digest", "mediaType", "created", "labels", "platforms"] {
                assert_eq!(got[field], want[field], "{auth:?} tls={tls} {tag} {field}");
            }
            // `inspect` is regcache's own client: skopeo, an independent one, must see the
            // same digest, media type, and per platform the same created time and labels.
            let case = format!("{auth:?} tls={tls} {tag}");
            let raw = registry.skopeo_inspect(&format!("sa/app:{tag}"), &["--raw"]);
            assert_eq!(got["digest"], support::sha256_digest(&raw), "{case}");
            let raw: Value = serde_json::from_slice(&raw).unwrap();
            assert_eq!(got["mediaType"], raw["mediaType"], "{case}");
            let platforms = got["platforms"].as_array().unwrap();
            assert!(!platforms.is_empty(), "{case}");
            for p in platforms {
                let mut args = Vec::new();
                if let Some(pl) = p["platform"].as_object() {
                    args.push(format!("--override-os={}", pl["os"].as_str().unwrap()));
                    args.push(format!(
                        "--override-arch={}",
                        pl["architecture"].as_str().unwrap()
                    ));
                    if let Some(v) = pl.get("variant").and_then(Value::as_str) {
                        args.push(format!("--override-variant={v}"));
                    }
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let seen: Value = serde_json::from_slice(
                    &registry.skopeo_inspect(&format!("sa/app:{tag}"), &args),
                )
                .unwrap();
                let time = |v: &Value| {
                    v.as_str()
                        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
                };
                assert_eq!(time(&p["created"]), time(&seen["Created"]), "{case} {p}");
                let labels = |v: &Value| v.as_object().cloned().unwrap_or_default();
                assert_eq!(labels(&p["labels"]), labels(&seen["Labels"]), "{case} {p}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_watch_makes_once_exit_non_zero_and_says_why() {
    let registry = Registry::start(RegistryAuth::Basic);
    registry
        .pusher()
        .push_image("sa/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), &registry, "good", Some(CANARY_PASSWORD));
    write_manifests(dir.path(), &registry, "bad", Some("wrong-password"));
    std::fs::write(
        dir.path().join("invalid.yaml"),
        "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {name: invalid}\nspec: {image: 'Upper/Case'}\n",
    )
    .unwrap();
    let (ok, out, err) = regcache(&[
        "standalone",
        "--watches",
        &dir.path().display().to_string(),
        "--once",
    ]);
    assert!(!ok, "exit code reports the failure");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE"), "{out}");
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("default     {name}")))
            .copied()
    };
    let bad = row("bad").unwrap_or_else(|| panic!("{out}"));
    assert!(
        bad.contains("401") && bad.contains(&registry.host()),
        "{bad}"
    );
    let good = row("good").unwrap_or_else(|| panic!("{out}"));
    assert!(good.contains(" 1 "), "{good}");
    assert!(row("invalid").unwrap().contains("Upper/Case"), "{out}");
    assert!(!out.contains(CANARY_PASSWORD) && !err.contains(CANARY_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_prints_the_cache_as_a_table_or_json() {
    let memcached = support::Memcached::start();
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pushed = registry
        .pusher()
        .push_index(
            "sa/app",
            "v1",
            IndexKind::DockerList,
            &PlatformSpec::default_set(),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), &registry, "app", None);
    let (ok, _, err) = regcache(&[
        "standalone",
        "--watches",
        &dir.path().display().to_string(),
        "--once",
        "--memcached",
        &memcached.addr(),
    ]);
    assert!(ok, "{err}");
    let repo = format!("{}/sa/app", registry.host());
    let (ok, out, err) = regcache(&["get", &repo, "--memcached", &memcached.addr()]);
    assert!(ok, "{err}");
    assert!(out.contains("TAG") && out.contains("PLATFORMS"), "{out}");
    assert!(
        out.contains(&pushed.digest) && out.contains("linux/arm64"),
        "{out}"
    );
    let (ok, out, err) = regcache(&[
        "get",
        &format!("{repo}:v1"),
        "--memcached",
        &memcached.addr(),
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let image: Value = serde_json::from_str(&out).unwrap();
    let (ok, repo_out, err) =
        regcache(&["get", &repo, "--memcached", &memcached.addr(), "-o", "json"]);
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&repo_out).unwrap();
    assert_eq!(answer["tags"]["v1"], pushed.digest, "{answer}");
    assert_eq!(
        answer["images"][pushed.digest.as_str()]["platforms"]
            .as_array()
            .map(Vec::len),
        Some(4),
        "{answer}"
    );
    assert_eq!(image["digest"], pushed.digest);
    assert_eq!(image["platforms"].as_array().unwrap().len(), 4);
    let (ok, _, err) = regcache(&[
        "get",
        &format!("{repo}:nope"),
        "--memcached",
        &memcached.addr(),
    ]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
    let (ok, _, err) = regcache(&[
        "get",
        "docker.io/library/never-warmed",
        "--memcached",
        &memcached.addr(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("not cached") && err.contains("ImageRepositoryWatch"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_push_notification_warms_the_new_tag_at_once() {
    let memcached = support::Memcached::start();
    let token = "webhook-token-7c1e";
    // The registry must know the webhook's URL before it starts, and regcache's watch the
    // registry's address before it starts: so regcache's port is picked before it binds.
    // Another test may take that port meanwhile; then regcache cannot bind it and exits,
    // and everything starts again on another port.
    let mut attempt = 0;
    let (port, registry, dir, mut child) = loop {
        attempt += 1;
        let port = support::free_port();
        let notifications = format!(
            "notifications:\n  endpoints:\n    - name: regcache\n      url: http://127.0.0.1:{port}/hooks/registry\n      \
             headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 200ms\n"
        );
        let registry = Registry::start_with(RegistryAuth::Anonymous, false, Some(&notifications));
        // v1 is there before regcache starts: its first pass finds it.
        registry
            .pusher()
            .push_image("wh/app", "v1", &ImageSpec::new(ManifestKind::Oci))
            .await;
        let dir = tempfile::tempdir().unwrap();
        let host = registry.host();
        std::fs::write(
            dir.path().join("watch.yaml"),
            format!(
                "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: app}}\nspec: {{image: {host}/wh/app, insecure: true, interval: 1h}}\n"
            ),
        )
        .unwrap();
        let log_path = dir.path().join("regcache.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(["standalone", "--watches"])
            .arg(dir.path().join("watch.yaml"))
            .args([
                "--memcached",
                &memcached.addr(),
                "--api-bind-address",
                &format!("127.0.0.1:{port}"),
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
            ])
            .env("REGCACHE_WEBHOOK_TOKEN", token)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let bound = loop {
            let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
            if support::listening_address(&logs, "read API")
                .is_some_and(|a| a == format!("127.0.0.1:{port}"))
            {
                break true;
            }
            if child.try_wait().unwrap().is_some() {
                assert!(
                    attempt < 5,
                    "regcache could not bind a read API port:\n{logs}"
                );
                break false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "regcache never listened:\n{logs}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if bound {
            break (port, registry, dir, child);
        }
    };
    let pusher = registry.pusher();
    let host = registry.host();
    let http = support::http_client(None);
    let url = format!("http://127.0.0.1:{port}/api/v1/repositories/{host}/wh/app");
    // Tags resolved to a digest (a tag listed while its manifest is unknown has none).
    let tags = |http: reqwest::Client, url: String| async move {
        let resp = http.get(&url).send().await.ok()?;
        let v: Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
        Some(
            v["tags"]
                .as_object()?
                .iter()
                .filter(|(_, digest)| digest.is_string())
                .map(|(tag, _)| tag.clone())
                .collect::<Vec<_>>(),
        )
    };
    let wait_for_tag = |tag: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(30) {
                if tags(http.clone(), url.clone())
                    .await
                    .is_some_and(|t| t.iter().any(|x| x == tag))
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("{tag} not cached in time");
        }
    };
    wait_for_tag("v1").await;
    // The watch's interval is an hour: only the push notification can bring v2 in now.
    pusher
        .push_image("wh/app", "v2", &ImageSpec::new(ManifestKind::Oci).seed(2))
        .await;
    // wait_for_tag fails the test when v2 is not cached within 30 s.
    wait_for_tag("v2").await;
    // `regcache get` reads the same answer through the API: one row per tag, with its image.
    let api = format!("http://127.0.0.1:{port}");
    let (ok, out, err) = regcache(&["get", &format!("{host}/wh/app"), "--api", &api]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('v')).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter()
            .all(|r| r.contains("sha256:") && r.contains("linux/amd64")),
        "{out}"
    );
    let (ok, out, err) = regcache(&[
        "get",
        &format!("{host}/wh/app"),
        "--api",
        &api,
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    for tag in ["v1", "v2"] {
        let digest = answer["tags"][tag].as_str().unwrap();
        assert_eq!(answer["images"][digest]["digest"], digest, "{answer}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(dir.path().join("regcache.log")).unwrap();
    assert!(!logs.contains(token), "webhook token in logs");
}

/// memcached's restartable mode keeps the cache across a graceful memcached restart, and a
/// new regcache process reads it: the pass after both restarts makes no GET (the proxy in
/// front of the registry is the access log). A plain restart loses the cache and the same
/// pass GETs everything again, which shows what the restartable mode saves.
#[tokio::test(flavor = "multi_thread")]
async fn a_restartable_memcached_and_a_new_regcache_make_no_get_on_the_next_pass() {
    const TAGS: usize = 6;
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    for i in 0..TAGS {
        pusher
            .push_image(
                "restart/app",
                &format!("v{i}"),
                &ImageSpec::new(ManifestKind::Oci).seed(900 + i as u64),
            )
            .await;
    }
    let proxy = registry.fault_proxy();
    let memory = tempfile::Builder::new()
        .prefix("regcache-memcached-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let mut memcached = support::Memcached::start_restartable(&memory.path().join("items"));
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("watch.yaml");
    std::fs::write(
        &watch,
        format!(
            "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: app}}\nspec: {{image: {}/restart/app, insecure: true, interval: 1h}}\n",
            proxy.host()
        ),
    )
    .unwrap();
    let addr = memcached.addr();
    let watch_path = watch.to_str().unwrap().to_string();
    let pass = || {
        proxy.reset_counts();
        let (ok, out, err) = regcache(&[
            "standalone",
            "--watches",
            &watch_path,
            "--memcached",
            &addr,
            "--once",
            "-o",
            "json",
        ]);
        assert!(ok, "{out}\n{err}");
        let summary: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary[0]["tagCount"], TAGS, "{summary:#}");
        (
            proxy.count("GET", support::Kind::Manifest),
            proxy.count("GET", support::Kind::Blob),
        )
    };
    let (manifests, blobs) = pass();
    assert_eq!(
        (manifests, blobs),
        (TAGS, TAGS),
        "the cold pass fetches each image"
    );

    memcached.graceful_restart();
    assert_eq!(
        pass(),
        (0, 0),
        "no GET after a graceful restart and a new regcache"
    );

    memcached.restart();
    assert_eq!(
        pass(),
        (TAGS, TAGS),
        "a plain restart empties memcached: everything is fetched again"
    );
}
