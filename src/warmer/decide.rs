//! A pass's decisions, as pure functions of what the cache held and what the registry
//! answered: which tags to HEAD, which digests to GET, and how the index is merged when a
//! 429 or a failure cut the pass short. `pass.rs` is the I/O around them.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::schedule::{self, Change, Decision, RefreshPolicy};
use crate::cache::Millis;
use crate::cache::store::{ImageRecord, TagEntry};
use crate::image::{Digest, Platform};

/// What a pass does with each kept tag before it sends a request.
#[derive(Debug, Default, PartialEq)]
pub(super) struct TagPlan {
    /// Tags whose cached entry stands (fresh, or only its image needs fetching).
    pub entries: BTreeMap<String, TagEntry>,
    /// Tags to HEAD, in the order given.
    pub to_resolve: Vec<String>,
    /// Digests of standing entries whose image is not cached with the wanted platforms:
    /// GET by digest, no HEAD.
    pub to_fetch: HashSet<Digest>,
}

/// Whether `digest` has a cached record holding the wanted `platforms`.
fn covered(
    records: &HashMap<Digest, ImageRecord>,
    digest: &Digest,
    platforms: &[Platform],
) -> bool {
    records.get(digest).is_some_and(|r| r.covers(platforms))
}

/// The digests the cached entries of `kept` tags point at, each once: the image records a
/// pass reads before deciding.
pub(super) fn cached_digests(kept: &[String], previous: &HashMap<String, TagEntry>) -> Vec<Digest> {
    let set: HashSet<&Digest> = kept
        .iter()
        .filter_map(|t| previous.get(t).and_then(|e| e.digest.as_ref()))
        .collect();
    set.into_iter().cloned().collect()
}

/// Decides each kept tag from its cached entry ([`schedule::should_refresh`]).
pub(super) fn plan_tags(
    kept: &[String],
    previous: &HashMap<String, TagEntry>,
    records: &HashMap<Digest, ImageRecord>,
    platforms: &[Platform],
    now: Millis,
) -> TagPlan {
    let mut plan = TagPlan::default();
    for tag in kept {
        let p = previous.get(tag);
        let cached = p
            .and_then(|e| e.digest.as_ref())
            .is_some_and(|d| covered(records, d, platforms));
        match (schedule::should_refresh(p, cached, now), p) {
            (Decision::Fresh, Some(e)) => {
                plan.entries.insert(tag.clone(), e.clone());
            }
            (Decision::FetchImage, Some(e)) => {
                if let Some(d) = &e.digest {
                    plan.to_fetch.insert(d.clone());
                }
                plan.entries.insert(tag.clone(), e.clone());
            }
            _ => plan.to_resolve.push(tag.clone()),
        }
    }
    plan
}

/// The digests HEADs resolved to whose image is not cached with the wanted platforms,
/// each once however many tags point at it.
pub(super) fn digests_to_get(
    resolved: &[(String, Option<Digest>)],
    records: &HashMap<Digest, ImageRecord>,
    platforms: &[Platform],
) -> Vec<Digest> {
    let mut seen = HashSet::new();
    resolved
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| !covered(records, d, platforms))
        .filter(|d| seen.insert(*d))
        .cloned()
        .collect()
}

/// After HEADs stopped early (a 429): the tags that were to be resolved and got no answer.
pub(super) fn unanswered<'a>(
    to_resolve: &'a [String],
    resolved: &[(String, Option<Digest>)],
) -> Vec<&'a str> {
    let answered: HashSet<&str> = resolved.iter().map(|(t, _)| t.as_str()).collect();
    to_resolve
        .iter()
        .map(String::as_str)
        .filter(|t| !answered.contains(t))
        .collect()
}

/// Each of `tags` that has no entry yet keeps its cached entry, if it had one: what a tag
/// gets when a 429 cut its resolution or its fetch short.
pub(super) fn keep_cached<'a>(
    tags: impl IntoIterator<Item = &'a str>,
    previous: &HashMap<String, TagEntry>,
    entries: &mut BTreeMap<String, TagEntry>,
) {
    for tag in tags {
        if !entries.contains_key(tag)
            && let Some(p) = previous.get(tag)
        {
            entries.insert(tag.to_string(), p.clone());
        }
    }
}

/// How the GETs went, by digest.
#[derive(Debug)]
pub(super) struct Fetched<'a> {
    /// Image records in hand (cached before, or fetched and cached in this pass).
    pub records: &'a HashMap<Digest, ImageRecord>,
    /// Digests whose GET or caching failed, or that a 429 left unfetched.
    pub failed: &'a HashSet<Digest>,
    /// Digests the registry called unknown (the tag's manifest is gone).
    pub unknown: &'a HashSet<Digest>,
}

/// One resolved tag's merge: its new entry and how it changed, or its cached entry kept.
#[derive(Debug, PartialEq)]
pub(super) enum Merged {
    /// The tag moves forward (`Change` says how).
    Updated(TagEntry, Change),
    /// Its image could not be had: the cached entry stays.
    Kept(TagEntry),
    /// Its image could not be had and nothing was cached: the tag is left out.
    Dropped,
}

/// Merges one resolved tag. A tag moves forward when its image is in hand, or when the
/// registry said its manifest is unknown (that counts as done); otherwise it keeps what was
/// cached before, so a failure never loses data.
pub(super) fn merge_resolved(
    policy: &RefreshPolicy,
    tag: &str,
    digest: Option<&Digest>,
    previous: Option<&TagEntry>,
    fetched: &Fetched<'_>,
    now: Millis,
) -> Merged {
    let unknown = digest.is_some_and(|d| fetched.unknown.contains(d));
    let in_hand = digest
        .is_none_or(|d| fetched.records.contains_key(d) && !fetched.failed.contains(d) && !unknown);
    if in_hand || unknown {
        let digest = digest.filter(|_| !unknown).cloned();
        let (entry, change) = schedule::resolved_entry(policy, tag, previous, digest, now);
        return Merged::Updated(entry, change);
    }
    match previous {
        Some(p) => Merged::Kept(p.clone()),
        None => Merged::Dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = Millis(1_000_000_000);

    fn digest(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn entry(tag: &str, d: Option<&Digest>, deadline: i64) -> TagEntry {
        TagEntry {
            tag: tag.to_string(),
            digest: d.cloned(),
            fetched: NOW.0 - 60_000,
            deadline,
            interval: 3_600_000,
        }
    }

    /// An index listing amd64 and arm64, of which the record holds `platforms`.
    fn record(d: &Digest, platforms: &[&str]) -> ImageRecord {
        let available = ["linux/amd64", "linux/arm64"];
        ImageRecord {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            created: None,
            labels: Default::default(),
            platforms: platforms
                .iter()
                .map(|p| crate::image::PlatformImage {
                    platform: Some(Platform::parse(p).unwrap()),
                    os_version: None,
                    digest: digest(p),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    config_digest: None,
                    created: None,
                    labels: Default::default(),
                    config_missing: false,
                })
                .collect(),
            available_platforms: available.map(|p| Platform::parse(p).unwrap()).to_vec(),
        }
    }

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fresh_tags_stand_due_tags_are_headed_and_uncached_images_fetched() {
        let (a, b, c) = (digest("a"), digest("b"), digest("c"));
        let later = NOW.0 + 60_000;
        let previous: HashMap<String, TagEntry> = [
            entry("fresh", Some(&a), later),
            entry("due", Some(&a), NOW.0 - 1),
            entry("evicted", Some(&b), later),
            entry("narrow", Some(&c), later),
            entry("gone", None, later),
        ]
        .into_iter()
        .map(|e| (e.tag.clone(), e))
        .collect();
        let records: HashMap<Digest, ImageRecord> = [
            (a.clone(), record(&a, &["linux/amd64", "linux/arm64"])),
            (c.clone(), record(&c, &["linux/amd64"])),
        ]
        .into_iter()
        .collect();
        let wanted = [Platform::parse("linux/arm64").unwrap()];
        let kept = tags(&["fresh", "due", "evicted", "narrow", "gone", "new"]);
        let plan = plan_tags(&kept, &previous, &records, &wanted, NOW);
        assert_eq!(plan.to_resolve, tags(&["due", "new"]));
        assert_eq!(plan.to_fetch, HashSet::from([b.clone(), c.clone()]));
        assert_eq!(
            plan.entries.keys().collect::<Vec<_>>(),
            ["evicted", "fresh", "gone", "narrow"],
            "a tag whose manifest was unknown stands until its deadline"
        );

        let mut digests = cached_digests(&kept, &previous);
        digests.sort();
        let mut expected = vec![a, b, c];
        expected.sort();
        assert_eq!(digests, expected);
    }

    #[test]
    fn each_uncovered_digest_is_got_once() {
        let (a, b, c) = (digest("a"), digest("b"), digest("c"));
        let records: HashMap<Digest, ImageRecord> = [(a.clone(), record(&a, &["linux/amd64"]))]
            .into_iter()
            .collect();
        let resolved = vec![
            ("v1".to_string(), Some(a.clone())),
            ("v2".to_string(), Some(b.clone())),
            ("latest".to_string(), Some(b.clone())),
            ("gone".to_string(), None),
            ("v3".to_string(), Some(c.clone())),
        ];
        let amd64 = [Platform::parse("linux/amd64").unwrap()];
        assert_eq!(
            digests_to_get(&resolved, &records, &amd64),
            vec![b.clone(), c.clone()]
        );
        // Cached without a platform wanted now: fetched again.
        let arm = [Platform::parse("linux/arm64").unwrap()];
        assert_eq!(digests_to_get(&resolved, &records, &arm), vec![a, b, c]);
    }

    #[test]
    fn after_a_429_unanswered_tags_keep_what_was_cached() {
        let a = digest("a");
        let previous: HashMap<String, TagEntry> = [entry("old", Some(&a), NOW.0 - 1)]
            .into_iter()
            .map(|e| (e.tag.clone(), e))
            .collect();
        let to_resolve = tags(&["old", "answered", "never-seen"]);
        let resolved = vec![("answered".to_string(), Some(a.clone()))];
        let mut entries = BTreeMap::new();
        let left = unanswered(&to_resolve, &resolved);
        assert_eq!(left, ["old", "never-seen"]);
        keep_cached(left, &previous, &mut entries);
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["old"]);
        assert_eq!(entries["old"], previous["old"]);

        // A tag already decided in this pass is not overwritten.
        let mut decided = BTreeMap::from([("old".to_string(), entry("old", None, NOW.0))]);
        keep_cached(["old"], &previous, &mut decided);
        assert_eq!(decided["old"].digest, None);
    }

    #[test]
    fn a_tag_moves_forward_only_with_its_image_in_hand() {
        let policy = RefreshPolicy::default();
        let (old, new) = (digest("old"), digest("new"));
        let previous = entry("v1", Some(&old), NOW.0 - 1);
        let records: HashMap<Digest, ImageRecord> = [(new.clone(), record(&new, &["linux/amd64"]))]
            .into_iter()
            .collect();
        let (none, failed, unknown) = (
            HashSet::new(),
            HashSet::from([new.clone()]),
            HashSet::from([new.clone()]),
        );
        let ok = Fetched {
            records: &records,
            failed: &none,
            unknown: &none,
        };
        let Merged::Updated(e, Change::Moved) =
            merge_resolved(&policy, "v1", Some(&new), Some(&previous), &ok, NOW)
        else {
            panic!("a moved tag with its image in hand moves forward")
        };
        assert_eq!(e.digest.as_ref(), Some(&new));
        assert!(e.deadline > NOW.0);

        let bad = Fetched {
            records: &records,
            failed: &failed,
            unknown: &none,
        };
        assert_eq!(
            merge_resolved(&policy, "v1", Some(&new), Some(&previous), &bad, NOW),
            Merged::Kept(previous.clone()),
            "a failed GET keeps the cached entry"
        );
        assert_eq!(
            merge_resolved(&policy, "v2", Some(&new), None, &bad, NOW),
            Merged::Dropped
        );
        let no_record = Fetched {
            records: &HashMap::new(),
            failed: &none,
            unknown: &none,
        };
        assert_eq!(
            merge_resolved(&policy, "v1", Some(&new), Some(&previous), &no_record, NOW),
            Merged::Kept(previous.clone()),
            "a digest left unfetched after a 429 keeps the cached entry"
        );

        let gone = Fetched {
            records: &records,
            failed: &none,
            unknown: &unknown,
        };
        let Merged::Updated(e, Change::Missing) =
            merge_resolved(&policy, "v1", Some(&new), Some(&previous), &gone, NOW)
        else {
            panic!("an unknown manifest counts as done")
        };
        assert_eq!(e.digest, None);
        let Merged::Updated(e, Change::Missing) =
            merge_resolved(&policy, "v1", None, Some(&previous), &ok, NOW)
        else {
            panic!("a HEAD that found no manifest counts as done")
        };
        assert_eq!(e.digest, None);
    }
}
