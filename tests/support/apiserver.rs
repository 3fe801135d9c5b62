//! A real Kubernetes API server for the tests, as controller-runtime's envtest runs one:
//! etcd and kube-apiserver (built by `scripts/testbin.sh`) on loopback, with generated
//! certificates, a static admin token, RBAC authorization and service-account signing keys
//! (so TokenRequest, TokenReview and SubjectAccessReview work). Stopped on drop.
//!
//! No controller-manager runs, so nothing that needs one happens: no garbage collection
//! (owner references are not followed: deleting an owner leaves its dependents), no
//! namespace finalization (a deleted namespace stays `Terminating`), no ServiceAccount or
//! token controller (the tests create the ServiceAccounts they use and ask TokenRequest for
//! tokens), no Deployment or ReplicaSet controller (a Deployment never gets Pods) and no
//! scheduler.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::certs::{CertPair, TlsCerts, generate_signing_cert, generate_tls};
use super::kube::KubeClient;
use super::process::kill_and_wait;

/// The static token of the admin user (group `system:masters`).
const ADMIN_TOKEN: &str = "regcache-test-admin-token";
pub const CRD_PATH: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/imagerepositorywatches.regcache.io";

/// The directory holding kube-apiserver, kubectl, etcd, helm and crane: `REGCACHE_TESTBIN`, or the
/// `current` link `scripts/testbin.sh` keeps in its cache.
pub fn testbin() -> PathBuf {
    let dir = std::env::var_os("REGCACHE_TESTBIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("REGCACHE_TESTBIN_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/regcache/testbin")
                });
            cache.join("current")
        });
    for bin in ["kube-apiserver", "kubectl", "etcd", "helm", "crane"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run scripts/testbin.sh (it builds the test binaries) \
             or set REGCACHE_TESTBIN to the directory it printed",
            dir.join(bin).display()
        );
    }
    dir
}

/// How the API server is started.
#[derive(Clone, Default)]
pub struct ApiServerOptions {
    /// `--watch-cache=false`: every watch is served from etcd, so a watch from a compacted
    /// resourceVersion gets 410 Gone.
    pub no_watch_cache: bool,
}

pub struct ApiServer {
    /// `None` for a second API server on another's etcd.
    etcd: Option<Child>,
    apiserver: Option<Child>,
    pub port: u16,
    pub etcd_url: String,
    /// The admin's kubeconfig (token user, the server's CA).
    pub kubeconfig: PathBuf,
    pub certs: TlsCerts,
    signing: CertPair,
    options: ApiServerOptions,
    pub dir: tempfile::TempDir,
    client: KubeClient,
}

impl std::ops::Deref for ApiServer {
    type Target = KubeClient;
    fn deref(&self) -> &KubeClient {
        &self.client
    }
}

/// The last `lines` lines of a log file.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A blocking HTTPS GET with the admin token; the status code, if any answer came.
fn blocking_status(url: &str, ca_pem: &[u8]) -> Option<u16> {
    let ca = ca_pem.to_vec();
    let url = url.to_string();
    // A thread of its own: the fixture is sync and may run inside the caller's runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let resp = super::http_client(Some(&ca))
                .get(&url)
                .bearer_auth(ADMIN_TOKEN)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            Some(resp.status().as_u16())
        })
    })
    .join()
    .ok()
    .flatten()
}

impl ApiServer {
    pub fn start() -> ApiServer {
        ApiServer::start_with(ApiServerOptions::default())
    }

    pub fn start_with(options: ApiServerOptions) -> ApiServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let certs = generate_tls(dir.path());
        let signing = generate_signing_cert(dir.path(), "service-accounts");
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .expect("write token file");
        // Every request, at Metadata level (who, verb, object, answer), written before the
        // answer goes out: the RBAC test reads what the controller asked for from it.
        std::fs::write(
            dir.path().join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
             rules:\n- level: Metadata\n",
        )
        .expect("write audit policy");
        let (etcd, etcd_url) = start_etcd(dir.path());
        let mut server = ApiServer {
            etcd: Some(etcd),
            apiserver: None,
            port: 0,
            etcd_url,
            kubeconfig: dir.path().join("kubeconfig"),
            client: KubeClient::new(String::new(), None, None),
            certs,
            signing,
            options,
            dir,
        };
        server.start_apiserver(None);
        server
    }

    /// Starts kube-apiserver (on `port`, or a free one) and waits until `/readyz` answers 200.
    fn start_apiserver(&mut self, port: Option<u16>) {
        let bin = testbin();
        let dir = self.dir.path();
        for attempt in 0.. {
            let port = port.unwrap_or_else(super::free_port);
            let log = dir.join(format!("kube-apiserver-{port}.log"));
            let out = std::fs::File::create(&log).expect("create apiserver log");
            let mut cmd = Command::new(bin.join("kube-apiserver"));
            cmd.arg(format!("--etcd-servers={}", self.etcd_url))
                .arg(format!(
                    "--cert-dir={}",
                    dir.join("apiserver-certs").display()
                ))
                .arg(format!(
                    "--tls-cert-file={}",
                    self.certs.leaf.cert_path.display()
                ))
                .arg(format!(
                    "--tls-private-key-file={}",
                    self.certs.leaf.key_path.display()
                ))
                .arg(format!("--secure-port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--service-cluster-ip-range=10.0.0.0/24")
                .arg(format!("--service-account-issuer=https://127.0.0.1:{port}"))
                .arg(format!(
                    "--service-account-key-file={}",
                    self.signing.key_path.display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    self.signing.key_path.display()
                ))
                .arg(format!(
                    "--token-auth-file={}",
                    dir.join("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg("--allow-privileged=true")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--endpoint-reconciler-type=none")
                .arg(format!(
                    "--audit-policy-file={}",
                    dir.join("audit-policy.yaml").display()
                ))
                .arg(format!("--audit-log-path={}", self.audit_log().display()))
                .arg("--audit-log-format=json")
                .arg("--audit-log-mode=blocking")
                .arg(format!(
                    "--watch-cache={}",
                    if self.options.no_watch_cache {
                        "false"
                    } else {
                        "true"
                    }
                ))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            let mut child = cmd.spawn().expect("start kube-apiserver");
            let ca = self.certs.ca.cert_pem.clone();
            let readyz = format!("https://127.0.0.1:{port}/readyz");
            let deadline = Instant::now() + Duration::from_secs(120);
            let outcome = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(status);
                }
                if blocking_status(&readyz, &ca) == Some(200) {
                    break Ok(());
                }
                assert!(
                    Instant::now() < deadline,
                    "kube-apiserver did not become ready in 120 s; its log:\n{}",
                    tail(&log, 60)
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            match outcome {
                Ok(()) => {
                    self.apiserver = Some(child);
                    self.port = port;
                    self.client = KubeClient::new(
                        format!("https://127.0.0.1:{port}"),
                        Some(ADMIN_TOKEN.to_string()),
                        Some(&ca),
                    );
                    self.write_kubeconfig(&self.kubeconfig.clone(), ADMIN_TOKEN);
                    return;
                }
                // Another process took the port between picking and binding it.
                Err(_) if tail(&log, 20).contains("address already in use") && attempt < 5 => {}
                Err(status) => panic!(
                    "kube-apiserver exited ({status}); its log:\n{}",
                    tail(&log, 60)
                ),
            }
        }
    }

    /// The audit log: one JSON `audit.k8s.io/v1` Event per line.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// Every audit Event so far.
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The sum of the API server's own `apiserver_request_total` series whose labels include
    /// every `name="value"` pair given: the requests it served, no-ops included.
    pub async fn request_count(&self, labels: &[(&str, &str)]) -> f64 {
        let text = self.text("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Starts another kube-apiserver on the same etcd (as in a highly available control
    /// plane); it stops when the returned handle is dropped.
    pub fn second_apiserver(&self) -> SecondApiServer {
        let mut other = ApiServer {
            etcd: None,
            apiserver: None,
            port: 0,
            etcd_url: self.etcd_url.clone(),
            kubeconfig: self.dir.path().join("kubeconfig-second"),
            certs: self.certs.clone(),
            signing: self.signing.clone(),
            options: self.options.clone(),
            dir: tempfile::tempdir().expect("temporary directory"),
            client: KubeClient::new(String::new(), None, None),
        };
        for file in ["tokens.csv", "audit-policy.yaml"] {
            std::fs::copy(self.dir.path().join(file), other.dir.path().join(file))
                .expect("copy the API server's files");
        }
        other.start_apiserver(None);
        SecondApiServer(other)
    }

    /// Stops kube-apiserver (SIGKILL) and starts it again on the same port and etcd.
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver(Some(self.port));
    }

    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            kill_and_wait(&mut c);
        }
    }

    /// Writes a kubeconfig for `token` against this server to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.certs.ca.cert_pem);
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": format!("https://127.0.0.1:{}", self.port),
                "certificate-authority-data": ca,
            }}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        });
        std::fs::write(path, config.to_string()).expect("write kubeconfig");
    }

    /// A kubeconfig for `token`, in the fixture's directory.
    pub fn kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        self.write_kubeconfig(&path, token);
        path
    }

    /// Runs the real kubectl as the admin; (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        run_tool(&testbin().join("kubectl"), &self.kubeconfig, args)
    }

    /// Runs kubectl with `dir` first on `PATH`, where it finds its plugins
    /// (`kubectl-NAME`); (success, stdout, stderr).
    pub fn kubectl_with_plugins(&self, dir: &Path, args: &[&str]) -> (bool, String, String) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        let path = std::env::join_paths(paths).expect("PATH entries");
        run_tool_with(
            &testbin().join("kubectl"),
            &self.kubeconfig,
            args,
            Some(&path),
        )
    }

    /// Runs kubectl and panics with its output unless it succeeds; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    /// Runs the real helm as the admin; (success, stdout, stderr).
    pub fn helm(&self, args: &[&str]) -> (bool, String, String) {
        run_tool(&testbin().join("helm"), &self.kubeconfig, args)
    }

    /// Creates a namespace (no error when it exists).
    pub async fn namespace(&self, name: &str) {
        let answer = self
            .try_create(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            )
            .await;
        assert!(
            answer.status.is_success() || answer.status == reqwest::StatusCode::CONFLICT,
            "create namespace {name}: {} {}",
            answer.status,
            answer.body
        );
    }

    /// Applies regcache's CRD (crds/) with kubectl and waits until it is Established.
    pub async fn install_crd(&self) {
        let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
        self.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
        self.wait_for_crd().await;
    }

    /// Waits until regcache's CRD is Established (its API is served).
    pub async fn wait_for_crd(&self) {
        self.wait_for(CRD_PATH, Duration::from_secs(30), |crd| {
            crd["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
        .await;
    }

    /// A Role and RoleBinding that let ServiceAccount `account` (`namespace/name`) get the
    /// ImageRepositoryWatches in `namespace`, as a user would grant a reader of the read API.
    pub async fn grant_watch_reading(&self, namespace: &str, account: (&str, &str)) {
        let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}");
        let name = format!("watch-reader-{}-{}", account.0, account.1);
        self.create(
            &format!("{rbac}/roles"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name, "namespace": namespace},
                   "rules": [{"apiGroups": ["regcache.io"], "resources": ["imagerepositorywatches"],
                              "verbs": ["get"]}]}),
        )
        .await;
        self.create(
            &format!("{rbac}/rolebindings"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name, "namespace": namespace},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": account.1,
                                 "namespace": account.0}]}),
        )
        .await;
    }

    /// Creates a ServiceAccount (when missing) and asks TokenRequest for a token for it.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let _ = self
            .try_create(
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
                &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": name, "namespace": namespace}}),
            )
            .await;
        let answer = self
            .create(
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"expirationSeconds": 3600}}),
            )
            .await;
        answer["status"]["token"]
            .as_str()
            .expect("TokenRequest answers a token")
            .to_string()
    }

    /// Compacts etcd's history up to its current revision (etcd's v3 JSON gateway), so a
    /// watch or list from an older resourceVersion gets 410 Gone.
    pub async fn compact_etcd(&self) {
        let http = super::http_client(None);
        let range = http
            .post(format!("{}/v3/kv/range", self.etcd_url))
            .body(json!({"key": "AA=="}).to_string())
            .send()
            .await
            .expect("etcd range")
            .bytes()
            .await
            .expect("etcd range answer");
        let status: Value = serde_json::from_slice(&range).expect("etcd range JSON");
        let revision = status["header"]["revision"]
            .as_str()
            .expect("etcd revision")
            .to_string();
        let resp = http
            .post(format!("{}/v3/kv/compaction", self.etcd_url))
            .body(json!({"revision": revision, "physical": true}).to_string())
            .send()
            .await
            .expect("etcd compaction");
        assert!(
            resp.status().is_success(),
            "etcd compaction: {}",
            resp.status()
        );
    }
}

fn run_tool(binary: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    run_tool_with(binary, kubeconfig, args, None)
}

/// [`run_tool`] with `PATH` set to `path`.
fn run_tool_with(
    binary: &Path,
    kubeconfig: &Path,
    args: &[&str],
    path: Option<&std::ffi::OsStr>,
) -> (bool, String, String) {
    let mut command = Command::new(binary);
    if let Some(p) = path {
        command.env("PATH", p);
    }
    let out = command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .env_remove("HELM_NAMESPACE")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// etcd on a free client port (`--unsafe-no-fsync`, as envtest runs it); (child, URL).
fn start_etcd(dir: &Path) -> (Child, String) {
    let bin = testbin().join("etcd");
    for attempt in 0.. {
        let port = super::free_port();
        let peer = super::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join(format!("etcd-{port}.log"));
        let out = std::fs::File::create(&log).expect("create etcd log");
        let mut child = Command::new(&bin)
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .arg("--unsafe-no-fsync=true")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start etcd");
        let health = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = loop {
            if let Ok(Some(_)) = child.try_wait() {
                break true;
            }
            if super::blocking_http_status(&health, "/health", Duration::from_secs(1)) == Some(200)
            {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; its log:\n{}",
                tail(&log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if !exited {
            return (child, url);
        }
        assert!(
            attempt < 5 && tail(&log, 20).contains("address already in use"),
            "etcd exited; its log:\n{}",
            tail(&log, 40)
        );
        let _ = std::fs::remove_dir_all(dir.join("etcd"));
    }
    unreachable!()
}

/// A second kube-apiserver on the same etcd, see [`ApiServer::second_apiserver`].
pub struct SecondApiServer(ApiServer);

impl std::ops::Deref for SecondApiServer {
    type Target = KubeClient;
    fn deref(&self) -> &KubeClient {
        &self.0.client
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(etcd) = &mut self.etcd {
            kill_and_wait(etcd);
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("kube-apiserver-") && name.ends_with(".log") {
                    eprintln!(
                        "--- {name} (last 40 lines) ---\n{}",
                        tail(&entry.path(), 40)
                    );
                }
            }
        }
    }
}
