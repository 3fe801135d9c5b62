//! moto's server (PyPI `moto[server]`, in the test venv that `tests/emulator/setup.sh`
//! makes) as a stand-in for AWS STS and ECR, with its request recorder on: tests read back
//! which calls reached it, with their parameters.
//!
//! What it leaves out, as docs/testing.md says: moto checks no signature and no web
//! identity token (any string is accepted and any role may be assumed), its ECR password is
//! `<account>-auth-token` with an expiry in 2015, and it has no ECR Public.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::ChildProcess;

pub struct Moto {
    child: ChildProcess,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts `moto_server` on a free port and waits until it answers.
    pub fn start() -> Moto {
        let bin =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/emulator/.venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run tests/emulator/setup.sh (scripts/test.sh does)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = super::free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The recorder's file is its own, not `moto_recording` in the working directory.
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start moto_server");
        let moto = Moto {
            child: ChildProcess::new(child),
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::blocking_http_status(&moto.addr(), "/moto-api/", Duration::from_secs(1))
            != Some(200)
        {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 30 s:\n{}",
                std::fs::read_to_string(&moto.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let answer = moto.post("/moto-api/recorder/start-recording");
        assert!(answer.is_some(), "moto's recorder did not start");
        moto
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The endpoint URL the AWS SDK is pointed at (`AWS_ENDPOINT_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn post(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", &format!("{}{path}", self.url())])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Every AWS API call recorded so far: (action, parameters), where the action is the
    /// query protocol's `Action` (STS) or the JSON protocol's `X-Amz-Target` operation
    /// (ECR), and the parameters are the form fields or the JSON body's fields.
    pub fn calls(&self) -> Vec<(String, Value)> {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("{}/moto-api/recorder/download-recording", self.url()),
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|entry| {
                let raw = entry["body"].as_str().unwrap_or_default();
                let body = if entry["body_encoded"] == true {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(raw)
                        .unwrap_or_default();
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    raw.to_string()
                };
                let target = entry["headers"]["X-Amz-Target"]
                    .as_str()
                    .or(entry["headers"]["x-amz-target"].as_str());
                if let Some(target) = target {
                    let op = target.rsplit('.').next().unwrap_or(target).to_string();
                    let params = serde_json::from_str(&body).unwrap_or(Value::Null);
                    return Some((op, params));
                }
                let form: serde_json::Map<String, Value> =
                    url::form_urlencoded::parse(body.as_bytes())
                        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                        .collect();
                let action = form.get("Action")?.as_str()?.to_string();
                Some((action, Value::Object(form)))
            })
            .collect()
    }

    /// The calls of one action.
    pub fn calls_of(&self, action: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|(a, _)| a == action)
            .map(|(_, p)| p)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.child.stop();
    }
}

/// ECR Public's `GetAuthorizationToken`, which moto lacks: answers the AWS JSON protocol
/// with `base64(AWS:PASSWORD)` valid for an hour, or with `AccessDeniedException` once
/// [`EcrPublic::deny`] is set, and keeps each call's `Authorization` header.
pub struct EcrPublic {
    pub port: u16,
    state: std::sync::Arc<EcrPublicState>,
    _server: super::server::BackgroundServer,
}

#[derive(Default)]
struct EcrPublicState {
    password: String,
    deny: std::sync::atomic::AtomicBool,
    authorizations: std::sync::Mutex<Vec<String>>,
}

impl EcrPublic {
    pub fn start(password: &str) -> EcrPublic {
        use http_body_util::Full;
        let state = std::sync::Arc::new(EcrPublicState {
            password: password.to_string(),
            ..Default::default()
        });
        let (listener, port) = super::server::bind_loopback("ecr-public");
        let st = state.clone();
        let server = super::server::BackgroundServer::builder("ecr-public").start(
            listener,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let st = st.clone();
                async move {
                    let target = req
                        .headers()
                        .get("x-amz-target")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let authorization = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let (status, body) = if !target.ends_with(".GetAuthorizationToken") {
                        (400, json_error("UnknownOperationException", &target))
                    } else if st.deny.load(std::sync::atomic::Ordering::SeqCst) {
                        st.authorizations.lock().unwrap().push(authorization);
                        (
                            400,
                            json_error("AccessDeniedException", "not allowed to pull here"),
                        )
                    } else {
                        st.authorizations.lock().unwrap().push(authorization);
                        use base64::Engine as _;
                        let token = base64::engine::general_purpose::STANDARD
                            .encode(format!("AWS:{}", st.password));
                        let expires = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs()
                            + 3600;
                        let body = serde_json::json!({"authorizationData": {
                            "authorizationToken": token, "expiresAt": expires}});
                        (200, body.to_string())
                    };
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/x-amz-json-1.1")
                            .body(Full::new(bytes::Bytes::from(body)))
                            .unwrap(),
                    )
                }
            },
        );
        EcrPublic {
            port,
            state,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, refuse every call.
    pub fn deny(&self) {
        self.state
            .deny
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The `Authorization` header of every `GetAuthorizationToken` call so far.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.authorizations.lock().unwrap().clone()
    }
}

fn json_error(kind: &str, message: &str) -> String {
    serde_json::json!({"__type": kind, "message": message}).to_string()
}
