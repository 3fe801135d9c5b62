//! The Kubernetes API emulator (tests/emulator: kmock with a real API server's habits) as a
//! child process, a small JSON client for it, and the `regcache controller` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::kill_and_wait;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Creates `tests/emulator/.venv` when missing (idempotent, quick when present).
fn ensure_venv() -> PathBuf {
    let python = repo_root().join("tests/emulator/.venv/bin/python");
    let status = Command::new("bash")
        .arg(repo_root().join("tests/emulator/setup.sh"))
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .status()
        .expect("run tests/emulator/setup.sh");
    assert!(status.success(), "tests/emulator/setup.sh failed");
    python
}

/// A JSON client for a Kubernetes API (the emulator's plain HTTP, or a real API server's
/// HTTPS with a bearer token).
#[derive(Clone)]
pub struct KubeClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// What the API server answered: the status code and the body as JSON (`Null` when none).
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: Value,
}

impl KubeClient {
    pub fn new(base: String, token: Option<String>, ca_pem: Option<&[u8]>) -> KubeClient {
        KubeClient {
            base,
            token,
            http: super::http_client(ca_pem),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `body` (JSON, when given) with `content_type`, whatever the answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut req = self.request(method.clone(), path);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Value {
        let answer = self
            .call(method.clone(), path, content_type, Some(body))
            .await;
        assert!(
            answer.status.is_success(),
            "{method} {path} answered {}: {}",
            answer.status,
            answer.body
        );
        answer.body
    }

    pub async fn create(&self, path: &str, object: Value) -> Value {
        self.send(reqwest::Method::POST, path, "application/json", &object)
            .await
    }

    /// Creates `object` and returns what the server answered, success or not.
    pub async fn try_create(&self, path: &str, object: &Value) -> Answer {
        self.call(
            reqwest::Method::POST,
            path,
            "application/json",
            Some(object),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Option<Value> {
        let answer = self.call(reqwest::Method::GET, path, "", None).await;
        answer.status.is_success().then_some(answer.body)
    }

    /// The body of a GET as text (panics unless it succeeds).
    pub async fn text(&self, path: &str) -> String {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().await.expect("body text")
    }

    pub async fn merge_patch(&self, path: &str, patch: Value) -> Value {
        self.send(
            reqwest::Method::PATCH,
            path,
            "application/merge-patch+json",
            &patch,
        )
        .await
    }

    pub async fn delete(&self, path: &str) {
        let _ = self.call(reqwest::Method::DELETE, path, "", None).await;
    }

    /// Polls `path` until `check` accepts the object.
    pub async fn wait_for(
        &self,
        path: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(v) = self.get(path).await {
                if check(&v) {
                    return v;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting on {path}; last seen: {last:#}");
    }
}

/// A running emulator; stopped on drop. Its client is reached through `Deref`.
pub struct Emulator {
    child: Child,
    pub port: u16,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    client: KubeClient,
}

impl std::ops::Deref for Emulator {
    type Target = KubeClient;
    fn deref(&self) -> &KubeClient {
        &self.client
    }
}

impl Emulator {
    pub fn start() -> Emulator {
        let python = ensure_venv();
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(python)
            .arg(repo_root().join("tests/emulator/server.py"))
            .args(["serve", "--exit-on-stdin-eof", "--port-file"])
            .arg(&port_file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "emulator did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Emulator {
            child,
            port,
            kubeconfig,
            _dir: dir,
            client: KubeClient::new(format!("http://127.0.0.1:{port}"), None, None),
        }
    }

    pub async fn counters(&self) -> Value {
        self.get("/_emulator/counters")
            .await
            .expect("emulator counters")
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
    }
}

/// A `regcache controller` process with its log in a file; killed on drop.
pub struct ControllerProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl ControllerProcess {
    pub fn start(kubeconfig: &Path, args: &[&str], log: PathBuf) -> ControllerProcess {
        Self::start_with_env(kubeconfig, args, &[], log)
    }

    /// With environment variables set for it too (`AWS_ENDPOINT_URL`, ...).
    pub fn start_with_env(
        kubeconfig: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> ControllerProcess {
        let out = std::fs::File::create(&log).unwrap();
        // Benches may name a copy of the build (see benches/common's `regcache_binary`).
        let binary = std::env::var_os("BENCH_REGCACHE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_regcache").into());
        let child = Command::new(binary)
            .arg("controller")
            // Parallel tests: any free port for every listener (read from the log).
            .args(["--api-bind-address", "127.0.0.1:0"])
            .args(["--metrics-bind-address", "127.0.0.1:0"])
            .args(["--health-probe-bind-address", "127.0.0.1:0"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("REGCACHE_LOG_LEVEL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start regcache controller");
        ControllerProcess {
            child: Some(child),
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log, oldest first, for a failure message.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The address a listener (`read API`, `metrics`, `health probes`) bound, from the log.
    pub async fn address(&self, what: &str) -> String {
        super::wait_for_listener(&self.log, what).await
    }

    /// The sum of every series of the metric `name` (`0` when it has none) on the
    /// process's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        super::scrape_metric(&self.address("metrics").await, name).await
    }

    /// The process id while it runs (benchmarks read its memory from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_wait(&mut c);
        }
    }

    /// Sends SIGTERM, as Kubernetes does to a Pod it stops, and waits up to `within` for a
    /// graceful exit; the exit status, or `None` (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_and_wait(&mut child);
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the controller did: its log goes with the temporary
        // directory it was written to.
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let shown = &lines[lines.len().saturating_sub(300)..];
            eprintln!(
                "--- controller log {} (last {} of {} lines) ---\n{}",
                self.log.display(),
                shown.len(),
                lines.len(),
                shown.join("\n")
            );
        }
    }
}

/// An ImageRepositoryWatch `namespace/name` with `spec`.
pub fn watch_object(namespace: &str, name: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "regcache.io/v1alpha1",
        "kind": "ImageRepositoryWatch",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// A Deployment `namespace/name` of `replicas`, one container per image (`c0`, `c1`, ...),
/// with `pull_secret` as its `imagePullSecrets` when given.
pub fn deployment_object(
    namespace: &str,
    name: &str,
    replicas: u32,
    images: &[&str],
    pull_secret: Option<&str>,
) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let mut spec = serde_json::json!({"containers": containers});
    if let Some(s) = pull_secret {
        spec["imagePullSecrets"] = serde_json::json!([{"name": s}]);
    }
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    })
}

/// A `kubernetes.io/dockerconfigjson` Secret holding [`super::TEST_USER`] and `password`
/// for `host`.
pub fn pull_secret(namespace: &str, name: &str, host: &str, password: &str) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let auth = b64(&format!("{}:{password}", super::TEST_USER));
    let config = serde_json::json!({"auths": {host: {"auth": auth}}}).to_string();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&config)},
    })
}

/// The `Ready` condition's (status, reason) of a watch, when it has one.
pub fn ready(watch: &Value) -> Option<(String, String)> {
    let c = watch["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// A check for [`Emulator::wait_for`]: the watch is `Ready` with this status and reason.
pub fn ready_is(status: &str, reason: &str) -> impl Fn(&Value) -> bool + use<> {
    let expected = Some((status.to_string(), reason.to_string()));
    move |w| ready(w) == expected
}
