//! The `ImageRepositoryWatch` custom resource (`regcache.io/v1alpha1`), its status,
//! conditions and reasons. `crds/` is generated from these types (`regcache crd`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation asking for an immediate rescan; any new value triggers one (Flux's
/// `reconcile.fluxcd.io/requestedAt` habit: `kubectl annotate irw X regcache.io/requestedAt="$(date +%s)" --overwrite`).
pub const REQUESTED_AT_ANNOTATION: &str = "regcache.io/requestedAt";

/// The condition kstatus and `kubectl wait --for=condition=Ready` read.
pub const READY: &str = "Ready";

/// Reasons of the `Ready` condition (PascalCase, stable: tools switch on them).
pub mod reasons {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const PROGRESSING: &str = "Progressing";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_IMAGE: &str = "InvalidImage";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_SECRET: &str = "InvalidSecret";
    pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const RATE_LIMITED: &str = "RateLimited";
    pub const REPOSITORY_NOT_FOUND: &str = "RepositoryNotFound";
    pub const REGISTRY_UNAVAILABLE: &str = "RegistryUnavailable";
    pub const CACHE_UNAVAILABLE: &str = "CacheUnavailable";
    pub const WARM_FAILED: &str = "WarmFailed";
}

/// Keeps the metadata of one image repository warm in regcache's cache.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "regcache.io",
    version = "v1alpha1",
    kind = "ImageRepositoryWatch",
    plural = "imagerepositorywatches",
    shortname = "irw",
    category = "regcache",
    namespaced,
    status = "ImageRepositoryWatchStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".status.canonicalImageName"}"#,
    printcolumn = r#"{"name":"Tags","type":"integer","jsonPath":".status.tagCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last Update","type":"date","jsonPath":".status.lastUpdate"}"#,
    printcolumn = r#"{"name":"Last Error","type":"string","jsonPath":".status.lastError","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositoryWatchSpec {
    /// The image repository to keep warm, without a tag or digest: `nginx`,
    /// `ghcr.io/org/app`, `registry.example.com:5000/team/app`.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s@]+$"))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!self.matches(':[^/]*$')",
        "message": "image must name a repository without a tag (remove the :tag)"
    }]))]
    pub image: String,

    /// How often to list the repository's tags (`30s`, `5m`, `1h`). Each tag is resolved
    /// again on its own schedule (1h for a new tag, doubling while it does not change, up to
    /// 7 days). Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<String>,

    /// Secrets in this namespace, of type `kubernetes.io/dockerconfigjson` or
    /// `kubernetes.io/dockercfg`, holding credentials for the registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,

    /// A ServiceAccount in this namespace whose `imagePullSecrets` are used too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Which tags to keep warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagsSpec>,

    /// Platforms of multi-platform images to keep (`linux/amd64`, `linux/arm64`,
    /// `linux/arm/v7`). Default: the controller's `--default-platforms` (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")))]
    pub platforms: Vec<String>,

    /// A Secret in this namespace whose `ca.crt` is a PEM bundle of CAs to trust for the
    /// registry, besides the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretReference>,

    /// Talk to the registry over plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,

    /// Report an image's created time from its `org.opencontainers.image.created` (or
    /// `org.label-schema.build-date`) label instead of its config, for images built
    /// reproducibly with a fixed config date.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamp_labels: bool,

    /// Stop warming (cached data stays, and is no longer refreshed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// Which tags to keep warm. Signature, attestation and SBOM tags (`sha256-*.sig`, `.att`,
/// `.sbom`) are left out unless `includeSignatures`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TagsSpec {
    /// Glob patterns; only matching tags are kept (all when empty). `*` any run of
    /// characters, `?` one character, `[a-z]` / `[!a-z]` one character in / not in a set,
    /// `{a,b}` either alternative, `\` escapes the next character.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Glob patterns of tags to leave out (same syntax as `include`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// At most this many tags, those sorting highest in natural order (`1.10` after `1.9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_tags: Option<u32>,
    /// Keep signature, attestation and SBOM tags too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_signatures: bool,
}

/// A Secret in the watch's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct SecretReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What regcache last did for this watch.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositoryWatchStatus {
    /// The repository's canonical name, as keys in the cache and the read API use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_image_name: Option<String>,
    /// When a pass last completed with every needed fetch (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    /// What failed in the latest pass, if it failed. Never contains credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Tags cached (after filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_count: Option<u64>,
    /// The ten most recently created tags, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last `regcache.io/requestedAt` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,
}

impl ImageRepositoryWatchStatus {
    pub fn ready(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == READY)
    }
}

/// The CRD as YAML, as committed in `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ImageRepositoryWatch::crd();
    format!(
        "# Generated by `regcache crd` from src/crd.rs; do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("the CRD serialises")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_types() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/imagerepositorywatches.regcache.io.yaml"
        ))
        .expect("crds/imagerepositorywatches.regcache.io.yaml exists (run `regcache crd`)");
        assert!(
            committed == crd_yaml(),
            "crds/ is stale: run `cargo run -- crd > crds/imagerepositorywatches.regcache.io.yaml`"
        );
    }

    #[test]
    fn crd_has_names_columns_status_and_validation() {
        let yaml = crd_yaml();
        for needle in [
            "name: imagerepositorywatches.regcache.io",
            "- irw",
            "- regcache",
            "status: {}",
            "jsonPath: .status.conditions[?(@.type==\"Ready\")].status",
            "x-kubernetes-validations",
            "maxTags",
            "scope: Namespaced",
        ] {
            assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
        }
    }

    #[test]
    fn spec_round_trips_in_camel_case() {
        let yaml = r#"
image: ghcr.io/org/app
interval: 10m
pullSecrets: [regcred]
serviceAccountName: puller
tags: {include: ["v*"], exclude: ["*-rc*"], maxTags: 50}
platforms: [linux/amd64, linux/arm64]
certSecretRef: {name: corp-ca}
insecure: true
timestampLabels: true
suspend: true
"#;
        let spec: ImageRepositoryWatchSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(spec.tags.as_ref().unwrap().max_tags, Some(50));
        assert_eq!(spec.cert_secret_ref.as_ref().unwrap().name, "corp-ca");
        let back: ImageRepositoryWatchSpec =
            serde_yaml::from_str(&serde_yaml::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
