//! A real `docker-registry` 2.8.2 (CNCF distribution) child process per test.

use super::certs::{self, TlsCerts};
use super::process::{ChildProcess, NotReady, wait_ready};
use super::pusher::Pusher;
use super::token::TokenServer;
use super::{CANARY_PASSWORD, TEST_USER};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How the registry authenticates clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryAuth {
    Anonymous,
    /// htpasswd (bcrypt cost 4) with [`TEST_USER`]/[`CANARY_PASSWORD`].
    Basic,
    /// Bearer tokens from a [`TokenServer`] that knows [`TEST_USER`]/[`CANARY_PASSWORD`].
    Token,
}

pub const TOKEN_SERVICE: &str = "regcache-test-registry";
pub const TOKEN_ISSUER: &str = "regcache-test-issuer";
pub const REALM: &str = "regcache-test";

/// A running registry; killed (and waited for) on drop, also when a test panics.
pub struct Registry {
    child: ChildProcess,
    port: u16,
    auth: RegistryAuth,
    tls: Option<TlsCerts>,
    token: Option<TokenServer>,
    log_path: PathBuf,
    config_path: PathBuf,
    storage: PathBuf,
    /// The htpasswd user of [`RegistryAuth::Basic`].
    basic: (String, String),
    // Last so the directory outlives the child and the token server.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Plain-HTTP registry.
    pub fn start(auth: RegistryAuth) -> Registry {
        Self::start_with(auth, false, None)
    }

    /// HTTPS registry with a leaf certificate signed by a fresh test CA ([`Self::ca_pem`]).
    pub fn start_tls(auth: RegistryAuth) -> Registry {
        Self::start_with(auth, true, None)
    }

    /// `extra_config_yaml` is appended verbatim to `config.yml` (top-level sections such as
    /// `notifications:`; must not repeat `version`, `log`, `storage`, `http` or `auth`).
    pub fn start_with(auth: RegistryAuth, tls: bool, extra_config_yaml: Option<&str>) -> Registry {
        Self::start_as(auth, tls, extra_config_yaml, (TEST_USER, CANARY_PASSWORD))
    }

    /// A plain-HTTP registry with Basic auth whose only user is `user`/`password` (a
    /// cloud's registry credentials, for example).
    pub fn start_basic_as(user: &str, password: &str) -> Registry {
        Self::start_as(RegistryAuth::Basic, false, None, (user, password))
    }

    fn start_as(
        auth: RegistryAuth,
        tls: bool,
        extra_config_yaml: Option<&str>,
        (user, password): (&str, &str),
    ) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("regcache-registry-")
            .tempdir()
            .expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let tls_certs = tls.then(|| certs::generate_tls(dir.path()));
        let token = (auth == RegistryAuth::Token)
            .then(|| TokenServer::start_in(dir.path(), TOKEN_SERVICE, TOKEN_ISSUER));
        let htpasswd =
            (auth == RegistryAuth::Basic).then(|| write_htpasswd(dir.path(), user, password));
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = super::restartable_port();
            let mut cfg = String::new();
            let _ = write!(
                cfg,
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {:032x}\n",
                storage.display(),
                rand::random::<u128>()
            );
            if let Some(c) = &tls_certs {
                let _ = write!(
                    cfg,
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.leaf.cert_path.display(),
                    c.leaf.key_path.display()
                );
            }
            match auth {
                RegistryAuth::Anonymous => {}
                RegistryAuth::Basic => {
                    let _ = write!(
                        cfg,
                        "auth:\n  htpasswd:\n    realm: {REALM}\n    path: {}\n",
                        htpasswd.as_ref().unwrap().display()
                    );
                }
                RegistryAuth::Token => {
                    let ts = token.as_ref().unwrap();
                    let _ = write!(
                        cfg,
                        "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                         issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                        ts.realm(),
                        ts.cert_file().display()
                    );
                }
            }
            if let Some(extra) = extra_config_yaml {
                cfg.push_str(extra);
                if !extra.ends_with('\n') {
                    cfg.push('\n');
                }
            }
            std::fs::write(&config_path, &cfg).expect("write config.yml");
            match spawn(dir.path(), &config_path, &log_path, port, tls) {
                Ok(child) => {
                    return Registry {
                        child: ChildProcess::new(child),
                        port,
                        auth,
                        tls: tls_certs,
                        token,
                        log_path,
                        config_path,
                        storage,
                        basic: (user.to_string(), password.to_string()),
                        dir,
                    };
                }
                Err((port_taken, log)) => {
                    last_log = log;
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not become ready within 5s; log:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
    pub fn auth(&self) -> RegistryAuth {
        self.auth
    }
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
    /// PEM of the CA that signed the server certificate (TLS registries only).
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().map(|c| c.ca.cert_pem.clone())
    }
    /// Path of the CA PEM file (TLS registries only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|c| c.ca.cert_path.clone())
    }
    pub fn tls_certs(&self) -> Option<&TlsCerts> {
        self.tls.as_ref()
    }
    /// [`TEST_USER`]/[`CANARY_PASSWORD`] for Token, the htpasswd user for Basic (those two
    /// unless [`Self::start_basic_as`] chose another), `None` for Anonymous.
    pub fn credentials(&self) -> Option<(String, String)> {
        match self.auth {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Basic => Some(self.basic.clone()),
            RegistryAuth::Token => Some((TEST_USER.to_string(), CANARY_PASSWORD.to_string())),
        }
    }
    /// `skopeo inspect [ARGS] docker://HOST/REFERENCE` with this registry's credentials:
    /// an independent client's view of what the registry serves (stdout; panics on
    /// failure). TLS is not verified: skopeo is the oracle for content here, not for TLS.
    pub fn skopeo_inspect(&self, reference: &str, args: &[&str]) -> Vec<u8> {
        let mut command = Command::new("skopeo");
        command.args(["inspect", "--tls-verify=false"]).args(args);
        if let Some((user, password)) = self.credentials() {
            command.arg(format!("--creds={user}:{password}"));
        }
        let out = command
            .arg(format!("docker://{}/{reference}", self.host()))
            .output()
            .expect("run skopeo (apt-get install skopeo)");
        assert!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }
    /// A pusher with the right credentials and CA.
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.base_url(), self.credentials(), self.ca_pem())
    }
    /// A [`FaultProxy`](super::FaultProxy) in front of this registry.
    pub fn fault_proxy(&self) -> super::FaultProxy {
        super::FaultProxy::start(&self.base_url(), self.ca_pem().as_deref())
    }
    /// A reqwest client trusting this registry's CA (no credentials attached).
    pub fn client(&self) -> reqwest::Client {
        super::http_client(self.ca_pem().as_deref())
    }
    /// Everything the registry wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Kill the registry (simulates an outage); storage and port are kept.
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// Stop (if running) and start again on the same port with the same storage,
    /// config and token server. Panics if it does not come back within 5s.
    pub fn restart(&mut self) {
        let tls = self.tls.is_some();
        let (dir, config, log, port) = (
            self.dir.path(),
            &self.config_path,
            &self.log_path,
            self.port,
        );
        self.child
            .restart(
                Duration::from_secs(5),
                Duration::from_millis(100),
                || spawn(dir, config, log, port, tls),
                |(port_taken, _)| *port_taken,
            )
            .unwrap_or_else(|(_, log)| panic!("docker-registry restart failed; log:\n{log}"));
    }
}

/// Start `docker-registry serve CONFIG` and wait (<5s) until it answers.
/// Err((port already in use, log)) otherwise.
fn spawn(
    dir: &Path,
    config_path: &Path,
    log_path: &Path,
    port: u16,
    tls: bool,
) -> Result<Child, (bool, String)> {
    // Append, so the log survives restarts.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("registry log");
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(config_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn docker-registry (apt-get install docker-registry)");
    let addr = format!("127.0.0.1:{port}");
    // The port came from a bind-and-release (or is an old one, on a restart): another
    // test's server may hold it. Only a registry that bound the port logs that it listens
    // on it, so ready means: this process logged it (the log is appended across restarts,
    // hence the count) and the port answers.
    let listening = format!("listening on 127.0.0.1:{port}");
    let count = || {
        std::fs::read_to_string(log_path)
            .unwrap_or_default()
            .matches(&listening)
            .count()
    };
    let before = count();
    let ready = || {
        count() > before
            && if tls {
                std::net::TcpStream::connect(&addr).is_ok()
            } else {
                super::blocking_http_status(&addr, "/v2/", Duration::from_millis(500)).is_some()
            }
    };
    match wait_ready(
        &mut child,
        Duration::from_secs(5),
        Duration::from_millis(20),
        ready,
    ) {
        Ok(()) => Ok(child),
        Err(why) => {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            let exited = matches!(why, NotReady::Exited(_));
            Err((exited && log.contains("address already in use"), log))
        }
    }
}

fn write_htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let hash = bcrypt::hash_with_result(password, 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoY);
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
    path
}
