//! The debugging commands, `regcache inspect` and `regcache tags`: ask a registry directly,
//! like `skopeo inspect` and `crane ls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::flags::{InspectArgs, Output, RegistryArgs, TagsArgs};
use super::progress::Progress;
use super::{CliError, credential_helper};
use crate::image::{ImageRef, Platform, Repository};
use crate::registry::{Endpoint, PassContext, RegistryClient, RepositoryClient};
use crate::telemetry::LogFormat;

/// The docker config to read when `--docker-config` is not given, if one exists.
fn default_docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let path = dir.join("config.json");
    path.is_file().then_some(path)
}

/// A client for `repository` with the docker config's credential for its host: from the
/// config's credential helper when it names one, else from its `auths`.
async fn repository_client(
    args: &RegistryArgs,
    repository: &Repository,
) -> Result<RepositoryClient, CliError> {
    let credential = match args.docker_config.clone().or_else(default_docker_config) {
        Some(path) => credential_helper::credential_for(&path, repository.host()).await?,
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
    let client = RegistryClient::new(args.limits.client_options()?);
    Ok(client.repository(repository, credential, &Endpoint { insecure, ca_pem })?)
}

/// `regcache inspect`: the image's metadata as pretty JSON.
pub async fn inspect(args: &InspectArgs, format: LogFormat) -> Result<String, CliError> {
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
    let client = repository_client(&args.registry, &reference.repository).await?;
    let (client, pass) = client.for_pass();
    let progress = spinner(
        format,
        &format!("inspecting {}", reference.canonical()),
        &pass,
    );
    let metadata = client.inspect(&reference.reference(), &platforms).await;
    progress.finish();
    Ok(serde_json::to_string_pretty(&metadata?).expect("metadata serialises"))
}

/// A spinner counting `pass`'s requests.
fn spinner(format: LogFormat, what: &str, pass: &Arc<PassContext>) -> Progress {
    let counts = pass.clone();
    Progress::spinner(format, what, Arc::new(move || counts.stats.snapshot()))
}

/// `regcache tags`: one tag per line, or a JSON document.
pub async fn tags(args: &TagsArgs, format: LogFormat) -> Result<String, CliError> {
    let repository = Repository::parse(&args.repository)?;
    let client = repository_client(&args.registry, &repository).await?;
    let (client, pass) = client.for_pass();
    let progress = spinner(
        format,
        &format!("listing the tags of {}", repository.canonical()),
        &pass,
    );
    let tags = client.list_tags().await;
    progress.finish();
    let tags = tags?;
    Ok(match args.output {
        Output::Text => tags.join("\n"),
        Output::Json => serde_json::to_string_pretty(&serde_json::json!({
            "canonicalName": repository.canonical(),
            "tags": tags,
        }))
        .expect("tags serialise"),
    })
}
