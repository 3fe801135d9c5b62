//! Per-registry request limits: rules matched by host pattern, from a file
//! (`--registry-limits-file`) and from entries regcache ships for the big public registries,
//! over the defaults for every other host (`--registry-qps`, `--registry-burst`,
//! `--registry-concurrency`).
//!
//! ```yaml
//! hosts:
//!   - host: "*.azurecr.io"   # a glob over the host name, or HOST:PORT when it has a port
//!     qps: 50                # ceiling on requests per second (halved on each 429)
//!     burst: 100             # requests that may go at once after a quiet spell
//!     concurrency: 16        # requests in flight at once, shared by every pass on the host
//!     countsPulls: false     # manifest GETs are not pulls here: new tags are fetched by GET
//! ```
//!
//! The first rule that matches wins: the file's in its order, then the shipped ones. A rule
//! leaves out what it does not set to the defaults.

use serde::Deserialize;

use super::limiter::LimiterSettings;

/// One host pattern and the limits it sets.
#[derive(Debug, Clone)]
pub struct HostRule {
    /// The pattern as written (it names the rule in metrics).
    pub pattern: String,
    matcher: globset::GlobMatcher,
    pub qps: Option<f64>,
    pub burst: Option<f64>,
    pub concurrency: Option<usize>,
    /// Whether the host counts manifest GETs as pulls ([`LimiterSettings::counts_pulls`]).
    pub counts_pulls: Option<bool>,
}

impl HostRule {
    /// A rule; `pattern` is a glob (`*` within a name's labels, `?`, `[..]`).
    pub fn new(
        pattern: &str,
        qps: Option<f64>,
        burst: Option<f64>,
        concurrency: Option<usize>,
    ) -> Result<HostRule, String> {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern.is_empty() {
            return Err("host is empty".to_string());
        }
        let matcher = globset::GlobBuilder::new(&pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("host {pattern:?} is not a valid pattern ({})", e.kind()))?
            .compile_matcher();
        if let Some(q) = qps.filter(|q| !(q.is_finite() && *q > 0.0)) {
            return Err(format!("qps {q} must be a positive number"));
        }
        if let Some(b) = burst.filter(|b| !(b.is_finite() && *b >= 1.0)) {
            return Err(format!("burst {b} must be at least 1"));
        }
        if concurrency == Some(0) {
            return Err("concurrency must be at least 1".to_string());
        }
        Ok(HostRule {
            pattern,
            matcher,
            qps,
            burst,
            concurrency,
            counts_pulls: None,
        })
    }

    /// The rule with `countsPulls` set.
    pub fn counting_pulls(self, counts_pulls: Option<bool>) -> HostRule {
        HostRule {
            counts_pulls,
            ..self
        }
    }

    /// Whether the rule covers `host` (`HOST` or `HOST:PORT`): the pattern is tried on
    /// the whole of it, then on the name without the port.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.matcher.is_match(&host) || self.matcher.is_match(crate::image::host_name(&host))
    }
}

/// The rules regcache ships, from each registry's published limits (docs/operations.md,
/// "Registry limits", names the sources).
pub fn shipped() -> Vec<HostRule> {
    let rule = |pattern: &str, qps: f64, burst: f64, concurrency: usize| {
        HostRule::new(pattern, Some(qps), Some(burst), Some(concurrency))
            .expect("shipped rules are valid")
    };
    vec![
        // Docker Hub's abuse limit is "in the order of thousands of requests per minute"
        // per IPv4 address or IPv6 /64, shared with the nodes behind the same NAT.
        rule("registry-1.docker.io", 10.0, 20.0, 4),
        rule("index.docker.io", 10.0, 20.0, 4),
        rule("docker.io", 10.0, 20.0, 4),
        // GitHub publishes no ghcr.io limit; its REST API's secondary limit (900 reads a
        // minute to one endpoint) is the nearest published figure.
        rule("ghcr.io", 15.0, 30.0, 8),
        // Quay.io: "a few requests per second per IP, with some bursting".
        rule("quay.io", 3.0, 10.0, 2),
        // ECR Public: one unauthenticated image pull per second per IP (ten signed in).
        rule("public.ecr.aws", 1.0, 5.0, 2),
    ]
}

/// The settings for `host`: the first matching rule over `defaults`, and the rule's
/// pattern (`default` when none matched).
pub fn settings_for(
    rules: &[HostRule],
    defaults: &LimiterSettings,
    host: &str,
) -> (LimiterSettings, String) {
    match rules.iter().find(|r| r.matches(host)) {
        None => (defaults.clone(), "default".to_string()),
        Some(rule) => (
            LimiterSettings {
                max_rate: rule.qps.unwrap_or(defaults.max_rate),
                burst: rule.burst.unwrap_or(defaults.burst),
                concurrency: rule.concurrency.unwrap_or(defaults.concurrency),
                counts_pulls: rule.counts_pulls.unwrap_or(defaults.counts_pulls),
                ..defaults.clone()
            },
            rule.pattern.clone(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    hosts: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    host: String,
    qps: Option<f64>,
    burst: Option<f64>,
    concurrency: Option<usize>,
    #[serde(rename = "countsPulls")]
    counts_pulls: Option<bool>,
}

/// The rules of a limits file; `origin` (its path) names it in errors, with the entry.
pub fn parse_file(text: &str, origin: &str) -> Result<Vec<HostRule>, String> {
    let file: File =
        serde_saphyr::from_str(text).map_err(|e| format!("{origin}: not a limits file: {e}"))?;
    file.hosts
        .iter()
        .enumerate()
        .map(|(i, e)| {
            HostRule::new(&e.host, e.qps, e.burst, e.concurrency)
                .map(|r| r.counting_pulls(e.counts_pulls))
                .map_err(|err| format!("{origin}: hosts[{i}] ({}): {err}", e.host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_wins_over_the_defaults() {
        let mut rules = parse_file(
            "hosts:\n  - host: '*.example.com'\n    qps: 5\n  - host: 'registry.local:5000'\n    concurrency: 32\n    countsPulls: false\n",
            "limits.yaml",
        )
        .unwrap();
        rules.extend(shipped());
        let defaults = LimiterSettings::default();
        let (s, rule) = settings_for(&rules, &defaults, "r.example.com:443");
        assert_eq!(
            (s.max_rate, s.burst, s.concurrency),
            (5.0, defaults.burst, defaults.concurrency)
        );
        assert!(s.counts_pulls, "unknown hosts are taken to count pulls");
        assert_eq!(rule, "*.example.com");
        let (s, _) = settings_for(&rules, &defaults, "registry.local:5000");
        assert_eq!((s.concurrency, s.counts_pulls), (32, false));
        let (s, rule) = settings_for(&rules, &defaults, "registry.local:5001");
        assert_eq!((s, rule.as_str()), (defaults.clone(), "default"));
        let (s, rule) = settings_for(&rules, &defaults, "registry-1.docker.io");
        assert_eq!(
            (s.max_rate, s.concurrency, rule.as_str()),
            (10.0, 4, "registry-1.docker.io")
        );
        let (_, rule) = settings_for(&rules, &defaults, "QUAY.IO");
        assert_eq!(rule, "quay.io");
    }

    #[test]
    fn bad_files_say_which_entry_is_wrong() {
        for (text, wanted) in [
            (
                "hosts:\n  - host: a\n    qps: 0\n",
                "hosts[0] (a): qps 0 must be a positive number",
            ),
            (
                "hosts:\n  - host: a\n  - host: b\n    concurrency: 0\n",
                "hosts[1] (b): concurrency must be at least 1",
            ),
            ("hosts:\n  - host: '[a'\n", "is not a valid pattern"),
            ("hosts:\n  - host: a\n    rate: 3\n", "not a limits file"),
            (
                "hosts:\n  - host: a\n    burst: 0.5\n",
                "burst 0.5 must be at least 1",
            ),
        ] {
            let err = parse_file(text, "limits.yaml").unwrap_err();
            assert!(
                err.starts_with("limits.yaml: ") && err.contains(wanted),
                "{err}"
            );
        }
    }
}
