//! regcache's own registry tokens, as registries issue them (the Docker token protocol):
//! a client challenged on `/v2/` asks the token endpoint, with Basic credentials whose
//! password is a Kubernetes token (or with that token as Bearer), for `repository:NAME:pull`
//! scopes. Each name is reviewed as the JSON API reviews it (TokenReview, then a
//! SubjectAccessReview for `get` on the covering watch) and the token grants the watches
//! that passed, nothing else: a token issued for repository A cannot read B.
//!
//! Tokens are JWTs signed with HS256 by a key every replica shares (a file from the Secret
//! the chart creates), so any replica accepts a token another issued. They live
//! [`TOKEN_TTL`]; clients ask again when a request answers 401.

use std::collections::BTreeSet;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How long an issued token is valid.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(300);
/// The `iss` and `aud` of regcache's tokens, and the challenge's `service`.
pub(crate) const SERVICE: &str = "regcache";
/// Shortest signing key accepted: HS256 wants 256 bits.
const MIN_KEY_BYTES: usize = 32;

/// What a token grants: the ids (`namespace/name`) of the watches its holder may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    /// The Kubernetes user it was issued to (for logs only).
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    watches: BTreeSet<String>,
}

/// Signs and checks registry tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

/// Why a presented token was refused. Never says more than that: no claim, no key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("the regcache token has expired; ask the token endpoint for a new one")]
    Expired,
    #[error("the regcache token is not valid (not signed by this regcache, or malformed)")]
    Invalid,
}

impl TokenKeys {
    /// From a shared secret (the chart's Secret): at least 32 bytes, surrounding white
    /// space ignored.
    pub fn from_secret(secret: &[u8]) -> Result<TokenKeys, String> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the registry token key has {} bytes; it needs at least {MIN_KEY_BYTES}",
                secret.len()
            ));
        }
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// A key of this process only: tokens it issues are refused by other replicas.
    pub fn random() -> TokenKeys {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        TokenKeys::from_secret(hex::encode(bytes).as_bytes()).expect("64 hex digits")
    }

    /// A token for `user` granting `watches`, valid for [`TOKEN_TTL`] from `now` (Unix s).
    pub(crate) fn issue(&self, user: &str, watches: BTreeSet<String>, now: u64) -> String {
        let claims = Claims {
            iss: SERVICE.to_string(),
            aud: SERVICE.to_string(),
            sub: user.to_string(),
            iat: now,
            nbf: now,
            exp: now + TOKEN_TTL.as_secs(),
            watches,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The watches a token grants, if this regcache signed it and it has not expired.
    pub(crate) fn verify(&self, token: &str) -> Result<BTreeSet<String>, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[SERVICE]);
        validation.set_audience(&[SERVICE]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(data.claims.watches),
            Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Whether `token` claims to be one of regcache's (an HS256 JWT): such a token is checked
/// here and never sent to the Kubernetes API, whose tokens are signed otherwise (RS256,
/// ES256).
pub(crate) fn is_regcache_token(token: &str) -> bool {
    jsonwebtoken::decode_header(token).is_ok_and(|h| h.alg == Algorithm::HS256)
}

/// The repository names of `repository:NAME:ACTIONS` scopes that ask for `pull` (space
/// separated within one `scope` parameter, or several parameters). Other types and actions
/// are not granted: the registry API is read-only.
pub(crate) fn pull_scopes(query: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "scope" {
            continue;
        }
        for scope in value.split_whitespace() {
            let Some(rest) = scope.strip_prefix("repository:") else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            if actions.split(',').any(|a| a == "pull" || a == "*") && !name.is_empty() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::from_secret(&[7u8; 40]).unwrap()
    }

    #[test]
    fn a_token_grants_what_it_was_issued_for_until_it_expires() {
        let k = keys();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let granted: BTreeSet<String> = ["ns/a".to_string()].into();
        let token = k.issue("system:serviceaccount:ns:reader", granted.clone(), now);
        assert!(is_regcache_token(&token));
        assert_eq!(k.verify(&token), Ok(granted.clone()));
        // Another replica with the same key accepts it; one with another key does not.
        assert_eq!(keys().verify(&token), Ok(granted));
        let other = TokenKeys::from_secret(&[8u8; 40]).unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
        let old = k.issue("u", BTreeSet::new(), now - TOKEN_TTL.as_secs() - 60);
        assert_eq!(k.verify(&old), Err(TokenError::Expired));
        // A tampered grant breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(engine.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = engine.encode(claims.replace("ns/a", "ns/b"));
        assert_eq!(k.verify(&parts.join(".")), Err(TokenError::Invalid));
        assert!(!is_regcache_token("not-a-jwt"));
    }

    #[test]
    fn short_keys_are_refused() {
        let e = TokenKeys::from_secret(b"  short  ").unwrap_err();
        assert!(e.contains("5 bytes"), "{e}");
        assert!(TokenKeys::random().verify("x").is_err());
    }

    #[test]
    fn pull_scopes_are_read_from_every_scope_parameter() {
        assert_eq!(
            pull_scopes(Some(
                "service=regcache&scope=repository:payments/api:pull&scope=repository:ghcr.io/o/a:push,pull%20repository:x/y:push&scope=registry:catalog:*"
            )),
            vec!["ghcr.io/o/a".to_string(), "payments/api".to_string()]
        );
        assert!(pull_scopes(None).is_empty());
    }
}
