//! ECR private and ECR Public sign-in through the AWS SDK for Rust: `GetAuthorizationToken`
//! as the controller's identity (the SDK's default chain: IRSA's web identity, EKS Pod
//! Identity, environment, instance metadata), or as a ServiceAccount's role
//! (`AssumeRoleWithWebIdentity` with a token from the TokenRequest API). The registry user
//! is `AWS`. Endpoints follow the SDK's own settings (`AWS_ENDPOINT_URL_ECR`, ...).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials as _;
use aws_sdk_ecr::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{Provider as TlsProvider, rustls_provider::CryptoMode};
use base64::Engine as _;

use super::{CloudError, CloudLogin, Identity, Issued, SignIn};
use crate::credentials::Credential;

/// The audience of the Kubernetes tokens STS takes (as IRSA asks for them).
const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// ECR Public's registry host; its API lives in us-east-1 only.
pub const ECR_PUBLIC: &str = "public.ecr.aws";
const ECR_PUBLIC_REGION: &str = "us-east-1";

/// An ECR registry, from its host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    /// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` or the dual-stack
    /// `<account>.dkr-ecr[-fips].<region>.on.aws`.
    Private { account: String, region: String },
    /// `public.ecr.aws`.
    Public,
}

impl Registry {
    /// The registry a host names (a port is allowed and ignored), or why it names none.
    pub fn parse(host: &str) -> Result<Registry, String> {
        let name = crate::image::host_name(host);
        if name.eq_ignore_ascii_case(ECR_PUBLIC) {
            return Ok(Registry::Public);
        }
        let not_ecr = || {
            format!(
                "{host} is not an ECR registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com, \
                 .amazonaws.com.cn, ACCOUNT.dkr-ecr.REGION.on.aws, or {ECR_PUBLIC})"
            )
        };
        let name = name.to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').collect();
        // `amazonaws.com`, or `amazonaws.com.cn` in the China partition.
        let suffix_ok =
            |rest: &[&str]| matches!(rest, ["amazonaws", "com"] | ["amazonaws", "com", "cn"]);
        let (account, region) = match labels.as_slice() {
            [account, "dkr", "ecr" | "ecr-fips", region, rest @ ..] if suffix_ok(rest) => {
                (*account, *region)
            }
            [account, "dkr-ecr" | "dkr-ecr-fips", region, "on", "aws"] => (*account, *region),
            _ => return Err(not_ecr()),
        };
        let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
        let region_ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if account_ok && region_ok {
            Ok(Registry::Private {
                account: account.to_string(),
                region: region.to_string(),
            })
        } else {
            Err(not_ecr())
        }
    }

    fn region(&self) -> &str {
        match self {
            Registry::Private { region, .. } => region,
            Registry::Public => ECR_PUBLIC_REGION,
        }
    }
}

/// The AWS side of [`SignIn`]: SDK configurations per region, loaded once.
#[derive(Default)]
pub(super) struct Aws {
    /// The default chain's configuration per region (the controller's identity).
    chains: tokio::sync::Mutex<HashMap<String, SdkConfig>>,
}

impl Aws {
    pub(super) async fn sign_in(
        &self,
        sign_in: &SignIn,
        login: &CloudLogin,
    ) -> Result<Issued, CloudError> {
        let registry = Registry::parse(&login.host).map_err(|e| CloudError::new(login, e))?;
        let region = registry.region().to_string();
        let (config, session_expires) = match &login.identity {
            Identity::Controller => {
                let config = self.chain(&region).await;
                let provider = config.credentials_provider().ok_or_else(|| {
                    CloudError::new(login, "the AWS SDK found no credentials provider")
                })?;
                let credentials = provider.provide_credentials().await.map_err(|e| {
                    CloudError::new(
                        login,
                        format!("AWS credentials: {}", DisplayErrorContext(&e)),
                    )
                })?;
                (config, credentials.expiry())
            }
            Identity::ServiceAccount {
                namespace,
                name,
                role,
            } => {
                let token = sign_in
                    .service_account_token(login, namespace, name, STS_AUDIENCE)
                    .await?;
                let sts = aws_sdk_sts::Client::new(&loader(&region).no_credentials().load().await);
                let answer = sts
                    .assume_role_with_web_identity()
                    .role_arn(role)
                    .role_session_name(session_name(namespace, name))
                    .web_identity_token(token.expose())
                    .duration_seconds(sign_in.options.aws_session_duration.as_secs() as i32)
                    .send()
                    .await
                    .map_err(|e| {
                        CloudError::new(
                            login,
                            format!(
                                "AssumeRoleWithWebIdentity {role}: {}",
                                DisplayErrorContext(&e)
                            ),
                        )
                    })?;
                let c = answer.credentials().ok_or_else(|| {
                    CloudError::new(login, "AssumeRoleWithWebIdentity returned no credentials")
                })?;
                let expires = SystemTime::try_from(*c.expiration()).ok();
                let credentials = aws_credential_types::Credentials::new(
                    c.access_key_id(),
                    c.secret_access_key(),
                    Some(c.session_token().to_string()),
                    expires,
                    "regcache-web-identity",
                );
                (
                    loader(&region)
                        .credentials_provider(credentials)
                        .load()
                        .await,
                    expires,
                )
            }
        };
        let refused = |api: &str, e: String| {
            CloudError::new(login, format!("{api} GetAuthorizationToken: {e}"))
        };
        // The two APIs answer the same fields in different shapes.
        let (token, token_expires) = match registry {
            Registry::Private { .. } => {
                let answer = aws_sdk_ecr::Client::new(&config)
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| refused("ECR", DisplayErrorContext(&e).to_string()))?;
                let data = answer.authorization_data().first();
                (
                    data.and_then(|d| d.authorization_token())
                        .map(str::to_string),
                    data.and_then(|d| d.expires_at()).copied(),
                )
            }
            Registry::Public => {
                let answer = aws_sdk_ecrpublic::Client::new(&config)
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| refused("ECR Public", DisplayErrorContext(&e).to_string()))?;
                let data = answer.authorization_data();
                (
                    data.and_then(|d| d.authorization_token())
                        .map(str::to_string),
                    data.and_then(|d| d.expires_at()).copied(),
                )
            }
        };
        let token_expires = token_expires.and_then(|t| SystemTime::try_from(t).ok());
        let token = token.ok_or_else(|| {
            CloudError::new(
                login,
                "GetAuthorizationToken returned no authorization token",
            )
        })?;
        let credential = decode_token(&token).ok_or_else(|| {
            CloudError::new(
                login,
                "GetAuthorizationToken returned a token that is not base64 of AWS:PASSWORD",
            )
        })?;
        Ok(Issued {
            credential,
            expires: expiry(token_expires, session_expires, SystemTime::now()),
        })
    }

    /// The default chain's configuration for `region`, loaded on first use.
    async fn chain(&self, region: &str) -> SdkConfig {
        let mut chains = self.chains.lock().await;
        if let Some(c) = chains.get(region) {
            return c.clone();
        }
        let config = loader(region).load().await;
        chains.insert(region.to_string(), config.clone());
        config
    }
}

/// The SDK's loader with regcache's HTTP client (rustls with ring, as everywhere else).
fn loader(region: &str) -> aws_config::ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(TlsProvider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_string()))
}

/// The STS session name: who asked, within STS's 64 characters of `[\w+=,.@-]`.
fn session_name(namespace: &str, name: &str) -> String {
    let mut s: String = format!("regcache@{namespace}.{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(64);
    s
}

/// `base64(AWS:PASSWORD)` as registry credentials.
fn decode_token(token: &str) -> Option<Credential> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty() && !password.is_empty()).then(|| Credential::basic(user, password))
}

/// When credentials stop working: the token's expiry, but never after the session that
/// signed it ends. A token expiry already past on arrival is a clock disagreement, not an
/// answer: the session's expiry (or an hour) stands in, and a 401 renews sooner.
fn expiry(token: Option<SystemTime>, session: Option<SystemTime>, now: SystemTime) -> SystemTime {
    let fallback = session.unwrap_or(now + Duration::from_secs(3600));
    match token {
        Some(t) if t > now => t.min(fallback),
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_parse_and_others_are_refused() {
        let private = |account: &str, region: &str| Registry::Private {
            account: account.into(),
            region: region.into(),
        };
        for (host, want) in [
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                private("123456789012", "eu-west-1"),
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                private("123456789012", "us-gov-west-1"),
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                private("123456789012", "cn-north-1"),
            ),
            (
                "123456789012.dkr-ecr.eu-west-1.on.aws",
                private("123456789012", "eu-west-1"),
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com:5000",
                private("123456789012", "us-east-1"),
            ),
            ("public.ecr.aws", Registry::Public),
        ] {
            assert_eq!(Registry::parse(host), Ok(want), "{host}");
        }
        for host in [
            "ghcr.io",
            "12345.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
            "123456789012.dkr.ecr.eu-west-1.example.com",
            "123456789012.dkr.eu-west-1.amazonaws.com",
            "123456789012.ecr.eu-west-1.amazonaws.com",
        ] {
            let e = Registry::parse(host).unwrap_err();
            assert!(e.contains(host) && e.contains("not an ECR registry"), "{e}");
        }
    }

    #[test]
    fn tokens_decode_to_basic_credentials() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:secret-password");
        let c = decode_token(&token).unwrap();
        assert_eq!(c.identity(), "basic:AWS");
        assert_eq!(c, Credential::basic("AWS", "secret-password"));
        assert!(decode_token("not base64!").is_none());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("AWS");
        assert!(decode_token(&no_colon).is_none());
    }

    #[test]
    fn expiry_never_outlives_the_session_and_ignores_a_past_one() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = |n: u64| now + Duration::from_secs(n * 3600);
        assert_eq!(expiry(Some(h(12)), Some(h(1)), now), h(1));
        assert_eq!(expiry(Some(h(12)), None, now), h(1));
        assert_eq!(expiry(Some(h(2)), Some(h(3)), now), h(2));
        let past = now - Duration::from_secs(10);
        assert_eq!(expiry(Some(past), Some(h(3)), now), h(3));
    }

    #[test]
    fn session_names_fit_sts() {
        let s = session_name("team-a", "puller");
        assert_eq!(s, "regcache@team-a.puller");
        assert_eq!(session_name(&"n".repeat(63), &"x".repeat(253)).len(), 64);
    }
}
