//! Cloud registry sign-in (ECR, Artifact Registry, GCR and ACR). A watch whose `provider` names a
//! cloud signs in to that cloud's
//! registry with a workload identity instead of a pull secret: [`CloudLogin`] says which
//! registry and which identity (the controller's own, or the watch's ServiceAccount's), and
//! [`SignIn`] turns it into registry credentials through the cloud's SDK, cached per login
//! until shortly before they expire.
//!
//! Identities, never tokens, name a login: scopes hash [`CloudLogin::identity`], so a
//! refreshed token keeps the cache's data. Tokens are [`Secret`]s and never formatted.

pub mod aws;
pub mod azure;
pub mod gcp;
mod metrics;

pub use metrics::CloudMetrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;

use crate::credentials::{Credential, Secret};

/// A cloud whose registries regcache signs in to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// ECR private and ECR Public, by `GetAuthorizationToken`.
    Aws,
    /// Artifact Registry and Container Registry, by an access token.
    Gcp,
    /// Azure Container Registry, by an Entra ID token exchanged at the registry.
    Azure,
}

impl Provider {
    /// As a watch's `spec.provider` names it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        }
    }

    /// The ServiceAccount annotation that names the cloud identity a workload runs as.
    pub fn identity_annotation(self) -> &'static str {
        match self {
            Provider::Aws => "eks.amazonaws.com/role-arn",
            Provider::Gcp => "iam.gke.io/gcp-service-account",
            Provider::Azure => "azure.workload.identity/client-id",
        }
    }

    /// Why this cloud cannot sign in to `host`, if it cannot.
    pub fn check_host(self, host: &str) -> Result<(), String> {
        match self {
            Provider::Aws => aws::Registry::parse(host).map(|_| ()),
            Provider::Gcp => gcp::Registry::parse(host).map(|_| ()),
            Provider::Azure => azure::Registry::parse(host).map(|_| ()),
        }
    }
}

/// Who signs in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The controller's own cloud identity (the SDK's default chain: IRSA, Pod Identity,
    /// environment, instance metadata).
    Controller,
    /// A ServiceAccount of the watch's namespace, annotated with its cloud identity:
    /// regcache asks the TokenRequest API for its token and exchanges it.
    ServiceAccount {
        namespace: String,
        name: String,
        /// The annotation's value: a role ARN, a Google service account's email, or an
        /// Entra application's client ID (`TENANT/CLIENT` when the ServiceAccount names its
        /// tenant).
        role: String,
    },
}

/// One registry and the identity that signs in to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloudLogin {
    pub provider: Provider,
    /// The registry host (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`).
    pub host: String,
    pub identity: Identity,
}

impl CloudLogin {
    /// Who this login is, safe to show and to hash into a cache scope:
    /// `aws:controller` or `aws:team/puller=arn:aws:iam::123456789012:role/reader`.
    pub fn identity(&self) -> String {
        match &self.identity {
            Identity::Controller => format!("{}:controller", self.provider.name()),
            Identity::ServiceAccount {
                namespace,
                name,
                role,
            } => format!("{}:{namespace}/{name}={role}", self.provider.name()),
        }
    }
}

/// The registry's part in a sign-in, for clouds whose registry takes part (ACR exchanges an
/// Entra ID token at `/oauth2/exchange`). `registry` implements it: this module never
/// speaks to a registry itself.
#[async_trait::async_trait]
pub trait RegistryExchange: Send + Sync {
    /// The registry's refresh token for an Entra ID access token, or why there is none.
    async fn exchange_entra_token(
        &self,
        tenant: Option<&str>,
        entra_token: &Secret,
    ) -> Result<Secret, String>;
}

/// A failed sign-in; the message is the cloud's (or the API server's), never a token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("signing in to {host} as {identity} ({provider}): {detail}")]
pub struct CloudError {
    pub provider: &'static str,
    pub host: String,
    pub identity: String,
    pub detail: String,
}

impl CloudError {
    fn new(login: &CloudLogin, detail: impl Into<String>) -> CloudError {
        CloudError {
            provider: login.provider.name(),
            host: login.host.clone(),
            identity: login.identity(),
            detail: detail.into(),
        }
    }
}

/// Registry credentials a cloud issued, and when they stop working.
#[derive(Debug, Clone)]
pub struct Issued {
    pub credential: Credential,
    pub expires: SystemTime,
}

/// How sign-in behaves.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// Reuse issued credentials at most this long, however long they are valid (they are
    /// renewed after three quarters of their lifetime in any case).
    pub max_reuse: Duration,
    /// Lifetime asked of the Kubernetes tokens exchanged for a ServiceAccount's identity.
    pub service_account_token_lifetime: Duration,
    /// The AWS session asked of STS for a ServiceAccount's role (AWS takes 15 minutes to
    /// 12 hours); its ECR token ends with it.
    pub aws_session_duration: Duration,
    /// Where Google ServiceAccount identities are exchanged.
    pub gcp: gcp::GcpOptions,
    /// Azure's tenant and CA settings.
    pub azure: azure::AzureOptions,
}

impl Default for CloudOptions {
    fn default() -> Self {
        CloudOptions {
            max_reuse: Duration::from_secs(3600),
            service_account_token_lifetime: Duration::from_secs(3600),
            aws_session_duration: Duration::from_secs(3600),
            gcp: gcp::GcpOptions::default(),
            azure: azure::AzureOptions::default(),
        }
    }
}

struct Cached {
    issued: Issued,
    renew_at: Instant,
}

/// Signs in to cloud registries, caching credentials per login.
pub struct SignIn {
    kube: Option<kube::Client>,
    options: CloudOptions,
    cache: Mutex<HashMap<CloudLogin, Cached>>,
    /// One sign-in at a time per login: passes that need it together share it.
    flights: Mutex<HashMap<CloudLogin, Arc<tokio::sync::Mutex<()>>>>,
    aws: aws::Aws,
    gcp: gcp::Gcp,
    azure: azure::Azure,
    metrics: CloudMetrics,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("options", &self.options)
            .field("logins", &self.cache.lock().map(|c| c.len()).unwrap_or(0))
            .finish()
    }
}

impl SignIn {
    /// `kube` lets ServiceAccounts' identities sign in (the controller); without it only
    /// the controller's own identity can (standalone).
    pub fn new(kube: Option<kube::Client>, options: CloudOptions) -> SignIn {
        SignIn {
            kube,
            options,
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            aws: aws::Aws::default(),
            gcp: gcp::Gcp::default(),
            azure: azure::Azure::default(),
            metrics: CloudMetrics::default(),
        }
    }

    /// Records `regcache_cloud_*` into `metrics` (the process's).
    pub fn with_metrics(mut self, metrics: CloudMetrics) -> SignIn {
        self.metrics = metrics;
        self
    }

    /// Credentials for `login`: cached ones while they are fresh, else newly issued.
    /// `registry` is the login's registry, for clouds whose registry takes part in
    /// signing in (ACR's token exchange).
    pub async fn credential(
        &self,
        login: &CloudLogin,
        registry: &dyn RegistryExchange,
    ) -> Result<Credential, CloudError> {
        if let Some(c) = self.fresh(login) {
            return Ok(c);
        }
        let flight = lock(&self.flights)
            .entry(login.clone())
            .or_default()
            .clone();
        let _guard = flight.lock().await;
        if let Some(c) = self.fresh(login) {
            return Ok(c);
        }
        let issued = match login.provider {
            Provider::Aws => self.aws.sign_in(self, login).await,
            Provider::Gcp => self.gcp.sign_in(self, login).await,
            Provider::Azure => self.azure.sign_in(self, login, registry).await,
        };
        let identity = match login.identity {
            Identity::Controller => "controller",
            Identity::ServiceAccount { .. } => "service_account",
        };
        self.metrics
            .sign_in(login.provider.name(), identity, issued.is_ok());
        let issued = issued?;
        let lifetime = issued
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let reuse = (lifetime * 3 / 4).min(self.options.max_reuse);
        tracing::debug!(
            host = %login.host,
            identity = %login.identity(),
            valid_for = ?lifetime,
            reused_for = ?reuse,
            "signed in to a cloud registry"
        );
        let credential = issued.credential.clone();
        lock(&self.cache).insert(
            login.clone(),
            Cached {
                issued,
                renew_at: Instant::now() + reuse,
            },
        );
        Ok(credential)
    }

    /// Drops the credentials of `login` (the registry refused them): the next pass signs
    /// in again.
    pub async fn forget(&self, login: &CloudLogin) {
        lock(&self.cache).remove(login);
        match login.provider {
            Provider::Gcp => self.gcp.forget(login).await,
            Provider::Azure => self.azure.forget(login).await,
            Provider::Aws => {}
        }
    }

    fn fresh(&self, login: &CloudLogin) -> Option<Credential> {
        let cache = lock(&self.cache);
        let c = cache.get(login)?;
        (Instant::now() < c.renew_at && SystemTime::now() < c.issued.expires)
            .then(|| c.issued.credential.clone())
    }

    /// A token of the ServiceAccount `namespace/name` for `audience`, from the TokenRequest
    /// API.
    async fn service_account_token(
        &self,
        login: &CloudLogin,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> Result<Secret, CloudError> {
        let Some(client) = &self.kube else {
            return Err(CloudError::new(
                login,
                "a ServiceAccount's identity needs the Kubernetes API (not available in standalone mode)",
            ));
        };
        request_token(
            client,
            namespace,
            name,
            audience,
            self.options.service_account_token_lifetime,
        )
        .await
        .map_err(|e| CloudError::new(login, e))
    }
}

/// A token of the ServiceAccount `namespace/name` for `audience` (TokenRequest API), or
/// the API server's reason for refusing it.
async fn request_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
    lifetime: Duration,
) -> Result<Secret, String> {
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(lifetime.as_secs() as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!(
                "TokenRequest for ServiceAccount {namespace}/{name}: {}",
                kube_message(&e)
            )
        })?;
    answer
        .status
        .map(|s| Secret::new(s.token))
        .filter(|t| !t.expose().is_empty())
        .ok_or_else(|| {
            format!("TokenRequest for ServiceAccount {namespace}/{name} returned no token")
        })
}

/// The API server's message for a failed call (its Status message, not the body).
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
