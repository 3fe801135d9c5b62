//! What the cache holds: framed values and the store's schema.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::cache::keys::{self, Scope};
use crate::cache::memory::MemoryCache;
use crate::cache::store::{MetadataStore, TagEntry};
use crate::cache::{CacheWriter, MAX_TTL, MIN_TTL, Millis, VALUE_MAGIC, decode_value};
use crate::cache::{encode_value, ttl_for};
use crate::image::{Digest, ImageRef, Repository};

/// The cache's value framing and scopes (`decode_value`, `encode_value`, `Scope::parse`).
///
/// Properties: anything `decode_value` accepts re-encodes to the same bytes; anything it
/// refuses lacks the header; any payload and deadline round-trip; TTLs stay within memcached's
/// bounds; a parsed scope is the string it came from.
pub fn cache_value(data: &[u8]) {
    match decode_value(Bytes::copy_from_slice(data)) {
        Some(entry) => assert_eq!(encode_value(entry.deadline, &entry.value).as_ref(), data),
        None => assert!(data.len() < VALUE_MAGIC.len() + 8 || data[..3] != VALUE_MAGIC),
    }
    let mut first = [0u8; 8];
    let n = data.len().min(8);
    first[..n].copy_from_slice(&data[..n]);
    let deadline = Millis(i64::from_le_bytes(first));
    let entry = decode_value(encode_value(deadline, data)).expect("an encoded value decodes");
    assert_eq!((entry.deadline, entry.value.as_ref()), (deadline, data));
    for now in [Millis(0), Millis(i64::MIN), Millis(i64::MAX), deadline] {
        let ttl = ttl_for(deadline, now);
        assert!((MIN_TTL..=MAX_TTL).contains(&ttl), "ttl {ttl:?}");
    }
    let _ = deadline.plus(Duration::MAX).until(deadline);
    let _ = deadline.to_datetime();

    let input = String::from_utf8_lossy(data);
    if let Some(scope) = Scope::parse(&input) {
        assert_eq!(scope.as_str(), input);
        assert_eq!(scope.is_public(), input == "pub");
        assert_eq!(Scope::parse(scope.as_str()), Some(scope));
    }
}

/// What the metadata store does with values another writer (or corruption) left in
/// memcached. The input is up to three payloads separated by NUL bytes: a repository head,
/// a tag chunk (stored under its own id and under each of the first 8 ids the head names,
/// with a schedule naming the same id) and an image record (stored under every digest the
/// chunk names).
///
/// Properties: every read returns (a miss, an error or data), never panics or hangs; an
/// index read back is sorted; publishing over the foreign state still succeeds and the new
/// index then reads back exactly.
pub fn cache_store(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let head = parts.next().unwrap_or_default();
    let chunk = parts.next();
    let record = parts.next();
    let repository = Repository::parse("ghcr.io/org/app").expect("valid repository");
    let fallback = Digest::sha256_of(b"regcache");
    let scope = Scope::public();
    let deadline = Millis::now().plus(Duration::from_secs(3600));

    let head_json: Option<Value> = serde_json::from_slice(head).ok();
    let mut ids: Vec<String> = head_json
        .as_ref()
        .and_then(|h| h.get("chunks"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("id")?.as_str().map(str::to_string))
        .take(8)
        .collect();
    if let Some(chunk) = chunk {
        ids.push(crate::cache::store::chunk_id(chunk));
    }
    let chunk_json: Option<Value> = chunk.and_then(|c| serde_json::from_slice(c).ok());
    let mut digests = vec![fallback.clone()];
    if let Some(tags) = chunk_json
        .as_ref()
        .and_then(|c| c.get("tags"))
        .and_then(Value::as_array)
    {
        digests.extend(
            tags.iter()
                .filter_map(|t| t.get("digest")?.as_str())
                .filter_map(|d| Digest::parse(d).ok())
                .take(8),
        );
    }

    let backend = MemoryCache::default();
    // A value too large for an item is refused, as memcached would refuse it.
    let set = |key: String, value: &[u8]| {
        let _ = futures::executor::block_on(backend.set(&key, value, deadline));
    };
    set(keys::repository_head(&scope, &repository), head);
    if let Some(chunk) = chunk {
        for id in &ids {
            set(keys::tag_chunk(&scope, &repository, id), chunk);
            let schedule = format!(r#"{{"chunk":{id:?},"due":[[1,2,3]]}}"#);
            set(
                keys::tag_schedule(&scope, &repository, id),
                schedule.as_bytes(),
            );
        }
    }
    if let Some(record) = record {
        for digest in &digests {
            set(keys::image(&scope, digest), record);
        }
    }
    let store = MetadataStore::new(backend);
    futures::executor::block_on(async {
        let _ = store.head(&scope, &repository).await;
        if let Ok(Some((_, entries))) = store.read_index(&scope, &repository).await {
            assert!(entries.windows(2).all(|w| w[0].tag <= w[1].tag));
        }
        let _ = store
            .get_image_repository_metadata(&scope, &repository)
            .await;
        for reference in ["ghcr.io/org/app:latest", "ghcr.io/org/app:v1"] {
            let image = ImageRef::parse(reference).expect("valid reference");
            let _ = store.get_image(&scope, &image).await;
        }
        for digest in &digests {
            let _ = store.get_image_record(&scope, digest).await;
            let image =
                ImageRef::parse(&format!("ghcr.io/org/app@{digest}")).expect("valid reference");
            let _ = store.get_image(&scope, &image).await;
        }
        let _ = store.cached_images(&scope, &digests).await;
        let _ = store
            .record_error(&scope, &repository, "fuzz", deadline)
            .await;

        let entries = vec![TagEntry {
            tag: "v1".to_string(),
            digest: Some(fallback.clone()),
            fetched: 1,
            deadline: 2,
            interval: 3,
        }];
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time");
        let published = store
            .publish_index(&scope, &repository, &entries, now, deadline)
            .await
            .expect("publishing to memory over foreign values succeeds");
        let (head, read) = store
            .read_index(&scope, &repository)
            .await
            .expect("memory reads succeed")
            .expect("the index just published is there");
        assert_eq!((head, read), (published, entries));
    });
}
