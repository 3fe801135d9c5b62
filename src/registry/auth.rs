//! Registry auth: `WWW-Authenticate` challenge parsing and the bearer-token cache.
//!
//! Tokens are cached per (host, scope, credential fingerprint): a credential with the same
//! username but another password never reuses a token, so one tenant's access cannot leak
//! to another through the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::credentials::{Credential, Secret};

/// What a registry asked for in its `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `/v2/` answered 200: no auth needed.
    Anonymous,
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        error: Option<String>,
    },
}

/// Parses one `WWW-Authenticate` value. Unknown schemes give `None`; with several
/// challenges in one header the first known one wins, Bearer before Basic.
pub(crate) fn parse_www_authenticate(header: &str) -> Option<Challenge> {
    let challenges = split_challenges(header);
    let mut basic = None;
    for (scheme, params) in challenges {
        let get = |k: &str| {
            params
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                return Some(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                    error: get("error"),
                });
            }
        } else if scheme.eq_ignore_ascii_case("basic") && basic.is_none() {
            basic = Some(Challenge::Basic {
                realm: get("realm"),
            });
        }
    }
    basic
}

type Params = Vec<(String, String)>;

/// RFC 7235 challenge list: `scheme param=value, param="quoted, \"x\"", scheme2 ...`.
fn split_challenges(header: &str) -> Vec<(String, Params)> {
    let mut out: Vec<(String, Params)> = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i].is_whitespace() || chars[*i] == ',') {
            *i += 1;
        }
    };
    let read_token = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && !chars[*i].is_whitespace() && chars[*i] != '=' && chars[*i] != ','
        {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let word = read_token(&mut i);
        // Look past spaces: `=` means this word was a parameter name, not a scheme.
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        if j < chars.len() && chars[j] == '=' && !out.is_empty() {
            i = j + 1;
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    v.push(chars[i]);
                    i += 1;
                }
                i += 1;
                v
            } else {
                read_token(&mut i)
            };
            if let Some(last) = out.last_mut() {
                last.1.push((word, value));
            }
        } else if !word.is_empty() {
            out.push((word, Vec::new()));
        } else {
            // A stray `=` with no scheme before it: skip it so the loop always advances.
            i += 1;
        }
    }
    out
}

/// The scope string a registry expects for pulling one repository.
pub(crate) fn pull_scope(repository_path: &str) -> String {
    format!("repository:{repository_path}:pull")
}

/// A token endpoint's answer (distribution token spec; both field names are in use).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// The token spec's default lifetime when `expires_in` is absent.
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Renew this long before expiry so a token never lapses mid-request.
const RENEW_MARGIN: Duration = Duration::from_secs(10);

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
struct TokenKey {
    host: String,
    scope: String,
    fingerprint: [u8; 32],
}

/// Bearer tokens by (host, scope, credential fingerprint), until shortly before expiry.
#[derive(Default, Debug)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, (Secret, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, host: &str, scope: &str, credential: &Credential) -> Option<Secret> {
        let key = TokenKey {
            host: host.to_string(),
            scope: scope.to_string(),
            fingerprint: credential.fingerprint(),
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.get(&key) {
            Some((token, expires)) if Instant::now() < *expires => Some(token.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn put(
        &self,
        host: &str,
        scope: &str,
        credential: &Credential,
        token: Secret,
        lifetime: Duration,
    ) {
        let usable = lifetime.saturating_sub(RENEW_MARGIN).max(lifetime / 2);
        let key = TokenKey {
            host: host.to_string(),
            scope: scope.to_string(),
            fingerprint: credential.fingerprint(),
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert(key, (token, Instant::now() + usable));
    }

    /// Forgets a token the registry refused (revoked, or scope changed).
    pub fn invalidate(&self, host: &str, scope: &str, credential: &Credential) {
        let key = TokenKey {
            host: host.to_string(),
            scope: scope.to_string(),
            fingerprint: credential.fingerprint(),
        };
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    pub fn len(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
                error: None,
            })
        );
    }

    #[test]
    fn parses_variants() {
        assert_eq!(
            parse_www_authenticate(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        assert_eq!(
            parse_www_authenticate("basic"),
            Some(Challenge::Basic { realm: None })
        );
        // Unquoted values, odd spacing, escaped quote and comma inside a quoted value,
        // error parameter, lower-case scheme.
        assert_eq!(
            parse_www_authenticate(
                r#"bearer  realm = https://t.example/token , service="a \"b\", c" ,error="insufficient_scope""#
            ),
            Some(Challenge::Bearer {
                realm: "https://t.example/token".into(),
                service: Some(r#"a "b", c"#.into()),
                scope: None,
                error: Some("insufficient_scope".into()),
            })
        );
        // Two challenges: Bearer preferred even when listed second.
        assert!(matches!(
            parse_www_authenticate(r#"Basic realm="x", Bearer realm="https://t/token""#),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(parse_www_authenticate("Negotiate abc"), None);
        assert_eq!(parse_www_authenticate(""), None);
        assert_eq!(parse_www_authenticate("Bearer service=x"), None, "no realm");
        assert_eq!(parse_www_authenticate("=,=\"\\"), None);
    }

    #[test]
    fn token_cache_is_per_credential() {
        let cache = TokenCache::default();
        let a = Credential::basic("u", "right");
        let b = Credential::basic("u", "wrong");
        cache.put("h", "s", &a, Secret::new("t"), Duration::from_secs(300));
        assert!(cache.get("h", "s", &a).is_some());
        assert!(cache.get("h", "s", &b).is_none());
        assert!(cache.get("h", "other", &a).is_none());
        assert!(cache.get("other", "s", &a).is_none());
        cache.invalidate("h", "s", &a);
        assert!(cache.get("h", "s", &a).is_none());
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        let a = Credential::Anonymous;
        cache.put("h", "s", &a, Secret::new("t"), Duration::ZERO);
        assert!(cache.get("h", "s", &a).is_none());
    }

    proptest::proptest! {
        #[test]
        fn challenge_parsing_never_panics(s in "\\PC{0,200}") {
            let _ = parse_www_authenticate(&s);
        }
    }
}
