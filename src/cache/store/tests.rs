use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::cache::keys::Scope;
use crate::cache::memory::MemoryCache;
use crate::image::{Digest, ImageRef, Repository};

/// The repository the store tests (and the read API's) use.
pub(crate) fn repo() -> Repository {
    Repository::parse("ghcr.io/org/app").unwrap()
}

pub(crate) fn entry(tag: &str, digest: &Digest) -> TagEntry {
    TagEntry {
        tag: tag.to_string(),
        digest: Some(digest.clone()),
        fetched: 1,
        deadline: 2,
        interval: 3,
    }
}

pub(crate) fn record(digest: &Digest, created: &str, label: Option<&str>) -> ImageRecord {
    let mut labels = BTreeMap::new();
    if let Some(l) = label {
        labels.insert(
            "org.opencontainers.image.created".to_string(),
            l.to_string(),
        );
    }
    ImageRecord {
        digest: digest.clone(),
        media_type: crate::registry::manifest::OCI_MANIFEST.to_string(),
        created: crate::image::parse_time(created),
        labels,
        platforms: Vec::new(),
        available_platforms: Vec::new(),
    }
}

pub(crate) fn later() -> Millis {
    Millis::now().plus(Duration::from_secs(3600))
}

#[tokio::test]
async fn small_chunks_round_trip_and_tag_lookup_reads_one_chunk() {
    let store = MetadataStore::new(MemoryCache::new(4096));
    let scope = Scope::public();
    let d = Digest::sha256_of(b"image");
    let entries: Vec<TagEntry> = (0..500).map(|i| entry(&format!("v{i}"), &d)).collect();
    store
        .put_image(
            &scope,
            &record(&d, "2024-01-01T00:00:00Z", None),
            &[],
            later(),
        )
        .await
        .unwrap();
    let head = store
        .publish_index(&scope, &repo(), &entries, Utc::now(), later())
        .await
        .unwrap();
    assert!(head.chunks.len() > 10, "{} chunks", head.chunks.len());
    let (_, read) = store.read_index(&scope, &repo()).await.unwrap().unwrap();
    let mut want = entries.clone();
    want.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(read, want);

    let hits_before = crate::cache::CacheStats::load(&store.backend().stats().hits);
    let info = store
        .get_image(&scope, &ImageRef::parse("ghcr.io/org/app:v42").unwrap())
        .await
        .unwrap();
    assert_eq!(info.digest, d);
    let hits = crate::cache::CacheStats::load(&store.backend().stats().hits) - hits_before;
    assert_eq!(hits, 3, "head, one chunk, one image");

    // Republishing replaces the index; the chunks it no longer names are retired, and
    // removed by the publish after (a reader may still be streaming them meanwhile).
    let before = store.backend().len();
    let shorter = store
        .publish_index(&scope, &repo(), &entries[..10], Utc::now(), later())
        .await
        .unwrap();
    assert_eq!(shorter.retired.len(), head.chunks.len());
    assert!(store.backend().len() > before);
    let again = store
        .publish_index(&scope, &repo(), &entries[..10], Utc::now(), later())
        .await
        .unwrap();
    assert_eq!(again.generation, shorter.generation);
    assert!(again.retired.is_empty());
    assert!(store.backend().len() < before);
    assert_eq!(
        store
            .read_index(&scope, &repo())
            .await
            .unwrap()
            .unwrap()
            .1
            .len(),
        10
    );
}

#[tokio::test]
async fn not_cached_semantics_and_last_error() {
    let store = MetadataStore::new(MemoryCache::default());
    let scope = Scope::public();
    let err = store
        .get_image_repository_metadata(&scope, &repo())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ReadError::NotCached {
                last_error: None,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("ImageRepositoryWatch"),
        "help text: {err}"
    );

    store
        .record_error(
            &scope,
            &repo(),
            "registry ghcr.io refused the credentials",
            later(),
        )
        .await
        .unwrap();
    let err = store
        .get_image_repository_metadata(&scope, &repo())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("last error: registry ghcr.io refused"),
        "{err}"
    );

    // Once fetched, an error no longer hides the data: it rides along.
    let d = Digest::sha256_of(b"x");
    store
        .put_image(
            &scope,
            &record(&d, "2024-01-01T00:00:00Z", None),
            &[],
            later(),
        )
        .await
        .unwrap();
    store
        .publish_index(&scope, &repo(), &[entry("v1", &d)], Utc::now(), later())
        .await
        .unwrap();
    store
        .record_error(&scope, &repo(), "429 from ghcr.io", later())
        .await
        .unwrap();
    let m = store
        .get_image_repository_metadata(&scope, &repo())
        .await
        .unwrap();
    assert_eq!(m.tags, ["v1"]);
    assert_eq!(m.last_error.as_deref(), Some("429 from ghcr.io"));
    assert!(m.last_update.is_some());
    assert!(matches!(
        store
            .get_image(&scope, &ImageRef::parse("ghcr.io/org/app:v2").unwrap())
            .await,
        Err(ReadError::TagNotFound { .. })
    ));
}

#[tokio::test]
async fn timestamp_labels_decorate_on_read() {
    let scope = Scope::public();
    let d = Digest::sha256_of(b"reproducible");
    let rec = record(&d, "1970-01-01T00:00:00Z", Some("2024-05-06T07:08:09Z"));
    for (patterns, want) in [
        (vec![], "1970-01-01T00:00:00+00:00"),
        (vec!["ghcr.io/org/*"], "2024-05-06T07:08:09+00:00"),
    ] {
        let store = MetadataStore::new(MemoryCache::default())
            .with_timestamp_labels(TimestampLabels::new(&patterns).unwrap());
        store.put_image(&scope, &rec, &[], later()).await.unwrap();
        let by_digest = ImageRef::parse(&format!("ghcr.io/org/app@{d}")).unwrap();
        let info = store.get_image(&scope, &by_digest).await.unwrap();
        assert_eq!(info.created.unwrap().to_rfc3339(), want, "{patterns:?}");
    }
}

/// A foreign or corrupt head naming more chunks than fit an item, chunks that are not
/// content ids, chunks out of tag order or a tag count its chunks do not hold is corrupt:
/// reads report it at once (a read sizes its multi-get by the head), and the next publish
/// replaces it.
#[tokio::test]
async fn a_head_naming_an_impossible_index_is_corrupt() {
    let scope = Scope::public();
    let key = keys::repository_head(&scope, &repo());
    let d = Digest::sha256_of(b"x");
    let id = |i: usize| format!("{i:032x}");
    let chunk =
        |i: usize, first: &str| format!(r#"{{"id":"{}","first":"{first}","tags":1}}"#, id(i));
    let many: Vec<String> = (0..=MAX_CHUNKS)
        .map(|i| chunk(i, &format!("t{i:06}")))
        .collect();
    let cases = [
        (many.join(","), MAX_CHUNKS as u64 + 1, true),
        (r#"{"id":"zz","first":"a","tags":1}"#.to_string(), 1, true),
        (format!("{},{}", chunk(1, "b"), chunk(2, "a")), 2, true),
        (chunk(1, "a"), 5, true),
        // Valid, but its chunk is not there: not cached, not corrupt.
        (chunk(1, "a"), 1, false),
    ];
    for (chunks, tag_count, corrupt) in cases {
        let store = MetadataStore::new(MemoryCache::default());
        let head = format!(
            r#"{{"canonicalName":"ghcr.io/org/app","generation":7,"chunks":[{chunks}],"tagCount":{tag_count},"lastUpdate":"2024-05-01T14:00:00Z"}}"#
        );
        store
            .backend()
            .set(&key, head.as_bytes(), later())
            .await
            .unwrap();

        let read = store.read_index(&scope, &repo()).await;
        assert_eq!(
            matches!(read, Err(CacheError::Corrupt { .. })),
            corrupt,
            "{tag_count}: {read:?}"
        );
        let by_tag = ImageRef::parse("ghcr.io/org/app:v1").unwrap();
        let image = store.get_image(&scope, &by_tag).await;
        assert_eq!(
            matches!(image, Err(ReadError::Cache(CacheError::Corrupt { .. }))),
            corrupt,
            "{tag_count}: {image:?}"
        );

        let entries = vec![entry("v1", &d)];
        let published = store
            .publish_index(&scope, &repo(), &entries, Utc::now(), later())
            .await
            .unwrap();
        assert!(published.generation != 0 && published.chunks.len() == 1);
        let (head, read) = store.read_index(&scope, &repo()).await.unwrap().unwrap();
        assert_eq!((head, read), (published, entries));
    }
}

/// Pages of tags follow `last` and stop at `n`, across chunks, reading only the chunks
/// a page needs; a digest is a member when a tag or a cached image's platform names it.
#[tokio::test]
async fn tag_pages_and_membership_walk_the_chunks() {
    let store = MetadataStore::new(MemoryCache::default()).with_chunk_bytes(1024);
    let scope = Scope::public();
    let d = Digest::sha256_of(b"x");
    let tags: Vec<String> = (0..400).map(|i| format!("t{i:04}")).collect();
    let entries: Vec<TagEntry> = tags.iter().map(|t| entry(t, &d)).collect();
    let head = store
        .publish_index(&scope, &repo(), &entries, Utc::now(), later())
        .await
        .unwrap();
    assert!(head.chunks.len() > 10, "{} chunks", head.chunks.len());
    let page = |last: Option<&'static str>, n: Option<usize>| {
        let store = &store;
        let scope = &scope;
        async move { store.tags_page(scope, &repo(), last, n).await.unwrap() }
    };
    let names = |r: std::ops::Range<usize>| tags[r].to_vec();
    assert_eq!(page(None, None).await, (tags.clone(), false));
    assert_eq!(page(None, Some(2)).await, (names(0..2), true));
    assert_eq!(page(Some("t0001"), Some(2)).await, (names(2..4), true));
    assert_eq!(
        page(Some("t0397"), Some(10)).await,
        (names(398..400), false)
    );
    assert_eq!(page(Some("t0397"), Some(2)).await, (names(398..400), false));
    // `last` need not be a tag: the page starts after where it would sort.
    assert_eq!(page(Some("t0250x"), Some(1)).await, (names(251..252), true));
    assert_eq!(page(None, Some(0)).await, (vec![], false));
    assert_eq!(page(Some("u"), None).await, (vec![], false));
    // A page reads the head and a batch of chunks from the one that holds `last`.
    let reads = |last: &'static str| {
        let store = &store;
        async move {
            let before = crate::cache::CacheStats::load(&store.backend().stats().hits);
            page(Some(last), Some(2)).await;
            crate::cache::CacheStats::load(&store.backend().stats().hits) - before
        }
    };
    let from = |tag: &str| {
        let at = head.chunk_of(tag).unwrap();
        head.chunks.iter().skip_while(|c| c.id != at.id).count() as u64
    };
    assert_eq!(reads("t0390").await, 1 + from("t0390").min(16));
    assert_eq!(reads("t0100").await, 1 + from("t0100").min(16));
    assert!(from("t0100") > 16, "the index is longer than one batch");

    let platform = Digest::sha256_of(b"platform");
    let rec: ImageRecord = serde_json::from_value(serde_json::json!({
        "digest": d,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "platforms": [{
            "platform": {"os": "linux", "architecture": "amd64"},
            "digest": platform,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "labels": {},
        }],
    }))
    .unwrap();
    store.put_image(&scope, &rec, &[], later()).await.unwrap();
    for (digest, member) in [
        (&d, true),
        (&platform, true),
        (&Digest::sha256_of(b"no"), false),
    ] {
        assert_eq!(
            store.references(&scope, &repo(), digest).await.unwrap(),
            member,
            "{digest}"
        );
    }
}
