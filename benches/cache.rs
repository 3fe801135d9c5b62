//! Cache throughput and read latency on a 10,000-tag repository in real memcached, beside a
//! raw memcached read of the same items (same keys, same bytes) measured in the same run;
//! then memcached's memory per image with and without the raw manifests and configs the
//! registry API serves (schema rc2).
//!
//! `cargo bench --bench cache` (env `BENCH_TAGS`, `BENCH_DIGESTS`, `BENCH_READS`,
//! `BENCH_PLATFORMS`, `BENCH_MEMORY_IMAGES`).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_memcached::AsciiProtocol;
use chrono::Utc;
use regcache::cache::keys::{self, Scope};
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::{ImageRecord, MetadataStore, TagEntry};
use regcache::cache::{CacheReader, CacheStats, Millis};
use regcache::image::{BLOB_MEDIA_TYPE, PlatformImage, RawContent};
use regcache::image::{Digest, ImageRef, Platform, Repository};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "  {name:<44} p50 {:>8.2} ms   p99 {:>8.2} ms   ({} samples)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.len()
    );
    (p50, p99)
}

/// An image like those of public repositories: three OCI labels and `platforms` platform
/// manifests (an index when more than one).
fn record(i: usize, platforms: usize) -> ImageRecord {
    let digest = Digest::sha256_of(format!("image {i}").as_bytes());
    let labels: BTreeMap<String, String> = [
        ("org.opencontainers.image.created", "2024-03-02T00:00:00Z"),
        (
            "org.opencontainers.image.source",
            "https://github.com/example/app",
        ),
        (
            "org.opencontainers.image.revision",
            "0123456789abcdef0123456789abcdef01234567",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ImageRecord {
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
        created: Some(Utc::now()),
        labels: labels.clone(),
        platforms: [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "linux/s390x",
        ]
        .iter()
        .cycle()
        .take(platforms)
        .enumerate()
        .map(|(p, platform)| PlatformImage {
            platform: Some(Platform::parse(platform).unwrap()),
            os_version: None,
            digest: Digest::sha256_of(format!("image {i} platform {p}").as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            config_digest: Some(Digest::sha256_of(format!("config {i} {p}").as_bytes())),
            created: Some(Utc::now()),
            labels: labels.clone(),
            config_missing: false,
        })
        .collect(),
        available_platforms: Vec::new(),
    }
}

/// A config blob shaped like a typical application image's, as `docker build` writes it:
/// compact JSON with env, command, labels, 8 layer diff ids and 12 history entries.
fn config_bytes(i: usize, p: usize) -> Vec<u8> {
    let id = |what: &str, n: usize| Digest::sha256_of(format!("{what} {i} {p} {n}").as_bytes());
    let history: Vec<serde_json::Value> = (0..12)
        .map(|n| {
            serde_json::json!({
                "created": "2024-03-02T00:00:00Z",
                "created_by": format!("RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends package-{n} # buildkit"),
                "comment": "buildkit.dockerfile.v0",
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-03-02T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "APP_VERSION=1.2.3", "LANG=C.UTF-8"],
            "Entrypoint": ["/docker-entrypoint.sh"],
            "Cmd": ["app", "serve"],
            "WorkingDir": "/app",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "org.opencontainers.image.created": "2024-03-02T00:00:00Z",
                "org.opencontainers.image.source": "https://github.com/example/app",
                "org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": (0..8).map(|n| id("diff", n).to_string()).collect::<Vec<_>>()},
        "history": history,
    }))
    .unwrap()
}

/// An image's raw contents as the registry sends them (pretty JSON, as BuildKit pushes it):
/// per platform an OCI manifest of 8 layers and its config, and an index over them when
/// there is more than one platform.
const ARCHES: [&str; 4] = ["amd64", "arm64", "arm", "s390x"];

fn raw_contents(i: usize, platforms: usize) -> Vec<RawContent> {
    let mut contents = Vec::new();
    let mut entries = Vec::new();
    for p in 0..platforms {
        let config = config_bytes(i, p);
        let config_digest = Digest::sha256_of(&config);
        let layers: Vec<serde_json::Value> = (0..8)
            .map(|n| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": Digest::sha256_of(format!("layer {i} {p} {n}").as_bytes()).to_string(),
                    "size": 1_000_000 + n * 7919,
                })
            })
            .collect();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let digest = Digest::sha256_of(&manifest);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest.to_string(),
            "size": manifest.len(),
            "platform": {"architecture": ARCHES[p % 4], "os": "linux"},
        }));
        contents.push(RawContent {
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            bytes: manifest.into(),
        });
        contents.push(RawContent {
            digest: config_digest,
            media_type: BLOB_MEDIA_TYPE.to_string(),
            bytes: config.into(),
        });
    }
    if platforms > 1 {
        let index = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap();
        contents.push(RawContent {
            digest: Digest::sha256_of(&index),
            media_type: "application/vnd.oci.image.index.v1+json".to_string(),
            bytes: index.into(),
        });
    }
    contents
}

/// memcached's item memory (`stats bytes`, item headers included) and item count after
/// `images` images of `platforms` platforms are put into a fresh server, with their raw
/// contents or without.
async fn stored_memory(images: usize, platforms: usize, with_contents: bool) -> (f64, f64) {
    let server = support::Memcached::start_with_args(&["-m", "1024"]);
    let store = MetadataStore::new(Memcached::new(
        vec![server.addr()],
        MemcachedOptions::default(),
    ));
    let deadline = Millis::now().plus(Duration::from_secs(3600));
    for i in 0..images {
        let contents = if with_contents {
            raw_contents(i, platforms)
        } else {
            Vec::new()
        };
        store
            .put_image(&Scope::public(), &record(i, platforms), &contents, deadline)
            .await
            .unwrap();
    }
    let stats = server.stats();
    let stat = |name: &str| -> f64 {
        stats
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (stat("bytes"), stat("curr_items"))
}

/// What keeping the registry API's raw contents costs in memcached, per image.
async fn memory_per_image(images: usize) {
    println!(
        "memcached memory per image, {images} images per case (stats bytes, item headers included):"
    );
    for platforms in [1, 2] {
        let shape: Vec<String> = raw_contents(0, platforms)
            .iter()
            .map(|c| {
                let kind = if c.media_type == BLOB_MEDIA_TYPE {
                    "config"
                } else if c.media_type.contains("index") {
                    "index"
                } else {
                    "manifest"
                };
                format!("{kind} {} B", c.bytes.len())
            })
            .collect();
        let (record_only, record_items) = stored_memory(images, platforms, false).await;
        let (with_raw, raw_items) = stored_memory(images, platforms, true).await;
        println!(
            "  {platforms} platform(s) [{}]: record only {:.0} B/image ({:.0} items), with raw contents {:.0} B/image ({:.0} items): {:.2}x, +{:.0} B/image",
            shape.join(", "),
            record_only / images as f64,
            record_items / images as f64,
            with_raw / images as f64,
            raw_items / images as f64,
            with_raw / record_only,
            (with_raw - record_only) / images as f64
        );
    }
}

#[tokio::main]
async fn main() {
    let tags = support::env_usize("BENCH_TAGS", 10_000);
    let distinct = support::env_usize("BENCH_DIGESTS", 10_000);
    let reads = support::env_usize("BENCH_READS", 50);
    let platforms = support::env_usize("BENCH_PLATFORMS", 1);
    let server = support::Memcached::start_with_args(&["-m", "1024"]);
    let store = std::sync::Arc::new(MetadataStore::new(Memcached::new(
        vec![server.addr()],
        MemcachedOptions::default(),
    )));
    // The read API's answers, without an answer cache: each read is built from memcached.
    let read = regcache::api::ReadApi::new(store.clone());
    let scope = Scope::public();
    let repo = Repository::parse("ghcr.io/example/app").unwrap();
    let deadline = Millis::now().plus(Duration::from_secs(3600));
    println!(
        "dataset: {tags} tags over {distinct} distinct images of {platforms} platform(s), one memcached"
    );

    // Writes.
    let records: Vec<ImageRecord> = (0..distinct).map(|i| record(i, platforms)).collect();
    let t = Instant::now();
    for r in &records {
        store.put_image(&scope, r, &[], deadline).await.unwrap();
    }
    let put_secs = t.elapsed().as_secs_f64();
    let image_bytes = CacheStats::load(&store.backend().stats().bytes_written);
    let entries: Vec<TagEntry> = (0..tags)
        .map(|i| TagEntry {
            tag: format!("1.{}.{}", i / 100, i % 100),
            digest: Some(records[i % distinct].digest.clone()),
            fetched: Millis::now().0,
            deadline: deadline.0,
            interval: 3_600_000,
        })
        .collect();
    let t = Instant::now();
    let head = store
        .publish_index(&scope, &repo, &entries, Utc::now(), deadline)
        .await
        .unwrap();
    let publish = t.elapsed();
    let written = CacheStats::load(&store.backend().stats().bytes_written);
    let memcached_stats = server.stats();
    let stat = |name: &str| -> f64 {
        memcached_stats
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!("writes:");
    println!(
        "  put_image: {:.0} images/s ({} sequential sets)",
        distinct as f64 / put_secs,
        distinct
    );
    println!(
        "  publish_index: {:.1} ms for {tags} tags in {} chunks; {:.1} MB written in all",
        publish.as_secs_f64() * 1e3,
        head.chunks.len(),
        written as f64 / 1e6
    );
    // What sizing memcached needs (docs/operations.md): bytes per image and per tag, and
    // what memcached itself holds for them (its per-item overhead included).
    println!("memory:");
    println!(
        "  values: {:.0} bytes per image record, {:.0} bytes per tag in the index",
        image_bytes as f64 / distinct as f64,
        (written - image_bytes) as f64 / tags as f64
    );
    println!(
        "  memcached: {:.1} MB in {} items (stats bytes), {:.0} bytes per item; {:.1} MB of slab pages",
        stat("bytes") / 1e6,
        stat("curr_items"),
        stat("bytes") / stat("curr_items"),
        server
            .raw("stats slabs\r\n")
            .lines()
            .find_map(|l| l.strip_prefix("STAT total_malloced "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1e6
    );

    // The exact items a full repository read fetches.
    let mut item_keys = vec![keys::repository_head(&scope, &repo)];
    item_keys.extend(
        head.chunks
            .iter()
            .map(|c| keys::tag_chunk(&scope, &repo, &c.id)),
    );
    let mut digests: Vec<&Digest> = entries.iter().filter_map(|e| e.digest.as_ref()).collect();
    digests.sort();
    digests.dedup();
    item_keys.extend(digests.iter().map(|d| keys::image(&scope, d)));

    let mut raw = async_memcached::Client::new(format!("tcp://{}", server.addr()))
        .await
        .unwrap();
    let raw_many = common::RawReader::connect(&server.addr()).await;
    let mut ours = Vec::new();
    let mut ours_json = Vec::new();
    let mut raw_full = Vec::new();
    let mut bytes = 0usize;
    let mut answer = bytes::Bytes::new();
    for _ in 0..reads {
        // The read API's answer, built from the stored bytes.
        let t = Instant::now();
        answer = read.repository_json(&scope, &repo, false).await.unwrap();
        ours_json.push(t.elapsed());

        let t = Instant::now();
        let m = store
            .get_image_repository_metadata(&scope, &repo)
            .await
            .unwrap();
        ours.push(t.elapsed());
        assert_eq!(m.tags.len(), tags);

        // Batched and concurrent as regcache's multi-get is (common::RawReader).
        let t = Instant::now();
        let (n, b) = raw_many.read(&item_keys).await;
        raw_full.push(t.elapsed());
        bytes = b;
        assert_eq!(n, item_keys.len());
    }
    let read_bytes = CacheStats::load(&store.backend().stats().bytes_read) / reads as u64;
    println!(
        "full repository read ({} items, {:.1} MB; regcache read {:.1} MB per read):",
        item_keys.len(),
        bytes as f64 / 1e6,
        read_bytes as f64 / 1e6
    );
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["tags"].as_object().map(|m| m.len()), Some(tags));
    assert_eq!(
        answer["images"].as_object().map(|m| m.len()),
        Some(distinct)
    );
    let (o50, o99) = summary("regcache get_image_repository_metadata", ours);
    let (j50, j99) = summary("regcache repository_json (read API answer)", ours_json);
    let (r50, r99) = summary("raw memcached multi-get of the same items", raw_full);
    println!(
        "  ratio regcache/raw: p50 {:.2}x, p99 {:.2}x; repository_json/raw: p50 {:.2}x, p99 {:.2}x",
        o50.as_secs_f64() / r50.as_secs_f64(),
        o99.as_secs_f64() / r99.as_secs_f64(),
        j50.as_secs_f64() / r50.as_secs_f64(),
        j99.as_secs_f64() / r99.as_secs_f64()
    );

    // One image by tag: head + one chunk + one image.
    let mut ours = Vec::new();
    let mut ours_json = Vec::new();
    let mut raw_one = Vec::new();
    for i in 0..(reads * 20) {
        let tag = &entries[(i * 7919) % tags].tag;
        let reference = ImageRef::parse(&format!("ghcr.io/example/app:{tag}")).unwrap();
        let t = Instant::now();
        store.get_image(&scope, &reference).await.unwrap();
        ours.push(t.elapsed());
        let t = Instant::now();
        read.image_json(&scope, &reference, false).await.unwrap();
        ours_json.push(t.elapsed());
        let chunk = head.chunk_of(tag).unwrap();
        let keys = [
            keys::repository_head(&scope, &repo),
            keys::tag_chunk(&scope, &repo, &chunk.id),
            keys::image(&scope, &records[((i * 7919) % tags) % distinct].digest),
        ];
        let t = Instant::now();
        for k in &keys {
            raw.get(k).await.unwrap().unwrap();
        }
        raw_one.push(t.elapsed());
    }
    println!("one image by tag (head, one chunk, one image):");
    let (o50, o99) = summary("regcache get_image", ours);
    let (j50, j99) = summary("regcache image_json (read API answer)", ours_json);
    let (r50, r99) = summary("raw memcached gets of the same 3 items", raw_one);
    println!(
        "  ratio regcache/raw: p50 {:.2}x, p99 {:.2}x; image_json/raw: p50 {:.2}x, p99 {:.2}x",
        o50.as_secs_f64() / r50.as_secs_f64(),
        o99.as_secs_f64() / r99.as_secs_f64(),
        j50.as_secs_f64() / r50.as_secs_f64(),
        j99.as_secs_f64() / r99.as_secs_f64()
    );

    memory_per_image(support::env_usize("BENCH_MEMORY_IMAGES", 2_000)).await;
}
