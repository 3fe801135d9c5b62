//! A registry token server (Docker registry v2 token auth) on its own background thread
//! and tokio runtime, so it works from sync and async tests alike.
//!
//! `GET /token?service=S&scope=repository:NAME:pull,push&account=A` (and the OAuth2 form
//! `POST /token` with `grant_type=password`, or `refresh_token` whose value is
//! [`CANARY_PASSWORD`]): [`TEST_USER`]/[`CANARY_PASSWORD`] via HTTP
//! basic auth get the requested actions; no credentials get a token with an empty access
//! list (so the registry answers 401); wrong credentials get 401.
//!
//! It also plays Azure Container Registry's sign-in: `POST /oauth2/exchange` takes an
//! [`super::entra::access_token`] and answers a refresh token (a JWT with `exp`), which is
//! then the password of [`ACR_USER`]; such a user gets only the repositories
//! [`TokenServer::acr_grant`] gave its client.

use super::certs::{self, CertPair};
use super::server::{BackgroundServer, bind_loopback};
use super::{CANARY_PASSWORD, TEST_USER};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request the token server saw.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The basic-auth user, if credentials were sent.
    pub user: Option<String>,
    pub authenticated: bool,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub account: Option<String>,
}

struct State {
    service: String,
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    x5c: String,
    expires_in: AtomicI64,
    fail_status: std::sync::atomic::AtomicU16,
    issued: AtomicUsize,
    requests: AtomicUsize,
    denied: AtomicUsize,
    log: Mutex<Vec<TokenRequest>>,
    acr: Mutex<Acr>,
}

/// The registry user whose password is an ACR refresh token.
pub const ACR_USER: &str = "00000000-0000-0000-0000-000000000000";

/// One `/oauth2/exchange` the server answered.
#[derive(Clone, Debug)]
pub struct AcrExchange {
    pub tenant: Option<String>,
    pub service: Option<String>,
    /// The Entra client the access token was issued to.
    pub client: String,
    pub refresh_token: String,
}

struct Acr {
    grants: std::collections::HashMap<String, Vec<String>>,
    refresh_lifetime: i64,
    /// Refresh token -> (client, expiry as a Unix time).
    issued: std::collections::HashMap<String, (String, i64)>,
    exchanges: Vec<AcrExchange>,
}

impl Acr {
    /// The client of a refresh token still valid.
    fn client_of(&self, refresh_token: &str) -> Option<String> {
        let (client, exp) = self.issued.get(refresh_token)?;
        (chrono::Utc::now().timestamp() < *exp).then(|| client.clone())
    }
}

/// See the module docs.
pub struct TokenServer {
    port: u16,
    state: Arc<State>,
    cert: CertPair,
    _server: BackgroundServer,
    _dir: Option<tempfile::TempDir>,
}

impl TokenServer {
    /// Start with its own temp dir for the signing certificate.
    pub fn start(service: &str, issuer: &str) -> TokenServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ts = Self::start_in(dir.path(), service, issuer);
        ts._dir = Some(dir);
        ts
    }

    /// Start, writing the signing certificate (`token-signing.crt/.key`) into `dir`.
    pub fn start_in(dir: &Path, service: &str, issuer: &str) -> TokenServer {
        let cert = certs::generate_signing_cert(dir, "token-signing");
        use base64::Engine;
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.cert_der());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&cert.key_pem).expect("RSA key PEM");
        let state = Arc::new(State {
            service: service.to_string(),
            issuer: issuer.to_string(),
            key,
            x5c,
            expires_in: AtomicI64::new(300),
            fail_status: std::sync::atomic::AtomicU16::new(0),
            issued: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            denied: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            acr: Mutex::new(Acr {
                grants: Default::default(),
                refresh_lifetime: 3 * 3600,
                issued: Default::default(),
                exchanges: Vec::new(),
            }),
        });
        let (listener, port) = bind_loopback("token server");
        let st = state.clone();
        let server = BackgroundServer::builder("token-server")
            .worker_threads(2)
            .start(listener, move |req| {
                let st = st.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &st).await) }
            });
        TokenServer {
            port,
            state,
            cert,
            _server: server,
            _dir: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
    pub fn service(&self) -> &str {
        &self.state.service
    }
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }
    /// The signing certificate (for the registry's `rootcertbundle`).
    pub fn cert_file(&self) -> &Path {
        &self.cert.cert_path
    }
    pub fn cert(&self) -> &CertPair {
        &self.cert
    }
    /// Lifetime (`exp - iat`, and `expires_in`) of tokens issued from now on. Default 300.
    /// Negative values issue already-expired tokens.
    pub fn set_expires_in(&self, secs: i64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }
    /// `Some(code)`: answer every token request with this status (e.g. 503) until reset
    /// with `None`. Requests are still counted and logged.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state
            .fail_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }
    /// Tokens issued (including anonymous ones with an empty access list).
    pub fn issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }
    /// All requests to the server.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Requests answered 401 (wrong credentials).
    pub fn denied(&self) -> usize {
        self.state.denied.load(Ordering::SeqCst)
    }
    /// Every request seen so far.
    pub fn request_log(&self) -> Vec<TokenRequest> {
        self.state.log.lock().unwrap().clone()
    }
    pub fn reset_counts(&self) {
        self.state.issued.store(0, Ordering::SeqCst);
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.denied.store(0, Ordering::SeqCst);
        self.state.log.lock().unwrap().clear();
    }
    /// ACR: `client`'s refresh tokens give pull access to `repositories`.
    pub fn acr_grant(&self, client: &str, repositories: &[&str]) {
        self.state.acr.lock().unwrap().grants.insert(
            client.to_string(),
            repositories.iter().map(|r| r.to_string()).collect(),
        );
    }
    /// ACR: the lifetime of refresh tokens exchanged from now on (default 3 hours).
    pub fn set_acr_refresh_lifetime(&self, secs: i64) {
        self.state.acr.lock().unwrap().refresh_lifetime = secs;
    }
    /// ACR: every exchange answered so far.
    pub fn acr_exchanges(&self) -> Vec<AcrExchange> {
        self.state.acr.lock().unwrap().exchanges.clone()
    }
    /// Issue a token directly (no HTTP), e.g. to hand-craft requests.
    pub fn mint(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        mint(&self.state, subject, access)
    }
}

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .unwrap()
}

fn parse_basic(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

async fn handle(req: Request<hyper::body::Incoming>, st: &State) -> Response<Full<Bytes>> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header_creds = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/oauth2/exchange" && method == "POST" {
        return acr_exchange(st, &body);
    }
    if path != "/token" {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found");
    }
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut creds = header_creds;
    if method == "POST" {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if creds.is_none()
            && get("grant_type").as_deref() == Some("password")
            && let (Some(u), Some(p)) = (get("username"), get("password"))
        {
            creds = Some((u, p));
        }
        // OAuth2 refresh-token grant (docker's `identitytoken`): the harness treats
        // CANARY_PASSWORD as TEST_USER's refresh token.
        if creds.is_none()
            && get("grant_type").as_deref() == Some("refresh_token")
            && let Some(t) = get("refresh_token")
        {
            let user = if st.acr.lock().unwrap().issued.contains_key(&t) {
                ACR_USER
            } else {
                TEST_USER
            };
            creds = Some((user.to_string(), t));
        }
        params.extend(form);
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let test_user = matches!(&creds, Some((u, p)) if u == TEST_USER && p == CANARY_PASSWORD);
    // An ACR refresh token's client, and the repositories granted to it.
    let acr_grants: Option<Vec<String>> =
        creds
            .as_ref()
            .filter(|(u, _)| u == ACR_USER)
            .and_then(|(_, p)| {
                let acr = st.acr.lock().unwrap();
                let client = acr.client_of(p)?;
                Some(acr.grants.get(&client).cloned().unwrap_or_default())
            });
    let authenticated = test_user || acr_grants.is_some();
    st.log.lock().unwrap().push(TokenRequest {
        method: method.clone(),
        user: creds.as_ref().map(|(u, _)| u.clone()),
        authenticated,
        service: get("service"),
        scopes: scopes.clone(),
        account: get("account"),
    });
    let fail = st.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return respond(
            StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            r#"{"errors":[{"code":"UNAVAILABLE","message":"token server failure (test fault)"}]}"#,
        );
    }
    if creds.is_some() && !authenticated {
        st.denied.fetch_add(1, Ordering::SeqCst);
        let mut r = respond(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
        );
        r.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"regcache-test-token\"".parse().unwrap(),
        );
        return r;
    }
    let mut access: Vec<(String, Vec<String>)> = Vec::new();
    if authenticated {
        for scope in &scopes {
            // repository:NAME:actions (NAME may contain ':' only with a port, never here)
            let mut parts = scope.splitn(2, ':');
            let (Some(typ), Some(rest)) = (parts.next(), parts.next()) else {
                continue;
            };
            if typ != "repository" {
                continue;
            }
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let actions: Vec<String> = actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            if acr_grants
                .as_ref()
                .is_some_and(|g| !g.iter().any(|r| r == name))
            {
                continue;
            }
            access.push((name.to_string(), actions));
        }
    }
    let subject = creds.map(|(u, _)| u).unwrap_or_default();
    let token = mint(st, &subject, &access);
    let expires_in = st.expires_in.load(Ordering::SeqCst);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

fn mint(st: &State, subject: &str, access: &[(String, Vec<String>)]) -> String {
    let access: Vec<serde_json::Value> = access
        .iter()
        .map(|(name, actions)| {
            serde_json::json!({"type": "repository", "name": name, "actions": actions})
        })
        .collect();
    let lifetime = st.expires_in.load(Ordering::SeqCst);
    sign(st, subject, lifetime, ("access", serde_json::json!(access)))
}

/// ACR's `/oauth2/exchange`: an Entra access token for a refresh token of its client.
fn acr_exchange(st: &State, body: &[u8]) -> Response<Full<Bytes>> {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let client = get("access_token").and_then(|t| {
        let parts: Vec<&str> = t.split('.').collect();
        match parts.as_slice() {
            ["entra", _tenant, client, "canary"] => Some(client.to_string()),
            _ => None,
        }
    });
    let (Some("access_token"), Some(client)) = (get("grant_type").as_deref(), client) else {
        return respond(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid Entra ID access token"}]}"#,
        );
    };
    let lifetime = st.acr.lock().unwrap().refresh_lifetime;
    let refresh_token = sign(
        st,
        &client,
        lifetime,
        ("grant_type", serde_json::json!("refresh_token")),
    );
    let mut acr = st.acr.lock().unwrap();
    acr.issued.insert(
        refresh_token.clone(),
        (client.clone(), chrono::Utc::now().timestamp() + lifetime),
    );
    acr.exchanges.push(AcrExchange {
        tenant: get("tenant"),
        service: get("service"),
        client,
        refresh_token: refresh_token.clone(),
    });
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::json!({ "refresh_token": refresh_token }).to_string(),
    )
}

/// A JWT of this server for `subject`, valid `lifetime` seconds, with one more claim.
fn sign(
    st: &State,
    subject: &str,
    lifetime: i64,
    (claim, value): (&'static str, serde_json::Value),
) -> String {
    let now = chrono::Utc::now().timestamp();
    let exp = now + lifetime;
    let mut claims = BTreeMap::new();
    claims.insert("iss", serde_json::json!(st.issuer));
    claims.insert("sub", serde_json::json!(subject));
    claims.insert("aud", serde_json::json!(st.service));
    claims.insert("exp", serde_json::json!(exp));
    claims.insert("nbf", serde_json::json!(now - 10));
    claims.insert("iat", serde_json::json!(now));
    claims.insert(
        "jti",
        serde_json::json!(format!("{:032x}", rand::random::<u128>())),
    );
    claims.insert(claim, value);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some("JWT".to_string());
    header.x5c = Some(vec![st.x5c.clone()]);
    let token = jsonwebtoken::encode(&header, &claims, &st.key).expect("sign JWT");
    st.issued.fetch_add(1, Ordering::SeqCst);
    token
}

/// Path of the token-signing cert for a registry config.
pub fn cert_bundle_path(ts: &TokenServer) -> PathBuf {
    ts.cert_file().to_path_buf()
}
