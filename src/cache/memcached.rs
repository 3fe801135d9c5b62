//! memcached backend: consistent hashing over several servers, a small connection pool per
//! server, a timeout on every operation, and per-server health so a server that is down
//! costs only its own keys.
//!
//! Built on `async-memcached` (tokio, text protocol, multi-get, cancellation-safe: a
//! timed-out operation closes its connection instead of leaving a reply unread) rather than
//! the blocking `memcache` crate, whose calls would have to be shipped to blocking threads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_memcached::{AsciiProtocol, Client};
use bytes::Bytes;
use futures::StreamExt;

use super::memory::DEFAULT_ITEM_LIMIT;
use super::{
    CacheError, CacheReader, CacheStats, CacheWriter, Entry, Millis, decode_value, encode_value,
    ttl_for,
};

/// Points per server on the hash ring: with 160, each of n servers owns close to 1/n of
/// the keys, and adding a server moves about 1/(n+1) of them.
pub(crate) const RING_POINTS: u32 = 160;

#[derive(Clone, Debug)]
pub struct MemcachedOptions {
    /// Each operation (one get, one batch of a multi-get, one set) must finish within this.
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle connections kept per server.
    pub pool_size: usize,
    /// Keys per `get` command in a multi-get.
    pub batch_size: usize,
    /// Batches in flight at once across all servers.
    pub batch_concurrency: usize,
    /// A server that failed is skipped for this long, doubling per failure up to
    /// `max_down_backoff`, then tried again.
    pub down_backoff: Duration,
    pub max_down_backoff: Duration,
    pub item_limit: usize,
}

impl Default for MemcachedOptions {
    fn default() -> Self {
        MemcachedOptions {
            op_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(1000),
            pool_size: 8,
            batch_size: 100,
            batch_concurrency: 8,
            down_backoff: Duration::from_millis(250),
            max_down_backoff: Duration::from_secs(30),
            item_limit: DEFAULT_ITEM_LIMIT,
        }
    }
}

/// One memcached server: its address, idle connections and health.
struct Server {
    addr: String,
    pool: Mutex<Vec<Client>>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    down_until: Option<Instant>,
    failures: u32,
}

impl Server {
    fn new(addr: String) -> Self {
        Server {
            addr,
            pool: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
        }
    }

    fn is_down(&self) -> bool {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.down_until.is_some_and(|t| Instant::now() < t)
    }

    fn mark_up(&self) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.failures > 0 {
            tracing::info!(server = %self.addr, "memcached server is back");
        }
        *h = Health::default();
    }

    fn mark_down(&self, options: &MemcachedOptions, why: &str) {
        // Connections to a failed server are not trusted again.
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let backoff = options
            .down_backoff
            .saturating_mul(1 << h.failures.min(16))
            .min(options.max_down_backoff);
        h.failures = h.failures.saturating_add(1);
        h.down_until = Some(Instant::now() + backoff);
        tracing::warn!(server = %self.addr, error = why, retry_in = ?backoff, "memcached server unavailable");
    }

    /// An idle pooled connection (`true`) or a new one (`false`).
    async fn connect(&self, options: &MemcachedOptions) -> Result<(Client, bool), CacheError> {
        let idle = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(c) = idle {
            return Ok((c, true));
        }
        self.connect_new(options).await.map(|c| (c, false))
    }

    async fn connect_new(&self, options: &MemcachedOptions) -> Result<Client, CacheError> {
        let unavailable = |detail: String| CacheError::Unavailable {
            server: self.addr.clone(),
            detail,
        };
        // A name (an SRV target) may resolve to several addresses (localhost: ::1 and
        // 127.0.0.1); the first that accepts wins.
        let addrs: Vec<SocketAddr> = match self.addr.parse() {
            Ok(a) => vec![a],
            Err(_) => {
                tokio::time::timeout(options.connect_timeout, tokio::net::lookup_host(&self.addr))
                    .await
                    .map_err(|_| unavailable("name lookup timed out".to_string()))?
                    .map_err(|e| unavailable(format!("name lookup failed: {e}")))?
                    .collect()
            }
        };
        let mut last = unavailable("name has no address".to_string());
        for addr in addrs {
            match tokio::time::timeout(
                options.connect_timeout,
                Client::new(format!("tcp://{addr}")),
            )
            .await
            {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = unavailable(e.to_string()),
                Err(_) => last = unavailable("connect timed out".to_string()),
            }
        }
        Err(last)
    }

    fn release(&self, client: Client, options: &MemcachedOptions) {
        if client.is_closed() {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < options.pool_size {
            pool.push(client);
        }
    }
}

/// The consistent-hash ring over the current servers.
struct Ring {
    points: Vec<(u64, usize)>,
    servers: Vec<Arc<Server>>,
}

/// Key hash used by the ring: XXH3-64 of the key bytes (documented in the schema).
pub fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

impl Ring {
    fn new(servers: Vec<Arc<Server>>) -> Ring {
        let mut points = Vec::with_capacity(servers.len() * RING_POINTS as usize);
        for (i, s) in servers.iter().enumerate() {
            for p in 0..RING_POINTS {
                points.push((key_hash(&format!("{}#{p}", s.addr)), i));
            }
        }
        points.sort_unstable();
        Ring { points, servers }
    }

    fn locate(&self, key: &str) -> Option<&Arc<Server>> {
        match self.servers.len() {
            0 => None,
            1 => self.servers.first(),
            _ => {
                let h = key_hash(key);
                let i = self.points.partition_point(|(p, _)| *p < h);
                let (_, s) = self.points[i % self.points.len()];
                self.servers.get(s)
            }
        }
    }
}

/// Which server a key lives on, for a sorted server list: the pure placement function,
/// exposed so tests and other-language readers can check their own.
pub fn server_for(servers: &[String], key: &str) -> Option<String> {
    let ring = Ring::new(
        servers
            .iter()
            .map(|s| Arc::new(Server::new(s.clone())))
            .collect(),
    );
    ring.locate(key).map(|s| s.addr.clone())
}

/// A memcached cluster client.
pub struct Memcached {
    options: MemcachedOptions,
    ring: RwLock<Arc<Ring>>,
    stats: CacheStats,
    metrics: Option<super::CacheMetrics>,
}

impl Memcached {
    /// A client over `servers` (`HOST:PORT`), which are sorted so every replica builds the
    /// same ring.
    pub fn new(servers: Vec<String>, options: MemcachedOptions) -> Memcached {
        let m = Memcached {
            options,
            ring: RwLock::new(Arc::new(Ring::new(Vec::new()))),
            stats: CacheStats::default(),
            metrics: None,
        };
        m.set_servers(servers);
        m
    }

    /// Counts reads and writes that a failing server lost in `regcache_cache_errors_total`.
    pub fn with_metrics(mut self, metrics: super::CacheMetrics) -> Memcached {
        self.metrics = Some(metrics);
        self
    }

    /// Replaces the server list, keeping the connections and health of servers that stay.
    /// Returns whether anything changed.
    pub fn set_servers(&self, mut servers: Vec<String>) -> bool {
        servers.sort();
        servers.dedup();
        let current = self.ring();
        if current.servers.iter().map(|s| &s.addr).eq(servers.iter()) {
            return false;
        }
        let keep: HashMap<&str, &Arc<Server>> = current
            .servers
            .iter()
            .map(|s| (s.addr.as_str(), s))
            .collect();
        let next: Vec<Arc<Server>> = servers
            .iter()
            .map(|a| {
                keep.get(a.as_str())
                    .map(|s| (*s).clone())
                    .unwrap_or_else(|| Arc::new(Server::new(a.clone())))
            })
            .collect();
        tracing::info!(servers = ?servers, "memcached servers");
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Ring::new(next));
        true
    }

    pub fn servers(&self) -> Vec<String> {
        self.ring().servers.iter().map(|s| s.addr.clone()).collect()
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `op` on a pooled connection to `server` within the operation timeout. Failures
    /// of the connection or the timeout mark the server down; protocol answers do not.
    async fn with_client<T, F, Fut>(
        &self,
        server: &Server,
        operation: &'static str,
        op: F,
    ) -> Result<T, CacheError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = (Client, Result<T, async_memcached::Error>)>,
    {
        if server.is_down() {
            return Err(CacheError::Unavailable {
                server: server.addr.clone(),
                detail: "marked down after a recent failure".to_string(),
            });
        }
        let result = tokio::time::timeout(self.options.op_timeout, async {
            let (client, pooled) = server.connect(&self.options).await?;
            let (client, result) = op(client).await;
            match result {
                // An idle connection the server has closed since (a memcached restart, an
                // idle timeout) fails on first use; that says nothing about the server
                // now. Its pool mates are as stale: drop them and try once on a new
                // connection (every operation here is idempotent) before marking it down.
                Err(e) if pooled && !matches!(e, async_memcached::Error::Protocol(_)) => {
                    tracing::debug!(server = %server.addr, error = %e, "idle memcached connection failed; reconnecting");
                    drop(client);
                    server.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    let client = server.connect_new(&self.options).await?;
                    Ok::<_, CacheError>(op(client).await)
                }
                result => Ok((client, result)),
            }
        })
        .await;
        match result {
            Err(_) => {
                server.mark_down(&self.options, "operation timed out");
                Err(CacheError::Timeout {
                    server: server.addr.clone(),
                    operation,
                    after: self.options.op_timeout,
                })
            }
            Ok(Err(e)) => {
                server.mark_down(&self.options, &e.to_string());
                Err(e)
            }
            Ok(Ok((client, Ok(v)))) => {
                server.release(client, &self.options);
                server.mark_up();
                Ok(v)
            }
            Ok(Ok((client, Err(e)))) => match e {
                async_memcached::Error::Protocol(status) => {
                    server.release(client, &self.options);
                    Err(CacheError::Refused {
                        server: server.addr.clone(),
                        operation,
                        key: String::new(),
                        detail: status.to_string(),
                    })
                }
                other => {
                    server.mark_down(&self.options, &other.to_string());
                    Err(CacheError::Unavailable {
                        server: server.addr.clone(),
                        detail: other.to_string(),
                    })
                }
            },
        }
    }

    /// One multi-get on one server. A server that cannot answer fails the batch (counted
    /// as an error); the caller decides whether that fails the read.
    async fn get_batch(
        &self,
        server: &Server,
        keys: Vec<String>,
    ) -> Result<HashMap<String, Entry>, CacheError> {
        let n = keys.len() as u64;
        let keys = &keys;
        let result = self
            .with_client(server, "get", |mut c| async move {
                let r = match c.get_multi(keys.iter()).await {
                    // A multi-get that finds nothing is a bare `END`, which the crate
                    // reports as NotFound: every key missed, nothing failed.
                    Err(async_memcached::Error::Protocol(async_memcached::Status::NotFound)) => {
                        Ok(Vec::new())
                    }
                    r => r,
                };
                (c, r)
            })
            .await;
        match result {
            Ok(values) => {
                let mut out = HashMap::new();
                for v in values {
                    let (Ok(key), Some(data)) = (String::from_utf8(v.key), v.data) else {
                        continue;
                    };
                    let len = data.len();
                    if let Some(entry) = decode_value(Bytes::from(data)) {
                        self.stats.hit(len);
                        out.insert(key, entry);
                    }
                }
                self.stats.miss(n - out.len() as u64);
                Ok(out)
            }
            Err(e) => {
                self.stats.error();
                if let Some(m) = &self.metrics {
                    m.error("get", e.metric_label());
                }
                Err(e)
            }
        }
    }

    /// Reads `keys` from the servers that hold them. `strict`: the first server that
    /// cannot answer fails the whole read; otherwise its keys are left out, like misses.
    async fn read(
        &self,
        keys: &[String],
        strict: bool,
    ) -> Result<HashMap<String, Entry>, CacheError> {
        let ring = self.ring();
        if ring.servers.is_empty() {
            return Err(CacheError::NoServers);
        }
        let mut by_server: HashMap<usize, Vec<String>> = HashMap::new();
        let index: HashMap<&str, usize> = ring
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr.as_str(), i))
            .collect();
        for key in keys {
            if let Some(s) = ring.locate(key) {
                by_server
                    .entry(index[s.addr.as_str()])
                    .or_default()
                    .push(key.clone());
            }
        }
        let batches: Vec<(usize, Vec<String>)> = by_server
            .into_iter()
            .flat_map(|(s, keys)| {
                keys.chunks(self.options.batch_size.max(1))
                    .map(|c| (s, c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut out = HashMap::with_capacity(keys.len());
        let mut results = futures::stream::iter(batches)
            .map(|(s, keys)| {
                let server = ring.servers[s].clone();
                async move {
                    let n = keys.len() as u64;
                    (self.get_batch(&server, keys).await, n)
                }
            })
            .buffer_unordered(self.options.batch_concurrency.max(1));
        while let Some((part, n)) = results.next().await {
            match part {
                Ok(found) => out.extend(found),
                Err(e) if strict => return Err(e),
                // A server that is down costs its own keys only: they miss.
                Err(_) => self.stats.miss(n),
            }
        }
        Ok(out)
    }

    /// Empties every server (`flush_all`), for tests and operators.
    pub async fn flush_all(&self) -> Result<(), CacheError> {
        let ring = self.ring();
        for s in &ring.servers {
            self.with_client(s, "flush_all", |mut c| async move {
                let r = c.flush_all().await;
                (c, r)
            })
            .await?;
        }
        Ok(())
    }
}

impl CacheReader for Memcached {
    async fn get(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        let mut got = self.get_many(&[key.to_string()]).await?;
        Ok(got.remove(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, Entry>, CacheError> {
        self.read(keys, true).await
    }

    async fn get_many_available(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Entry>, CacheError> {
        self.read(keys, false).await
    }

    fn item_limit(&self) -> usize {
        self.options.item_limit
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let ring = self.ring();
        if ring.servers.is_empty() {
            return Err(CacheError::NoServers);
        }
        // Ready when at least one server answers: the others cost only their keys.
        let mut last = None;
        for s in &ring.servers {
            match self
                .with_client(s, "version", |mut c| async move {
                    let r = c.version().await;
                    (c, r)
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CacheError::NoServers))
    }
}

impl CacheWriter for Memcached {
    async fn set(&self, key: &str, value: &[u8], deadline: Millis) -> Result<(), CacheError> {
        let framed = encode_value(deadline, value);
        if framed.len() > self.options.item_limit {
            self.stats.error();
            return Err(CacheError::TooLarge {
                key: key.to_string(),
                size: framed.len(),
                limit: self.options.item_limit,
            });
        }
        let ring = self.ring();
        let server = ring.locate(key).ok_or(CacheError::NoServers)?.clone();
        let ttl = ttl_for(deadline, Millis::now()).as_secs() as i64;
        let len = framed.len();
        let framed = &framed;
        let result = self
            .with_client(&server, "set", |mut c| async move {
                let r = c.set(key, framed.as_ref(), Some(ttl), None).await;
                (c, r)
            })
            .await;
        match result {
            Ok(()) => {
                self.stats.set(len);
                Ok(())
            }
            Err(CacheError::Refused {
                server,
                operation,
                detail,
                ..
            }) => {
                self.stats.error();
                Err(CacheError::Refused {
                    server,
                    operation,
                    key: key.to_string(),
                    detail,
                })
            }
            Err(e) => {
                self.stats.error();
                Err(e)
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let ring = self.ring();
        let server = ring.locate(key).ok_or(CacheError::NoServers)?.clone();
        let result = self
            .with_client(&server, "delete", |mut c| async move {
                let r = c.delete(key).await;
                (c, r)
            })
            .await;
        match result {
            // Deleting what is not there is success.
            Ok(()) | Err(CacheError::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    #[test]
    fn ring_spreads_keys_and_adding_a_server_moves_about_a_quarter() {
        let keys: Vec<String> = (0..20_000)
            .map(|i| format!("rc2:img:pub:sha256:{i:064}"))
            .collect();
        let three = Ring::new(
            servers(3)
                .into_iter()
                .map(|s| Arc::new(Server::new(s)))
                .collect(),
        );
        let four = Ring::new(
            servers(4)
                .into_iter()
                .map(|s| Arc::new(Server::new(s)))
                .collect(),
        );
        let mut per_server: HashMap<&str, usize> = HashMap::new();
        let mut moved = 0;
        for k in &keys {
            let a = three.locate(k).unwrap();
            *per_server.entry(a.addr.as_str()).or_default() += 1;
            if a.addr != four.locate(k).unwrap().addr {
                moved += 1;
            }
        }
        for (s, n) in &per_server {
            let share = *n as f64 / keys.len() as f64;
            assert!((0.25..0.42).contains(&share), "{s}: {share}");
        }
        let moved = moved as f64 / keys.len() as f64;
        assert!((0.15..0.34).contains(&moved), "moved {moved}");
    }

    #[test]
    fn placement_does_not_depend_on_list_order() {
        let mut s = servers(3);
        let a = server_for(&s, "k1");
        s.reverse();
        let m = Memcached::new(s.clone(), MemcachedOptions::default());
        assert_eq!(m.servers(), servers(3));
        assert_eq!(m.ring().locate("k1").map(|s| s.addr.clone()), a);
        assert!(!m.set_servers(servers(3)), "same list, no change");
        assert!(m.set_servers(servers(4)));
    }
}
