//! The metadata cache: the only module that knows memcached.
//!
//! Two layers. Below, [`CacheReader`] / [`CacheWriter`] move bytes with a refresh deadline
//! (backends: [`memcached::Memcached`] for production, [`memory::MemoryCache`] for
//! standalone use and tests). Above, [`store::MetadataStore`] speaks regcache's schema: images
//! by digest, chunked tag indexes published under a generation, and the read API with its
//! decorators. The byte format is documented in `docs/cache-schema.md`.

pub mod decorate;
pub mod discovery;
pub mod keys;
pub mod memcached;
pub mod memory;
mod metrics;
pub mod store;

pub use metrics::CacheMetrics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// First bytes of every value: `R`, `C`, format version 1. Then the deadline, then the
/// payload.
pub(crate) const VALUE_MAGIC: [u8; 3] = [b'R', b'C', 1];
const HEADER_LEN: usize = VALUE_MAGIC.len() + 8;

/// Entries live at least this long, so a registry outage of an hour never empties the
/// cache by expiry alone.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(3600);
/// memcached reads a TTL above 30 days as an absolute Unix time; stay below it.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600 - 1);

/// A point in time as Unix milliseconds: the cache's 64-bit deadline format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Millis {
        Millis::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Millis {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Millis(d.as_millis().min(i64::MAX as u128) as i64),
            Err(e) => Millis(-(e.duration().as_millis().min(i64::MAX as u128) as i64)),
        }
    }

    pub fn plus(self, d: Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// Time from `self` until `later`, zero if `later` is not later.
    pub fn until(self, later: Millis) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }

    pub fn to_datetime(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp_millis(self.0)
    }
}

/// A value and its refresh deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub deadline: Millis,
}

/// How long memcached keeps an entry: twice the time to its deadline, at least
/// [`MIN_TTL`], below memcached's 30-day absolute-time threshold.
pub(crate) fn ttl_for(deadline: Millis, now: Millis) -> Duration {
    (now.until(deadline) * 2).clamp(MIN_TTL, MAX_TTL)
}

/// Frames a payload with its deadline: magic, i64 big-endian Unix ms, payload.
pub(crate) fn encode_value(deadline: Millis, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + payload.len());
    b.put_slice(&VALUE_MAGIC);
    b.put_i64(deadline.0);
    b.put_slice(payload);
    b.freeze()
}

/// Reads a framed value; `None` for anything that is not one (another writer's data, a
/// future format): treated as a miss, never a panic.
pub(crate) fn decode_value(raw: Bytes) -> Option<Entry> {
    if raw.len() < HEADER_LEN || raw[..VALUE_MAGIC.len()] != VALUE_MAGIC {
        return None;
    }
    let mut d = [0u8; 8];
    d.copy_from_slice(&raw[VALUE_MAGIC.len()..HEADER_LEN]);
    Some(Entry {
        deadline: Millis(i64::from_be_bytes(d)),
        value: raw.slice(HEADER_LEN..),
    })
}

/// Cache failures. A read or write that needs a server that cannot answer fails with
/// `Unavailable` or `Timeout`; warming reads alone treat such keys as misses
/// ([`CacheReader::get_many_available`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CacheError {
    #[error("cannot reach memcached {server}: {detail}")]
    Unavailable { server: String, detail: String },
    #[error("memcached server {server} timed out after {after:?} ({operation})")]
    Timeout {
        server: String,
        operation: &'static str,
        after: Duration,
    },
    #[error("memcached server {server} refused {operation} of {key}: {detail}")]
    Refused {
        server: String,
        operation: &'static str,
        key: String,
        detail: String,
    },
    #[error("value for {key} is {size} bytes, over the {limit}-byte item limit")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("no memcached servers configured or discovered")]
    NoServers,
    #[error("cannot discover memcached servers from {service}: {detail}")]
    Discovery { service: String, detail: String },
    #[error("cached value under {key} is not valid: {detail}")]
    Corrupt { key: String, detail: String },
}

impl CacheError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            CacheError::Unavailable { .. } => "unavailable",
            CacheError::Timeout { .. } => "timeout",
            CacheError::Refused { .. } => "refused",
            CacheError::TooLarge { .. } => "too_large",
            CacheError::NoServers => "no_servers",
            CacheError::Discovery { .. } => "discovery",
            CacheError::Corrupt { .. } => "corrupt",
        }
    }
}

/// Reads bytes with their deadline.
///
/// A miss and an unreachable cache are different answers: `Ok(None)` (or a key absent from
/// the map) means the servers answered and do not hold the key; an `Err` means a server
/// that holds one of the keys could not be asked (down, timed out, none configured), so a
/// reader must say "cache unavailable, retry", never "not cached".
pub trait CacheReader: Send + Sync {
    /// `Ok(None)` on a miss; `Err` when the key's server cannot answer.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, CacheError>> + Send;

    /// Batched read; keys that miss are absent from the map. `Err` when any key's server
    /// cannot answer: no partial answers.
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Entry>, CacheError>> + Send;

    /// Batched read for warming, where a down server must not stop the pass: the keys of a
    /// server that cannot answer are left out, as misses. `Err` only when no server is
    /// configured at all.
    fn get_many_available(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Entry>, CacheError>> + Send {
        self.get_many(keys)
    }

    /// Largest value the backend stores in one item (payload and header together).
    fn item_limit(&self) -> usize;

    fn stats(&self) -> &CacheStats;

    /// Checks the backend answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), CacheError>> + Send;
}

/// Writes bytes with their deadline.
pub trait CacheWriter: CacheReader {
    /// Stores `value`; the TTL follows from `deadline` (see [`ttl_for`]).
    fn set(
        &self,
        key: &str,
        value: &[u8],
        deadline: Millis,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), CacheError>> + Send;
}

/// Operation counters, shared by both backends.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub sets: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
}

impl CacheStats {
    pub fn hit(&self, bytes: usize) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn miss(&self, n: u64) {
        self.misses.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, bytes: usize) {
        self.sets.fetch_add(1, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Either backend, chosen at start-up (`--memcached` given or not).
pub enum Backend {
    Memory(memory::MemoryCache),
    Memcached(std::sync::Arc<memcached::Memcached>),
}

/// Where the cache lives: memcached servers listed, or found by DNS SRV, or neither (the
/// in-memory cache).
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// memcached servers, `HOST:PORT`.
    pub servers: Vec<String>,
    /// DNS SRV name listing the memcached servers (a headless Service).
    pub service: Option<String>,
    /// How often the SRV name is looked up again.
    pub refresh: Duration,
    /// Timeout of each memcached operation (and of connecting).
    pub timeout: Duration,
}

/// Opens the cache `options` name: memcached servers listed or discovered by DNS SRV
/// (refreshed in the background until `stop` resolves), else an in-memory cache.
pub async fn open(
    options: &CacheOptions,
    metrics: &CacheMetrics,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Backend, CacheError> {
    let memcached_options = memcached::MemcachedOptions {
        op_timeout: options.timeout,
        connect_timeout: options.timeout,
        ..memcached::MemcachedOptions::default()
    };
    if let Some(service) = &options.service {
        let discovery = discovery::SrvDiscovery::system(service)?;
        let initial = match discovery.discover().await {
            Ok(servers) => servers,
            Err(e) => {
                // Start anyway: the refresh keeps trying, and readiness reports the cache.
                tracing::warn!(error = %e, "no memcached servers found yet");
                Vec::new()
            }
        };
        let m = std::sync::Arc::new(
            memcached::Memcached::new(initial, memcached_options).with_metrics(metrics.clone()),
        );
        tokio::spawn(discovery::refresh_servers(
            m.clone(),
            discovery,
            options.refresh,
            stop,
        ));
        return Ok(Backend::Memcached(m));
    }
    if !options.servers.is_empty() {
        return Ok(Backend::Memcached(std::sync::Arc::new(
            memcached::Memcached::new(options.servers.clone(), memcached_options)
                .with_metrics(metrics.clone()),
        )));
    }
    Ok(Backend::Memory(memory::MemoryCache::default()))
}

impl CacheReader for Backend {
    async fn get(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        match self {
            Backend::Memory(m) => m.get(key).await,
            Backend::Memcached(m) => m.get(key).await,
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, Entry>, CacheError> {
        match self {
            Backend::Memory(m) => m.get_many(keys).await,
            Backend::Memcached(m) => m.get_many(keys).await,
        }
    }

    async fn get_many_available(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Entry>, CacheError> {
        match self {
            Backend::Memory(m) => m.get_many_available(keys).await,
            Backend::Memcached(m) => m.get_many_available(keys).await,
        }
    }

    fn item_limit(&self) -> usize {
        match self {
            Backend::Memory(m) => m.item_limit(),
            Backend::Memcached(m) => m.item_limit(),
        }
    }

    fn stats(&self) -> &CacheStats {
        match self {
            Backend::Memory(m) => m.stats(),
            Backend::Memcached(m) => m.stats(),
        }
    }

    async fn ping(&self) -> Result<(), CacheError> {
        match self {
            Backend::Memory(m) => m.ping().await,
            Backend::Memcached(m) => m.ping().await,
        }
    }
}

impl CacheWriter for Backend {
    async fn set(&self, key: &str, value: &[u8], deadline: Millis) -> Result<(), CacheError> {
        match self {
            Backend::Memory(m) => m.set(key, value, deadline).await,
            Backend::Memcached(m) => m.set(key, value, deadline).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        match self {
            Backend::Memory(m) => m.delete(key).await,
            Backend::Memcached(m) => m.delete(key).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_framing_round_trips_and_rejects_foreign_bytes() {
        for deadline in [
            Millis(0),
            Millis(-5),
            Millis(i64::MAX),
            Millis(1_700_000_000_123),
        ] {
            for payload in [&b""[..], b"x", &[0u8, 255, 13, 10][..]] {
                let e = decode_value(encode_value(deadline, payload)).unwrap();
                assert_eq!(e.deadline, deadline);
                assert_eq!(e.value.as_ref(), payload);
            }
        }
        assert_eq!(decode_value(Bytes::from_static(b"RC")), None);
        assert_eq!(
            decode_value(Bytes::from_static(b"XY\x01\0\0\0\0\0\0\0\0")),
            None
        );
        assert_eq!(
            decode_value(Bytes::from_static(b"RC\x02\0\0\0\0\0\0\0\0")),
            None
        );
    }

    #[test]
    fn ttl_is_twice_time_to_deadline_clamped() {
        let now = Millis(1_000_000);
        assert_eq!(
            ttl_for(now.plus(Duration::from_secs(7200)), now),
            Duration::from_secs(14_400)
        );
        assert_eq!(ttl_for(now.plus(Duration::from_secs(60)), now), MIN_TTL);
        assert_eq!(ttl_for(Millis(0), now), MIN_TTL, "deadline passed");
        assert_eq!(
            ttl_for(now.plus(Duration::from_secs(40 * 86_400)), now),
            MAX_TTL
        );
    }

    #[test]
    fn millis_conversions() {
        let t = UNIX_EPOCH + Duration::from_millis(1234);
        assert_eq!(Millis::from_system(t), Millis(1234));
        assert_eq!(
            Millis::from_system(UNIX_EPOCH - Duration::from_millis(5)),
            Millis(-5)
        );
        assert_eq!(Millis(10).until(Millis(5)), Duration::ZERO);
        assert_eq!(
            Millis(i64::MAX).plus(Duration::from_secs(1)),
            Millis(i64::MAX)
        );
    }
}
