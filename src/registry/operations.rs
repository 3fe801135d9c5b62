//! Operations: tag lists (with `Link` pagination), manifest HEAD and GET, config blobs.

use std::collections::HashSet;

use http::{Method, StatusCode, header};
use serde::Deserialize;
use url::Url;

use super::manifest::{self, ImageConfig, ParseError};
use super::transport::error_codes;
use super::{
    DIGEST_HEADER, Error, FetchedManifest, ManifestHead, RepositoryClient, RequestKind, Result,
    lock,
};
use crate::image::{Digest, Reference};

/// The `rel="next"` target of a `Link` header.
pub fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| target.to_string())
    })
}

impl RepositoryClient {
    /// All tags, following `Link` pagination; order as the registry gives it, without
    /// duplicates.
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let options = &self.inner.options;
        let mut url = self.url(&format!("/v2/{}/tags/list", self.repository.path()));
        url.query_pairs_mut()
            .append_pair("n", &options.tag_page_size.to_string());
        let mut tags = Vec::new();
        let mut seen_tags = HashSet::new();
        let mut seen_urls = HashSet::new();
        for _ in 0..options.max_tag_pages {
            if !seen_urls.insert(url.to_string()) {
                return Err(Error::Invalid {
                    url: url.to_string(),
                    what: "tag list",
                    source: ParseError::Malformed {
                        kind: "tag list",
                        detail: "Link header loops back to a page already read".to_string(),
                    },
                });
            }
            let answer = self
                .request(
                    RequestKind::TagList,
                    Method::GET,
                    url.clone(),
                    Some("application/json"),
                    options.max_tag_page_bytes,
                )
                .await?;
            match answer.status {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => {
                    return Err(Error::NameUnknown {
                        host: self.host.clone(),
                        repository: self.repository.canonical(),
                    });
                }
                s => {
                    return Err(Error::UnexpectedStatus {
                        url: url.to_string(),
                        status: s,
                    });
                }
            }
            let page: TagList =
                serde_json::from_slice(&answer.body).map_err(|e| Error::Invalid {
                    url: url.to_string(),
                    what: "tag list",
                    source: ParseError::Malformed {
                        kind: "tag list",
                        detail: e.to_string(),
                    },
                })?;
            for tag in page.tags.unwrap_or_default() {
                if seen_tags.insert(tag.clone()) {
                    tags.push(tag);
                }
            }
            let next = answer
                .headers
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            match next {
                Some(next) => {
                    let next = url.join(&next).map_err(|e| Error::Invalid {
                        url: url.to_string(),
                        what: "tag list",
                        source: ParseError::Malformed {
                            kind: "Link header",
                            detail: e.to_string(),
                        },
                    })?;
                    // The next page must come from the same registry: another origin's
                    // tags are not this repository's, and the page request carries this
                    // registry's credentials.
                    if next.origin() != self.base.origin() {
                        return Err(Error::CrossOrigin {
                            what: "tag list Link",
                            from: self.base.origin().ascii_serialization(),
                            to: next.origin().ascii_serialization(),
                            reason: "regcache follows tag pages only within the registry's own origin",
                        });
                    }
                    url = next;
                }
                None => return Ok(tags),
            }
        }
        Err(Error::Invalid {
            url: url.to_string(),
            what: "tag list",
            source: ParseError::Malformed {
                kind: "tag list",
                detail: format!("more than {} pages", options.max_tag_pages),
            },
        })
    }

    pub(super) fn manifest_url(&self, reference: &Reference) -> Url {
        self.url(&format!(
            "/v2/{}/manifests/{reference}",
            self.repository.path()
        ))
    }

    pub(super) fn manifest_unknown(&self, reference: &Reference, body: &[u8]) -> Error {
        if error_codes(body).iter().any(|(c, _)| c == "NAME_UNKNOWN") {
            return Error::NameUnknown {
                host: self.host.clone(),
                repository: self.repository.canonical(),
            };
        }
        Error::ManifestUnknown {
            repository: self.repository.canonical(),
            reference: reference.to_string(),
        }
    }

    /// What a tag or digest points at, by HEAD (free on Docker Hub). Falls back to a GET
    /// when the registry sends no `Docker-Content-Digest`.
    pub async fn head_manifest(&self, reference: &Reference) -> Result<ManifestHead> {
        let url = self.manifest_url(reference);
        let answer = self
            .request(
                RequestKind::ManifestHead,
                Method::HEAD,
                url.clone(),
                Some(manifest::ACCEPT_MANIFESTS),
                0,
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(self.manifest_unknown(reference, &[])),
            s => {
                return Err(Error::UnexpectedStatus {
                    url: url.to_string(),
                    status: s,
                });
            }
        }
        let digest = answer
            .headers
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        match digest {
            Some(digest) => Ok(ManifestHead {
                digest,
                media_type: answer
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                size: answer
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                fetched: None,
            }),
            None => self.get_as_head(reference).await,
        }
    }

    /// What a tag or digest points at: by HEAD, or with `by_get` by a GET whose manifest
    /// comes along in [`ManifestHead::fetched`].
    pub async fn resolve_manifest(
        &self,
        reference: &Reference,
        by_get: bool,
    ) -> Result<ManifestHead> {
        if by_get {
            self.get_as_head(reference).await
        } else {
            self.head_manifest(reference).await
        }
    }

    async fn get_as_head(&self, reference: &Reference) -> Result<ManifestHead> {
        let fetched = self.get_manifest(reference).await?;
        Ok(ManifestHead {
            digest: fetched.digest.clone(),
            media_type: Some(fetched.kind.media_type().to_string()),
            size: Some(fetched.bytes.len() as u64),
            fetched: Some(fetched),
        })
    }

    /// Fetches a manifest and checks it against the digest asked for, or else the one the
    /// registry advertised.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        self.check_pull_quota()?;
        let options = &self.inner.options;
        let url = self.manifest_url(reference);
        let answer = self
            .request(
                RequestKind::ManifestGet,
                Method::GET,
                url.clone(),
                Some(manifest::ACCEPT_MANIFESTS),
                options.max_manifest_bytes,
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(self.manifest_unknown(reference, &answer.body)),
            s => {
                return Err(Error::UnexpectedStatus {
                    url: url.to_string(),
                    status: s,
                });
            }
        }
        let invalid = |source| Error::Invalid {
            url: url.to_string(),
            what: "manifest",
            source,
        };
        let content_type = answer
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let kind = manifest::detect_kind(content_type, &answer.body).map_err(invalid)?;
        let payload = manifest::digest_payload(kind, &answer.body).map_err(invalid)?;
        let advertised = answer
            .headers
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => advertised,
        };
        let digest = match expected {
            Some(expected) if expected.verify(&payload) => expected,
            Some(expected) => {
                return Err(Error::DigestMismatch {
                    url: url.to_string(),
                    what: "manifest",
                    expected: expected.to_string(),
                    actual: Digest::sha256_of(&payload).to_string(),
                });
            }
            None => Digest::sha256_of(&payload),
        };
        drop(payload);
        let manifest = manifest::parse_manifest(kind, &answer.body).map_err(invalid)?;
        Ok(FetchedManifest {
            digest,
            kind,
            bytes: answer.body,
            manifest,
        })
    }

    /// Fetches and parses a config blob, verified against its digest.
    pub async fn get_config(&self, digest: &Digest) -> Result<ImageConfig> {
        if let Some(c) = self
            .pass
            .as_ref()
            .and_then(|p| lock(&p.configs).get(digest).cloned())
        {
            return Ok(c);
        }
        let config = self.fetch_config(digest).await?;
        if let Some(p) = &self.pass {
            lock(&p.configs).insert(digest.clone(), config.clone());
        }
        Ok(config)
    }

    pub(super) async fn fetch_config(&self, digest: &Digest) -> Result<ImageConfig> {
        let url = self.url(&format!("/v2/{}/blobs/{digest}", self.repository.path()));
        let answer = self
            .request(
                RequestKind::BlobGet,
                Method::GET,
                url.clone(),
                None,
                self.inner.options.max_config_bytes,
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::BlobUnknown {
                    repository: self.repository.canonical(),
                    digest: digest.to_string(),
                });
            }
            s => {
                return Err(Error::UnexpectedStatus {
                    url: url.to_string(),
                    status: s,
                });
            }
        }
        if !digest.verify(&answer.body) {
            return Err(Error::DigestMismatch {
                url: url.to_string(),
                what: "config blob",
                expected: digest.to_string(),
                actual: Digest::sha256_of(&answer.body).to_string(),
            });
        }
        let mut config = ImageConfig::parse(&answer.body).map_err(|source| Error::Invalid {
            url: url.to_string(),
            what: "config blob",
            source,
        })?;
        config.raw = answer.body;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_forms() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r.example/v2/a/tags/list?last=b>;rel=next"#).as_deref(),
            Some("https://r.example/v2/a/tags/list?last=b")
        );
        assert_eq!(
            next_link(r#"</x>; rel="prev", </y>; rel="next""#).as_deref(),
            Some("/y")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
