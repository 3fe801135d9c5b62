//! Artifact Registry (`REGION-docker.pkg.dev`) and Container Registry (`gcr.io`,
//! `*.gcr.io`) sign-in with Google's auth library (`google-cloud-auth`): an access token as
//! the password of user `oauth2accesstoken`.
//!
//! - The controller's identity is application default credentials: the metadata server
//!   (`GCE_METADATA_HOST` moves it), or the file in `GOOGLE_APPLICATION_CREDENTIALS` — a
//!   service account key or a workload identity federation (`external_account`) file.
//! - A ServiceAccount annotated `iam.gke.io/gcp-service-account` signs in as that Google
//!   service account: its Kubernetes token (TokenRequest) is exchanged at STS for a
//!   federated token of `--gcp-workload-identity-provider`, which then impersonates the
//!   Google service account (IAM Credentials `generateAccessToken`). The library does the
//!   exchange; the impersonation call is regcache's own, because the library fixes its
//!   endpoint and hides the token's expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use google_cloud_auth::credentials::external_account::ProgrammaticBuilder;
use google_cloud_auth::credentials::subject_token::{
    Builder as SubjectTokenBuilder, SubjectToken, SubjectTokenProvider,
};
use google_cloud_auth::credentials::{AccessTokenCredentials, CacheableResource};
use google_cloud_auth::errors::SubjectTokenProviderError;

use super::{CloudError, CloudLogin, Identity, Issued, SignIn};
use crate::credentials::{Credential, Secret};

/// The registry user an access token signs in as.
pub const USER: &str = "oauth2accesstoken";
/// The scope asked of every token.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// How long the library's own tokens are reused before asking it again: it renews them
/// itself before they expire, and does not say when they do.
const LIBRARY_TOKEN_REUSE: Duration = Duration::from_secs(600);

/// A Google registry, from its host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    /// `REGION-docker.pkg.dev`.
    ArtifactRegistry { location: String },
    /// `gcr.io` and `REGION.gcr.io`.
    ContainerRegistry,
}

impl Registry {
    /// The registry a host names (a port is allowed and ignored), or why it names none.
    pub fn parse(host: &str) -> Result<Registry, String> {
        let name = crate::image::host_name(host).to_ascii_lowercase();
        let label = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if name == "gcr.io" || name.strip_suffix(".gcr.io").is_some_and(label) {
            return Ok(Registry::ContainerRegistry);
        }
        if let Some(location) = name
            .strip_suffix(".pkg.dev")
            .and_then(|l| l.strip_suffix("-docker"))
            .filter(|l| label(l))
        {
            return Ok(Registry::ArtifactRegistry {
                location: location.to_string(),
            });
        }
        Err(format!(
            "{host} is not a Google registry (LOCATION-docker.pkg.dev, gcr.io, REGION.gcr.io)"
        ))
    }
}

/// Where a ServiceAccount's identity is exchanged (`--gcp-*` flags).
#[derive(Debug, Clone)]
pub struct GcpOptions {
    /// The STS audience: the workload identity pool provider
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R`).
    pub workload_identity_provider: Option<String>,
    /// The audience of the Kubernetes tokens exchanged; default: the provider as an https
    /// URL, as a pool's OIDC provider expects by default.
    pub token_audience: Option<String>,
    pub sts_url: String,
    pub iam_credentials_url: String,
}

impl Default for GcpOptions {
    fn default() -> Self {
        GcpOptions {
            workload_identity_provider: None,
            token_audience: None,
            sts_url: "https://sts.googleapis.com/v1/token".to_string(),
            iam_credentials_url: "https://iamcredentials.googleapis.com".to_string(),
        }
    }
}

impl GcpOptions {
    /// The audience of the Kubernetes tokens regcache asks for.
    pub fn token_audience(&self) -> Option<String> {
        self.token_audience.clone().or_else(|| {
            let provider = self.workload_identity_provider.as_ref()?;
            Some(match provider.strip_prefix("//") {
                Some(rest) => format!("https://{rest}"),
                None => provider.clone(),
            })
        })
    }
}

/// The Google side of [`SignIn`]: the library's credentials, built once per identity.
#[derive(Default)]
pub(super) struct Gcp {
    /// Application default credentials (the controller's identity).
    adc: tokio::sync::Mutex<Option<AccessTokenCredentials>>,
    /// Federated credentials per ServiceAccount login.
    federated: tokio::sync::Mutex<HashMap<CloudLogin, google_cloud_auth::credentials::Credentials>>,
}

impl Gcp {
    pub(super) async fn sign_in(
        &self,
        sign_in: &SignIn,
        login: &CloudLogin,
    ) -> Result<Issued, CloudError> {
        Registry::parse(&login.host).map_err(|e| CloudError::new(login, e))?;
        match &login.identity {
            Identity::Controller => {
                let mut adc = self.adc.lock().await;
                if adc.is_none() {
                    let built = google_cloud_auth::credentials::Builder::default()
                        .with_scopes([SCOPE])
                        .build_access_token_credentials()
                        .map_err(|e| {
                            CloudError::new(login, format!("application default credentials: {e}"))
                        })?;
                    *adc = Some(built);
                }
                let token = adc
                    .as_ref()
                    .expect("built above")
                    .access_token()
                    .await
                    .map_err(|e| CloudError::new(login, format!("access token: {e}")))?;
                Ok(Issued {
                    credential: Credential::basic(USER, token.token),
                    expires: SystemTime::now() + LIBRARY_TOKEN_REUSE,
                })
            }
            Identity::ServiceAccount {
                namespace,
                name,
                role: google_account,
            } => {
                let options = &sign_in.options.gcp;
                let (Some(provider), Some(audience)) = (
                    options.workload_identity_provider.clone(),
                    options.token_audience(),
                ) else {
                    return Err(CloudError::new(
                        login,
                        "a ServiceAccount's Google identity needs --gcp-workload-identity-provider",
                    ));
                };
                let federated = {
                    let mut map = self.federated.lock().await;
                    match map.get(login) {
                        Some(c) => c.clone(),
                        None => {
                            let subject = KubernetesSubject {
                                client: sign_in.kube.clone(),
                                namespace: namespace.clone(),
                                name: name.clone(),
                                audience,
                                lifetime: sign_in.options.service_account_token_lifetime,
                            };
                            let built = ProgrammaticBuilder::new(Arc::new(subject))
                                .with_audience(provider)
                                .with_subject_token_type("urn:ietf:params:oauth:token-type:jwt")
                                .with_token_url(options.sts_url.clone())
                                .with_scopes([SCOPE])
                                .build()
                                .map_err(|e| {
                                    CloudError::new(login, format!("token exchange set-up: {e}"))
                                })?;
                            map.insert(login.clone(), built.clone());
                            built
                        }
                    }
                };
                let headers = federated
                    .headers(Default::default())
                    .await
                    .map_err(|e| CloudError::new(login, format!("STS token exchange: {e}")))?;
                let bearer = match headers {
                    CacheableResource::New { data, .. } => data
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| Secret::new(v.to_string())),
                    CacheableResource::NotModified => None,
                }
                .ok_or_else(|| {
                    CloudError::new(login, "the STS token exchange gave no access token")
                })?;
                impersonate(options, login, google_account, &bearer).await
            }
        }
    }

    /// Drops the library's credentials of `login`, so that its next sign-in asks anew.
    pub(super) async fn forget(&self, login: &CloudLogin) {
        match login.identity {
            Identity::Controller => *self.adc.lock().await = None,
            Identity::ServiceAccount { .. } => {
                self.federated.lock().await.remove(login);
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeneratedToken {
    access_token: String,
    expire_time: String,
}

/// IAM Credentials `generateAccessToken` for `google_account`, as the federated identity.
async fn impersonate(
    options: &GcpOptions,
    login: &CloudLogin,
    google_account: &str,
    bearer: &Secret,
) -> Result<Issued, CloudError> {
    let url = format!(
        "{}/v1/projects/-/serviceAccounts/{google_account}:generateAccessToken",
        options.iam_credentials_url.trim_end_matches('/')
    );
    let failed = |detail: String| {
        CloudError::new(
            login,
            format!("generateAccessToken for {google_account}: {detail}"),
        )
    };
    // One client for the process: connections to IAM Credentials are reused. Its roots are
    // the system's, as for Google's library.
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let answer = HTTP
        .get_or_init(reqwest::Client::new)
        .post(&url)
        .header(http::header::AUTHORIZATION, bearer.expose())
        .json(&serde_json::json!({"scope": [SCOPE], "lifetime": "3600s"}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    let status = answer.status();
    if !status.is_success() {
        // Google's error document names the problem (PERMISSION_DENIED, ...), never a token.
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        return Err(failed(format!("{status}: {message}")));
    }
    let token: GeneratedToken = answer
        .json()
        .await
        .map_err(|_| failed("the answer is not an access token document".to_string()))?;
    let expires = chrono::DateTime::parse_from_rfc3339(&token.expire_time)
        .map(SystemTime::from)
        .map_err(|_| failed(format!("expireTime {:?} is not a time", token.expire_time)))?;
    Ok(Issued {
        credential: Credential::basic(USER, token.access_token),
        expires,
    })
}

/// A ServiceAccount's Kubernetes token, as the library's subject token.
struct KubernetesSubject {
    client: Option<kube::Client>,
    namespace: String,
    name: String,
    audience: String,
    lifetime: Duration,
}

impl std::fmt::Debug for KubernetesSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSubject")
            .field(
                "service_account",
                &format!("{}/{}", self.namespace, self.name),
            )
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SubjectError(String);

impl SubjectTokenProviderError for SubjectError {
    fn is_transient(&self) -> bool {
        false
    }
}

impl SubjectTokenProvider for KubernetesSubject {
    type Error = SubjectError;

    async fn subject_token(&self) -> Result<SubjectToken, Self::Error> {
        let client = self.client.clone().ok_or_else(|| {
            SubjectError(
                "a ServiceAccount's identity needs the Kubernetes API (not in standalone mode)"
                    .into(),
            )
        })?;
        let token = super::request_token(
            &client,
            &self.namespace,
            &self.name,
            &self.audience,
            self.lifetime,
        )
        .await
        .map_err(SubjectError)?;
        Ok(SubjectTokenBuilder::new(token.expose().to_string()).build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_hosts_parse_and_others_are_refused() {
        for (host, want) in [
            ("gcr.io", Registry::ContainerRegistry),
            ("eu.gcr.io", Registry::ContainerRegistry),
            (
                "europe-west1-docker.pkg.dev",
                Registry::ArtifactRegistry {
                    location: "europe-west1".into(),
                },
            ),
            (
                "us-docker.pkg.dev:5000",
                Registry::ArtifactRegistry {
                    location: "us".into(),
                },
            ),
        ] {
            assert_eq!(Registry::parse(host), Ok(want), "{host}");
        }
        for host in [
            "ghcr.io",
            "docker.pkg.dev",
            "us-python.pkg.dev",
            "gcr.io.evil.example",
            "a.b.gcr.io",
            "europe-west1-docker.pkg.dev.example.com",
        ] {
            let e = Registry::parse(host).unwrap_err();
            assert!(e.contains("not a Google registry"), "{e}");
        }
    }

    #[test]
    fn token_audience_follows_the_provider() {
        let o = GcpOptions {
            workload_identity_provider: Some(
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
                    .into(),
            ),
            ..Default::default()
        };
        assert_eq!(
            o.token_audience().as_deref(),
            Some(
                "https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
            )
        );
        let gke = GcpOptions {
            token_audience: Some("project.svc.id.goog".into()),
            ..o
        };
        assert_eq!(gke.token_audience().as_deref(), Some("project.svc.id.goog"));
        assert_eq!(GcpOptions::default().token_audience(), None);
    }
}
