//! Azure Container Registry sign-in (`*.azurecr.io`, and `*.azurecr.us` / `*.azurecr.cn` in
//! the US Government and China clouds) with Microsoft's identity library
//! (`azure_identity`): an Entra ID access token for the registry, exchanged at the
//! registry's `POST /oauth2/exchange` for an ACR refresh token, the password of user
//! `00000000-0000-0000-0000-000000000000`.
//!
//! - The controller's identity is, in this order: workload identity (the
//!   `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID` and `AZURE_TENANT_ID` the workload
//!   identity webhook sets), a service principal's secret (`AZURE_CLIENT_SECRET`), or the
//!   managed identity (`AZURE_CLIENT_ID` picks a user-assigned one).
//! - A ServiceAccount annotated `azure.workload.identity/client-id` (and optionally
//!   `azure.workload.identity/tenant-id`) signs in as that Entra application: its
//!   Kubernetes token for `api://AzureADTokenExchange` (TokenRequest) is the client
//!   assertion, as the workload identity webhook's projected token would be.
//!
//! `AZURE_AUTHORITY_HOST` moves Entra ID (it must be HTTPS; `--azure-ca-file` adds a CA).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::cloud::CloudConfiguration;
use azure_core::credentials::TokenCredential;
use azure_core::http::{
    ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions, Transport,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use base64::Engine as _;

use super::{CloudError, CloudLogin, Identity, Issued, RegistryExchange, SignIn};
use crate::credentials::{Credential, Secret};

/// The registry user an ACR refresh token signs in as.
pub const USER: &str = "00000000-0000-0000-0000-000000000000";
/// The audience of the Kubernetes tokens Entra ID takes as client assertions.
const TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The ServiceAccount annotation naming the Entra tenant (else `--azure-tenant-id`).
pub const TENANT_ANNOTATION: &str = "azure.workload.identity/tenant-id";

/// An Azure cloud, from the registry's host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// `NAME.azurecr.io`.
    Public,
    /// `NAME.azurecr.us`.
    Government,
    /// `NAME.azurecr.cn`.
    China,
}

impl Registry {
    /// The registry a host names (a port is allowed and ignored), or why it names none.
    pub fn parse(host: &str) -> Result<Registry, String> {
        let name = crate::image::host_name(host).to_ascii_lowercase();
        let (registry, suffix) = [
            (Registry::Public, ".azurecr.io"),
            (Registry::Government, ".azurecr.us"),
            (Registry::China, ".azurecr.cn"),
        ]
        .into_iter()
        .find(|(_, suffix)| name.ends_with(suffix))
        .ok_or_else(|| not_acr(host))?;
        // The registry's name (letters and digits), with the `-HASH` of a domain name
        // label scope if it has one.
        let label = &name[..name.len() - suffix.len()];
        let ok = !label.is_empty()
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(registry) } else { Err(not_acr(host)) }
    }

    /// The scope of the Entra ID token the registry's exchange takes.
    fn scope(self) -> &'static str {
        match self {
            Registry::Public => "https://containerregistry.azure.net/.default",
            Registry::Government => "https://management.usgovcloudapi.net/.default",
            Registry::China => "https://management.chinacloudapi.cn/.default",
        }
    }

    /// Entra ID's cloud, unless `AZURE_AUTHORITY_HOST` names it.
    fn cloud(self) -> Option<Arc<CloudConfiguration>> {
        if std::env::var_os("AZURE_AUTHORITY_HOST").is_some_and(|v| !v.is_empty()) {
            return None;
        }
        Some(Arc::new(match self {
            Registry::Public => CloudConfiguration::AzurePublic,
            Registry::Government => CloudConfiguration::AzureGovernment,
            Registry::China => CloudConfiguration::AzureChina,
        }))
    }
}

fn not_acr(host: &str) -> String {
    format!(
        "{host} is not an Azure Container Registry (NAME.azurecr.io, NAME.azurecr.us, \
         NAME.azurecr.cn)"
    )
}

/// Azure settings (`--azure-*` flags).
#[derive(Debug, Clone, Default)]
pub struct AzureOptions {
    /// The tenant of ServiceAccounts without a tenant annotation (`--azure-tenant-id`,
    /// else `AZURE_TENANT_ID`).
    pub tenant_id: Option<String>,
    /// PEM CA certificates trusted for Entra ID beside the public roots
    /// (`--azure-ca-file`).
    pub ca_pem: Option<Vec<u8>>,
}

/// The Azure side of [`SignIn`]: the library's credentials, built once per login.
#[derive(Default)]
pub(super) struct Azure {
    credentials: tokio::sync::Mutex<HashMap<CloudLogin, Arc<dyn TokenCredential>>>,
    http: std::sync::OnceLock<reqwest::Client>,
}

impl Azure {
    pub(super) async fn sign_in(
        &self,
        sign_in: &SignIn,
        login: &CloudLogin,
        registry: &dyn RegistryExchange,
    ) -> Result<Issued, CloudError> {
        let cloud = Registry::parse(&login.host).map_err(|e| CloudError::new(login, e))?;
        let options = &sign_in.options.azure;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let tenant = match &login.identity {
            Identity::ServiceAccount { role, .. } => split_role(role)
                .0
                .map(str::to_string)
                .or_else(|| options.tenant_id.clone()),
            Identity::Controller => env("AZURE_TENANT_ID").or_else(|| options.tenant_id.clone()),
        };
        let credential = {
            let mut map = self.credentials.lock().await;
            match map.get(login) {
                Some(c) => c.clone(),
                None => {
                    let built = self
                        .credential(sign_in, login, cloud, tenant.as_deref())
                        .map_err(|e| CloudError::new(login, e))?;
                    map.insert(login.clone(), built.clone());
                    built
                }
            }
        };
        let entra = credential
            .get_token(&[cloud.scope()], None)
            .await
            .map_err(|e| CloudError::new(login, format!("Entra ID token: {}", one_line(&e))))?;
        let refresh = registry
            .exchange_entra_token(tenant.as_deref(), &Secret::new(entra.token.secret()))
            .await
            .map_err(|e| CloudError::new(login, e))?;
        // The refresh token says when it ends; else it lasts as long as the Entra token.
        let expires = jwt_expiry(refresh.expose()).unwrap_or_else(|| {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(entra.expires_on.unix_timestamp().max(0) as u64)
        });
        Ok(Issued {
            credential: Credential::basic(USER, refresh.expose()),
            expires,
        })
    }

    /// Drops the library's credential of `login`, so that its next sign-in asks anew.
    pub(super) async fn forget(&self, login: &CloudLogin) {
        self.credentials.lock().await.remove(login);
    }

    /// The library's credential for `login`.
    fn credential(
        &self,
        sign_in: &SignIn,
        login: &CloudLogin,
        cloud: Registry,
        tenant: Option<&str>,
    ) -> Result<Arc<dyn TokenCredential>, String> {
        let http = match self.http.get() {
            Some(h) => h.clone(),
            None => {
                let built = http_client(sign_in.options.azure.ca_pem.as_deref())?;
                self.http.get_or_init(|| built).clone()
            }
        };
        let client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            cloud: cloud.cloud(),
            // Two retries within the pass; the next pass signs in again anyway.
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                max_retries: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let built: azure_core::Result<Arc<dyn TokenCredential>> = match &login.identity {
            Identity::ServiceAccount {
                namespace,
                name,
                role,
            } => {
                let Some(tenant) = tenant else {
                    return Err(format!(
                        "ServiceAccount {namespace}/{name} names no tenant ({TENANT_ANNOTATION}) \
                         and regcache has no --azure-tenant-id"
                    ));
                };
                let assertion = KubernetesAssertion {
                    client: sign_in.kube.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    lifetime: sign_in.options.service_account_token_lifetime,
                };
                ClientAssertionCredential::new(
                    tenant.to_string(),
                    split_role(role).1.to_string(),
                    assertion,
                    Some(ClientAssertionCredentialOptions { client_options }),
                )
                .map(|c| c as Arc<dyn TokenCredential>)
            }
            Identity::Controller if env("AZURE_FEDERATED_TOKEN_FILE").is_some() => {
                WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    ..Default::default()
                }))
                .map(|c| c as Arc<dyn TokenCredential>)
            }
            Identity::Controller => match env("AZURE_CLIENT_SECRET") {
                Some(secret) => ClientSecretCredential::new(
                    tenant.unwrap_or_default(),
                    env("AZURE_CLIENT_ID").unwrap_or_default(),
                    secret.into(),
                    Some(ClientSecretCredentialOptions { client_options }),
                )
                .map(|c| c as Arc<dyn TokenCredential>),
                None => ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
                    client_options,
                }))
                .map(|c| c as Arc<dyn TokenCredential>),
            },
        };
        built.map_err(|e| format!("Entra ID credential set-up: {}", one_line(&e)))
    }
}

/// `TENANT/CLIENT` or `CLIENT`, as [`super::Identity::ServiceAccount::role`] holds an Azure
/// identity.
fn split_role(role: &str) -> (Option<&str>, &str) {
    match role.split_once('/') {
        Some((tenant, client)) => (Some(tenant), client),
        None => (None, role),
    }
}

/// The library's message and its causes on one line, without its troubleshooting link.
fn one_line(e: &azure_core::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("To troubleshoot"))
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The `exp` claim of a JWT, read without checking its signature: only to know when to
/// sign in again.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// The HTTP client for Entra ID: the system's roots (as for the other clouds' libraries)
/// plus `--azure-ca-file`.
fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("--azure-ca-file: {e}"))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("Entra ID HTTP client: {e}"))
}

/// A ServiceAccount's Kubernetes token, as the library's client assertion.
struct KubernetesAssertion {
    client: Option<kube::Client>,
    namespace: String,
    name: String,
    lifetime: Duration,
}

impl std::fmt::Debug for KubernetesAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesAssertion")
            .field(
                "service_account",
                &format!("{}/{}", self.namespace, self.name),
            )
            .finish()
    }
}

#[async_trait::async_trait]
impl ClientAssertion for KubernetesAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let failed = |detail: String| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, detail)
        };
        let client = self.client.as_ref().ok_or_else(|| {
            failed(
                "a ServiceAccount's identity needs the Kubernetes API (not in standalone mode)"
                    .to_string(),
            )
        })?;
        super::request_token(
            client,
            &self.namespace,
            &self.name,
            TOKEN_AUDIENCE,
            self.lifetime,
        )
        .await
        .map(|t| t.expose().to_string())
        .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acr_hosts_parse_and_others_are_refused() {
        for (host, want) in [
            ("myregistry.azurecr.io", Registry::Public),
            ("MyRegistry.azurecr.io:443", Registry::Public),
            ("myregistry-abcdefgh.azurecr.io", Registry::Public),
            ("gov1.azurecr.us", Registry::Government),
            ("cn1.azurecr.cn", Registry::China),
        ] {
            assert_eq!(Registry::parse(host), Ok(want), "{host}");
        }
        for host in [
            "azurecr.io",
            ".azurecr.io",
            "-x.azurecr.io",
            "a.b.azurecr.io",
            "myregistry.azurecr.io.evil.example",
            "ghcr.io",
        ] {
            let e = Registry::parse(host).unwrap_err();
            assert!(e.contains("not an Azure Container Registry"), "{e}");
        }
    }

    #[test]
    fn roles_name_a_client_and_maybe_a_tenant() {
        assert_eq!(split_role("t-1/c-2"), (Some("t-1"), "c-2"));
        assert_eq!(split_role("c-2"), (None, "c-2"));
    }

    #[test]
    fn a_jwts_expiry_is_read_and_anything_else_is_none() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":1900000000,"grant_type":"refresh_token"}"#);
        assert_eq!(
            jwt_expiry(&format!("eyJhbGciOiJSUzI1NiJ9.{claims}.sig")),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }
}
