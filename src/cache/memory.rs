//! In-memory backend: standalone mode's default and the tests' reference. Same framing,
//! TTL and item limit as memcached, so code that works here works there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

use super::{
    CacheError, CacheReader, CacheStats, CacheWriter, Entry, Millis, decode_value, encode_value,
    ttl_for,
};

/// memcached's default item size is 1 MiB, key and item header included; keeping 1 KiB
/// free leaves room for the longest key and memcached's own overhead.
pub(crate) const DEFAULT_ITEM_LIMIT: usize = (1 << 20) - 1024;

pub struct MemoryCache {
    items: Mutex<HashMap<String, (Bytes, Instant)>>,
    item_limit: usize,
    stats: CacheStats,
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache::new(DEFAULT_ITEM_LIMIT)
    }
}

impl MemoryCache {
    pub fn new(item_limit: usize) -> Self {
        MemoryCache {
            items: Mutex::new(HashMap::new()),
            item_limit,
            stats: CacheStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Bytes, Instant)>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, key: &str) -> Option<Entry> {
        let mut items = self.lock();
        match items.get(key) {
            Some((raw, expires)) if Instant::now() < *expires => decode_value(raw.clone()),
            Some(_) => {
                items.remove(key);
                None
            }
            None => None,
        }
    }

    /// Drops everything, as memcached's `flush_all` does.
    pub fn flush(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CacheReader for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        let entry = self.lookup(key);
        match &entry {
            Some(e) => self.stats.hit(e.value.len()),
            None => self.stats.miss(1),
        }
        Ok(entry)
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, Entry>, CacheError> {
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            if let Some(e) = self.get(key).await? {
                out.insert(key.clone(), e);
            }
        }
        Ok(out)
    }

    fn item_limit(&self) -> usize {
        self.item_limit
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

impl CacheWriter for MemoryCache {
    async fn set(&self, key: &str, value: &[u8], deadline: Millis) -> Result<(), CacheError> {
        let framed = encode_value(deadline, value);
        if framed.len() > self.item_limit {
            self.stats.error();
            return Err(CacheError::TooLarge {
                key: key.to_string(),
                size: framed.len(),
                limit: self.item_limit,
            });
        }
        let expires = Instant::now() + ttl_for(deadline, Millis::now());
        self.stats.set(framed.len());
        self.lock().insert(key.to_string(), (framed, expires));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn round_trip_limit_and_flush() {
        let c = MemoryCache::new(64);
        let deadline = Millis::now().plus(Duration::from_secs(60));
        c.set("k", b"value", deadline).await.unwrap();
        let e = c.get("k").await.unwrap().unwrap();
        assert_eq!((e.value.as_ref(), e.deadline), (&b"value"[..], deadline));
        assert!(matches!(
            c.set("big", &[0; 64], deadline).await,
            Err(CacheError::TooLarge { .. })
        ));
        let got = c
            .get_many(&["k".to_string(), "absent".to_string()])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        c.flush();
        assert_eq!(c.get("k").await.unwrap(), None);
        assert_eq!(CacheStats::load(&c.stats().hits), 2);
        assert_eq!(CacheStats::load(&c.stats().misses), 2);
    }
}
