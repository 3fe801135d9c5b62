//! The auth flow: the `/v2/` challenge, basic credentials, and bearer tokens from the
//! challenge's realm, cached per host, scope and credential (`auth` holds the types).

use std::time::Duration;

use http::{Method, StatusCode, header};
use url::Url;

use super::auth::{self, Challenge, TokenResponse};
use super::transport::{Answer, ERROR_BODY_CAP, foreign_challenge, retry_after, url_host};
use super::{Error, RepositoryClient, RequestKind, Result, lock};
use crate::credentials::{Credential, Secret};

impl RepositoryClient {
    /// Asks `/v2/` which auth the registry wants, and remembers the answer per endpoint.
    pub async fn ping(&self) -> Result<Challenge> {
        let url = self.url("/v2/");
        let answer = self
            .send_once(
                RequestKind::Ping,
                Method::GET,
                url.clone(),
                None,
                None,
                ERROR_BODY_CAP,
            )
            .await?;
        let challenge = match answer.status {
            s if s.is_success() => Challenge::Anonymous,
            StatusCode::UNAUTHORIZED if answer.url.origin() != url.origin() => {
                return Err(foreign_challenge(&url, &answer.url));
            }
            StatusCode::UNAUTHORIZED => answer
                .headers
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_www_authenticate)
                .ok_or_else(|| Error::NotARegistry {
                    url: url.to_string(),
                    detail: "401 without a usable WWW-Authenticate challenge".to_string(),
                })?,
            StatusCode::TOO_MANY_REQUESTS => {
                let pause = self
                    .inner
                    .rate_limited(&self.host, retry_after(&answer.headers));
                return Err(Error::RateLimited {
                    host: self.host.clone(),
                    retry_after: Some(pause),
                });
            }
            s if s.is_server_error() => {
                return Err(Error::Server {
                    host: self.host.clone(),
                    url: url.to_string(),
                    status: s,
                });
            }
            s => {
                return Err(Error::NotARegistry {
                    url: url.to_string(),
                    detail: format!("answered {s}"),
                });
            }
        };
        lock(&self.inner.challenges).insert(self.challenge_key(), challenge.clone());
        Ok(challenge)
    }

    /// The `Authorization` value for this repository, per the endpoint's challenge.
    pub(super) async fn authorization(&self) -> Result<Option<Secret>> {
        if let Credential::RegistryToken(token) = &self.credential {
            return Ok(Some(Secret::new(format!("Bearer {}", token.expose()))));
        }
        let key = self.challenge_key();
        let challenge = match self.inner.known_challenge(&key) {
            Some(c) => c,
            None => {
                let _flight = self.inner.flight(format!("ping {key}")).await;
                match self.inner.known_challenge(&key) {
                    Some(c) => c,
                    None => self.ping().await?,
                }
            }
        };
        match challenge {
            Challenge::Anonymous => Ok(None),
            Challenge::Basic { .. } => Ok(basic_header(&self.credential)),
            Challenge::Bearer { realm, service, .. } => {
                let token = self.bearer_token(&realm, service.as_deref()).await?;
                Ok(Some(Secret::new(format!("Bearer {}", token.expose()))))
            }
        }
    }

    pub(super) async fn bearer_token(&self, realm: &str, service: Option<&str>) -> Result<Secret> {
        let key_host = self.challenge_key();
        let cached = || {
            self.inner
                .tokens
                .get(&key_host, &self.scope, &self.credential)
        };
        if let Some(t) = cached() {
            return Ok(t);
        }
        let _flight = self
            .inner
            .flight(format!(
                "token {key_host} {} {}",
                self.scope,
                hex::encode(self.credential.fingerprint())
            ))
            .await;
        if let Some(t) = cached() {
            return Ok(t);
        }
        let token_error = |detail: String| Error::TokenEndpoint {
            host: self.host.clone(),
            realm: realm.to_string(),
            detail,
        };
        let mut url = self.realm_url(realm, !self.credential.is_anonymous())?;
        let answer = match &self.credential {
            Credential::IdentityToken { token, .. } => {
                // OAuth2 refresh-token grant, as docker does with `identitytoken`.
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.expose()),
                    ("client_id", "regcache"),
                    ("scope", &self.scope),
                ];
                form.extend(service.map(|s| ("service", s)));
                self.post_form(&url, &form).await?
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &self.scope);
                }
                self.send_once(
                    RequestKind::Token,
                    Method::GET,
                    url.clone(),
                    None,
                    basic_header(&self.credential).as_ref(),
                    self.inner.options.max_token_bytes,
                )
                .await?
            }
        };
        self.check_token_answer(&answer, &url, &self.credential.identity(), token_error)?;
        let parsed: TokenResponse = serde_json::from_slice(&answer.body).map_err(|e| {
            token_error(format!(
                "response is not a token document ({})",
                e.classify_name()
            ))
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| token_error("response has no token".to_string()))?;
        let token = Secret::new(token);
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(auth::DEFAULT_TOKEN_LIFETIME);
        self.inner.tokens.put(
            &key_host,
            &self.scope,
            &self.credential,
            token.clone(),
            lifetime,
        );
        Ok(token)
    }

    /// Exchanges an Entra ID access token for the registry's refresh token (Azure Container
    /// Registry's `POST /oauth2/exchange`, on the host its challenge's realm names, as
    /// `az acr login` finds it). The refresh token is the password of ACR's
    /// `00000000-0000-0000-0000-000000000000` user.
    pub async fn exchange_entra_token(
        &self,
        tenant: Option<&str>,
        entra_token: &Secret,
    ) -> Result<Secret> {
        let challenge = match self.inner.known_challenge(&self.challenge_key()) {
            Some(c) => c,
            None => self.ping().await?,
        };
        let Challenge::Bearer { realm, service, .. } = challenge else {
            return Err(Error::TokenEndpoint {
                host: self.host.clone(),
                realm: "(none)".to_string(),
                detail: "the registry asks for no bearer token, so it has no token exchange"
                    .to_string(),
            });
        };
        let token_error = |detail: String| Error::TokenEndpoint {
            host: self.host.clone(),
            realm: realm.clone(),
            detail: format!("token exchange: {detail}"),
        };
        let mut url = self.realm_url(&realm, true)?;
        url.set_path("/oauth2/exchange");
        url.set_query(None);
        let service = service.unwrap_or_else(|| self.host.clone());
        let mut form = vec![
            ("grant_type", "access_token"),
            ("service", service.as_str()),
            ("access_token", entra_token.expose()),
        ];
        form.extend(tenant.map(|t| ("tenant", t)));
        let answer = self.post_form(&url, &form).await?;
        self.check_token_answer(&answer, &url, "an Entra ID token", token_error)?;
        #[derive(serde::Deserialize)]
        struct Exchanged {
            refresh_token: Option<String>,
        }
        let parsed: Exchanged = serde_json::from_slice(&answer.body).map_err(|e| {
            token_error(format!(
                "response is not a token document ({})",
                e.classify_name()
            ))
        })?;
        parsed
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| token_error("response has no refresh_token".to_string()))
    }

    /// The realm as a URL, if secrets may travel to it. The realm is the registry's choice
    /// and may be another host (Docker Hub's is), but secrets travel to it in the clear
    /// only when the registry itself is plain HTTP.
    fn realm_url(&self, realm: &str, sends_secret: bool) -> Result<Url> {
        let url = Url::parse(realm).map_err(|e| Error::TokenEndpoint {
            host: self.host.clone(),
            realm: realm.to_string(),
            detail: format!("invalid realm URL ({e})"),
        })?;
        match url.scheme() {
            "https" => Ok(url),
            "http" if self.base.scheme() == "http" || !sends_secret => Ok(url),
            "http" => Err(Error::InsecureRealm {
                host: self.host.clone(),
                realm: realm.to_string(),
            }),
            other => Err(Error::TokenEndpoint {
                host: self.host.clone(),
                realm: realm.to_string(),
                detail: format!("realm scheme {other} is not http(s)"),
            }),
        }
    }

    /// `POST`s a form to a token endpoint, counted and limited as a token request.
    async fn post_form(&self, url: &Url, form: &[(&str, &str)]) -> Result<Answer> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let token_host = url_host(url);
        let limiter = self.inner.limiter(&token_host);
        let _slot = limiter.acquire().await;
        self.record(RequestKind::Token);
        let started = std::time::Instant::now();
        let failed = |e: Error| {
            self.inner.observe(
                &token_host,
                RequestKind::Token,
                e.metric_label().into(),
                started,
            );
            e
        };
        let resp = self
            .http
            .post(url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| failed(self.classify(url, &e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = self
            .read_body(
                resp,
                self.inner.options.max_token_bytes,
                url,
                RequestKind::Token,
            )
            .await
            .map_err(failed)?;
        self.inner.observe(
            &token_host,
            RequestKind::Token,
            status.as_str().to_string().into(),
            started,
        );
        Ok(Answer {
            status,
            headers,
            body,
            url: url.clone(),
        })
    }

    /// The error a token endpoint's non-success answer means, if it is one.
    fn check_token_answer(
        &self,
        answer: &Answer,
        url: &Url,
        identity: &str,
        token_error: impl Fn(String) -> Error,
    ) -> Result<()> {
        match answer.status {
            s if s.is_success() => Ok(()),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(Error::Unauthorized {
                host: self.host.clone(),
                identity: identity.to_string(),
                status: s,
                detail: Some("token endpoint refused them".to_string()),
            }),
            StatusCode::TOO_MANY_REQUESTS => {
                let pause = self
                    .inner
                    .rate_limited(&url_host(url), retry_after(&answer.headers));
                Err(Error::RateLimited {
                    host: url_host(url),
                    retry_after: Some(pause),
                })
            }
            s if s.is_server_error() => Err(Error::Server {
                host: url_host(url),
                url: url.to_string(),
                status: s,
            }),
            s => Err(token_error(format!("answered {s}"))),
        }
    }
}

#[async_trait::async_trait]
impl crate::cloud::RegistryExchange for RepositoryClient {
    async fn exchange_entra_token(
        &self,
        tenant: Option<&str>,
        entra_token: &Secret,
    ) -> std::result::Result<Secret, String> {
        RepositoryClient::exchange_entra_token(self, tenant, entra_token)
            .await
            .map_err(|e| e.to_string())
    }
}

pub(super) fn basic_header(credential: &Credential) -> Option<Secret> {
    use base64::Engine as _;
    match credential {
        Credential::Basic { username, password } => Some(Secret::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", password.expose()))
        ))),
        _ => None,
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}
