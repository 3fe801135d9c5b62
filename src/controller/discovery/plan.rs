//! Discovery's decisions, as pure functions: the repositories a pod spec uses, a
//! namespace's discovery settings, and the steps (apply or delete) that bring the
//! discovered watches in line with the workloads. `discovery/mod.rs` is the I/O around them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodSpec;
use sha2::Digest as _;

use crate::crd::{ImageRepositoryWatchSpec, SecretReference, TagsSpec, duration};
use crate::image::{ImageRef, Platform, Repository};

/// The label that turns discovery on for a namespace (`"true"`).
pub const DISCOVER_LABEL: &str = "regcache.io/discover";
/// The label on every watch discovery created (`"true"`); a watch without it is never
/// touched by discovery.
pub const DISCOVERED_LABEL: &str = "regcache.io/discovered";
/// On a discovered watch no workload uses any more: since when (RFC 3339).
pub const UNUSED_SINCE_ANNOTATION: &str = "regcache.io/unusedSince";
/// Namespace annotations that set discovered watches' `interval`, `tags.maxTags` and
/// `platforms` (comma-separated).
pub const INTERVAL_ANNOTATION: &str = "regcache.io/discoveryInterval";
pub const MAX_TAGS_ANNOTATION: &str = "regcache.io/discoveryMaxTags";
pub const PLATFORMS_ANNOTATION: &str = "regcache.io/discoveryPlatforms";

/// Where discovery looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Namespaces labelled `regcache.io/discover: "true"`.
    Labelled,
    /// Every namespace the controller watches.
    All,
}

/// What discovery does, from the controller's flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub scope: Scope,
    /// How long a watch no workload uses is kept before it is deleted.
    pub grace_period: Duration,
    /// Registry hosts (`HOST[:PORT]`) reached over plain HTTP: their watches get
    /// `insecure: true`.
    pub insecure_registries: Vec<String>,
    /// `tags.maxTags` of discovered watches where the namespace does not say.
    pub max_tags: Option<u32>,
}

/// What one workload's pod spec uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUse {
    pub repositories: BTreeSet<Repository>,
    pub pull_secrets: BTreeSet<String>,
    /// `spec.serviceAccountName` when it names one other than `default`.
    pub service_account: Option<String>,
}

/// The repositories of a pod spec's containers, init containers and ephemeral containers
/// (a digest-pinned image counts by its repository), with its pull secrets and
/// ServiceAccount. With `ephemeral_only`, only ephemeral containers count: a Pod that a
/// workload owns has the rest from the workload's template. Images that do not parse are
/// left out: no kubelet could pull them either.
pub fn pod_use(spec: &PodSpec, ephemeral_only: bool) -> PodUse {
    let mut images: Vec<&str> = Vec::new();
    if !ephemeral_only {
        images.extend(spec.containers.iter().filter_map(|c| c.image.as_deref()));
        images.extend(
            spec.init_containers
                .iter()
                .flatten()
                .filter_map(|c| c.image.as_deref()),
        );
    }
    images.extend(
        spec.ephemeral_containers
            .iter()
            .flatten()
            .filter_map(|c| c.image.as_deref()),
    );
    let repositories: BTreeSet<Repository> = images
        .into_iter()
        .filter_map(|i| ImageRef::parse(i.trim()).ok())
        .map(|r| r.repository)
        .collect();
    if repositories.is_empty() {
        return PodUse::default();
    }
    PodUse {
        repositories,
        pull_secrets: spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.clone())
            .filter(|n| !n.is_empty())
            .collect(),
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty() && s != "default"),
    }
}

/// A namespace's discovery settings, from its label and annotations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceSettings {
    /// Labelled `regcache.io/discover: "true"`.
    pub labelled: bool,
    pub interval: Option<String>,
    pub max_tags: Option<u32>,
    pub platforms: Vec<String>,
    /// Annotations that do not parse, each with what is wrong; they are left out.
    pub problems: Vec<String>,
}

impl NamespaceSettings {
    pub fn from_metadata(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> NamespaceSettings {
        let mut settings = NamespaceSettings {
            labelled: labels.get(DISCOVER_LABEL).map(String::as_str) == Some("true"),
            ..NamespaceSettings::default()
        };
        if let Some(v) = annotations.get(INTERVAL_ANNOTATION) {
            match duration::parse_interval(v.trim()) {
                Ok(_) => settings.interval = Some(v.trim().to_string()),
                Err(e) => settings
                    .problems
                    .push(format!("annotation {INTERVAL_ANNOTATION} {v:?}: {e}")),
            }
        }
        if let Some(v) = annotations.get(MAX_TAGS_ANNOTATION) {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=1_000_000).contains(&n) => settings.max_tags = Some(n),
                _ => settings.problems.push(format!(
                    "annotation {MAX_TAGS_ANNOTATION} {v:?}: expected a number from 1 to 1000000"
                )),
            }
        }
        if let Some(v) = annotations.get(PLATFORMS_ANNOTATION) {
            let platforms: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            match platforms
                .iter()
                .map(|p| Platform::parse(p).map(|_| p.to_string()))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(p) => settings.platforms = p,
                Err(e) => settings
                    .problems
                    .push(format!("annotation {PLATFORMS_ANNOTATION} {v:?}: {e}")),
            }
        }
        settings
    }
}

/// The part of a watch discovery writes, and what it compares before writing.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub spec: ImageRepositoryWatchSpec,
    pub unused_since: Option<String>,
}

impl Owned {
    /// The fields of `spec` discovery sets; the rest (a user's own additions) stay theirs.
    pub fn of(spec: &ImageRepositoryWatchSpec, unused_since: Option<String>) -> Owned {
        Owned {
            spec: ImageRepositoryWatchSpec {
                image: spec.image.clone(),
                interval: spec.interval.clone(),
                pull_secrets: spec.pull_secrets.clone(),
                service_account_name: spec.service_account_name.clone(),
                tags: spec
                    .tags
                    .as_ref()
                    .and_then(|t| t.max_tags)
                    .map(|max_tags| TagsSpec {
                        max_tags: Some(max_tags),
                        ..TagsSpec::default()
                    }),
                platforms: spec.platforms.clone(),
                insecure: spec.insecure,
                ..ImageRepositoryWatchSpec::default()
            },
            unused_since,
        }
    }
}

/// A watch discovery created, as it stands in the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub uid: Option<String>,
    pub owned: Owned,
}

/// A step towards the desired watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Server-side apply of the watch `name` in `namespace` (creating it, or changing it).
    Apply {
        namespace: String,
        name: String,
        owned: Owned,
    },
    /// Delete the watch (only if its uid is still `uid`).
    Delete {
        namespace: String,
        name: String,
        uid: Option<String>,
        why: &'static str,
    },
}

/// The deterministic name of the discovered watch of `repository`: its canonical name
/// made a DNS label, cut to leave room for a hash of the whole name, so it is at most 63
/// characters and two repositories never share one.
pub fn watch_name(repository: &Repository) -> String {
    let canonical = repository.canonical();
    let mut slug = String::with_capacity(canonical.len());
    for c in canonical.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.truncate(52);
    let slug = slug.trim_end_matches('-');
    let hash = hex::encode(&sha2::Sha256::digest(canonical.as_bytes())[..5]);
    format!("{slug}-{hash}")
}

/// What discovery sees: the workloads' uses, the namespaces, the hand-written watches and
/// the discovered ones.
pub struct World<'a> {
    /// Each workload's namespace and use.
    pub uses: Vec<(&'a str, &'a PodUse)>,
    pub namespaces: &'a HashMap<String, NamespaceSettings>,
    /// Watches without the discovered label: (namespace, name, spec.image).
    pub hand_written: Vec<(&'a str, &'a str, &'a str)>,
    /// Discovered watches by (namespace, name).
    pub discovered: &'a BTreeMap<(String, String), Existing>,
}

/// The steps that bring the discovered watches in line, and the earliest time a kept
/// unused watch's grace period ends (when to look again).
pub fn steps(
    world: &World<'_>,
    options: &Options,
    now: DateTime<Utc>,
) -> (Vec<Step>, Option<DateTime<Utc>>) {
    let on = |ns: &str| match options.scope {
        Scope::All => true,
        Scope::Labelled => world.namespaces.get(ns).is_some_and(|s| s.labelled),
    };

    // What each namespace uses, by repository.
    #[derive(Default)]
    struct InUse {
        pull_secrets: BTreeSet<String>,
        accounts: BTreeMap<String, usize>,
    }
    let mut in_use: BTreeMap<(&str, &Repository), InUse> = BTreeMap::new();
    for (ns, u) in &world.uses {
        if !on(ns) {
            continue;
        }
        for repository in &u.repositories {
            let entry = in_use.entry((ns, repository)).or_default();
            entry.pull_secrets.extend(u.pull_secrets.iter().cloned());
            if let Some(a) = &u.service_account {
                *entry.accounts.entry(a.clone()).or_default() += 1;
            }
        }
    }
    let hand_written_repos: HashSet<(&str, Repository)> = world
        .hand_written
        .iter()
        .filter_map(|(ns, _, image)| Repository::parse(image).ok().map(|r| (*ns, r)))
        .collect();
    let hand_written_names: HashSet<(&str, &str)> = world
        .hand_written
        .iter()
        .map(|(ns, name, _)| (*ns, *name))
        .collect();

    let mut out = Vec::new();
    let mut wanted: HashSet<(String, String)> = HashSet::new();
    for ((ns, repository), u) in &in_use {
        if hand_written_repos.contains(&(*ns, (*repository).clone())) {
            continue;
        }
        let name = watch_name(repository);
        if hand_written_names.contains(&(*ns, name.as_str())) {
            // A watch of that name was written by hand: it is never touched.
            continue;
        }
        let settings = world.namespaces.get(*ns).cloned().unwrap_or_default();
        // The ServiceAccount most of the repository's workloads run as (ties by name).
        let account = u
            .accounts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(a, _)| a.clone());
        let max_tags = settings.max_tags.or(options.max_tags);
        let owned = Owned {
            spec: ImageRepositoryWatchSpec {
                image: repository.canonical(),
                interval: settings.interval.clone(),
                pull_secrets: u
                    .pull_secrets
                    .iter()
                    .map(|n| SecretReference::new(n.clone()))
                    .collect(),
                service_account_name: account,
                tags: max_tags.map(|m| TagsSpec {
                    max_tags: Some(m),
                    ..TagsSpec::default()
                }),
                platforms: settings.platforms.clone(),
                insecure: options
                    .insecure_registries
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(repository.host())),
                ..ImageRepositoryWatchSpec::default()
            },
            unused_since: None,
        };
        let key = (ns.to_string(), name);
        if world.discovered.get(&key).map(|e| &e.owned) != Some(&owned) {
            out.push(Step::Apply {
                namespace: key.0.clone(),
                name: key.1.clone(),
                owned,
            });
        }
        wanted.insert(key);
    }

    // Discovered watches nothing wants: replaced by a hand-written one (deleted now), or
    // unused (marked, then deleted after the grace period).
    let mut next: Option<DateTime<Utc>> = None;
    for ((ns, name), existing) in world.discovered {
        if wanted.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        let repository = Repository::parse(&existing.owned.spec.image).ok();
        let delete = |why| Step::Delete {
            namespace: ns.clone(),
            name: name.clone(),
            uid: existing.uid.clone(),
            why,
        };
        if repository.is_some_and(|r| hand_written_repos.contains(&(ns.as_str(), r))) {
            out.push(delete("a watch written by hand covers its repository"));
            continue;
        }
        let since = existing
            .owned
            .unused_since
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        match since {
            None => out.push(Step::Apply {
                namespace: ns.clone(),
                name: name.clone(),
                owned: Owned {
                    unused_since: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    ..existing.owned.clone()
                },
            }),
            Some(since) => {
                let ends = grace_end(since, options.grace_period);
                if ends <= now {
                    out.push(delete(
                        "no workload has used its repository for the grace period",
                    ));
                } else {
                    next = Some(next.map_or(ends, |n| n.min(ends)));
                }
            }
        }
    }
    // A watch marked unused in this step ends its grace period from now.
    let marked = out
        .iter()
        .any(|s| matches!(s, Step::Apply { owned, .. } if owned.unused_since.is_some()));
    if marked {
        let ends = grace_end(now, options.grace_period);
        next = Some(next.map_or(ends, |n| n.min(ends)));
    }
    (out, next)
}

fn grace_end(since: DateTime<Utc>, grace: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(grace)
        .ok()
        .and_then(|g| since.checked_add_signed(g))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests;
