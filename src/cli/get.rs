//! `regcache get`: what the cache holds for a repository or an image, from a read API or
//! straight from memcached, as a table or JSON.

use std::sync::Arc;

use super::columns;
use super::flags::{Format, GetArgs};
use crate::image::{ImageError, ImageRef};

/// Failures of `regcache get`.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Read(#[from] crate::cache::store::ReadError),
    #[error("read API {url}: {detail}")]
    Api { url: String, detail: String },
    #[error("give --api URL or --memcached HOST:PORT")]
    NoSource,
}

fn age(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn image_row(
    tag: &str,
    digest: &str,
    created: Option<chrono::DateTime<chrono::Utc>>,
    platforms: &[crate::image::PlatformImage],
) -> [String; 5] {
    let platforms: Vec<String> = platforms
        .iter()
        .filter_map(|p| p.platform.as_ref().map(|p| p.to_string()))
        .collect();
    [
        tag.to_string(),
        digest.to_string(),
        created
            .map(|c| c.to_rfc3339())
            .unwrap_or_else(|| "-".into()),
        if platforms.is_empty() {
            "-".into()
        } else {
            platforms.join(",")
        },
        age(created),
    ]
}

const HEADER: [&str; 5] = ["TAG", "DIGEST", "CREATED", "PLATFORMS", "AGE"];

/// `regcache get`: a repository or an image, from the read API or memcached.
pub async fn get(args: &GetArgs) -> Result<String, GetError> {
    use crate::api::{ReadApi, RepositoryAnswer};
    use crate::cache::store::ImageInfo;
    let image = ImageRef::parse(&args.reference)?;
    let is_image = image.tag.is_some() || image.digest.is_some();
    let json = args.output == Format::Json;
    enum Got {
        Repo(RepositoryAnswer),
        Image(ImageInfo),
    }
    let got = if let Some(api) = &args.api {
        let path = if is_image {
            format!("/api/v1/images/{}", image.canonical())
        } else {
            format!("/api/v1/repositories/{}", image.repository.canonical())
        };
        let url = format!("{}{path}", api.trim_end_matches('/'));
        let api_err = |detail: String| GetError::Api {
            url: url.clone(),
            detail,
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| api_err(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                })
                .with_no_client_auth(),
            )
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| api_err(e.to_string()))?;
        let mut req = client.get(&url);
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| api_err(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| api_err(e.to_string()))?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(api_err(format!(
                "{status}: {} {}",
                v["reason"].as_str().unwrap_or(""),
                v["message"].as_str().unwrap_or("")
            )));
        }
        let parse = |e: serde_json::Error| api_err(format!("unexpected answer ({e})"));
        if is_image {
            Got::Image(serde_json::from_slice(&body).map_err(parse)?)
        } else {
            Got::Repo(serde_json::from_slice(&body).map_err(parse)?)
        }
    } else if !args.memcached.is_empty() {
        let store = std::sync::Arc::new(crate::cache::store::MetadataStore::new(
            crate::cache::memcached::Memcached::new(args.memcached.clone(), Default::default()),
        ));
        let scope = crate::cache::keys::Scope::public();
        if is_image {
            Got::Image(store.get_image(&scope, &image).await?)
        } else {
            let body = ReadApi::new(store.clone())
                .repository_json(&scope, &image.repository, false)
                .await?;
            Got::Repo(serde_json::from_slice(&body).map_err(|e| {
                crate::cache::store::ReadError::Cache(crate::cache::CacheError::Corrupt {
                    key: crate::cache::keys::repository_head(&scope, &image.repository),
                    detail: e.to_string(),
                })
            })?)
        }
    } else {
        return Err(GetError::NoSource);
    };
    let header = || HEADER.map(String::from);
    Ok(match (got, json) {
        (Got::Repo(m), true) => serde_json::to_string_pretty(&m).expect("serialises"),
        (Got::Image(i), true) => serde_json::to_string_pretty(&i).expect("serialises"),
        (Got::Repo(m), false) => {
            let mut rows = vec![header()];
            for (tag, digest) in &m.tags {
                match digest.as_ref().map(|d| (d, m.images.get(d))) {
                    Some((d, Some(i))) => {
                        rows.push(image_row(tag, d.as_str(), i.created, &i.platforms))
                    }
                    Some((d, None)) => rows.push(image_row(tag, d.as_str(), None, &[])),
                    None => {
                        rows.push([tag.clone(), "-".into(), "-".into(), "-".into(), "-".into()])
                    }
                }
            }
            let mut out = format!(
                "{}  ({} tags; last update {}{})\n",
                m.canonical_name,
                m.tags.len(),
                m.last_update
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into()),
                m.last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
            out.push_str(&columns(&rows));
            out
        }
        (Got::Image(i), false) => {
            let tag = i.tag.clone().unwrap_or_else(|| "-".into());
            columns(&[
                header(),
                image_row(&tag, i.digest.as_str(), i.created, &i.platforms),
            ])
        }
    })
}
