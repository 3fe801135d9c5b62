//! The `regcache inspect` and `regcache tags` commands, run as a user would run them.

use crate::support;

use support::{
    CANARY_PASSWORD, ImageSpec, IndexKind, ManifestKind, PlatformSpec, Registry, RegistryAuth,
    TEST_USER,
};

use support::run_regcache as regcache;

fn docker_config(dir: &std::path::Path, host: &str, password: &str) -> String {
    let path = dir.join("config.json");
    let auth = support::basic_auth_header(TEST_USER, password);
    let auth = auth.trim_start_matches("Basic ");
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_prints_json_for_every_platform_and_filters() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pushed = registry
        .pusher()
        .push_index(
            "cli/app",
            "v1",
            IndexKind::Oci,
            &PlatformSpec::default_set(),
        )
        .await;
    let image = format!("{}/cli/app:v1", registry.host());
    let host = registry.host();
    let (ok, out, err) = regcache(&["inspect", &image, "--insecure-registry", &host]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["canonicalName"], format!("{host}/cli/app"));
    assert_eq!(json["digest"], pushed.digest);
    assert_eq!(json["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(json["platforms"].as_array().unwrap().len(), 4);
    assert_eq!(json["platforms"][1]["digest"], pushed.children[1].digest);
    assert_eq!(json["platforms"][1]["platform"]["architecture"], "arm64");
    assert!(json["labels"]["org.opencontainers.image.created"].is_string());

    let (ok, out, err) = regcache(&[
        "inspect",
        &image,
        "--insecure-registry",
        &host,
        "--platform",
        "windows/amd64",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["platforms"].as_array().unwrap().len(), 1);
    assert_eq!(json["platforms"][0]["osVersion"], "10.0.17763.5458");

    let (ok, _, err) = regcache(&["inspect", "Not/Valid", "--insecure-registry", &host]);
    assert!(!ok);
    assert!(
        err.contains("Not/Valid") && err.contains("lowercase"),
        "{err}"
    );
    let (ok, _, err) = regcache(&[
        "inspect",
        &image,
        "--platform",
        "linux",
        "--insecure-registry",
        &host,
    ]);
    assert!(!ok);
    assert!(err.contains("--platform") && err.contains("linux"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_and_inspect_with_credentials_and_tls() {
    let registry = Registry::start_tls(RegistryAuth::Basic);
    let pusher = registry.pusher();
    let image = pusher
        .push_image("cli/private", "v1", &ImageSpec::new(ManifestKind::Docker))
        .await;
    pusher.alias_tags("cli/private", &image, &["latest"]).await;
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host();
    let ca = registry.ca_file().unwrap().display().to_string();
    let repo = format!("{host}/cli/private");

    let good = docker_config(dir.path(), &host, CANARY_PASSWORD);
    let (ok, out, err) = regcache(&["tags", &repo, "--docker-config", &good, "--ca-file", &ca]);
    assert!(ok, "{err}");
    let mut tags: Vec<&str> = out.lines().collect();
    tags.sort();
    assert_eq!(tags, ["latest", "v1"]);
    let (ok, out, err) = regcache(&[
        "inspect",
        &format!("{repo}:latest"),
        "--docker-config",
        &good,
        "--ca-file",
        &ca,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&image.digest), "{out}");

    // Wrong password: the error names the registry and the status, never the password.
    let wrong_password = format!("{CANARY_PASSWORD}-old");
    let bad = docker_config(dir.path(), &host, &wrong_password);
    let (ok, out, err) = regcache(&[
        "inspect",
        &format!("{repo}:v1"),
        "--docker-config",
        &bad,
        "--ca-file",
        &ca,
        "--log-level",
        "trace",
    ]);
    assert!(!ok);
    assert!(err.contains(&host) && err.contains("401"), "{err}");
    assert!(err.contains(TEST_USER), "names who was refused: {err}");
    assert!(!err.contains(CANARY_PASSWORD) && !out.contains(CANARY_PASSWORD));

    // No CA: a TLS error that says so.
    let (ok, _, err) = regcache(&["tags", &repo, "--docker-config", &good]);
    assert!(!ok);
    assert!(err.contains("TLS"), "{err}");
}
