//! A stand-in for Google's token services, one HTTP server for all three:
//! - the metadata server's `GET /computeMetadata/v1/instance/service-accounts/default/token`
//!   (reached through `GCE_METADATA_HOST`; requires `Metadata-Flavor: Google`);
//! - STS's `POST /v1/token` token exchange (a federation credential file's `token_url`, or
//!   `--gcp-sts-url`);
//! - IAM Credentials' `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`
//!   (`--gcp-iam-credentials-url`), which refuses an email starting with `denied`.
//!
//! What it leaves out: no signature or audience is checked (the tests read the recorded
//! requests instead), and no IAM policy decides who may impersonate whom.

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// The access token the metadata server hands out.
pub const METADATA_TOKEN: &str = "gce-metadata-token-canary";
/// The federated token STS hands out.
pub const FEDERATED_TOKEN: &str = "federated-token-canary";

/// The access token IAM Credentials hands out for `email`.
pub fn impersonated_token(email: &str) -> String {
    format!("impersonated-{email}-canary")
}

/// One recorded request: method, path, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's form fields.
    pub fn form(&self, field: &str) -> Option<String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned())
    }
}

pub struct Google {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: super::server::BackgroundServer,
}

impl Google {
    pub fn start() -> Google {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (listener, port) = super::server::bind_loopback("google");
        let record = seen.clone();
        let server = super::server::BackgroundServer::builder("google").start(
            listener,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let request = Seen {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(n, v)| {
                                (n.to_string(), v.to_str().unwrap_or_default().to_string())
                            })
                            .collect(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                    let (status, answer) = answer(&request);
                    record.lock().unwrap().push(request);
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(bytes::Bytes::from(answer.to_string())))
                            .unwrap(),
                    )
                }
            },
        );
        Google {
            port,
            seen,
            _server: server,
        }
    }

    /// `127.0.0.1:PORT`, as `GCE_METADATA_HOST` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }
}

fn answer(request: &Seen) -> (u16, Value) {
    let path = request.path.as_str();
    if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        if request.header("metadata-flavor") != Some("Google") {
            return (403, json!({"error": "missing Metadata-Flavor"}));
        }
        return (
            200,
            json!({"access_token": METADATA_TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
        );
    }
    if path == "/v1/token" && request.method == "POST" {
        if request.form("subject_token").is_none_or(|t| t.is_empty()) {
            return (
                400,
                json!({"error": "invalid_request", "error_description": "no subject_token"}),
            );
        }
        return (
            200,
            json!({"access_token": FEDERATED_TOKEN,
                   "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                   "token_type": "Bearer", "expires_in": 3600}),
        );
    }
    if let Some(email) = path
        .strip_prefix("/v1/projects/-/serviceAccounts/")
        .and_then(|p| p.strip_suffix(":generateAccessToken"))
    {
        if request.header("authorization") != Some(&format!("Bearer {FEDERATED_TOKEN}")) {
            return (
                401,
                json!({"error": {"code": 401, "message": "no federated token", "status": "UNAUTHENTICATED"}}),
            );
        }
        if email.starts_with("denied") {
            return (
                403,
                json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                       "message": format!("Permission 'iam.serviceAccounts.getAccessToken' denied on {email}")}}),
            );
        }
        let expires = chrono::Utc::now() + chrono::Duration::hours(1);
        return (
            200,
            json!({"accessToken": impersonated_token(email),
                   "expireTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
        );
    }
    (
        404,
        json!({"error": format!("the stand-in does not serve {path}")}),
    )
}
