//! The debugging commands, `regcache inspect` and `regcache tags`: ask a registry directly,
//! like `skopeo inspect` and `crane ls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{InspectArgs, Output, RegistryArgs, TagsArgs};
use crate::credentials::{CredentialsError, DockerConfig};
use crate::image::{ImageError, ImageRef, Platform, Repository};
use crate::registry::{self, Endpoint, RegistryClient, RepositoryClient};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("invalid --platform {value:?}: {source}")]
    Platform {
        value: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Get(GetError),
}

impl CliError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            CliError::Image(e) => e.metric_label(),
            CliError::Credentials(e) => e.metric_label(),
            CliError::Registry(e) => e.metric_label(),
            CliError::CaFile { .. } => "ca_file",
            CliError::Platform { .. } => "platform",
            CliError::Get(_) => "get",
        }
    }
}

/// The docker config to read when `--docker-config` is not given, if one exists.
fn default_docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let path = dir.join("config.json");
    path.is_file().then_some(path)
}

fn repository_client(
    args: &RegistryArgs,
    repository: &Repository,
) -> Result<RepositoryClient, CliError> {
    let credential = match args.docker_config.clone().or_else(default_docker_config) {
        Some(path) => DockerConfig::from_file(&path)?.credential_for(repository.host()),
        None => Default::default(),
    };
    let ca_pem = match &args.ca_file {
        Some(path) => Some(Arc::new(std::fs::read(path).map_err(|e| {
            CliError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?)),
        None => None,
    };
    let insecure = args
        .insecure_registries
        .iter()
        .any(|h| h == repository.host() || h == repository.endpoint_host());
    let client = RegistryClient::new(args.limits.client_options());
    Ok(client.repository(repository, credential, &Endpoint { insecure, ca_pem })?)
}

/// `regcache inspect`: the image's metadata as pretty JSON.
pub async fn inspect(args: &InspectArgs) -> Result<String, CliError> {
    let reference = ImageRef::parse(&args.reference)?;
    let platforms = args
        .platforms
        .iter()
        .map(|p| {
            Platform::parse(p).map_err(|source| CliError::Platform {
                value: p.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = repository_client(&args.registry, &reference.repository)?;
    let metadata = client.inspect(&reference.reference(), &platforms).await?;
    Ok(serde_json::to_string_pretty(&metadata).expect("metadata serialises"))
}

/// `regcache tags`: one tag per line, or a JSON document.
pub async fn tags(args: &TagsArgs) -> Result<String, CliError> {
    let repository = Repository::parse(&args.repository)?;
    let client = repository_client(&args.registry, &repository)?;
    let tags = client.list_tags().await?;
    Ok(match args.output {
        Output::Text => tags.join("\n"),
        Output::Json => serde_json::to_string_pretty(&serde_json::json!({
            "canonicalName": repository.canonical(),
            "tags": tags,
        }))
        .expect("tags serialise"),
    })
}

/// An error and its sources on one line, without repeating text a wrapper already quoted.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Left-aligned columns separated by three spaces, like `kubectl get`.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 < N {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

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
    platforms: &[crate::registry::PlatformImage],
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
pub async fn get(args: &crate::config::GetArgs) -> Result<String, GetError> {
    use crate::cache::store::{ImageInfo, RepositoryAnswer};
    let image = ImageRef::parse(&args.reference)?;
    let is_image = image.tag.is_some() || image.digest.is_some();
    let json = args.output == crate::config::Format::Json;
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
        let store = crate::cache::store::MetadataStore::new(
            crate::cache::memcached::Memcached::new(args.memcached.clone(), Default::default()),
        );
        let scope = crate::cache::keys::Scope::public();
        if is_image {
            Got::Image(store.get_image(&scope, &image).await?)
        } else {
            let body = store
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
