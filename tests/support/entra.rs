//! A stand-in for Entra ID's token endpoint, over HTTPS as the identity library demands
//! (`AZURE_AUTHORITY_HOST=https://127.0.0.1:PORT`; its CA is [`Entra::ca_file`]):
//! `POST /TENANT/oauth2/v2.0/token` with `grant_type=client_credentials`, a `client_id`,
//! and a `client_assertion` (workload identity) or a `client_secret`. It answers
//! [`access_token`] of the tenant and client, or AADSTS700016 for a client ID starting with
//! `denied`.
//!
//! What it leaves out: no assertion's signature, issuer or audience is checked, and no
//! federated credential decides which ServiceAccount may be which application (the
//! tests read the recorded requests instead).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::server::{Seen, StandIn};

/// The access token Entra ID hands `client` of `tenant`: the harness token server's ACR
/// exchange takes it as that client's identity.
pub fn access_token(tenant: &str, client: &str) -> String {
    format!("entra.{tenant}.{client}.canary")
}

pub struct Entra {
    stand_in: StandIn,
    certs: super::certs::TlsCerts,
    _dir: tempfile::TempDir,
}

impl Entra {
    pub fn start() -> Entra {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = super::certs::generate_tls(dir.path());
        let stand_in = StandIn::start("entra", Some(&certs.leaf), answer);
        Entra {
            stand_in,
            certs,
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT`, for `AZURE_AUTHORITY_HOST`.
    pub fn authority_host(&self) -> String {
        format!("https://127.0.0.1:{}", self.stand_in.port())
    }

    /// The CA that signed the stand-in's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.certs.ca.cert_path
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca_file().to_path_buf()
    }

    /// The token requests of `tenant`.
    pub fn requests_of(&self, tenant: &str) -> Vec<Seen> {
        self.stand_in.seen_at(&format!("/{tenant}/"))
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.stand_in.seen()
    }
}

fn answer(request: &Seen) -> (u16, Value) {
    let Some(tenant) = request
        .path
        .strip_suffix("/oauth2/v2.0/token")
        .and_then(|p| p.strip_prefix('/'))
        .filter(|t| !t.contains('/'))
    else {
        return (
            404,
            json!({"error": format!("the stand-in does not serve {}", request.path)}),
        );
    };
    let client = request.form("client_id").unwrap_or_default();
    let assertion = request.form("client_assertion").unwrap_or_default();
    let secret = request.form("client_secret").unwrap_or_default();
    if request.method != "POST"
        || request.form("grant_type").as_deref() != Some("client_credentials")
        || request.form("scope").is_none_or(|s| s.is_empty())
        || client.is_empty()
        || (assertion.is_empty() && secret.is_empty())
    {
        return (
            400,
            json!({"error": "invalid_request",
                   "error_description": "AADSTS900144: a client credentials request needs client_id, scope and an assertion or secret"}),
        );
    }
    if client.starts_with("denied") {
        return (
            400,
            json!({"error": "unauthorized_client",
                   "error_description": format!("AADSTS700016: Application with identifier '{client}' was not found in the directory '{tenant}'.")}),
        );
    }
    (
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
               "access_token": access_token(tenant, &client)}),
    )
}
