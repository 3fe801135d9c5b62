//! Tag filters and the per-target budget, applied before any manifest request.

use std::cmp::Ordering;

use super::glob::Glob;

/// Signature, attestation and SBOM tags that cosign and friends attach to images
/// (`sha256-<digest>.sig`): metadata about images, not images to deploy.
pub(crate) const SIGNATURE_PATTERNS: [&str; 3] = ["sha256-*.sig", "sha256-*.att", "sha256-*.sbom"];

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FilterError {
    #[error("invalid tag pattern {pattern:?} in tags.{field}: {detail}")]
    Pattern {
        field: &'static str,
        pattern: String,
        detail: String,
    },
    #[error("tags.maxTags must be at least 1")]
    ZeroBudget,
}

/// Which tags of a repository to warm.
#[derive(Debug, Clone)]
pub struct TagFilter {
    /// Empty: every tag.
    include: Box<[Glob]>,
    exclude: Box<[Glob]>,
    max_tags: Option<usize>,
}

/// The tags kept, and how many were left out and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filtered {
    pub kept: Vec<String>,
    /// Did not match `include`, or matched `exclude` or a signature pattern.
    pub excluded: usize,
    /// Matched, but over `maxTags`.
    pub over_budget: usize,
}

fn globs(field: &'static str, patterns: &[&str]) -> Result<Box<[Glob]>, FilterError> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p).map_err(|e| FilterError::Pattern {
                field,
                pattern: p.to_string(),
                detail: e.to_string(),
            })
        })
        .collect()
}

impl Default for TagFilter {
    fn default() -> Self {
        TagFilter::new::<&str>(&[], &[], None, false).expect("built-in patterns are valid")
    }
}

impl TagFilter {
    /// `include` empty means every tag. Signature tags are excluded unless
    /// `include_signatures`.
    pub fn new<S: AsRef<str>>(
        include: &[S],
        exclude: &[S],
        max_tags: Option<usize>,
        include_signatures: bool,
    ) -> Result<TagFilter, FilterError> {
        if max_tags == Some(0) {
            return Err(FilterError::ZeroBudget);
        }
        let include: Vec<&str> = include.iter().map(AsRef::as_ref).collect();
        let mut exclude: Vec<&str> = exclude.iter().map(AsRef::as_ref).collect();
        if !include_signatures {
            exclude.extend(SIGNATURE_PATTERNS);
        }
        Ok(TagFilter {
            include: globs("include", &include)?,
            exclude: globs("exclude", &exclude)?,
            max_tags,
        })
    }

    pub fn matches(&self, tag: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.is_match(tag)))
            && !self.exclude.iter().any(|g| g.is_match(tag))
    }

    /// Filters, then keeps the `maxTags` tags that sort highest in natural order (`1.10`
    /// after `1.9`), where newer versions usually sort; the rest are over budget.
    pub fn apply(&self, tags: Vec<String>) -> Filtered {
        let total = tags.len();
        let mut kept: Vec<String> = tags.into_iter().filter(|t| self.matches(t)).collect();
        let excluded = total - kept.len();
        let mut over_budget = 0;
        if let Some(max) = self.max_tags
            && kept.len() > max
        {
            kept.sort_by(|a, b| natural_cmp(b, a));
            over_budget = kept.len() - max;
            kept.truncate(max);
        }
        kept.sort_by(|a, b| natural_cmp(a, b));
        Filtered {
            kept,
            excluded,
            over_budget,
        }
    }
}

/// Compares strings with digit runs as numbers: `v2` < `v10`, `1.9` < `1.10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let strip = |n: &[u8]| {
                    let z = n.iter().take_while(|c| **c == b'0').count();
                    n[z..].to_vec()
                };
                let (sa, sb) = (strip(na), strip(nb));
                let ord = sa
                    .len()
                    .cmp(&sb.len())
                    .then_with(|| sa.cmp(&sb))
                    .then(da.cmp(&db));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signatures_excluded_by_default() {
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let all = tags(&["v1", &sig, "sha256-abc.att", "sha256-abc.sbom", "latest"]);
        let f = TagFilter::default().apply(all.clone());
        assert_eq!(f.kept, ["latest", "v1"]);
        assert_eq!(f.excluded, 3);
        let f = TagFilter::new::<&str>(&[], &[], None, true)
            .unwrap()
            .apply(all);
        assert_eq!(f.kept.len(), 5);
    }

    #[test]
    fn include_exclude_and_budget() {
        let f = TagFilter::new(&["v*", "1.*"], &["*-rc*"], Some(3), false).unwrap();
        let r = f.apply(tags(&[
            "v1", "v2", "v10", "v3-rc1", "latest", "1.9", "1.10", "main",
        ]));
        assert_eq!(r.excluded, 3, "latest, main, v3-rc1");
        assert_eq!(r.over_budget, 2);
        // Natural order puts the `v` tags above the `1.` ones; the three highest stay.
        assert_eq!(r.kept, ["v1", "v2", "v10"]);
    }

    #[test]
    fn bad_patterns_and_budget_are_clear_errors() {
        let err = TagFilter::new(&["v[1"], &[], None, false).unwrap_err();
        assert!(
            err.to_string().contains("tags.include") && err.to_string().contains("v[1"),
            "{err}"
        );
        assert_eq!(
            TagFilter::new::<&str>(&[], &[], Some(0), false).unwrap_err(),
            FilterError::ZeroBudget
        );
    }

    #[test]
    fn natural_order() {
        let mut v = tags(&["v10", "v2", "1.10", "1.9", "1.09", "a", "v1"]);
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["1.9", "1.09", "1.10", "a", "v1", "v2", "v10"]);
    }
}
