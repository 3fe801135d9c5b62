//! Pure steps of reconcile: validate a watch's spec with what was resolved from the API,
//! plan its warmer target, and compute the status it should have.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::cache::keys::Scope;
use crate::cloud::{CloudLogin, Identity, SignIn};
use crate::crd::{
    ImageRepositoryWatch, ImageRepositoryWatchStatus, Provider, READY, duration, reasons,
};
use crate::credentials::{Credential, DockerConfig};
use crate::image::{Platform, Repository};
use crate::registry::{Endpoint, check_ca_bundle};
use crate::warmer::filter::TagFilter;
use crate::warmer::{CloudSource, FailureKind, Outcome, Target};

/// Defaults the controller applies to every watch.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub interval: Duration,
    pub platforms: Vec<Platform>,
    /// Signs in to cloud registries for watches with a cloud `provider`.
    pub sign_in: Option<Arc<SignIn>>,
    /// Whether a cloud watch without an annotated ServiceAccount signs in as the
    /// controller itself (`--cloud-controller-identity`).
    pub cloud_controller_identity: bool,
    /// Whether a cloud watch signs in as its ServiceAccount's annotated cloud identity
    /// (`--cloud-service-account-identity`).
    pub cloud_service_account_identity: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            interval: Duration::from_secs(300),
            platforms: Vec::new(),
            sign_in: None,
            cloud_controller_identity: true,
            cloud_service_account_identity: true,
        }
    }
}

/// A `--default-platforms` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid --default-platforms {value:?}: {source}")]
pub struct PlatformFlagError {
    pub value: String,
    #[source]
    pub source: crate::image::ImageError,
}

impl Defaults {
    /// Defaults from the `--default-platforms` and `--default-interval` flags.
    pub fn from_flags(
        platforms: &[String],
        interval: Duration,
    ) -> Result<Defaults, PlatformFlagError> {
        let platforms = platforms
            .iter()
            .map(|p| {
                Platform::parse(p).map_err(|source| PlatformFlagError {
                    value: p.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Defaults {
            interval,
            platforms,
            ..Defaults::default()
        })
    }
}

/// Why a watch cannot be warmed as it stands: the `Ready=False` reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Credentials and CA gathered from Secrets and the ServiceAccount.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub docker_config: DockerConfig,
    pub ca_pem: Option<Vec<u8>>,
    /// The ServiceAccount the watch names, when it exists: its name and annotations
    /// (a cloud identity's annotation among them).
    pub service_account: Option<(String, std::collections::BTreeMap<String, String>)>,
}

/// `namespace/name`: the warmer's id for a watch.
pub(crate) fn target_id(watch: &ImageRepositoryWatch) -> String {
    format!(
        "{}/{}",
        watch.namespace().unwrap_or_default(),
        watch.name_any()
    )
}

/// The repository a watch names, or why it names none.
pub fn repository(watch: &ImageRepositoryWatch) -> Result<Repository, Problem> {
    Repository::parse(&watch.spec.image).map_err(|e| {
        Problem::new(
            reasons::INVALID_IMAGE,
            format!("ImageRepositoryWatch {}: spec.image: {e}", target_id(watch)),
        )
    })
}

/// Validates the spec and builds the warmer target.
pub(crate) fn plan(
    watch: &ImageRepositoryWatch,
    resolved: &Resolved,
    defaults: &Defaults,
) -> Result<Target, Problem> {
    let id = target_id(watch);
    let invalid = |field: &str, detail: String| {
        Problem::new(
            reasons::INVALID_SPEC,
            format!("ImageRepositoryWatch {id}: spec.{field}: {detail}"),
        )
    };
    let repository = repository(watch)?;
    let interval = match &watch.spec.interval {
        None => defaults.interval,
        Some(s) => duration::parse_interval(s).map_err(|e| invalid("interval", e))?,
    };
    let platforms = if watch.spec.platforms.is_empty() {
        defaults.platforms.clone()
    } else {
        watch
            .spec
            .platforms
            .iter()
            .map(|p| Platform::parse(p).map_err(|e| invalid("platforms", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?
    };
    let tags = watch.spec.tags.clone().unwrap_or_default();
    let filter = TagFilter::new(
        &tags.include,
        &tags.exclude,
        tags.max_tags.map(|m| m as usize),
        tags.include_signatures,
    )
    .map_err(|e| invalid("tags", e.to_string()))?;
    if let Some(pem) = &resolved.ca_pem {
        let secret = watch
            .spec
            .cert_secret_ref
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or_default();
        check_ca_bundle(pem).map_err(|e| {
            Problem::new(
                reasons::INVALID_CERTIFICATE,
                format!(
                    "ImageRepositoryWatch {id}: ca.crt of secret {}/{secret} for registry {}: {e}",
                    watch.namespace().unwrap_or_default(),
                    repository.host()
                ),
            )
        })?;
    }
    let namespace = watch.namespace().unwrap_or_default();
    let (credential, cloud, scope) = match watch.spec.provider.unwrap_or_default() {
        Provider::Generic => {
            let credential = resolved.docker_config.credential_for(repository.host());
            let scope = Scope::for_credential(repository.host(), &namespace, &credential);
            (credential, None, scope)
        }
        cloud @ (Provider::Aws | Provider::Gcp | Provider::Azure) => {
            let provider = match cloud {
                Provider::Gcp => crate::cloud::Provider::Gcp,
                Provider::Azure => crate::cloud::Provider::Azure,
                _ => crate::cloud::Provider::Aws,
            };
            let cloud = cloud_source(watch, provider, &repository, resolved, defaults)?;
            let scope = Scope::for_identity(repository.host(), &namespace, &cloud.login.identity());
            (Credential::Anonymous, Some(cloud), scope)
        }
    };
    Ok(Target {
        id,
        scope,
        credential,
        cloud,
        endpoint: Endpoint {
            insecure: watch.spec.insecure,
            ca_pem: resolved.ca_pem.clone().map(Arc::new),
        },
        filter,
        platforms,
        interval,
        timestamp_labels: watch.spec.timestamp_labels,
        repository,
    })
}

/// The cloud login of a watch with a cloud `provider`: its ServiceAccount's identity when
/// the account carries the provider's annotation, else the controller's when allowed.
fn cloud_source(
    watch: &ImageRepositoryWatch,
    provider: crate::cloud::Provider,
    repository: &Repository,
    resolved: &Resolved,
    defaults: &Defaults,
) -> Result<CloudSource, Problem> {
    let id = target_id(watch);
    provider.check_host(repository.host()).map_err(|e| {
        Problem::new(
            reasons::INVALID_SPEC,
            format!(
                "ImageRepositoryWatch {id}: spec.provider {}: {e}",
                provider.name()
            ),
        )
    })?;
    let unavailable = |detail: String| {
        Problem::new(
            reasons::CREDENTIALS_UNAVAILABLE,
            format!("ImageRepositoryWatch {id}: {detail}"),
        )
    };
    let Some(sign_in) = &defaults.sign_in else {
        return Err(unavailable(
            "cloud sign-in is not set up in this process".into(),
        ));
    };
    let annotation = provider.identity_annotation();
    let annotated = resolved
        .service_account
        .as_ref()
        .and_then(|(name, annotations)| {
            annotations
                .get(annotation)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(|role| (name, role))
        });
    let identity = match annotated {
        Some((name, _)) if !defaults.cloud_service_account_identity => {
            return Err(unavailable(format!(
                "provider {}: ServiceAccount {name} names a cloud identity ({annotation}), but \
                 regcache does not sign in as ServiceAccounts here \
                 (--cloud-service-account-identity=false)",
                provider.name()
            )));
        }
        Some((name, role)) => Identity::ServiceAccount {
            namespace: watch.namespace().unwrap_or_default(),
            name: name.clone(),
            role: service_account_role(provider, role, resolved),
        },
        None if defaults.cloud_controller_identity => Identity::Controller,
        None => {
            let account = match &watch.spec.service_account_name {
                Some(name) => format!("ServiceAccount {name} has no {annotation} annotation"),
                None => "spec.serviceAccountName names no ServiceAccount".to_string(),
            };
            return Err(unavailable(format!(
                "provider {}: {account}, and the controller does not lend its own cloud identity \
                 (--cloud-controller-identity=false); name a ServiceAccount of this namespace \
                 annotated {annotation}",
                provider.name()
            )));
        }
    };
    Ok(CloudSource {
        login: CloudLogin {
            provider,
            host: repository.host().to_string(),
            identity,
        },
        sign_in: sign_in.clone(),
    })
}

/// A ServiceAccount's cloud identity: its annotation's value, with the tenant of an Entra
/// ID identity in front (`TENANT/CLIENT`) when the ServiceAccount names it.
fn service_account_role(
    provider: crate::cloud::Provider,
    role: &str,
    resolved: &Resolved,
) -> String {
    let tenant = resolved
        .service_account
        .as_ref()
        .and_then(|(_, annotations)| annotations.get(crate::cloud::azure::TENANT_ANNOTATION))
        .map(|t| t.trim())
        .filter(|t| !t.is_empty());
    match (provider, tenant) {
        (crate::cloud::Provider::Azure, Some(tenant)) => format!("{tenant}/{role}"),
        _ => role.to_string(),
    }
}

/// The `Ready` condition, keeping the previous transition time when status and reason
/// are unchanged, so an unchanged status compares equal and is not written again.
fn ready(
    previous: Option<&Condition>,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = match previous {
        Some(p) if p.status == status && p.reason == reason => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn failure_reason(kind: Option<FailureKind>) -> &'static str {
    match kind {
        Some(FailureKind::CredentialsUnavailable) => reasons::CREDENTIALS_UNAVAILABLE,
        Some(FailureKind::Unauthorized) => reasons::UNAUTHORIZED,
        Some(FailureKind::RateLimited) => reasons::RATE_LIMITED,
        Some(FailureKind::PullQuotaReserved) => reasons::PULL_QUOTA_RESERVED,
        Some(FailureKind::RepositoryNotFound) => reasons::REPOSITORY_NOT_FOUND,
        Some(FailureKind::RegistryUnavailable) => reasons::REGISTRY_UNAVAILABLE,
        Some(FailureKind::Cache) => reasons::CACHE_UNAVAILABLE,
        Some(FailureKind::Other) | None => reasons::WARM_FAILED,
    }
}

/// What the watch's status should be, from the plan's result and the latest outcome;
/// `now` is the transition time of a condition that changes.
pub(crate) fn desired_status(
    watch: &ImageRepositoryWatch,
    planned: &Result<Target, Problem>,
    outcome: Option<&Outcome>,
    requested_at: Option<&str>,
    now: &Time,
) -> ImageRepositoryWatchStatus {
    let current = watch.status.clone().unwrap_or_default();
    let previous = current.ready();
    let generation = watch.metadata.generation;
    let mut status = ImageRepositoryWatchStatus {
        canonical_image_name: repository(watch).ok().map(|r| r.canonical()),
        observed_generation: generation,
        last_handled_requested_at: requested_at
            .map(str::to_string)
            .or(current.last_handled_requested_at.clone()),
        ..current.clone()
    };
    let condition = match (planned, outcome) {
        (Err(problem), _) => ready(
            previous,
            "False",
            problem.reason,
            problem.message.clone(),
            generation,
            now,
        ),
        (Ok(_), _) if watch.spec.suspend => ready(
            previous,
            "Unknown",
            reasons::SUSPENDED,
            "warming is suspended (spec.suspend); cached data is kept".to_string(),
            generation,
            now,
        ),
        (Ok(_), Some(o)) => {
            // A failed pass reports the last update its cache still knows, and the cache
            // may have lost it (restart, flush_all, the server holding the index down).
            // The status already reported a complete update of this repository: it never
            // moves back or vanishes because the cache forgot it.
            let reported = current
                .last_update
                .as_deref()
                .filter(|_| current.canonical_image_name.as_deref() == Some(&o.repository))
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc());
            status.last_update = o.last_update.max(reported).map(|t| t.to_rfc3339());
            status.last_error = o.error.clone();
            status.tag_count = Some(o.tags as u64);
            status.latest_tags = o.latest_tags.clone();
            status.next_scan = o
                .next_pass
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            match &o.error {
                None => ready(
                    previous,
                    "True",
                    reasons::SUCCEEDED,
                    format!("{} tags of {} cached", o.tags, o.repository),
                    generation,
                    now,
                ),
                Some(e) => ready(
                    previous,
                    "False",
                    failure_reason(o.failure),
                    e.clone(),
                    generation,
                    now,
                ),
            }
        }
        (Ok(_), None) => match previous {
            // After a restart, the last known condition stands until the first pass.
            Some(p) if p.observed_generation == generation && p.reason != reasons::PROGRESSING => {
                p.clone()
            }
            _ => ready(
                previous,
                "Unknown",
                reasons::PROGRESSING,
                "waiting for the first warm pass".to_string(),
                generation,
                now,
            ),
        },
    };
    if planned.is_err() || watch.spec.suspend {
        // Not warmed until the watch changes: no pass is scheduled.
        status.next_scan = None;
    }
    status.conditions = vec![condition];
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageRepositoryWatchSpec, SecretReference, TagsSpec};

    fn watch(spec: ImageRepositoryWatchSpec) -> ImageRepositoryWatch {
        let mut w = ImageRepositoryWatch::new("app", spec);
        w.metadata.namespace = Some("team".into());
        w.metadata.generation = Some(3);
        w
    }

    /// The clock of a reconcile, and of one a minute later.
    fn at() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_767_000_000).unwrap())
    }

    fn later() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_767_000_060).unwrap())
    }

    fn spec(image: &str) -> ImageRepositoryWatchSpec {
        ImageRepositoryWatchSpec {
            image: image.into(),
            ..Default::default()
        }
    }

    fn outcome(error: Option<&str>, failure: Option<FailureKind>) -> Outcome {
        Outcome {
            id: "team/app".into(),
            repository: "docker.io/library/nginx".into(),
            listed: 5,
            tags: 4,
            excluded: 1,
            missing: 0,
            images_updated: 2,
            images: 3,
            published: true,
            requests: Default::default(),
            changes: Vec::new(),
            changed: 0,
            index_changed: true,
            error: error.map(str::to_string),
            failure,
            latest_tags: vec!["v2".into(), "v1".into()],
            last_update: chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                .ok()
                .map(|t| t.to_utc()),
            retry_after: None,
            next_pass: None,
            duration: Duration::ZERO,
        }
    }

    const ECR: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app";
    const ROLE: &str = "arn:aws:iam::123456789012:role/reader";

    fn aws_watch(account: Option<&str>) -> ImageRepositoryWatch {
        let mut s = spec(ECR);
        s.provider = Some(Provider::Aws);
        s.service_account_name = account.map(str::to_string);
        s.pull_secrets = vec![SecretReference::new("ignored")];
        watch(s)
    }

    fn annotated(name: &str, role: Option<&str>) -> Resolved {
        let annotations = role
            .map(|r| [("eks.amazonaws.com/role-arn".to_string(), r.to_string())].into())
            .unwrap_or_default();
        Resolved {
            service_account: Some((name.to_string(), annotations)),
            ..Default::default()
        }
    }

    fn cloud_defaults(controller_identity: bool) -> Defaults {
        Defaults {
            sign_in: Some(Arc::new(SignIn::new(None, Default::default()))),
            cloud_controller_identity: controller_identity,
            ..Defaults::default()
        }
    }

    #[test]
    fn a_cloud_watch_signs_in_as_its_service_account_or_the_controller() {
        let t = plan(
            &aws_watch(Some("puller")),
            &annotated("puller", Some(ROLE)),
            &cloud_defaults(false),
        )
        .unwrap();
        let login = &t.cloud.as_ref().expect("a cloud login").login;
        assert_eq!(
            login.identity,
            Identity::ServiceAccount {
                namespace: "team".into(),
                name: "puller".into(),
                role: ROLE.into(),
            }
        );
        assert_eq!(login.host, "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        assert!(t.credential.is_anonymous(), "pull secrets are not used");
        assert!(!t.scope.is_public());

        // Another role, or the controller's identity: another scope.
        let other = plan(
            &aws_watch(Some("puller")),
            &annotated("puller", Some("arn:aws:iam::123456789012:role/other")),
            &cloud_defaults(false),
        )
        .unwrap();
        let controller = plan(
            &aws_watch(None),
            &Resolved::default(),
            &cloud_defaults(true),
        )
        .unwrap();
        assert_eq!(
            controller.cloud.as_ref().unwrap().login.identity,
            Identity::Controller
        );
        assert_ne!(t.scope, other.scope);
        assert_ne!(t.scope, controller.scope);

        // Without an annotated account, and without the controller's identity: refused,
        // saying what to do.
        for (w, r) in [
            (aws_watch(None), Resolved::default()),
            (aws_watch(Some("plain")), annotated("plain", None)),
        ] {
            let p = plan(&w, &r, &cloud_defaults(false)).unwrap_err();
            assert_eq!(p.reason, reasons::CREDENTIALS_UNAVAILABLE);
            assert!(
                p.message.contains("eks.amazonaws.com/role-arn")
                    && p.message.contains("--cloud-controller-identity=false"),
                "{}",
                p.message
            );
        }
    }

    #[test]
    fn service_account_identities_can_be_turned_off() {
        let defaults = Defaults {
            cloud_service_account_identity: false,
            ..cloud_defaults(true)
        };
        let p = plan(
            &aws_watch(Some("puller")),
            &annotated("puller", Some(ROLE)),
            &defaults,
        )
        .unwrap_err();
        assert_eq!(p.reason, reasons::CREDENTIALS_UNAVAILABLE);
        assert!(
            p.message.contains("--cloud-service-account-identity=false"),
            "{}",
            p.message
        );
    }

    #[test]
    fn a_cloud_provider_refuses_hosts_it_cannot_sign_in_to() {
        let mut s = spec("ghcr.io/org/app");
        s.provider = Some(Provider::Aws);
        let p = plan(&watch(s), &Resolved::default(), &cloud_defaults(true)).unwrap_err();
        assert_eq!(p.reason, reasons::INVALID_SPEC);
        assert!(
            p.message.contains("spec.provider aws")
                && p.message.contains("ghcr.io is not an ECR registry"),
            "{}",
            p.message
        );
        // `generic` is the default, as before.
        let mut s = spec("ghcr.io/org/app");
        s.provider = Some(Provider::Generic);
        assert!(
            plan(&watch(s), &Resolved::default(), &Defaults::default())
                .unwrap()
                .cloud
                .is_none()
        );
    }

    #[test]
    fn plans_a_target_with_defaults_and_credentials() {
        let json = br#"{"auths":{"docker.io":{"username":"bob","password":"pw"}}}"#;
        let resolved = Resolved {
            docker_config: DockerConfig::from_config_json("s", json).unwrap(),
            ..Default::default()
        };
        let t = plan(&watch(spec("nginx")), &resolved, &Defaults::default()).unwrap();
        assert_eq!(t.id, "team/app");
        assert_eq!(t.repository.canonical(), "docker.io/library/nginx");
        assert_eq!(t.interval, Duration::from_secs(300));
        assert_eq!(t.credential.identity(), "basic:bob");
        assert_eq!(
            t.scope,
            Scope::for_credential("docker.io", "team", &t.credential)
        );
        let mut s = spec("ghcr.io/org/app");
        s.interval = Some("1h30m".into());
        s.platforms = vec!["linux/arm64/v8".into()];
        let t = plan(&watch(s), &Resolved::default(), &Defaults::default()).unwrap();
        assert_eq!(t.interval, Duration::from_secs(5400));
        assert_eq!(t.platforms, [Platform::parse("linux/arm64").unwrap()]);
        assert!(t.scope.is_public());
    }

    #[test]
    fn invalid_specs_name_the_watch_and_field() {
        let cases: Vec<(ImageRepositoryWatchSpec, &str, &str)> = vec![
            (spec("Nginx:Latest"), reasons::INVALID_IMAGE, "spec.image"),
            (spec("nginx:1.25"), reasons::INVALID_IMAGE, "tag"),
            (
                ImageRepositoryWatchSpec {
                    interval: Some("5 minutes".into()),
                    ..spec("nginx")
                },
                reasons::INVALID_SPEC,
                "spec.interval",
            ),
            (
                ImageRepositoryWatchSpec {
                    interval: Some("1s".into()),
                    ..spec("nginx")
                },
                reasons::INVALID_SPEC,
                "shorter than the minimum, 10s",
            ),
            (
                ImageRepositoryWatchSpec {
                    platforms: vec!["linux".into()],
                    ..spec("nginx")
                },
                reasons::INVALID_SPEC,
                "spec.platforms",
            ),
            (
                ImageRepositoryWatchSpec {
                    tags: Some(TagsSpec {
                        include: vec!["v[".into()],
                        ..Default::default()
                    }),
                    ..spec("nginx")
                },
                reasons::INVALID_SPEC,
                "spec.tags",
            ),
        ];
        for (s, reason, needle) in cases {
            let p = plan(
                &watch(s.clone()),
                &Resolved::default(),
                &Defaults::default(),
            )
            .unwrap_err();
            assert_eq!(p.reason, reason, "{s:?}");
            assert!(
                p.message.contains("team/app") && p.message.contains(needle),
                "{}",
                p.message
            );
        }
        let mut s = spec("nginx");
        s.cert_secret_ref = Some(SecretReference {
            name: "corp-ca".into(),
        });
        let resolved = Resolved {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Default::default()
        };
        let p = plan(&watch(s), &resolved, &Defaults::default()).unwrap_err();
        assert_eq!(p.reason, reasons::INVALID_CERTIFICATE);
        assert!(
            p.message.contains("team/corp-ca") && p.message.contains("docker.io"),
            "{}",
            p.message
        );
    }

    #[test]
    fn status_from_outcomes_is_stable_and_kstatus_shaped() {
        let w = watch(spec("nginx"));
        let planned = plan(&w, &Resolved::default(), &Defaults::default());
        let pending = desired_status(&w, &planned, None, None, &at());
        assert_eq!(pending.ready().unwrap().status, "Unknown");
        assert_eq!(
            pending.canonical_image_name.as_deref(),
            Some("docker.io/library/nginx")
        );

        let ok = desired_status(&w, &planned, Some(&outcome(None, None)), None, &at());
        let cond = ok.ready().unwrap();
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("True", reasons::SUCCEEDED)
        );
        assert_eq!(cond.observed_generation, Some(3));
        assert_eq!(ok.observed_generation, Some(3));
        assert_eq!(ok.tag_count, Some(4));
        assert_eq!(ok.latest_tags, ["v2", "v1"]);
        assert_eq!(ok.last_update.as_deref(), Some("2026-01-02T03:04:05+00:00"));

        assert_eq!(
            cond.last_transition_time,
            at(),
            "a new condition changes at now"
        );

        // Same inputs on top of that status, later: identical (the transition time is
        // kept), so no patch is sent.
        let mut w2 = w.clone();
        w2.status = Some(ok.clone());
        assert_eq!(
            desired_status(&w2, &planned, Some(&outcome(None, None)), None, &later()),
            ok
        );

        let failed = desired_status(
            &w2,
            &planned,
            Some(&outcome(
                Some("registry docker.io refused the credentials"),
                Some(FailureKind::Unauthorized),
            )),
            None,
            &at(),
        );
        let cond = failed.ready().unwrap();
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", reasons::UNAUTHORIZED)
        );
        assert_eq!(cond.last_transition_time, at());
        assert!(failed.last_error.is_some());
        assert_eq!(failed.last_update, ok.last_update, "kept from the outcome");

        // The cache lost the index (and with it the last update) and the pass failed:
        // the status keeps the update it reported.
        let mut forgotten = outcome(
            Some("caching the tag index: cannot reach memcached m:11211"),
            Some(FailureKind::Cache),
        );
        forgotten.last_update = None;
        let kept = desired_status(&w2, &planned, Some(&forgotten), None, &at());
        assert_eq!(kept.last_update, ok.last_update, "not forgotten");
        assert!(kept.last_error.is_some());
        // ... but not across a change of repository.
        let mut moved = w2.clone();
        moved.status.as_mut().unwrap().canonical_image_name =
            Some("docker.io/library/redis".into());
        let other = desired_status(&moved, &planned, Some(&forgotten), None, &at());
        assert_eq!(other.last_update, None);
        // A newer update from the pass wins.
        let mut newer = outcome(None, None);
        newer.last_update = chrono::DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .ok()
            .map(|t| t.to_utc());
        assert_eq!(
            desired_status(&w2, &planned, Some(&newer), None, &at())
                .last_update
                .as_deref(),
            Some("2026-02-01T00:00:00+00:00")
        );

        let bad = watch(spec("nginx:1.25"));
        let s = desired_status(
            &bad,
            &plan(&bad, &Resolved::default(), &Defaults::default()),
            None,
            None,
            &at(),
        );
        assert_eq!(s.ready().unwrap().reason, reasons::INVALID_IMAGE);

        let mut suspended = spec("nginx");
        suspended.suspend = true;
        let sw = watch(suspended);
        let s = desired_status(
            &sw,
            &plan(&sw, &Resolved::default(), &Defaults::default()),
            None,
            None,
            &at(),
        );
        assert_eq!(s.ready().unwrap().reason, reasons::SUSPENDED);
        assert_eq!(
            desired_status(&w, &planned, None, Some("123"), &at())
                .last_handled_requested_at
                .as_deref(),
            Some("123")
        );
    }
}
