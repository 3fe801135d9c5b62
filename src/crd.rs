//! The `ImageRepositoryWatch` custom resource (`regcache.io/v1alpha1`), its status,
//! conditions and reasons. `crds/` is generated from these types (`regcache crd`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation asking for an immediate rescan; any new value triggers one (Flux's
/// `reconcile.fluxcd.io/requestedAt` habit: `kubectl annotate irw X regcache.io/requestedAt="$(date +%s)" --overwrite`).
pub(crate) const REQUESTED_AT_ANNOTATION: &str = "regcache.io/requestedAt";

/// The condition kstatus and `kubectl wait --for=condition=Ready` read.
pub(crate) const READY: &str = "Ready";

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
    pub const CREDENTIALS_UNAVAILABLE: &str = "CredentialsUnavailable";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const RATE_LIMITED: &str = "RateLimited";
    pub const PULL_QUOTA_RESERVED: &str = "PullQuotaReserved";
    pub const REPOSITORY_NOT_FOUND: &str = "RepositoryNotFound";
    pub const REGISTRY_UNAVAILABLE: &str = "RegistryUnavailable";
    pub const CACHE_UNAVAILABLE: &str = "CacheUnavailable";
    pub const WARM_FAILED: &str = "WarmFailed";
}

/// Keeps the metadata of one image repository warm in regcache's cache.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    doc = "Keeps the metadata of one image repository warm in regcache's cache: its tags, \
           each tag's digest, and each image's created time, labels and platforms, refreshed \
           on a schedule and served to GitOps agents. The status says how fresh the data is.",
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
    printcolumn = r#"{"name":"Next Scan","type":"string","jsonPath":".status.nextScan","priority":1}"#,
    printcolumn = r#"{"name":"Newest Tag","type":"string","jsonPath":".status.latestTags[0]","priority":1}"#,
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

    /// How often to list the repository's tags, as a Go duration (`90s`, `5m`, `1h30m`,
    /// `1.5h`; units `ms`, `s`, `m`, `h`), at least `10s`. Each tag is resolved again on its
    /// own schedule (1h for a new tag, doubling while it does not change, up to 7 days).
    /// Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration::interval_schema")]
    pub interval: Option<String>,

    /// Secrets in this namespace, of type `kubernetes.io/dockerconfigjson` or
    /// `kubernetes.io/dockercfg`, holding credentials for the registry, named as in a Pod's
    /// `imagePullSecrets`: `[{name: regcred}]`. They win over the ServiceAccount's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<SecretReference>,

    /// A ServiceAccount in this namespace whose `imagePullSecrets` are used too. With a
    /// cloud `provider`, its cloud identity annotation (`eks.amazonaws.com/role-arn`,
    /// `iam.gke.io/gcp-service-account`) is the identity regcache signs in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// How regcache signs in to the registry: `generic` (the default) with pull secrets;
    /// `aws` to ECR (`ACCOUNT.dkr.ecr.REGION.amazonaws.com`, `public.ecr.aws`) with an AWS
    /// identity: the role in `serviceAccountName`'s `eks.amazonaws.com/role-arn`
    /// annotation, else the controller's own when the controller allows it. Pull secrets
    /// are not used for the registry then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,

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

/// How regcache signs in to the registry: `generic` (the default) with pull secrets;
/// `aws` to ECR (`ACCOUNT.dkr.ecr.REGION.amazonaws.com`, `public.ecr.aws`) with an AWS
/// identity; `gcp` to Artifact Registry (`LOCATION-docker.pkg.dev`) and GCR (`gcr.io`,
/// `REGION.gcr.io`) with a Google identity; `azure` to ACR (`NAME.azurecr.io`, `.us`, `.cn`)
/// with an Entra ID identity. The identity is the one `serviceAccountName`'s ServiceAccount
/// is annotated with (`eks.amazonaws.com/role-arn`, `iam.gke.io/gcp-service-account`,
/// `azure.workload.identity/client-id`), else the controller's own when the controller
/// allows it. Pull secrets are not used then.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Pull secrets (`pullSecrets`, the ServiceAccount's `imagePullSecrets`).
    #[default]
    Generic,
    /// ECR by an AWS identity.
    Aws,
    /// Artifact Registry and GCR by a Google identity.
    Gcp,
    /// ACR by an Entra ID identity.
    Azure,
}

/// A Secret in the watch's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct SecretReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl SecretReference {
    pub fn new(name: impl Into<String>) -> Self {
        SecretReference { name: name.into() }
    }
}

/// Go's duration syntax (`time.ParseDuration`, as Flux and kubectl take it), in one place:
/// the CRD's pattern and the parser are both built from [`duration::UNITS`].
pub mod duration {
    use std::time::Duration;

    /// The units a watch's durations may use, with their length in seconds.
    pub const UNITS: [(&str, f64); 4] = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];

    /// The shortest `spec.interval`: listing one repository's tags more often than this
    /// buys nothing (the registry's own caches are about as fresh) and spends its limits.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
    /// [`MIN_INTERVAL`] as users write it, for the schema's message and rule.
    pub const MIN_INTERVAL_TEXT: &str = "10s";

    /// The schema's regular expression: one or more number-unit pairs, no sign.
    pub fn pattern() -> String {
        let units: Vec<&str> = UNITS.iter().map(|(u, _)| *u).collect();
        format!(r"^([0-9]+(\.[0-9]+)?({}))+$", units.join("|"))
    }

    /// Parses a Go duration of the units in [`UNITS`]: `90s`, `1h30m`, `1.5h`, `500ms`.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let units: Vec<&str> = UNITS.iter().map(|(u, _)| *u).collect();
        let unit_list = units.join(", ");
        if s.is_empty() {
            return Err("empty duration: expected a number and a unit, like 30s or 1h30m".into());
        }
        let mut rest = s;
        let mut seconds = 0.0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(digits);
            let valid_number = !number.is_empty()
                && !number.starts_with('.')
                && !number.ends_with('.')
                && number.matches('.').count() <= 1;
            let value: f64 = number
                .parse()
                .ok()
                .filter(|_| valid_number)
                .ok_or_else(|| {
                    format!(
                        "invalid duration {s:?}: expected a number and a unit, like 30s or 1h30m"
                    )
                })?;
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let Some((_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                return Err(if unit.is_empty() {
                    format!("invalid duration {s:?}: {number} has no unit (one of {unit_list})")
                } else {
                    format!("invalid duration {s:?}: unit {unit:?} must be one of {unit_list}")
                });
            };
            seconds += value * scale;
            rest = next;
        }
        if !seconds.is_finite() || seconds > 1e9 {
            return Err(format!("invalid duration {s:?}: out of range"));
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Parses `spec.interval`, refusing one below [`MIN_INTERVAL`] (the API server's schema
    /// refuses it too; standalone watches are checked here).
    pub fn parse_interval(s: &str) -> Result<Duration, String> {
        let d = parse(s)?;
        if d < MIN_INTERVAL {
            return Err(format!(
                "interval {s} is shorter than the minimum, {MIN_INTERVAL_TEXT}"
            ));
        }
        Ok(d)
    }

    /// `spec.interval`'s schema: the pattern, and the floor as a CEL rule so that
    /// `kubectl apply` refuses a shorter interval with a message.
    pub fn interval_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "nullable": true,
            "maxLength": 64,
            "pattern": pattern(),
            "x-kubernetes-validations": [{
                "rule": format!("duration(self) >= duration('{MIN_INTERVAL_TEXT}')"),
                "message": format!("interval must be at least {MIN_INTERVAL_TEXT}")
            }]
        })
    }
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
    /// When the next pass lists the tags (RFC 3339): the interval after a pass that
    /// succeeded, sooner after a failure, later when the registry asked for a pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scan: Option<String>,
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: `True` when the latest pass fetched everything it needed; otherwise `False`
    /// with a PascalCase reason (`Unauthorized`, `RateLimited`, `SecretNotFound`, ...) and a
    /// message saying what to fix. `kubectl wait --for=condition=Ready` reads it.
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
pub(crate) fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(ImageRepositoryWatch::crd()).expect("the CRD serialises");
    unwrap_descriptions(&mut crd);
    format!(
        "# Generated by `regcache crd` from src/crd.rs; do not edit.\n{}",
        serde_saphyr::to_string(&crd).expect("the CRD serialises")
    )
}

/// Doc comments are wrapped at 100 columns, and `kubectl explain` wraps again at its own
/// width, which left ragged half-empty lines. So each description keeps its paragraphs
/// (blank lines between them) but loses the line breaks inside one.
fn unwrap_descriptions(node: &mut serde_json::Value) {
    use serde_json::Value;
    match node {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
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
interval: 1h30m
pullSecrets: [{name: regcred}]
serviceAccountName: puller
tags: {include: ["v*"], exclude: ["*-rc*"], maxTags: 50}
platforms: [linux/amd64, linux/arm64]
certSecretRef: {name: corp-ca}
insecure: true
timestampLabels: true
suspend: true
"#;
        let spec: ImageRepositoryWatchSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.tags.as_ref().unwrap().max_tags, Some(50));
        assert_eq!(spec.cert_secret_ref.as_ref().unwrap().name, "corp-ca");
        assert_eq!(spec.pull_secrets, [SecretReference::new("regcred")]);
        let back: ImageRepositoryWatchSpec =
            serde_saphyr::from_str(&serde_saphyr::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn go_durations_parse_as_go_does() {
        use duration::parse;
        use std::time::Duration;
        for (text, secs) in [
            ("90s", 90.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("500ms", 0.5),
            ("2h45m30s", 9930.0),
            ("0s", 0.0),
            ("10m0s", 600.0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs_f64(secs)), "{text}");
        }
        for (text, says) in [
            ("", "empty"),
            ("5", "no unit"),
            ("7d", "unit \"d\""),
            ("5 m", "unit \" m\""),
            ("-5m", "number"),
            ("1..5h", "number"),
            (".5h", "number"),
            ("h", "number"),
            ("1h30", "no unit"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        assert!(
            duration::parse_interval("5s")
                .unwrap_err()
                .contains("minimum, 10s")
        );
        assert_eq!(duration::parse_interval("10s"), Ok(duration::MIN_INTERVAL));
    }

    /// The schema's pattern and the parser accept exactly the same strings.
    #[test]
    fn the_crd_pattern_and_the_parser_agree() {
        let pattern = regex::Regex::new(&duration::pattern()).unwrap();
        for text in [
            "90s", "1h30m", "1.5h", "500ms", "0s", "5", "7d", "-5m", "1..5h", ".5h", "1.h", "h",
            "1h30", "5 m", "1m1m", "10ms5h", "", "1e3s", "١s",
        ] {
            assert_eq!(
                pattern.is_match(text),
                duration::parse(text).is_ok(),
                "{text:?}: the pattern and the parser disagree"
            );
        }
        let crd: serde_json::Value = serde_saphyr::from_str(&crd_yaml()).unwrap();
        let interval = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["interval"];
        assert_eq!(interval["pattern"], duration::pattern());
        assert_eq!(
            interval["x-kubernetes-validations"][0]["rule"],
            "duration(self) >= duration('10s')"
        );
    }

    /// `kubectl explain` wraps descriptions itself: they carry paragraph breaks only.
    #[test]
    fn descriptions_have_no_line_breaks_inside_a_paragraph() {
        let yaml = crd_yaml();
        let crd: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let mut wrapped = Vec::new();
        fn walk(node: &serde_json::Value, wrapped: &mut Vec<String>) {
            match node {
                serde_json::Value::Object(map) => {
                    for (key, value) in map {
                        match value.as_str() {
                            Some(text) if key == "description" => {
                                if text.replace("\n\n", "").contains('\n') {
                                    wrapped.push(text.to_string());
                                }
                            }
                            _ => walk(value, wrapped),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, wrapped)),
                _ => {}
            }
        }
        walk(&crd, &mut wrapped);
        assert!(wrapped.is_empty(), "{wrapped:#?}");
    }

    /// Every level of `kubectl explain imagerepositorywatch` has a description of its own.
    #[test]
    fn every_schema_level_is_described() {
        let yaml = crd_yaml();
        assert!(!yaml.contains("Auto-generated derived type"), "{yaml}");
        let crd: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
            if node.get("description").is_none() {
                missing.push(path.to_string());
            }
            if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
                for (name, child) in props {
                    walk(&format!("{path}.{name}"), child, missing);
                }
            }
            if let Some(items) = node.get("items").filter(|i| i.get("properties").is_some()) {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        walk("imagerepositorywatch", schema, &mut missing);
        // Kubernetes' own metadata and Condition fields are documented by Kubernetes.
        missing.retain(|p| !p.contains(".metadata") && !p.contains(".conditions[]."));
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
