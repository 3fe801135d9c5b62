//! Registry credentials: pull-secret parsing into per-host auth, with secrets redacted.
//!
//! Nothing in this module formats a secret: [`Secret`] prints `<redacted>`, and parse errors
//! report positions and field names, never the text around them (serde's own messages quote
//! the input, so they are not passed through).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::image::DOCKER_HUB;

/// A secret string (password, token). `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How regcache authenticates to one registry host.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Credential {
    /// No credentials; bearer tokens are still requested anonymously when challenged.
    #[default]
    Anonymous,
    /// Username and password (or a personal access token used as password).
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (docker config `identitytoken`), exchanged at the token realm.
    IdentityToken { username: String, token: Secret },
    /// A bearer token sent as-is (docker config `registrytoken`).
    RegistryToken(Secret),
}

impl Credential {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential::Basic {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// Who this credential says it is, safe to show and to key caches by tenant:
    /// `anonymous`, `basic:USER`, `identity-token:USER`, `registry-token`.
    pub fn identity(&self) -> String {
        match self {
            Credential::Anonymous => "anonymous".to_string(),
            Credential::Basic { username, .. } => format!("basic:{username}"),
            Credential::IdentityToken { username, .. } => format!("identity-token:{username}"),
            Credential::RegistryToken(_) => "registry-token".to_string(),
        }
    }

    /// A one-way fingerprint of identity *and* secret, for in-memory keys only (the token
    /// cache): two credentials with one username but different passwords must never share a
    /// token. It is never written out anywhere.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.identity().as_bytes());
        h.update([0]);
        match self {
            Credential::Anonymous => {}
            Credential::Basic { password, .. } => h.update(password.expose().as_bytes()),
            Credential::IdentityToken { token, .. } | Credential::RegistryToken(token) => {
                h.update(token.expose().as_bytes())
            }
        }
        h.finalize().into()
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credential::Anonymous)
    }
}

/// Errors reading a docker config or pull secret. Messages name the field or position,
/// never the content.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("{source_name}: not valid JSON ({detail} at line {line}, column {column})")]
    MalformedJson {
        source_name: String,
        detail: &'static str,
        line: usize,
        column: usize,
    },
    #[error("{source_name}: entry for registry {host:?}: `auth` is not valid base64")]
    AuthNotBase64 { source_name: String, host: String },
    #[error(
        "{source_name}: entry for registry {host:?}: `auth` must decode to USERNAME:PASSWORD (no colon found)"
    )]
    AuthNoColon { source_name: String, host: String },
    #[error("{source_name}: entry for registry {host:?}: `auth` is not UTF-8 after decoding")]
    AuthNotUtf8 { source_name: String, host: String },
    #[error("{source_name}: cannot read file: {reason}")]
    Unreadable { source_name: String, reason: String },
}

impl CredentialsError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            CredentialsError::MalformedJson { .. } => "malformed_json",
            CredentialsError::AuthNotBase64 { .. } => "auth_not_base64",
            CredentialsError::AuthNoColon { .. } => "auth_no_colon",
            CredentialsError::AuthNotUtf8 { .. } => "auth_not_utf8",
            CredentialsError::Unreadable { .. } => "unreadable",
        }
    }
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

/// Credentials by registry host, as read from a docker config (`~/.docker/config.json`),
/// a `kubernetes.io/dockerconfigjson` secret or a legacy `kubernetes.io/dockercfg` secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerConfig {
    hosts: BTreeMap<String, Credential>,
}

impl DockerConfig {
    /// Parses `{"auths": {HOST: {...}}}` (`.dockerconfigjson`, `~/.docker/config.json`).
    /// `source_name` says where the bytes came from, for error messages.
    pub fn from_config_json(source_name: &str, bytes: &[u8]) -> Result<Self, CredentialsError> {
        let parsed: DockerConfigJson = parse_json(source_name, bytes)?;
        Self::from_entries(source_name, parsed.auths)
    }

    /// Parses the legacy `{HOST: {...}}` form (`.dockercfg`).
    pub fn from_dockercfg(source_name: &str, bytes: &[u8]) -> Result<Self, CredentialsError> {
        let parsed: BTreeMap<String, AuthEntry> = parse_json(source_name, bytes)?;
        Self::from_entries(source_name, parsed)
    }

    /// Reads a docker config file from disk.
    pub fn from_file(path: &std::path::Path) -> Result<Self, CredentialsError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| CredentialsError::Unreadable {
            source_name: name.clone(),
            reason: e.kind().to_string(),
        })?;
        Self::from_config_json(&name, &bytes)
    }

    fn from_entries(
        source_name: &str,
        entries: BTreeMap<String, AuthEntry>,
    ) -> Result<Self, CredentialsError> {
        let mut hosts = BTreeMap::new();
        for (key, entry) in entries {
            let host = normalize_host_key(&key);
            let credential = entry_credential(source_name, &host, entry)?;
            if !credential.is_anonymous() {
                hosts.insert(host, credential);
            }
        }
        Ok(DockerConfig { hosts })
    }

    /// Merges `other` into `self`; entries already present win (first secret listed wins,
    /// as kubelet does with `imagePullSecrets`).
    pub fn merge(&mut self, other: DockerConfig) {
        for (host, cred) in other.hosts {
            self.hosts.entry(host).or_insert(cred);
        }
    }

    /// The credential for a canonical registry host (`docker.io`, `ghcr.io`, `HOST:PORT`).
    pub fn credential_for(&self, host: &str) -> Credential {
        self.hosts.get(host).cloned().unwrap_or_default()
    }

    /// Hosts that have credentials.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    source_name: &str,
    bytes: &[u8],
) -> Result<T, CredentialsError> {
    serde_json::from_slice(bytes).map_err(|e| CredentialsError::MalformedJson {
        source_name: source_name.to_string(),
        detail: match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof => "unexpected end of input",
        },
        line: e.line(),
        column: e.column(),
    })
}

fn entry_credential(
    source_name: &str,
    host: &str,
    entry: AuthEntry,
) -> Result<Credential, CredentialsError> {
    let (mut username, mut password) = (entry.username, entry.password);
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
        let err = |f: fn(String, String) -> CredentialsError| f(source_name.into(), host.into());
        let decoded = STANDARD.decode(auth.trim()).map_err(|_| {
            err(|source_name, host| CredentialsError::AuthNotBase64 { source_name, host })
        })?;
        let decoded = String::from_utf8(decoded).map_err(|_| {
            err(|source_name, host| CredentialsError::AuthNotUtf8 { source_name, host })
        })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            err(|source_name, host| CredentialsError::AuthNoColon { source_name, host })
        })?;
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    let username = username.unwrap_or_default();
    if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
        return Ok(Credential::IdentityToken {
            username,
            token: Secret::new(token),
        });
    }
    if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Credential::RegistryToken(Secret::new(token)));
    }
    match password {
        Some(password) if !username.is_empty() || !password.is_empty() => Ok(Credential::Basic {
            username,
            password: Secret::new(password),
        }),
        _ => Ok(Credential::Anonymous),
    }
}

/// Docker config keys come as `https://index.docker.io/v1/`, `registry.example.com`,
/// `http://host:5000/v2/` ...; reduce them to the canonical host used by image references.
pub(crate) fn normalize_host_key(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    let key = key.as_str();
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "docker.io" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-Secr3t-0451";

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn secret_is_redacted_everywhere() {
        let c = Credential::basic("alice", CANARY);
        let shown = format!("{c:?} {} {}", c.identity(), Secret::new(CANARY));
        assert!(!shown.contains(CANARY), "{shown}");
        assert!(shown.contains("alice"));
    }

    #[test]
    fn parses_dockerconfigjson_forms() {
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "ghcr.io":{{"username":"bob","password":"{CANARY}"}},
                "http://127.0.0.1:5000/v2/":{{"identitytoken":"{CANARY}","auth":"{}"}},
                "quay.io":{{"registrytoken":"{CANARY}"}},
                "empty.example":{{}}
            }}}}"#,
            b64(&format!("alice:{CANARY}:with:colons")),
            b64("carol:")
        );
        let cfg = DockerConfig::from_config_json("test", json.as_bytes()).unwrap();
        assert_eq!(
            cfg.credential_for("docker.io"),
            Credential::basic("alice", format!("{CANARY}:with:colons"))
        );
        assert_eq!(
            cfg.credential_for("ghcr.io"),
            Credential::basic("bob", CANARY)
        );
        assert_eq!(
            cfg.credential_for("127.0.0.1:5000"),
            Credential::IdentityToken {
                username: "carol".into(),
                token: Secret::new(CANARY)
            }
        );
        assert_eq!(
            cfg.credential_for("quay.io"),
            Credential::RegistryToken(Secret::new(CANARY))
        );
        assert_eq!(cfg.credential_for("empty.example"), Credential::Anonymous);
        assert_eq!(cfg.credential_for("other.example"), Credential::Anonymous);
    }

    #[test]
    fn parses_legacy_dockercfg() {
        let json = format!(r#"{{"registry.example.com":{{"auth":"{}"}}}}"#, b64("u:p"));
        let cfg = DockerConfig::from_dockercfg("legacy", json.as_bytes()).unwrap();
        assert_eq!(
            cfg.credential_for("registry.example.com"),
            Credential::basic("u", "p")
        );
    }

    #[test]
    fn errors_never_quote_the_input() {
        let cases: Vec<(String, &str)> = vec![
            (
                format!(r#"{{"auths":{{"h":{{"auth":"{CANARY}!!"}}}}}}"#),
                "auth_not_base64",
            ),
            (
                format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64(CANARY)),
                "auth_no_colon",
            ),
            (
                format!(r#"{{"auths":{{"h":{{"password":{CANARY}}}}}}}"#),
                "malformed_json",
            ),
            (
                format!(r#"{{"auths":{{"h":{{"password":["{CANARY}"]}}}}}}"#),
                "malformed_json",
            ),
            (format!(r#"{{"auths":"{CANARY}"}}"#), "malformed_json"),
        ];
        for (json, label) in cases {
            let err =
                DockerConfig::from_config_json("secret ns/pull", json.as_bytes()).expect_err(&json);
            assert_eq!(err.metric_label(), label, "{err}");
            let msg = format!("{err} {err:?}");
            assert!(!msg.contains(CANARY), "{msg}");
            assert!(msg.contains("secret ns/pull"), "{msg}");
        }
    }

    #[test]
    fn host_keys_normalise() {
        for (key, want) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("HTTPS://GHCR.IO", "ghcr.io"),
            ("http://localhost:5000/v2/", "localhost:5000"),
            ("quay.io", "quay.io"),
        ] {
            assert_eq!(normalize_host_key(key), want, "{key}");
        }
    }

    #[test]
    fn fingerprint_separates_passwords_but_identity_does_not_show_them() {
        let a = Credential::basic("u", "one");
        let b = Credential::basic("u", "two");
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn merge_keeps_first() {
        let mut a = DockerConfig::from_config_json(
            "a",
            br#"{"auths":{"h":{"username":"first","password":"x"}}}"#,
        )
        .unwrap();
        let b = DockerConfig::from_config_json(
            "b",
            br#"{"auths":{"h":{"username":"second","password":"y"},"g":{"username":"g","password":"z"}}}"#,
        )
        .unwrap();
        a.merge(b);
        assert_eq!(a.credential_for("h"), Credential::basic("first", "x"));
        assert_eq!(a.credential_for("g"), Credential::basic("g", "z"));
    }
}
