//! Transport: TLS, sending one request within its timeout and body cap, following
//! redirects without handing credentials to another origin, and the retry policy.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;
use url::Url;

use super::auth;
use super::manifest::ParseError;
use super::{Error, RepositoryClient, RequestKind, Result, lock};
use crate::credentials::{Credential, Secret};

/// Checks a PEM CA bundle the way a client would load it, for validating user input early.
pub(crate) fn check_ca_bundle(pem: &[u8]) -> std::result::Result<(), String> {
    tls_config(Some(pem)).map(|_| ())
}

/// rustls with ring, the public web roots plus any extra CA; one crypto provider for the
/// whole process, chosen here rather than by whichever crate initialises first.
pub(super) fn tls_config(
    ca_pem: Option<&[u8]>,
) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
            roots
                .add(cert)
                .map_err(|e| format!("certificate rejected ({e})"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate found in the CA bundle".to_string());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A response with its body read (within the cap).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// Where the answer came from, after redirects.
    pub(super) url: Url,
}

/// Redirects followed for one request; registries use one (blob storage), rarely two.
pub(super) const MAX_REDIRECTS: usize = 5;

/// Body cap for error answers: enough for a distribution error document.
pub(super) const ERROR_BODY_CAP: usize = 64 << 10;

#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

pub(super) fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    serde_json::from_slice::<ErrorDocument>(body)
        .map(|d| d.errors.into_iter().map(|e| (e.code, e.message)).collect())
        .unwrap_or_default()
}

/// `Retry-After` as seconds or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (when.with_timezone(&Utc) - Utc::now())
        .num_milliseconds()
        .max(0);
    Some(Duration::from_millis(secs as u64))
}

impl RepositoryClient {
    /// Sends one request (after the host limiter admits it) and reads the body within `cap`.
    ///
    /// Redirects are followed here, not by the HTTP library, so that `authorization` goes
    /// only to the origin (scheme, host, port) of `url`: a registry that sends a blob to
    /// object storage, or a request anywhere else, never hands its credentials over.
    pub(super) async fn send_once(
        &self,
        kind: RequestKind,
        method: Method,
        url: Url,
        accept: Option<&str>,
        authorization: Option<&Secret>,
        cap: usize,
    ) -> Result<Answer> {
        let limiter_host = url_host(&url);
        let limiter = self.inner.limiter(&limiter_host);
        // A host closed by a long Retry-After fails fast instead of holding the caller.
        if let Some(pause) = limiter
            .closed_for()
            .filter(|p| *p > self.inner.options.max_rate_limit_wait)
        {
            return Err(Error::RateLimited {
                host: limiter_host,
                retry_after: Some(pause),
            });
        }
        let _slot = limiter.acquire().await;
        self.inner.metrics.rate(&limiter_host, limiter.rate());
        self.record(kind);
        let started = std::time::Instant::now();
        let failed = |e: Error| {
            self.inner
                .observe(&limiter_host, kind, e.metric_label().into(), started);
            e
        };
        let origin = url.origin();
        let mut hop = url;
        let mut redirects = 0;
        loop {
            let mut req = self.http.request(method.clone(), hop.clone());
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(a) = authorization.filter(|_| hop.origin() == origin) {
                req = req.header(header::AUTHORIZATION, a.expose());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| failed(self.classify(&hop, &e)))?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(location) = resp.headers().get(header::LOCATION)
            {
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|l| hop.join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                let redirect_error = |detail: String| Error::Invalid {
                    url: hop.to_string(),
                    what: what_of(kind),
                    source: ParseError::Malformed {
                        kind: "redirect",
                        detail,
                    },
                };
                let Some(next) = next else {
                    return Err(failed(redirect_error(
                        "Location is not an http(s) URL".to_string(),
                    )));
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(failed(redirect_error(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    ))));
                }
                hop = next;
                continue;
            }
            let headers = resp.headers().clone();
            let cap = if status.is_success() {
                cap
            } else {
                ERROR_BODY_CAP
            };
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                self.read_body(resp, cap, &hop, kind)
                    .await
                    .map_err(failed)?
            };
            self.inner.observe(
                &limiter_host,
                kind,
                status.as_str().to_string().into(),
                started,
            );
            return Ok(Answer {
                status,
                headers,
                body,
                url: hop,
            });
        }
    }

    pub(super) async fn read_body(
        &self,
        mut resp: reqwest::Response,
        cap: usize,
        url: &Url,
        kind: RequestKind,
    ) -> Result<Bytes> {
        let too_large = || Error::TooLarge {
            url: url.to_string(),
            what: what_of(kind),
            limit: cap,
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(url, &e))? {
            if buf.len() + chunk.len() > cap {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    pub(super) fn classify(&self, url: &Url, e: &reqwest::Error) -> Error {
        let detail = error_chain(e);
        if e.is_timeout() {
            return Error::Timeout {
                url: url.to_string(),
                limit: self.inner.options.request_timeout,
            };
        }
        let tls = is_tls_error(e);
        if tls {
            return Error::Tls {
                host: url_host(url),
                detail,
            };
        }
        if e.is_connect() {
            return Error::Connect {
                host: url_host(url),
                detail,
            };
        }
        Error::Transport {
            host: url_host(url),
            url: url.to_string(),
            detail,
        }
    }

    /// One logical request: auth, the retry policy, and status handling common to all
    /// kinds. Returns the successful answer or the non-success status for the caller
    /// to interpret (404 means different things for tags, manifests and blobs).
    pub(super) async fn request(
        &self,
        kind: RequestKind,
        method: Method,
        url: Url,
        accept: Option<&str>,
        cap: usize,
    ) -> Result<Answer> {
        let options = &self.inner.options;
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            let retry = |attempt: &mut u32| {
                *attempt += 1;
                *attempt <= options.retries
            };
            // A failed ping or token request is retried like the request itself.
            let result = match self.authorization().await {
                Ok(authorization) => {
                    self.send_once(
                        kind,
                        method.clone(),
                        url.clone(),
                        accept,
                        authorization.as_ref(),
                        cap,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let answer = match result {
                Ok(a) => a,
                Err(Error::RateLimited {
                    retry_after: Some(pause),
                    ..
                }) if pause <= options.max_rate_limit_wait && retry(&mut attempt) => {
                    // The host's limiter stays closed for the pause; acquire() waits it out.
                    continue;
                }
                Err(e)
                    if e.is_transient()
                        && !matches!(e, Error::RateLimited { .. })
                        && retry(&mut attempt) =>
                {
                    tracing::debug!(url = %url, error = %e, attempt, "retrying registry request");
                    tokio::time::sleep(backoff(options.retry_backoff, attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match answer.status {
                // Another origin's challenge is not this registry's: learning it would send
                // this registry's credentials to whatever realm it names.
                StatusCode::UNAUTHORIZED if answer.url.origin() != url.origin() => {
                    return Err(foreign_challenge(&url, &answer.url));
                }
                StatusCode::UNAUTHORIZED => {
                    let challenge = answer
                        .headers
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(auth::parse_www_authenticate);
                    // A token may have been revoked or expired early, or the endpoint
                    // changed its scheme: learn the challenge again, then retry once.
                    if !reauthenticated && !matches!(self.credential, Credential::RegistryToken(_))
                    {
                        reauthenticated = true;
                        self.inner.tokens.invalidate(
                            &self.challenge_key(),
                            &self.scope,
                            &self.credential,
                        );
                        if let Some(c) = challenge {
                            lock(&self.inner.challenges).insert(self.challenge_key(), c);
                        } else {
                            lock(&self.inner.challenges).remove(&self.challenge_key());
                        }
                        continue;
                    }
                    let codes = error_codes(&answer.body);
                    return Err(Error::Unauthorized {
                        host: self.host.clone(),
                        identity: self.credential.identity(),
                        status: answer.status,
                        detail: codes.first().map(|(c, _)| c.clone()),
                    });
                }
                StatusCode::FORBIDDEN => {
                    let codes = error_codes(&answer.body);
                    return Err(Error::Forbidden {
                        host: self.host.clone(),
                        repository: self.repository.canonical(),
                        identity: self.credential.identity(),
                        status: answer.status,
                        detail: codes.first().map(|(c, _)| c.clone()),
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let pause = self
                        .inner
                        .rate_limited(&self.host, retry_after(&answer.headers));
                    tracing::warn!(host = %self.host, pause = ?pause, "registry rate limited us");
                    if pause <= options.max_rate_limit_wait && retry(&mut attempt) {
                        // The limiter is closed until the pause ends; acquire() waits.
                        continue;
                    }
                    return Err(Error::RateLimited {
                        host: self.host.clone(),
                        retry_after: Some(pause),
                    });
                }
                s if s.is_server_error() => {
                    if retry(&mut attempt) {
                        tokio::time::sleep(backoff(options.retry_backoff, attempt)).await;
                        continue;
                    }
                    return Err(Error::Server {
                        host: self.host.clone(),
                        url: url.to_string(),
                        status: s,
                    });
                }
                _ => {
                    if matches!(kind, RequestKind::ManifestHead | RequestKind::ManifestGet) {
                        self.note_quota(&answer.headers);
                    }
                    return Ok(answer);
                }
            }
        }
    }
}

/// The source chain of an error, joined: reqwest's top-level message alone
/// ("error sending request") says nothing about what went wrong.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Whether a rustls error is anywhere in the chain. rustls errors arrive wrapped in
/// io::Errors (sometimes twice), whose `source()` skips the wrapped error, so each
/// io::Error is opened explicitly.
pub(super) fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    let inner = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref());
    if inner.is_some_and(|inner| is_tls_error(inner)) {
        return true;
    }
    e.source().is_some_and(is_tls_error)
}

/// A request to `asked` was redirected to `answered`, another origin, which asked for
/// credentials.
pub(super) fn foreign_challenge(asked: &Url, answered: &Url) -> Error {
    Error::CrossOrigin {
        what: "redirect",
        from: asked.origin().ascii_serialization(),
        to: answered.origin().ascii_serialization(),
        reason: "that origin asked for credentials, and regcache sends a registry's \
                 credentials only to the registry's own origin",
    }
}

pub(super) fn url_host(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

pub(super) fn what_of(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Ping => "ping response",
        RequestKind::Token => "token response",
        RequestKind::TagList => "tag list page",
        RequestKind::ManifestHead | RequestKind::ManifestGet => "manifest",
        RequestKind::BlobGet => "config blob",
    }
}

pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let future = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(header::RETRY_AFTER, future.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), b * 2);
        assert_eq!(backoff(b, 3), b * 4);
    }

    #[test]
    fn error_codes_parse() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_codes(body)[0].0, "MANIFEST_UNKNOWN");
        assert!(error_codes(b"not json").is_empty());
    }

    #[test]
    fn bad_ca_is_a_clear_error() {
        assert!(
            tls_config(Some(b"not a pem"))
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(tls_config(None).is_ok());
    }
}
