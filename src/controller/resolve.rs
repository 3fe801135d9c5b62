//! The I/O step of reconcile: read the Secrets and ServiceAccount a watch names (same
//! namespace only) and turn them into credentials and a CA bundle.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{Api, Client, ResourceExt};

use super::plan::{Problem, Resolved, target_id};
use crate::crd::{ImageRepositoryWatch, reasons};
use crate::credentials::DockerConfig;

pub(crate) const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub(crate) const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// The secret names a watch depends on, pull secrets first (they win over the
/// ServiceAccount's, as with kubelet).
pub(crate) fn secret_names(
    watch: &ImageRepositoryWatch,
    account: Option<&ServiceAccount>,
) -> Vec<String> {
    let mut names: Vec<String> = watch
        .spec
        .pull_secrets
        .iter()
        .map(|r| r.name.clone())
        .collect();
    if let Some(sa) = account {
        for r in sa.image_pull_secrets.iter().flatten() {
            if !r.name.is_empty() && !names.contains(&r.name) {
                names.push(r.name.clone());
            }
        }
    }
    names
}

/// Parses one pull secret. Errors name the watch, the secret and what is wrong, never
/// the secret's content.
pub(crate) fn docker_config_of(
    watch: &ImageRepositoryWatch,
    secret: &Secret,
) -> Result<DockerConfig, Problem> {
    let ns = secret.namespace().unwrap_or_default();
    let name = format!("{ns}/{}", secret.name_any());
    let source = format!("secret {name}");
    let invalid = |detail: String| {
        Problem::new(
            reasons::INVALID_SECRET,
            format!("ImageRepositoryWatch {}: {detail}", target_id(watch)),
        )
    };
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    let key = match type_ {
        DOCKER_CONFIG_JSON => ".dockerconfigjson",
        DOCKER_CFG => ".dockercfg",
        other => {
            return Err(invalid(format!(
                "secret {name} has type {other}; pull secrets must be of type {DOCKER_CONFIG_JSON} or {DOCKER_CFG}"
            )));
        }
    };
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| invalid(format!("secret {name} has no {key} key")))?;
    let parsed = if type_ == DOCKER_CONFIG_JSON {
        DockerConfig::from_config_json(&source, &data.0)
    } else {
        DockerConfig::from_dockercfg(&source, &data.0)
    };
    parsed.map_err(|e| invalid(e.to_string()))
}

/// Reads what the watch references from the API. `Ok(Err(problem))` is the user's to fix
/// (the watch waits for a change); `Err` is an API failure to retry.
pub async fn resolve(
    client: &Client,
    watch: &ImageRepositoryWatch,
) -> Result<Result<Resolved, Problem>, kube::Error> {
    let ns = watch.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let account = match &watch.spec.service_account_name {
        None => None,
        Some(name) => {
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
            Some(accounts.get_opt(name).await?)
        }
    };
    let mut names = secret_names(watch, account.as_ref().and_then(Option::as_ref));
    if let Some(cert) = &watch.spec.cert_secret_ref {
        names.push(cert.name.clone());
    }
    let mut found = std::collections::HashMap::new();
    for name in names {
        if let Some(s) = secrets.get_opt(&name).await? {
            found.insert(name, s);
        }
    }
    Ok(resolve_with(watch, account, |name| {
        found.get(name).cloned()
    }))
}

/// The pure part of resolving: `account` is `None` when the watch names no
/// ServiceAccount, `Some(None)` when it names one that does not exist; `secret` finds a
/// Secret of the watch's namespace by name. Standalone mode calls this with manifests
/// from files.
pub(crate) fn resolve_with(
    watch: &ImageRepositoryWatch,
    account: Option<Option<ServiceAccount>>,
    secret: impl Fn(&str) -> Option<Secret>,
) -> Result<Resolved, Problem> {
    let ns = watch.namespace().unwrap_or_default();
    let id = target_id(watch);
    let account = match (account, &watch.spec.service_account_name) {
        (Some(None), Some(name)) => {
            return Err(Problem::new(
                reasons::SERVICE_ACCOUNT_NOT_FOUND,
                format!("ImageRepositoryWatch {id}: service account {ns}/{name} not found"),
            ));
        }
        (Some(sa), _) => sa,
        (None, _) => None,
    };
    let cloud = watch
        .spec
        .provider
        .is_some_and(|p| p != crate::crd::Provider::Generic);
    let mut resolved = Resolved {
        service_account: account.as_ref().map(|sa| {
            (
                sa.name_any(),
                sa.metadata.annotations.clone().unwrap_or_default(),
            )
        }),
        ..Resolved::default()
    };
    // With a cloud provider the cloud signs in: pull secrets are not read (nor required).
    let pull_secrets = if cloud {
        Vec::new()
    } else {
        secret_names(watch, account.as_ref())
    };
    for name in pull_secrets {
        let Some(s) = secret(&name) else {
            return Err(Problem::new(
                reasons::SECRET_NOT_FOUND,
                format!(
                    "ImageRepositoryWatch {id}: pull secret {ns}/{name} not found; warming resumes when it exists"
                ),
            ));
        };
        resolved.docker_config.merge(docker_config_of(watch, &s)?);
    }
    if let Some(cert) = &watch.spec.cert_secret_ref {
        let Some(s) = secret(&cert.name) else {
            return Err(Problem::new(
                reasons::SECRET_NOT_FOUND,
                format!(
                    "ImageRepositoryWatch {id}: certificate secret {ns}/{} not found",
                    cert.name
                ),
            ));
        };
        match s.data.as_ref().and_then(|d| d.get("ca.crt")) {
            Some(pem) => resolved.ca_pem = Some(pem.0.clone()),
            None => {
                return Err(Problem::new(
                    reasons::INVALID_CERTIFICATE,
                    format!(
                        "ImageRepositoryWatch {id}: secret {ns}/{} has no ca.crt key",
                        cert.name
                    ),
                ));
            }
        }
    }
    Ok(resolved)
}
