//! Decorators applied to cached images on read. Today one: the timestamp-label allowlist,
//! for repositories whose build system stamps a reproducible config `created` (1970, or a
//! fixed date) and records the real build time in a label.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::image::parse_time;

/// Labels that carry a build time, most trusted first.
pub(crate) const TIMESTAMP_LABELS: [&str; 2] = [
    "org.opencontainers.image.created",
    "org.label-schema.build-date",
];

/// Repositories (globs on the canonical name, e.g. `docker.io/bitnami/*`) whose images
/// take their created time from a label rather than from the config.
#[derive(Clone, Debug)]
pub struct TimestampLabels {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Default for TimestampLabels {
    fn default() -> Self {
        TimestampLabels {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid timestamp-label pattern {pattern:?}: {detail}")]
pub struct PatternError {
    pub pattern: String,
    pub detail: String,
}

impl TimestampLabels {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            // `*` stops at `/` so `docker.io/library/*` does not cover deeper paths by
            // accident; `**` spans them.
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .or_else(|_| Glob::new(p))
                .map_err(|e| PatternError {
                    pattern: p.to_string(),
                    detail: e.kind().to_string(),
                })?;
            b.add(glob);
        }
        Ok(TimestampLabels {
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
            set: b.build().map_err(|e| PatternError {
                pattern: patterns
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join(","),
                detail: e.to_string(),
            })?,
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn applies_to(&self, canonical_name: &str) -> bool {
        self.set.is_match(canonical_name)
    }
}

/// The created time to report: for an allowlisted repository, the first timestamp label
/// that parses; otherwise (or when none parses) the config's.
pub(crate) fn created_time(
    applies: bool,
    labels: &std::collections::BTreeMap<String, String>,
    config_created: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    if applies {
        for name in TIMESTAMP_LABELS {
            if let Some(t) = labels.get(name).and_then(|v| parse_time(v)) {
                return Some(t);
            }
        }
    }
    config_created
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn globs_match_canonical_names() {
        let t = TimestampLabels::new(&["docker.io/bitnami/*", "ghcr.io/org/**"]).unwrap();
        assert!(t.applies_to("docker.io/bitnami/redis"));
        assert!(!t.applies_to("docker.io/bitnami/a/b"));
        assert!(t.applies_to("ghcr.io/org/a/b"));
        assert!(!t.applies_to("docker.io/library/nginx"));
        assert!(!TimestampLabels::default().applies_to("docker.io/bitnami/redis"));
        let err = TimestampLabels::new(&["a[b"]).unwrap_err();
        assert!(err.to_string().contains("a[b"), "{err}");
    }

    #[test]
    fn label_preference() {
        let config = parse_time("1970-01-01T00:00:00Z");
        let both = labels(&[
            ("org.opencontainers.image.created", "2024-01-02T00:00:00Z"),
            ("org.label-schema.build-date", "2023-01-01T00:00:00Z"),
        ]);
        assert_eq!(
            created_time(true, &both, config),
            parse_time("2024-01-02T00:00:00Z")
        );
        assert_eq!(
            created_time(false, &both, config),
            config,
            "not allowlisted"
        );
        let schema_only = labels(&[
            ("org.opencontainers.image.created", "last tuesday"),
            ("org.label-schema.build-date", "2023-01-01T00:00:00Z"),
        ]);
        assert_eq!(
            created_time(true, &schema_only, config),
            parse_time("2023-01-01T00:00:00Z"),
            "unparseable label skipped"
        );
        assert_eq!(created_time(true, &labels(&[]), config), config);
    }
}
