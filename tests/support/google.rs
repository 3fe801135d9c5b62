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

use serde_json::{Value, json};

/// The access token the metadata server hands out.
pub const METADATA_TOKEN: &str = "gce-metadata-token-canary";
/// The federated token STS hands out.
pub const FEDERATED_TOKEN: &str = "federated-token-canary";

/// The access token IAM Credentials hands out for `email`.
pub fn impersonated_token(email: &str) -> String {
    format!("impersonated-{email}-canary")
}

pub use super::server::Seen;

pub struct Google {
    pub port: u16,
    stand_in: super::server::StandIn,
}

impl Google {
    pub fn start() -> Google {
        let stand_in = super::server::StandIn::start("google", None, answer);
        Google {
            port: stand_in.port(),
            stand_in,
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
        self.stand_in.seen()
    }

    /// The requests whose path starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.stand_in.seen_at(prefix)
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
