//! Per-tag refresh decisions and intervals: pure functions over the cached tag entry and
//! the clock, with named reasons (like Flux's `shouldScan`).

use std::time::Duration;

use crate::cache::store::TagEntry;
use crate::cache::{Millis, memcached::key_hash};

/// Flux v1's defaults, which its users know.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// First interval of a tag never seen before.
    pub new_tag: Duration,
    /// Never ask a registry about one tag more often than this.
    pub min: Duration,
    /// Even an immutable-looking tag is checked at least this often.
    pub max: Duration,
    /// Spread of deadlines (±fraction of the interval) so tags pushed together do not all
    /// come due in the same pass.
    pub jitter: f64,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            new_tag: Duration::from_secs(3600),
            min: Duration::from_secs(300),
            max: Duration::from_secs(7 * 24 * 3600),
            jitter: 0.1,
        }
    }
}

/// What to do about one tag in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Its deadline has not passed and its image is cached: nothing to ask.
    Fresh,
    /// Its deadline has not passed but its image is not cached (evicted, flushed, or
    /// cached without the platforms wanted now): fetch by digest, no HEAD needed.
    FetchImage,
    /// Ask the registry what it points at now (HEAD).
    Resolve(DueReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    NewTag,
    DeadlinePassed,
}

/// `image_cached`: whether the entry's digest has a cached record covering the wanted
/// platforms (ignored for entries without a digest).
pub(crate) fn should_refresh(
    entry: Option<&TagEntry>,
    image_cached: bool,
    now: Millis,
) -> Decision {
    let Some(entry) = entry else {
        return Decision::Resolve(DueReason::NewTag);
    };
    if now.0 >= entry.deadline {
        return Decision::Resolve(DueReason::DeadlinePassed);
    }
    match &entry.digest {
        Some(_) if !image_cached => Decision::FetchImage,
        _ => Decision::Fresh,
    }
}

/// How a resolved tag compares with what was cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    Unchanged,
    Moved,
    /// The registry says the manifest is unknown.
    Missing,
}

pub fn classify(previous: Option<&TagEntry>, resolved: Option<&crate::image::Digest>) -> Change {
    match (previous, resolved) {
        (_, None) => Change::Missing,
        (None, Some(_)) => Change::New,
        (Some(p), Some(d)) if p.digest.as_ref() == Some(d) => Change::Unchanged,
        (Some(_), Some(_)) => Change::Moved,
    }
}

/// The next interval: new tags start at `new_tag`; unchanged ones double, moved ones
/// halve, within `[min, max]`. A missing manifest is treated as unchanged once seen
/// missing twice (it may come back). A cached tag without an interval (its schedule was
/// evicted) starts again at `new_tag`.
pub(crate) fn next_interval(
    policy: &RefreshPolicy,
    previous: Option<&TagEntry>,
    change: Change,
) -> Duration {
    let previous_interval = previous
        .map(|p| p.interval)
        .filter(|i| *i > 0)
        .map(Duration::from_millis);
    let next = match (change, previous_interval) {
        (Change::New, _) | (_, None) => policy.new_tag,
        (Change::Unchanged, Some(i)) => i.saturating_mul(2),
        (Change::Moved, Some(i)) => i / 2,
        (Change::Missing, Some(i)) if previous.is_some_and(|p| p.digest.is_none()) => {
            i.saturating_mul(2)
        }
        (Change::Missing, Some(_)) => policy.new_tag,
    };
    next.clamp(policy.min, policy.max)
}

/// `interval` spread by ±`jitter`, chosen from `seed` (the tag and the time) so it is
/// stable for one input and different across tags.
pub(crate) fn jittered(interval: Duration, jitter: f64, seed: &str) -> Duration {
    let unit = (key_hash(seed) % 10_000) as f64 / 10_000.0;
    interval.mul_f64(1.0 - jitter + 2.0 * jitter * unit)
}

/// The entry to store for a resolved tag.
pub(crate) fn resolved_entry(
    policy: &RefreshPolicy,
    tag: &str,
    previous: Option<&TagEntry>,
    digest: Option<crate::image::Digest>,
    now: Millis,
) -> (TagEntry, Change) {
    let change = classify(previous, digest.as_ref());
    let interval = next_interval(policy, previous, change);
    let wait = jittered(interval, policy.jitter, &format!("{tag}@{}", now.0));
    (
        TagEntry {
            tag: tag.to_string(),
            digest,
            fetched: now.0,
            deadline: now.plus(wait).0,
            interval: interval.as_millis() as u64,
        },
        change,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Digest;

    fn entry(digest: Option<&Digest>, deadline: i64, interval: Duration) -> TagEntry {
        TagEntry {
            tag: "v1".into(),
            digest: digest.cloned(),
            fetched: 0,
            deadline,
            interval: interval.as_millis() as u64,
        }
    }

    #[test]
    fn decisions() {
        let d = Digest::sha256_of(b"a");
        let now = Millis(1000);
        assert_eq!(
            should_refresh(None, false, now),
            Decision::Resolve(DueReason::NewTag)
        );
        let fresh = entry(Some(&d), 2000, Duration::from_secs(60));
        assert_eq!(should_refresh(Some(&fresh), true, now), Decision::Fresh);
        assert_eq!(
            should_refresh(Some(&fresh), false, now),
            Decision::FetchImage
        );
        let due = entry(Some(&d), 1000, Duration::from_secs(60));
        assert_eq!(
            should_refresh(Some(&due), true, now),
            Decision::Resolve(DueReason::DeadlinePassed)
        );
        let missing = entry(None, 2000, Duration::from_secs(60));
        assert_eq!(should_refresh(Some(&missing), false, now), Decision::Fresh);
    }

    #[test]
    fn intervals_follow_flux_v1() {
        let p = RefreshPolicy::default();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let hour = Duration::from_secs(3600);
        let prev = entry(Some(&a), 0, hour);
        assert_eq!(classify(None, Some(&a)), Change::New);
        assert_eq!(classify(Some(&prev), Some(&a)), Change::Unchanged);
        assert_eq!(classify(Some(&prev), Some(&b)), Change::Moved);
        assert_eq!(classify(Some(&prev), None), Change::Missing);

        assert_eq!(next_interval(&p, None, Change::New), hour);
        assert_eq!(next_interval(&p, Some(&prev), Change::Unchanged), hour * 2);
        assert_eq!(next_interval(&p, Some(&prev), Change::Moved), hour / 2);
        let at_min = entry(Some(&a), 0, p.min);
        assert_eq!(next_interval(&p, Some(&at_min), Change::Moved), p.min);
        let at_max = entry(Some(&a), 0, p.max);
        assert_eq!(next_interval(&p, Some(&at_max), Change::Unchanged), p.max);
        assert_eq!(next_interval(&p, Some(&prev), Change::Missing), p.new_tag);
        let was_missing = entry(None, 0, hour);
        assert_eq!(
            next_interval(&p, Some(&was_missing), Change::Missing),
            hour * 2
        );
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<Duration> = (0..200)
            .map(|i| jittered(hour, 0.1, &format!("tag-{i}")))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= hour.mul_f64(0.9) && *w <= hour.mul_f64(1.1))
        );
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 150, "deadlines spread");
        assert_eq!(jittered(hour, 0.1, "x"), jittered(hour, 0.1, "x"));
    }

    #[test]
    fn resolved_entries_carry_deadline_and_interval() {
        let p = RefreshPolicy::default();
        let d = Digest::sha256_of(b"a");
        let now = Millis(1_000_000);
        let (e, change) = resolved_entry(&p, "v1", None, Some(d.clone()), now);
        assert_eq!(change, Change::New);
        assert_eq!(e.interval, 3_600_000);
        assert_eq!(e.fetched, now.0);
        assert!(e.deadline >= now.0 + 3_240_000 && e.deadline <= now.0 + 3_960_000);
        let (e2, change) = resolved_entry(&p, "v1", Some(&e), Some(d), now);
        assert_eq!(change, Change::Unchanged);
        assert_eq!(e2.interval, 7_200_000);
    }
}
