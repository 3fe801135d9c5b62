//! Pull quotas a registry reports on manifest answers: Docker Hub's `RateLimit-Limit:
//! 100;w=21600` and `RateLimit-Remaining: 76;w=21600` (on HEADs too, which it does not
//! count), or any registry's plain `RateLimit-Remaining: 76`. regcache keeps a reserve of
//! the quota for the cluster's own nodes, which often pull through the same address: at the
//! reserve, manifest GETs wait, HEADs go on and keep reading the quota, and GETs resume when
//! the registry's window frees pulls again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

/// What a registry last said about one identity's pull quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub limit: Option<u64>,
    pub remaining: u64,
    /// The window the quota counts over (`w=`), when the registry says.
    pub window: Option<Duration>,
}

/// Parses a manifest answer's quota headers, if it carries them.
pub fn parse(headers: &HeaderMap) -> Option<Quota> {
    let field = |name: &str| -> Option<(u64, Option<Duration>)> {
        let value = headers.get(name)?.to_str().ok()?;
        let mut parts = value.split(';').map(str::trim);
        let count = parts.next()?.parse().ok()?;
        let window = parts
            .filter_map(|p| p.strip_prefix("w="))
            .find_map(|w| w.parse().ok())
            .map(Duration::from_secs);
        Some((count, window))
    };
    let (remaining, window) = field("ratelimit-remaining")?;
    let limit = field("ratelimit-limit");
    Some(Quota {
        limit: limit.map(|(l, _)| l),
        remaining,
        window: window.or(limit.and_then(|(_, w)| w)),
    })
}

/// How much of a quota regcache leaves alone (`--registry-pull-reserve`): a number of
/// pulls, or a share of the registry's limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reserve {
    Pulls(u64),
    Percent(f64),
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve::Percent(20.0)
    }
}

impl Reserve {
    /// `10` or `20%`.
    pub fn parse(text: &str) -> Result<Reserve, String> {
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(Reserve::Percent(p)),
                _ => Err(format!("{text:?}: a share must be 0% to 100%")),
            },
            None => text
                .parse()
                .map(Reserve::Pulls)
                .map_err(|_| format!("{text:?}: expected a number of pulls (10) or a share (20%)")),
        }
    }

    /// The pulls kept back of `quota`. A share of an unknown limit keeps back a share of
    /// what remains.
    pub fn of(self, quota: &Quota) -> u64 {
        match self {
            Reserve::Pulls(n) => n,
            Reserve::Percent(p) => {
                let base = quota.limit.unwrap_or(quota.remaining) as f64;
                (base * p / 100.0).ceil() as u64
            }
        }
    }
}

/// The last quota seen per identity (host and credential).
#[derive(Debug, Default)]
pub(super) struct Quotas(Mutex<HashMap<String, (Quota, Instant)>>);

impl Quotas {
    pub(super) fn record(&self, key: &str, quota: Quota) {
        self.lock().insert(key.to_string(), (quota, Instant::now()));
    }

    /// The quota last seen for `key`, unless its window has passed since (then the
    /// registry has freed pulls and nothing is known).
    pub(super) fn current(&self, key: &str) -> Option<Quota> {
        let (quota, seen) = *self.lock().get(key)?;
        let stale = quota.window.is_some_and(|w| seen.elapsed() >= w);
        (!stale).then_some(quota)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Quota, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn docker_hub_and_plain_headers_parse() {
        let hub = headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
        ]);
        assert_eq!(
            parse(&hub),
            Some(Quota {
                limit: Some(100),
                remaining: 76,
                window: Some(Duration::from_secs(21600))
            })
        );
        let plain = headers(&[("ratelimit-remaining", "3")]);
        assert_eq!(
            parse(&plain),
            Some(Quota {
                limit: None,
                remaining: 3,
                window: None
            })
        );
        assert_eq!(parse(&headers(&[("ratelimit-limit", "100")])), None);
        assert_eq!(parse(&headers(&[("ratelimit-remaining", "many")])), None);
    }

    #[test]
    fn reserves_are_pulls_or_a_share_of_the_limit() {
        let q = Quota {
            limit: Some(100),
            remaining: 40,
            window: None,
        };
        assert_eq!(Reserve::parse("10").unwrap().of(&q), 10);
        assert_eq!(Reserve::parse("25%").unwrap().of(&q), 25);
        assert_eq!(Reserve::parse(" 0% ").unwrap().of(&q), 0);
        let unknown_limit = Quota { limit: None, ..q };
        assert_eq!(Reserve::parse("25%").unwrap().of(&unknown_limit), 10);
        assert!(Reserve::parse("120%").unwrap_err().contains("0% to 100%"));
        assert!(
            Reserve::parse("ten")
                .unwrap_err()
                .contains("number of pulls")
        );
    }

    #[test]
    fn a_quota_is_forgotten_when_its_window_has_passed() {
        let quotas = Quotas::default();
        let q = Quota {
            limit: Some(10),
            remaining: 1,
            window: Some(Duration::ZERO),
        };
        quotas.record("h", q);
        assert_eq!(quotas.current("h"), None);
        let q = Quota {
            window: Some(Duration::from_secs(60)),
            ..q
        };
        quotas.record("h", q);
        assert_eq!(quotas.current("h"), Some(q));
    }
}
