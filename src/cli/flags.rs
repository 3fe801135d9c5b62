//! Command-line flags (clap derive), each with an environment variable and a default, and
//! their conversion into the option types the modules own.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cache::CacheOptions;
use crate::registry::ClientOptions;
use crate::registry::limiter::LimiterSettings;
use crate::runtime::{ListenOptions, RuntimeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "regcache",
    version,
    about = "An always-warm cache of container-image metadata",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct LogOptions {
    /// Log level or tracing filter (`info`, `debug`, `regcache=trace,info`).
    #[arg(
        long,
        env = "REGCACHE_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,
    /// Log line format.
    #[arg(long, env = "REGCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogOptions {
    /// The filter and format `telemetry::init` takes.
    pub fn telemetry(&self) -> (String, crate::telemetry::LogFormat) {
        let format = match self.log_format {
            LogFormat::Json => crate::telemetry::LogFormat::Json,
            LogFormat::Text => crate::telemetry::LogFormat::Text,
        };
        (self.log_level.clone(), format)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ask a registry for one image's metadata and print it as JSON.
    Inspect(InspectArgs),
    /// Ask a registry for a repository's tags and print them.
    Tags(TagsArgs),
    /// Print the ImageRepositoryWatch CustomResourceDefinition as YAML.
    Crd,
    /// Run the operator: warm every ImageRepositoryWatch and report in its status.
    Controller(Box<ControllerArgs>),
    /// Warm the watches in YAML files without Kubernetes (the same warmer and cache).
    Standalone(Box<StandaloneArgs>),
    /// Print what the cache holds for a repository or an image.
    Get(GetArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct StandaloneArgs {
    /// YAML (or JSON) files, or folders of them, holding ImageRepositoryWatch and Secret
    /// manifests: the same files you would `kubectl apply`.
    #[arg(long = "watches", env = "REGCACHE_WATCHES", value_delimiter = ',', required = true, num_args = 1..)]
    pub watches: Vec<PathBuf>,
    /// Warm every watch once, print a summary and exit (non-zero if any failed).
    #[arg(long, env = "REGCACHE_ONCE", default_value_t = false)]
    pub once: bool,
    /// Summary format for `--once`.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Warm passes running at once.
    #[arg(long, env = "REGCACHE_CONCURRENT", default_value_t = 4)]
    pub concurrent: usize,
    /// Platforms kept for watches that name none (`linux/amd64,linux/arm64`); all when empty.
    #[arg(long, env = "REGCACHE_DEFAULT_PLATFORMS", value_delimiter = ',')]
    pub default_platforms: Vec<String>,
    /// Tag-list interval for watches that set none.
    #[arg(long, env = "REGCACHE_DEFAULT_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub default_interval: Duration,
    /// Address the read API and webhooks listen on (not with `--once`).
    #[arg(
        long,
        env = "REGCACHE_API_BIND_ADDRESS",
        default_value = "127.0.0.1:8080"
    )]
    pub api_bind_address: String,
    /// Shared token registries must send to `POST /hooks/registry` (webhooks are off
    /// without one).
    #[arg(long, env = "REGCACHE_WEBHOOK_TOKEN", hide_env_values = true)]
    pub webhook_token: Option<String>,
    #[command(flatten)]
    pub registry: RegistryApiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Address `/metrics` (Prometheus, OpenMetrics text) listens on (not with `--once`).
    #[arg(
        long,
        env = "REGCACHE_METRICS_BIND_ADDRESS",
        default_value = "127.0.0.1:8081"
    )]
    pub metrics_bind_address: String,
    /// Address `/healthz` and `/readyz` listen on (not with `--once`).
    #[arg(
        long,
        env = "REGCACHE_HEALTH_PROBE_BIND_ADDRESS",
        default_value = "127.0.0.1:8082"
    )]
    pub health_probe_bind_address: String,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub limits: RegistryLimits,
}

impl StandaloneArgs {
    pub fn registry_api_options(&self) -> Result<crate::api::RegistryApiOptions, FlagError> {
        self.registry.options()
    }

    pub fn runtime_options(&self) -> Result<RuntimeOptions, FlagError> {
        runtime_options(&self.cache, &self.limits, self.concurrent)
    }

    pub fn listen_options(&self) -> ListenOptions {
        listen_options(
            &self.api_bind_address,
            &self.metrics_bind_address,
            &self.health_probe_bind_address,
            self.registry.tls_files(),
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// A repository (`nginx`, `ghcr.io/org/app`) or an image (`nginx:1.27`, `app@sha256:...`).
    pub reference: String,
    /// Ask a regcache read API (`http://regcache.regcache-system:8080`).
    #[arg(long, env = "REGCACHE_API", conflicts_with = "memcached")]
    pub api: Option<String>,
    /// Bearer token for the read API (in a cluster: a ServiceAccount token).
    #[arg(long, env = "REGCACHE_API_TOKEN")]
    pub token: Option<String>,
    /// Read memcached directly (`HOST:PORT`, repeatable); sees publicly warmed data only.
    #[arg(long = "memcached", env = "REGCACHE_MEMCACHED", value_delimiter = ',')]
    pub memcached: Vec<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Watch only this namespace (all namespaces when not given).
    #[arg(long, env = "REGCACHE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Platforms kept for watches that name none (`linux/amd64,linux/arm64`); all when empty.
    #[arg(long, env = "REGCACHE_DEFAULT_PLATFORMS", value_delimiter = ',')]
    pub default_platforms: Vec<String>,
    /// Tag-list interval for watches that set none.
    #[arg(long, env = "REGCACHE_DEFAULT_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub default_interval: Duration,
    /// Warm passes running at once.
    #[arg(long, env = "REGCACHE_CONCURRENT", default_value_t = 4)]
    pub concurrent: usize,
    /// Reconciles (secret lookups, status writes, Events) running at once. Each holds
    /// Kubernetes API requests, so this bounds memory when many watches change together.
    #[arg(long, env = "REGCACHE_CONCURRENT_RECONCILES", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrent_reconciles: u16,
    /// Elect one leader among replicas with a Lease; only the leader warms and writes.
    #[arg(long, env = "REGCACHE_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "REGCACHE_LEADER_ELECTION_ID",
        default_value = "regcache-leader"
    )]
    pub leader_election_id: String,
    /// Namespace of the leader-election Lease (the pod's namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// A leader that does not renew for this long is replaced.
    #[arg(long, env = "REGCACHE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews and candidates retry.
    #[arg(long, env = "REGCACHE_LEASE_RETRY", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry: Duration,
    /// This replica's name, for the Lease and Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Address `/metrics` (Prometheus, OpenMetrics text) listens on.
    #[arg(
        long,
        env = "REGCACHE_METRICS_BIND_ADDRESS",
        default_value = "0.0.0.0:8081"
    )]
    pub metrics_bind_address: String,
    /// Address `/healthz` (alive) and `/readyz` (watches listed and cache answering)
    /// listen on.
    #[arg(
        long,
        env = "REGCACHE_HEALTH_PROBE_BIND_ADDRESS",
        default_value = "0.0.0.0:8082"
    )]
    pub health_probe_bind_address: String,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub limits: RegistryLimits,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// Where discovery makes watches of the images workloads use.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryMode {
    /// No discovery.
    Off,
    /// In namespaces labelled `regcache.io/discover: "true"`.
    Labelled,
    /// In every namespace regcache watches.
    All,
}

/// Discovery of the repositories workloads use.
#[derive(Args, Debug, Clone)]
pub struct DiscoveryArgs {
    /// Make an ImageRepositoryWatch of each repository the workloads' pod templates use:
    /// `off`, `labelled` (namespaces labelled `regcache.io/discover: "true"`) or `all`.
    #[arg(long, env = "REGCACHE_DISCOVERY", value_enum, default_value = "off")]
    pub discovery: DiscoveryMode,
    /// How long a discovered watch that no workload uses is kept before it is deleted.
    #[arg(long, env = "REGCACHE_DISCOVERY_GRACE_PERIOD", default_value = "1h", value_parser = parse_duration)]
    pub discovery_grace_period: Duration,
    /// Registry host (`HOST[:PORT]`) reached over plain HTTP: discovered watches of its
    /// repositories get `insecure: true` (repeatable).
    #[arg(
        long = "discovery-insecure-registry",
        env = "REGCACHE_DISCOVERY_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub discovery_insecure_registries: Vec<String>,
    /// `tags.maxTags` of discovered watches whose namespace does not set
    /// `regcache.io/discoveryMaxTags` (all tags when not given).
    #[arg(long, env = "REGCACHE_DISCOVERY_MAX_TAGS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub discovery_max_tags: Option<u32>,
}

impl ControllerArgs {
    /// Discovery's options; `None` when it is off.
    pub fn discovery_options(
        &self,
    ) -> Result<Option<crate::controller::discovery::Options>, FlagError> {
        use crate::controller::discovery::Scope;
        let d = &self.discovery;
        let scope = match d.discovery {
            DiscoveryMode::Off => return Ok(None),
            DiscoveryMode::Labelled if self.watch_namespace.is_some() => {
                return Err(FlagError(
                    "--discovery=labelled needs to read Namespaces' labels, which regcache does \
                     not with --watch-namespace; use --discovery=all to discover in the watched \
                     namespace"
                        .to_string(),
                ));
            }
            DiscoveryMode::Labelled => Scope::Labelled,
            DiscoveryMode::All => Scope::All,
        };
        Ok(Some(crate::controller::discovery::Options {
            scope,
            grace_period: d.discovery_grace_period,
            insecure_registries: d
                .discovery_insecure_registries
                .iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
            max_tags: d.discovery_max_tags,
        }))
    }

    pub fn registry_api_options(&self) -> Result<crate::api::RegistryApiOptions, FlagError> {
        self.api.registry.options()
    }

    pub fn runtime_options(&self) -> Result<RuntimeOptions, FlagError> {
        runtime_options(&self.cache, &self.limits, self.concurrent)
    }

    pub fn listen_options(&self) -> ListenOptions {
        listen_options(
            &self.api.api_bind_address,
            &self.metrics_bind_address,
            &self.health_probe_bind_address,
            self.api.registry.tls_files(),
        )
    }
}

fn listen_options(
    api: &str,
    metrics: &str,
    probes: &str,
    api_tls: Option<(PathBuf, PathBuf)>,
) -> ListenOptions {
    ListenOptions {
        api: api.to_string(),
        metrics: metrics.to_string(),
        probes: probes.to_string(),
        api_tls,
    }
}

fn runtime_options(
    cache: &CacheArgs,
    limits: &RegistryLimits,
    concurrency: usize,
) -> Result<RuntimeOptions, FlagError> {
    Ok(RuntimeOptions {
        cache: CacheOptions {
            servers: cache.memcached.clone(),
            service: cache.memcached_service.clone(),
            refresh: cache.memcached_refresh,
            timeout: cache.memcached_timeout,
        },
        registry: limits.client_options()?,
        concurrency,
        answer_cache_bytes: cache.answer_cache_mib.saturating_mul(1 << 20),
    })
}

/// The read API and the registry webhook endpoint.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address the read API and webhooks listen on.
    #[arg(
        long,
        env = "REGCACHE_API_BIND_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub api_bind_address: String,
    /// Who may read: `kubernetes` checks the caller's ServiceAccount token (TokenReview)
    /// and that it may `get` the ImageRepositoryWatch (SubjectAccessReview); `none` lets
    /// anyone read (standalone use).
    #[arg(long, env = "REGCACHE_API_AUTH", value_enum, default_value_t = ApiAuthMode::Kubernetes)]
    pub api_auth: ApiAuthMode,
    /// Shared token registries must send to `POST /hooks/registry` (webhooks are off
    /// without one). Prefer the env var: a flag shows in `ps`.
    #[arg(long, env = "REGCACHE_WEBHOOK_TOKEN", hide_env_values = true)]
    pub webhook_token: Option<String>,
    #[command(flatten)]
    pub registry: RegistryApiArgs,
}

/// The registry API (`/v2/`) and the read API's TLS.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryApiArgs {
    /// `NAME=UPSTREAM` (repeatable or comma-separated): a request whose `Host` is NAME
    /// (or starts with the label NAME, e.g. `ghcr-io` for `ghcr-io.regcache.svc:8080`)
    /// names repositories of the registry UPSTREAM without its host, as Argo CD Image
    /// Updater sends them (`ghcr-io=ghcr.io`).
    #[arg(
        long = "registry-upstream",
        env = "REGCACHE_REGISTRY_UPSTREAMS",
        value_delimiter = ','
    )]
    pub registry_upstreams: Vec<String>,
    /// File holding the key (at least 32 bytes) that signs registry tokens; replicas
    /// sharing it accept each other's tokens. Without it, each process makes its own.
    #[arg(long, env = "REGCACHE_REGISTRY_TOKEN_KEY_FILE")]
    pub registry_token_key_file: Option<PathBuf>,
    /// The token endpoint's URL as clients reach it, e.g.
    /// `https://regcache.example.com/v2/token` (default: `/v2/token` on the scheme and host
    /// of the request).
    #[arg(long, env = "REGCACHE_REGISTRY_TOKEN_REALM")]
    pub registry_token_realm: Option<String>,
    /// PEM certificate chain: the read API serves HTTPS (reloaded when the file changes).
    #[arg(
        long,
        env = "REGCACHE_API_TLS_CERT_FILE",
        requires = "api_tls_key_file"
    )]
    pub api_tls_cert_file: Option<PathBuf>,
    /// PEM private key for `--api-tls-cert-file`.
    #[arg(
        long,
        env = "REGCACHE_API_TLS_KEY_FILE",
        requires = "api_tls_cert_file"
    )]
    pub api_tls_key_file: Option<PathBuf>,
}

/// Cloud registry sign-in (watches with `provider: aws`, `gcp` or `azure`).
#[derive(Args, Debug, Clone)]
pub struct CloudArgs {
    /// Whether a cloud watch whose ServiceAccount carries no cloud identity annotation
    /// signs in as regcache itself. Turn it off in clusters shared by tenants, so that each
    /// signs in with its own role only.
    #[arg(
        long,
        env = "REGCACHE_CLOUD_CONTROLLER_IDENTITY",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cloud_controller_identity: bool,
    /// Whether a cloud watch signs in as the cloud identity its ServiceAccount is annotated
    /// with, through a token of that ServiceAccount (needs `create` on
    /// `serviceaccounts/token`).
    #[arg(
        long,
        env = "REGCACHE_CLOUD_SERVICE_ACCOUNT_IDENTITY",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cloud_service_account_identity: bool,
    /// Reuse cloud registry credentials at most this long (they are renewed after three
    /// quarters of their lifetime in any case).
    #[arg(long, env = "REGCACHE_CLOUD_CREDENTIAL_MAX_REUSE", default_value = "1h", value_parser = parse_duration)]
    pub cloud_credential_max_reuse: Duration,
    /// The AWS session asked of STS when signing in as a ServiceAccount's role (AWS
    /// accepts 15m to 12h); the ECR token ends with it.
    #[arg(long, env = "REGCACHE_AWS_SESSION_DURATION", default_value = "1h", value_parser = parse_duration)]
    pub aws_session_duration: Duration,
    /// The workload identity pool provider a ServiceAccount's Kubernetes token is exchanged
    /// at, for watches signing in as the Google service account of their ServiceAccount's
    /// `iam.gke.io/gcp-service-account` annotation
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/providers/P`,
    /// or GKE's `identitynamespace:PROJECT.svc.id.goog:...`).
    #[arg(long, env = "REGCACHE_GCP_WORKLOAD_IDENTITY_PROVIDER")]
    pub gcp_workload_identity_provider: Option<String>,
    /// The audience of the Kubernetes tokens exchanged at that provider (default: the
    /// provider as an `https://` URL; GKE's pool: `PROJECT.svc.id.goog`).
    #[arg(long, env = "REGCACHE_GCP_TOKEN_AUDIENCE")]
    pub gcp_token_audience: Option<String>,
    /// Google's STS token endpoint.
    #[arg(
        long,
        env = "REGCACHE_GCP_STS_URL",
        default_value = "https://sts.googleapis.com/v1/token"
    )]
    pub gcp_sts_url: String,
    /// Google's IAM Credentials endpoint (impersonation of the Google service account).
    #[arg(
        long,
        env = "REGCACHE_GCP_IAM_CREDENTIALS_URL",
        default_value = "https://iamcredentials.googleapis.com"
    )]
    pub gcp_iam_credentials_url: String,
    /// The Entra ID tenant of ServiceAccounts annotated `azure.workload.identity/client-id`
    /// without `azure.workload.identity/tenant-id`.
    #[arg(long, env = "REGCACHE_AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,
    /// PEM CA certificates trusted for Entra ID beside the public roots (a TLS-inspecting
    /// proxy's, or a private authority host's; `AZURE_AUTHORITY_HOST` moves it).
    #[arg(long, env = "REGCACHE_AZURE_CA_FILE")]
    pub azure_ca_file: Option<PathBuf>,
}

impl CloudArgs {
    /// The cloud options; reads `--azure-ca-file`.
    pub fn options(&self) -> Result<crate::cloud::CloudOptions, FlagError> {
        let ca_pem = match &self.azure_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| FlagError(format!("--azure-ca-file {}: {e}", path.display())))?;
                crate::registry::check_ca_bundle(&pem)
                    .map_err(|e| FlagError(format!("--azure-ca-file {}: {e}", path.display())))?;
                Some(pem)
            }
        };
        Ok(crate::cloud::CloudOptions {
            max_reuse: self.cloud_credential_max_reuse,
            aws_session_duration: self.aws_session_duration,
            gcp: crate::cloud::gcp::GcpOptions {
                workload_identity_provider: self.gcp_workload_identity_provider.clone(),
                token_audience: self.gcp_token_audience.clone(),
                sts_url: self.gcp_sts_url.clone(),
                iam_credentials_url: self.gcp_iam_credentials_url.clone(),
            },
            azure: crate::cloud::azure::AzureOptions {
                tenant_id: self.azure_tenant_id.clone(),
                ca_pem,
            },
            ..Default::default()
        })
    }
}

/// A flag that cannot be used (a registry API or cloud flag), and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

impl RegistryApiArgs {
    /// The registry API's options; reads the token key file.
    pub fn options(&self) -> Result<crate::api::RegistryApiOptions, FlagError> {
        let mut upstreams = Vec::new();
        for entry in &self.registry_upstreams {
            let (name, upstream) = entry
                .split_once('=')
                .map(|(n, u)| (n.trim(), u.trim()))
                .filter(|(n, u)| !n.is_empty() && !u.is_empty())
                .ok_or_else(|| {
                    FlagError(format!(
                        "--registry-upstream {entry:?}: expected NAME=UPSTREAM, e.g. ghcr-io=ghcr.io"
                    ))
                })?;
            crate::image::Repository::parse(&format!("{upstream}/x")).map_err(|e| {
                FlagError(format!(
                    "--registry-upstream {entry:?}: {upstream:?} is not a registry host: {e}"
                ))
            })?;
            upstreams.push((name.to_string(), upstream.to_string()));
        }
        let token_keys = match &self.registry_token_key_file {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    FlagError(format!("--registry-token-key-file {}: {e}", path.display()))
                })?;
                Some(crate::api::TokenKeys::from_secret(&bytes).map_err(|e| {
                    FlagError(format!("--registry-token-key-file {}: {e}", path.display()))
                })?)
            }
        };
        if let Some(realm) = &self.registry_token_realm {
            url::Url::parse(realm)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    FlagError(format!(
                        "--registry-token-realm {realm:?}: expected an http(s) URL"
                    ))
                })?;
        }
        Ok(crate::api::RegistryApiOptions {
            token_keys,
            token_realm: self.registry_token_realm.clone(),
            upstreams,
            tls: self.api_tls_cert_file.is_some(),
        })
    }

    /// The read API's certificate and key files, when it serves HTTPS.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.api_tls_cert_file
            .clone()
            .zip(self.api_tls_key_file.clone())
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAuthMode {
    Kubernetes,
    None,
}

/// Where the cache lives.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// memcached server `HOST:PORT` (repeatable or comma-separated).
    #[arg(long = "memcached", env = "REGCACHE_MEMCACHED", value_delimiter = ',')]
    pub memcached: Vec<String>,
    /// DNS SRV name listing the memcached servers, e.g. the headless Service of a memcached
    /// StatefulSet: `_memcache._tcp.memcached.NAMESPACE.svc.cluster.local`.
    #[arg(long, env = "REGCACHE_MEMCACHED_SERVICE")]
    pub memcached_service: Option<String>,
    /// How often the SRV name is looked up again.
    #[arg(long, env = "REGCACHE_MEMCACHED_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub memcached_refresh: Duration,
    /// Timeout of each memcached operation.
    #[arg(long, env = "REGCACHE_MEMCACHED_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub memcached_timeout: Duration,
    /// MiB of read API repository answers kept in the process, each reused while the
    /// repository's head in memcached is unchanged (0 keeps none).
    #[arg(long, env = "REGCACHE_ANSWER_CACHE_MIB", default_value_t = 16)]
    pub answer_cache_mib: usize,
}

/// How hard regcache may push registries.
#[derive(Args, Debug, Clone)]
pub struct RegistryLimits {
    /// Timeout for each registry request, body included (`30s`, `2m`).
    #[arg(long, env = "REGCACHE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Ceiling on requests per second to one registry host (halved on each 429).
    #[arg(long, env = "REGCACHE_REGISTRY_QPS", default_value_t = 100.0)]
    pub registry_qps: f64,
    /// Requests that may go at once to one host after a quiet spell.
    #[arg(long, env = "REGCACHE_REGISTRY_BURST", default_value_t = 20.0)]
    pub registry_burst: f64,
    /// Requests in flight at once to one host, shared by every pass on it.
    #[arg(long, env = "REGCACHE_REGISTRY_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub registry_concurrency: u32,
    /// YAML file of per-registry limits (`hosts: [{host: PATTERN, qps, burst,
    /// concurrency}]`), matched before the ones regcache ships for Docker Hub, GHCR, Quay
    /// and ECR Public; the three flags above are the defaults for other hosts.
    #[arg(long, env = "REGCACHE_REGISTRY_LIMITS_FILE")]
    pub registry_limits_file: Option<PathBuf>,
    /// Of the pull quota a registry reports (Docker Hub's `RateLimit-Remaining`), what
    /// regcache leaves for the cluster's own pulls: a number (`10`) or a share of the
    /// limit (`20%`). At the reserve, manifest GETs wait and HEADs go on.
    #[arg(long, env = "REGCACHE_REGISTRY_PULL_RESERVE", default_value = "20%", value_parser = crate::registry::quota::Reserve::parse)]
    pub registry_pull_reserve: crate::registry::quota::Reserve,
    /// `NAME=IP` (repeatable or comma-separated): connect to registry host NAME at IP
    /// instead of looking it up, like curl's `--resolve`; the port is the one in the image
    /// name. For a registry reached at a private address under its public name.
    #[arg(
        long = "registry-host-address",
        env = "REGCACHE_REGISTRY_HOST_ADDRESSES",
        value_delimiter = ',',
        value_parser = parse_host_address
    )]
    pub registry_host_addresses: Vec<(String, std::net::IpAddr)>,
}

/// `NAME=IP` of `--registry-host-address`.
fn parse_host_address(s: &str) -> Result<(String, std::net::IpAddr), String> {
    let (name, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=IP, e.g. registry.example.com=10.0.0.5"))?;
    let name = name.trim();
    if name.is_empty() || name.contains([':', '/']) {
        return Err(format!(
            "{s:?}: NAME must be a host name without port or path"
        ));
    }
    let ip = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    Ok((name.to_ascii_lowercase(), ip))
}

impl RegistryLimits {
    /// The registry client's options; reads `--registry-limits-file`.
    pub fn client_options(&self) -> Result<ClientOptions, FlagError> {
        let mut host_rules = Vec::new();
        if let Some(path) = &self.registry_limits_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                FlagError(format!("--registry-limits-file {}: {e}", path.display()))
            })?;
            host_rules = crate::registry::limits::parse_file(&text, &path.display().to_string())
                .map_err(|e| FlagError(format!("--registry-limits-file {e}")))?;
        }
        host_rules.extend(crate::registry::limits::shipped());
        Ok(ClientOptions {
            request_timeout: self.request_timeout,
            limiter: LimiterSettings {
                max_rate: self.registry_qps,
                burst: self.registry_burst,
                concurrency: self.registry_concurrency as usize,
                ..Default::default()
            },
            host_addresses: self.registry_host_addresses.clone(),
            host_rules,
            pull_reserve: self.registry_pull_reserve,
            ..Default::default()
        })
    }
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image reference: `nginx`, `ghcr.io/org/app:v1`, `host:5000/repo@sha256:...`.
    pub reference: String,
    /// Only these platforms of a multi-platform image (`os/arch[/variant]`, repeatable);
    /// all platforms when not given.
    #[arg(long = "platform", env = "REGCACHE_PLATFORMS", value_delimiter = ',')]
    pub platforms: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct TagsArgs {
    /// Repository: `nginx`, `ghcr.io/org/app`, `host:5000/repo`.
    pub repository: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// How to reach registries from the command line.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Docker config file with credentials (`auths`, `credHelpers`, `credsStore`). Default:
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` when present.
    #[arg(long, env = "REGCACHE_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// Registry host (`HOST[:PORT]`) to reach over plain HTTP (repeatable).
    #[arg(
        long = "insecure-registry",
        env = "REGCACHE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// PEM CA bundle to trust for the registry, in addition to the public roots.
    #[arg(long, env = "REGCACHE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub limits: RegistryLimits,
}

/// Parses a flag's duration: Go's syntax as watches take it (`500ms`, `90s`, `1h30m`,
/// [`crate::crd::duration`]), plus two forms for the command line only: days (`7d`) and a
/// bare number of seconds (`45`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let days = s
        .strip_suffix('d')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    let seconds = if let Some(n) = days {
        n.parse::<f64>().map(|d| d * 86_400.0).ok()
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<f64>().ok()
    } else {
        return crate::crd::duration::parse(s).map_err(|e| format!("{e}, or d for days"));
    };
    match seconds {
        Some(v) if v.is_finite() && v <= 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "invalid duration {s:?}: expected a number and a unit, like 30s, 1h30m or 7d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 minutes").unwrap_err().contains("unit"));
        assert!(
            parse_duration("1h2d")
                .unwrap_err()
                .contains("or d for days")
        );
        assert!(parse_duration("abc").unwrap_err().contains("number"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn repeatable_flags() {
        let cli = Cli::try_parse_from([
            "regcache",
            "inspect",
            "nginx",
            "--platform",
            "linux/amd64",
            "--platform=linux/arm64,linux/arm/v7",
            "--insecure-registry",
            "localhost:5000",
        ])
        .unwrap();
        let Command::Inspect(args) = cli.command else {
            panic!("not inspect")
        };
        assert_eq!(
            args.platforms,
            ["linux/amd64", "linux/arm64", "linux/arm/v7"]
        );
        assert_eq!(args.registry.insecure_registries, ["localhost:5000"]);
    }

    #[test]
    fn discovery_flags_become_options_and_labelled_needs_every_namespace() {
        let controller = |extra: &[&str]| {
            let mut args = vec!["regcache", "controller"];
            args.extend(extra);
            let Command::Controller(c) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not controller")
            };
            c.discovery_options()
        };
        assert!(controller(&[]).unwrap().is_none(), "off by default");
        let o = controller(&[
            "--discovery=labelled",
            "--discovery-grace-period=10m",
            "--discovery-insecure-registry=a:5000, b",
            "--discovery-max-tags=50",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.scope, crate::controller::discovery::Scope::Labelled);
        assert_eq!(o.grace_period, Duration::from_secs(600));
        assert_eq!(o.insecure_registries, ["a:5000", "b"]);
        assert_eq!(o.max_tags, Some(50));
        let err = controller(&["--discovery=labelled", "--watch-namespace=team"]).unwrap_err();
        assert!(err.to_string().contains("use --discovery=all"), "{err}");
        let o = controller(&["--discovery=all", "--watch-namespace=team"])
            .unwrap()
            .unwrap();
        assert_eq!(o.scope, crate::controller::discovery::Scope::All);
    }
}
