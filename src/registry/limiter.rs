//! One adaptive request limiter per registry host, shared by every target on that host.
//!
//! A token bucket whose rate halves on each 429, which honours `Retry-After` by closing the
//! bucket until then, and which creeps back towards its ceiling after a quiet period. The
//! arithmetic lives in [`Bucket`], a pure state machine over explicit instants, so it is
//! unit-tested without sleeping; [`HostLimiter`] wraps it for async callers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits for one host. Defaults suit public registries; benchmarks against a local
/// registry raise `max_rate` so the limiter is not what they measure.
#[derive(Clone, Debug, PartialEq)]
pub struct LimiterSettings {
    /// Ceiling, in requests per second, that the rate creeps back up to.
    pub max_rate: f64,
    /// Bucket size: how many requests may go at once after a pause.
    pub burst: f64,
    /// Floor for the rate however many 429s arrive: one request every 10 s still lets a
    /// pass make progress and notice when the registry recovers.
    pub min_rate: f64,
    /// How long after the last 429 before the rate is raised again.
    pub quiet_period: Duration,
    /// Factor applied to the rate at each quiet period (additive-increase would take hours
    /// to recover from 1 rps to 100 rps; multiplicative 1.5x takes ~12 quiet periods).
    pub recovery_factor: f64,
    /// Pause after a 429 that gave no `Retry-After`; doubles with each consecutive 429.
    pub default_backoff: Duration,
    /// Cap on the pause, whatever a registry says (a `Retry-After` of a day is not obeyed
    /// blindly; the pass fails with a rate-limit error instead, see the client).
    pub max_backoff: Duration,
    /// Requests in flight to the host at once, shared by every pass that uses it (first
    /// come, first served).
    pub concurrency: usize,
    /// Whether the host counts manifest GETs as pulls, as Docker Hub does (a HEAD is
    /// free). Then a pass resolves every tag by HEAD and GETs only unseen digests; a host
    /// that does not count them has new tags fetched by GET at once, one request fewer
    /// per new image.
    pub counts_pulls: bool,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        LimiterSettings {
            max_rate: 100.0,
            burst: 20.0,
            min_rate: 0.1,
            quiet_period: Duration::from_secs(30),
            recovery_factor: 1.5,
            default_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            concurrency: 8,
            counts_pulls: true,
        }
    }
}

/// Pure token-bucket state. Every method takes `now` so tests drive time by hand.
#[derive(Debug, Clone)]
pub struct Bucket {
    settings: LimiterSettings,
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
    closed_until: Option<Instant>,
    last_change: Instant,
    consecutive_429: u32,
}

/// What a caller must do before sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Go,
    /// Wait this long and ask again.
    Wait(Duration),
}

impl Bucket {
    pub fn new(settings: LimiterSettings, now: Instant) -> Self {
        Bucket {
            rate: settings.max_rate,
            tokens: settings.burst,
            refilled_at: now,
            closed_until: None,
            last_change: now,
            consecutive_429: 0,
            settings,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn closed_until(&self) -> Option<Instant> {
        self.closed_until
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.settings.burst.max(1.0));
        self.refilled_at = now;
        if self.rate < self.settings.max_rate
            && now.saturating_duration_since(self.last_change) >= self.settings.quiet_period
        {
            self.rate = (self.rate * self.settings.recovery_factor).min(self.settings.max_rate);
            self.last_change = now;
            self.consecutive_429 = 0;
        }
    }

    /// Takes a token if one is there, or says how long to wait for one.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let Some(until) = self.closed_until {
            if now < until {
                return Admission::Wait(until - now);
            }
            // Tokens accrue only from the reopening: no burst right after a pause.
            self.closed_until = None;
            self.refilled_at = self.refilled_at.max(until);
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admission::Go
        } else {
            Admission::Wait(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Records a 429: halves the rate and closes the bucket for `retry_after` (or an
    /// exponential default). Returns how long the bucket stays closed.
    pub fn on_rate_limited(&mut self, retry_after: Option<Duration>, now: Instant) -> Duration {
        self.consecutive_429 = self.consecutive_429.saturating_add(1);
        self.rate = (self.rate / 2.0).max(self.settings.min_rate);
        self.tokens = 0.0;
        self.refilled_at = now;
        self.last_change = now;
        let pause = retry_after
            .unwrap_or_else(|| {
                let exp = self.consecutive_429.saturating_sub(1).min(16);
                self.settings.default_backoff.saturating_mul(1 << exp)
            })
            .min(self.settings.max_backoff);
        let until = now + pause;
        // A second 429 with a shorter Retry-After must not reopen the bucket early.
        self.closed_until = Some(self.closed_until.map_or(until, |u| u.max(until)));
        pause
    }
}

/// Tokio's clock, so tests with a paused runtime move the bucket's time too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Async wrapper around [`Bucket`] for one host, with the host's in-flight slots.
#[derive(Debug)]
pub struct HostLimiter {
    bucket: Mutex<Bucket>,
    slots: tokio::sync::Semaphore,
    concurrency: usize,
    counts_pulls: bool,
}

/// One request's slot at a host; the slot frees when this drops.
#[derive(Debug)]
pub struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl HostLimiter {
    pub fn new(settings: LimiterSettings) -> Self {
        let concurrency = settings.concurrency.max(1);
        HostLimiter {
            counts_pulls: settings.counts_pulls,
            bucket: Mutex::new(Bucket::new(settings, now())),
            slots: tokio::sync::Semaphore::new(concurrency),
            concurrency,
        }
    }

    /// Waits for a free slot at the host (first come, first served), then until the
    /// host's bucket lets one request through. Hold the slot until the answer is read.
    pub async fn acquire(&self) -> Slot<'_> {
        let slot = self.slots.acquire().await.expect("never closed");
        loop {
            let decision = self.lock().admit(now());
            match decision {
                Admission::Go => return Slot { _permit: slot },
                Admission::Wait(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Requests that may be in flight to the host at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Whether the host counts manifest GETs as pulls ([`LimiterSettings::counts_pulls`]).
    pub fn counts_pulls(&self) -> bool {
        self.counts_pulls
    }

    pub fn on_rate_limited(&self, retry_after: Option<Duration>) -> Duration {
        self.lock().on_rate_limited(retry_after, now())
    }

    /// Current rate in requests per second (for metrics and tests).
    pub fn rate(&self) -> f64 {
        self.lock().rate()
    }

    /// How long the host stays closed after a 429, if it is.
    pub fn closed_for(&self) -> Option<Duration> {
        let now = now();
        self.lock()
            .closed_until()
            .and_then(|u| u.checked_duration_since(now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // The bucket holds plain numbers; a panic elsewhere cannot leave it inconsistent.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimiterSettings {
        LimiterSettings {
            max_rate: 10.0,
            burst: 2.0,
            min_rate: 0.5,
            quiet_period: Duration::from_secs(30),
            recovery_factor: 2.0,
            default_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            concurrency: 2,
            counts_pulls: true,
        }
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(settings(), t0);
        assert_eq!(b.admit(t0), Admission::Go);
        assert_eq!(b.admit(t0), Admission::Go);
        assert_eq!(b.admit(t0), Admission::Wait(Duration::from_millis(100)));
        assert_eq!(b.admit(t0 + Duration::from_millis(100)), Admission::Go);
    }

    #[test]
    fn halves_on_429_and_honours_retry_after() {
        let t0 = Instant::now();
        let mut b = Bucket::new(settings(), t0);
        let pause = b.on_rate_limited(Some(Duration::from_secs(5)), t0);
        assert_eq!(pause, Duration::from_secs(5));
        assert_eq!(b.rate(), 5.0);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1)),
            Admission::Wait(Duration::from_secs(4))
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(5)),
            Admission::Wait(Duration::from_millis(200))
        );
        b.on_rate_limited(None, t0 + Duration::from_secs(6));
        b.on_rate_limited(None, t0 + Duration::from_secs(6));
        b.on_rate_limited(None, t0 + Duration::from_secs(6));
        assert_eq!(b.rate(), 0.625);
        b.on_rate_limited(None, t0 + Duration::from_secs(6));
        assert_eq!(b.rate(), 0.5, "never below the floor");
    }

    #[test]
    fn backoff_without_retry_after_doubles_and_is_capped() {
        let t0 = Instant::now();
        let mut b = Bucket::new(settings(), t0);
        let pauses: Vec<u64> = (0..8)
            .map(|_| b.on_rate_limited(None, t0).as_secs())
            .collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            b.on_rate_limited(Some(Duration::from_secs(86_400)), t0),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn shorter_retry_after_does_not_reopen_early() {
        let t0 = Instant::now();
        let mut b = Bucket::new(settings(), t0);
        b.on_rate_limited(Some(Duration::from_secs(10)), t0);
        b.on_rate_limited(Some(Duration::from_secs(1)), t0);
        assert_eq!(b.closed_until(), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn creeps_back_after_quiet_period() {
        let t0 = Instant::now();
        let mut b = Bucket::new(settings(), t0);
        b.on_rate_limited(Some(Duration::from_secs(1)), t0);
        b.on_rate_limited(Some(Duration::from_secs(1)), t0);
        assert_eq!(b.rate(), 2.5);
        b.admit(t0 + Duration::from_secs(29));
        assert_eq!(b.rate(), 2.5, "not before the quiet period");
        b.admit(t0 + Duration::from_secs(30));
        assert_eq!(b.rate(), 5.0);
        b.admit(t0 + Duration::from_secs(60));
        assert_eq!(b.rate(), 10.0);
        b.admit(t0 + Duration::from_secs(90));
        assert_eq!(b.rate(), 10.0, "never above the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_bound_the_requests_in_flight() {
        let l = HostLimiter::new(LimiterSettings {
            max_rate: 1000.0,
            burst: 100.0,
            ..settings()
        });
        let first = l.acquire().await;
        let _second = l.acquire().await;
        let wait = Duration::from_secs(1);
        assert!(
            tokio::time::timeout(wait, l.acquire()).await.is_err(),
            "a third request waits while two are in flight"
        );
        drop(first);
        assert!(tokio::time::timeout(wait, l.acquire()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn async_limiter_waits_for_tokens() {
        let l = HostLimiter::new(settings());
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            drop(l.acquire().await);
        }
        // 2 from the burst, then 10 at 10/s.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(990), "{waited:?}");
    }
}
