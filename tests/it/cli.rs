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

/// A directory to put first on PATH, holding docker credential helper scripts.
struct HelperBin(tempfile::TempDir);

impl HelperBin {
    fn new() -> HelperBin {
        HelperBin(tempfile::tempdir().unwrap())
    }

    /// Writes `docker-credential-NAME`, a shell script running `body`; it appends what it
    /// was asked (`$1` and stdin) to `asked.log`.
    fn helper(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.0.path().join(format!("docker-credential-{name}"));
        let log = self.0.path().join("asked.log");
        let script = format!(
            "#!/bin/sh\nserver=$(cat)\necho \"$1 $server\" >> '{}'\n{body}\n",
            log.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Prints `{"ServerURL","Username","Secret"}`, as a helper holding credentials does.
    fn answering(&self, name: &str, username: &str, secret: &str) {
        self.helper(
            name,
            &format!(
                r#"printf '{{"ServerURL":"%s","Username":"{username}","Secret":"{secret}"}}\n' "$server""#
            ),
        );
    }

    fn asked(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.path().join("asked.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `regcache ARGS` with this directory first on PATH.
    fn regcache(&self, args: &[&str]) -> (bool, String, String) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.0.path().to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(args)
            .env("HOME", "/nonexistent")
            .env_remove("DOCKER_CONFIG")
            .env("PATH", std::env::join_paths(dirs).unwrap())
            .output()
            .expect("run regcache");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

fn write_config(dir: &std::path::Path, name: &str, json: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helpers_from_the_docker_config() {
    let registry = Registry::start(RegistryAuth::Basic);
    let pusher = registry.pusher();
    let image = pusher
        .push_image("cli/helped", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let host = registry.host();
    let reference = format!("{host}/cli/helped:v1");
    let repo = format!("{host}/cli/helped");
    let dir = tempfile::tempdir().unwrap();
    let bin = HelperBin::new();
    bin.answering("regcachetest", TEST_USER, CANARY_PASSWORD);

    // (a) `credHelpers` for the host wins over a stale `auths` entry and over `credsStore`.
    let stale = support::basic_auth_header(TEST_USER, "stale-password");
    let stale = stale.trim_start_matches("Basic ");
    let config = write_config(
        dir.path(),
        "helpers.json",
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{stale}"}}}},
                "credHelpers":{{"https://{host}":"regcachetest"}},
                "credsStore":"regcachetest-not-installed"}}"#
        ),
    );
    let (ok, out, err) = bin.regcache(&[
        "inspect",
        &reference,
        "--docker-config",
        &config,
        "--insecure-registry",
        &host,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&image.digest), "{out}");
    assert_eq!(bin.asked(), [format!("get {host}")]);

    // (b) `credsStore` for every host the config names no helper for; `tags` too.
    let config = write_config(
        dir.path(),
        "store.json",
        r#"{"auths":{},"credHelpers":{"other.example":"regcachetest-not-installed"},
            "credsStore":"regcachetest"}"#,
    );
    let (ok, out, err) = bin.regcache(&[
        "tags",
        &repo,
        "--docker-config",
        &config,
        "--insecure-registry",
        &host,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "v1");
    assert_eq!(bin.asked().len(), 2);

    // The store holds nothing for the host: anonymous, so the registry's 401 is the error.
    bin.helper(
        "regcachetest",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    let (ok, _, err) = bin.regcache(&[
        "inspect",
        &reference,
        "--docker-config",
        &config,
        "--insecure-registry",
        &host,
    ]);
    assert!(!ok);
    assert!(err.contains("401") && err.contains("anonymous"), "{err}");
    assert!(!err.contains("docker-credential"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helper_identity_token() {
    let registry = Registry::start(RegistryAuth::Token);
    let image = registry
        .pusher()
        .push_image("cli/token", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let bin = HelperBin::new();
    // `<token>`: the secret is an identity token, exchanged at the realm.
    bin.answering("regcachetest", "<token>", CANARY_PASSWORD);
    let config = write_config(
        dir.path(),
        "config.json",
        &format!(r#"{{"credHelpers":{{"{host}":"regcachetest"}}}}"#),
    );
    let (ok, out, err) = bin.regcache(&[
        "inspect",
        &format!("{host}/cli/token:v1"),
        "--docker-config",
        &config,
        "--insecure-registry",
        &host,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&image.digest), "{out}");
    let tokens = registry.token_server().unwrap().request_log();
    assert!(
        tokens.iter().any(|r| r.method == "POST" && r.authenticated),
        "{tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helper_failures_name_the_helper_and_host() {
    let registry = Registry::start(RegistryAuth::Basic);
    let host = registry.host();
    let reference = format!("{host}/cli/failing:v1");
    let dir = tempfile::tempdir().unwrap();
    let bin = HelperBin::new();
    let run = |helper: &str| {
        let config = write_config(
            dir.path(),
            "config.json",
            &format!(r#"{{"credHelpers":{{"{host}":"{helper}"}}}}"#),
        );
        bin.regcache(&[
            "inspect",
            &reference,
            "--docker-config",
            &config,
            "--insecure-registry",
            &host,
            "--log-level",
            "trace",
        ])
    };

    // (c) It fails: exit status and stderr's first line, never its stdout.
    bin.helper(
        "regcachetest",
        &format!(
            "echo '{{\"Username\":\"{TEST_USER}\",\"Secret\":\"{CANARY_PASSWORD}\"}}'\n\
             echo 'keychain is locked' >&2\necho 'second line' >&2\nexit 1"
        ),
    );
    let (ok, out, err) = run("regcachetest");
    assert!(!ok);
    for want in [
        "docker-credential-regcachetest",
        &host,
        "code 1",
        "keychain is locked",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!err.contains("second line"), "{err}");
    assert!(!err.contains(CANARY_PASSWORD) && !out.contains(CANARY_PASSWORD));

    // It succeeds but prints something other than docker's JSON (cut off mid-secret).
    bin.helper(
        "regcachetest",
        &format!("printf '{{\"Username\":\"{TEST_USER}\",\"Secret\":\"{CANARY_PASSWORD}'"),
    );
    let (ok, out, err) = run("regcachetest");
    assert!(!ok);
    assert!(
        err.contains("docker-credential-regcachetest") && err.contains(&host),
        "{err}"
    );
    assert!(err.contains("not a JSON object"), "{err}");
    assert!(!err.contains(CANARY_PASSWORD) && !out.contains(CANARY_PASSWORD));

    // (d) It is not installed.
    let (ok, _, err) = run("regcachetest-missing");
    assert!(!ok);
    assert!(
        err.contains("docker-credential-regcachetest-missing")
            && err.contains(&host)
            && err.contains("not found on PATH"),
        "{err}"
    );
}
