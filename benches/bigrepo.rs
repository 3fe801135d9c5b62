//! A 50,000-tag repository warmed and read back. The real `regcache standalone` (release
//! build) warms it cold into real memcached from the real registry (wall time, tags/s, its
//! resident memory sampled throughout), then the read API serves it back (latency,
//! response bytes; every tag and digest checked). The library then reads it back beside a
//! raw memcached multi-get of the same items, and runs a cold and a steady pass with every
//! tag due (requests by kind, wall time, tags/s). Fails loudly if any tag or digest is
//! missing or wrong.
//!
//! `cargo bench --bench bigrepo` (env `BENCH_TAGS` 50000, `BENCH_DIGESTS` distinct images
//! 1000, `BENCH_READS` 10).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Memory, RssSampler, mib, ms, p50_p99, rss_summary};
use regcache::cache::keys::{self, Scope};
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use regcache::registry::limiter::LimiterSettings;
use regcache::registry::{ClientOptions, RegistryClient, RequestKind};
use regcache::warmer::schedule::RefreshPolicy;
use regcache::warmer::{PassOptions, Target, Warmer, WarmerOptions};
use support::seed::{SeededImage, Seeder};

const REPO: &str = "bench/big";

/// Every tag of `expected` is present with its digest (panics otherwise).
fn check_all(
    what: &str,
    tags: &[String],
    digests: &BTreeMap<String, String>,
    expected: &[(String, SeededImage)],
) {
    assert_eq!(tags.len(), expected.len(), "{what}: tag count");
    assert_eq!(digests.len(), expected.len(), "{what}: images by tag");
    for (tag, image) in expected {
        assert_eq!(
            digests.get(tag).map(String::as_str),
            Some(image.digest.as_str()),
            "{what}: digest of {tag}"
        );
    }
}

fn count(p: &BTreeMap<RequestKind, u64>, k: RequestKind) -> u64 {
    p.get(&k).copied().unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let tags = support::env_usize("BENCH_TAGS", 50_000);
    let distinct = support::env_usize("BENCH_DIGESTS", 1000);
    let reads = support::env_usize("BENCH_READS", 10);

    let registry = support::Registry::start(support::RegistryAuth::Anonymous);
    let memcached = support::Memcached::start_with_args(&["-m", "1024"]);
    let host = registry.host();
    let t = Instant::now();
    let seeder = Seeder::new(registry.storage_dir());
    let expected = common::seed_repository(&seeder, REPO, tags, distinct, 0);
    let seeded_in = t.elapsed();
    common::check_seeded(&registry.base_url(), REPO, &expected).await;
    println!(
        "dataset: one repository of {tags} tags over {distinct} distinct single-platform \
         images; written to the registry's storage in {:.1}s",
        seeded_in.as_secs_f64()
    );

    // The operator warms it cold.
    let dir = tempfile::tempdir().unwrap();
    let watches = dir.path().join("watches.yaml");
    std::fs::write(
        &watches,
        common::watch_yaml("big", &format!("{host}/{REPO}"), "1h"),
    )
    .unwrap();
    let t = Instant::now();
    let mut regcache = common::Standalone::start(
        &watches,
        &memcached.addr(),
        &[],
        dir.path().join("regcache.log"),
    );
    let pid = regcache.pid();
    let sampler = RssSampler::start(pid, Duration::from_millis(100));
    let api = regcache.api_url();
    let idle = Memory::of(pid).expect("regcache memory");
    let http = support::http_client(None);
    let url = format!("{api}/api/v1/repositories/{host}/{REPO}");
    // Warm is done when the published head is in memcached, read here without the process:
    // polling the read API would make the process build the whole answer, and its memory
    // would be counted as the warm's.
    let store = Arc::new(MetadataStore::new(Memcached::new(
        vec![memcached.addr()],
        MemcachedOptions::default(),
    )));
    let scope = Scope::public();
    let repository = Repository::parse(&format!("{host}/{REPO}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let head = store.head(&scope, &repository).await.expect("cache head");
        if head.is_some_and(|h| h.generation != 0 && h.tag_count == tags as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not warmed; log:\n{}",
            regcache.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let warm_wall = t.elapsed();
    let (_, warm_max) = rss_summary(sampler.stop());
    let warmed = Memory::of(pid).expect("regcache memory");
    let warm_rate = tags as f64 / warm_wall.as_secs_f64();
    let target_size = if tags >= 200_000 {
        String::new()
    } else {
        format!(" (this run: {tags} tags, smaller than the target's)")
    };
    common::summary(
        "A 200,000-tag repository warms at 1,000 tags/s or more",
        &format!(
            "{}: {warm_rate:.0} tags/s, cold, by the binary{target_size}",
            if warm_rate >= 1000.0 {
                "met"
            } else {
                "not met"
            }
        ),
    );
    common::summary(
        "At most 64 MiB resident while warming a 200,000-tag repository",
        &format!(
            "{}: peak VmHWM {:.1} MiB{target_size}",
            if mib(warmed.hwm) <= 64.0 {
                "met"
            } else {
                "not met"
            },
            mib(warmed.hwm)
        ),
    );
    println!("regcache standalone, cold warm (process start to its index published in memcached):");
    println!(
        "  {:.1}s, {:.0} tags/s; VmRSS idle {:.1} MiB, after warm {:.1} MiB, peak (VmHWM) {:.1} MiB \
         (highest sample {:.1} MiB)",
        warm_wall.as_secs_f64(),
        tags as f64 / warm_wall.as_secs_f64(),
        mib(idle.rss),
        mib(warmed.rss),
        mib(warmed.hwm),
        mib(warm_max)
    );

    // Read back through the read API.
    let sampler = RssSampler::start(pid, Duration::from_millis(50));
    let mut latencies = Vec::new();
    let mut body = bytes::Bytes::new();
    for _ in 0..reads {
        let t = Instant::now();
        let r = http.get(&url).send().await.expect("read API");
        assert_eq!(r.status(), 200);
        body = r.bytes().await.expect("read API body");
        latencies.push(t.elapsed());
    }
    let (_, read_max) = rss_summary(sampler.stop());
    let after_reads = Memory::of(pid).expect("regcache memory");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("repository JSON");
    let tag_digests = v["tags"].as_object().expect("tags");
    let images = v["images"].as_object().expect("images");
    let api_tags: Vec<String> = tag_digests.keys().cloned().collect();
    // A tag counts as read only when its image is in the answer under that digest.
    let api_digests: BTreeMap<String, String> = tag_digests
        .iter()
        .filter_map(|(tag, d)| {
            let d = d.as_str()?;
            (images.get(d)?["digest"] == d).then(|| (tag.clone(), d.to_string()))
        })
        .collect();
    check_all("read API", &api_tags, &api_digests, &expected);
    let (p50, p99) = p50_p99(latencies);
    println!(
        "read API GET /api/v1/repositories/... ({reads} reads, all {tags} tags and digests checked):"
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms; {:.1} MB per response ({:.0} bytes per tag); VmRSS after \
         {:.1} MiB, peak (VmHWM) {:.1} MiB (highest sample while reading {:.1} MiB)",
        ms(p50),
        ms(p99),
        body.len() as f64 / 1e6,
        body.len() as f64 / tags as f64,
        mib(after_reads.rss),
        mib(after_reads.hwm),
        mib(read_max)
    );
    drop(regcache);

    // Read back through the library, beside raw memcached reads of the same items.
    let head = store
        .head(&scope, &repository)
        .await
        .unwrap()
        .expect("head");
    let mut item_keys = vec![keys::repository_head(&scope, &repository)];
    item_keys.extend(
        head.chunks
            .iter()
            .map(|c| keys::tag_chunk(&scope, &repository, &c.id)),
    );
    let mut digests: Vec<&str> = expected.iter().map(|(_, i)| i.digest.as_str()).collect();
    digests.sort();
    digests.dedup();
    item_keys.extend(
        digests
            .iter()
            .map(|d| keys::image(&scope, &regcache::image::Digest::parse(d).unwrap())),
    );
    // Batched and concurrent as regcache's multi-get is.
    let raw = common::RawReader::connect(&memcached.addr()).await;
    let (mut ours, mut raw_lat) = (Vec::new(), Vec::new());
    let mut raw_bytes = 0;
    for _ in 0..reads {
        let t = Instant::now();
        let m = store
            .get_image_repository_metadata(&scope, &repository)
            .await
            .expect("library read");
        ours.push(t.elapsed());
        let by_tag: BTreeMap<String, String> = m
            .images
            .iter()
            .map(|(t, i)| (t.clone(), i.digest.to_string()))
            .collect();
        check_all("library", &m.tags, &by_tag, &expected);

        let t = Instant::now();
        let (n, bytes) = raw.read(&item_keys).await;
        raw_lat.push(t.elapsed());
        raw_bytes = bytes;
        assert_eq!(n, item_keys.len(), "raw read found every item");
    }
    let (o50, o99) = p50_p99(ours);
    let (r50, r99) = p50_p99(raw_lat);
    common::summary(
        "A 200,000-tag repository reads back with memcached's default 1 MB items",
        &format!(
            "{tags} tags: every tag and digest read back through the read API and the library, \
             from {} chunks (memcached at its default item size, which refuses larger \
             items){target_size}",
            head.chunks.len()
        ),
    );
    println!(
        "library get_image_repository_metadata ({} chunks + {} images, {:.1} MB in memcached), \
         all tags and digests checked:",
        head.chunks.len(),
        digests.len(),
        raw_bytes as f64 / 1e6
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms; raw memcached multi-get of the same items p50 {:.0} ms, \
         p99 {:.0} ms; ratio p50 {:.2}x, p99 {:.2}x; API p50 / raw p50 {:.2}x",
        ms(o50),
        ms(o99),
        ms(r50),
        ms(r99),
        o50.as_secs_f64() / r50.as_secs_f64(),
        o99.as_secs_f64() / r99.as_secs_f64(),
        p50.as_secs_f64() / r50.as_secs_f64()
    );

    // Requests by kind for a cold pass and a steady pass with every tag due (the library's
    // warmer, the code the binary runs, with outcomes in hand).
    memcached.flush();
    let client = RegistryClient::new(ClientOptions {
        limiter: LimiterSettings {
            max_rate: 1e6,
            burst: 1e6,
            ..LimiterSettings::default()
        },
        ..ClientOptions::default()
    });
    let warmer = Warmer::new(
        client,
        store.clone(),
        WarmerOptions {
            pass: PassOptions {
                policy: RefreshPolicy {
                    new_tag: Duration::ZERO,
                    min: Duration::ZERO,
                    ..RefreshPolicy::default()
                },
            },
            ..WarmerOptions::default()
        },
    );
    let target = Target {
        interval: Duration::from_secs(3600),
        ..support::plain_target(
            "bench/big",
            repository.clone(),
            Credential::Anonymous,
            scope.clone(),
        )
    };
    println!("library warm passes (every tag due at each pass):");
    println!(
        "  {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "pass", "tag_list", "mf_head", "mf_get", "blob_get", "wall_s", "tags/s"
    );
    for name in ["cold", "steady"] {
        let t = Instant::now();
        let o = warmer.warm_now(&target).await;
        let wall = t.elapsed();
        assert!(o.error.is_none(), "{name} pass: {:?}", o.error);
        assert_eq!(o.tags, tags, "{name} pass tags");
        println!(
            "  {:<8} {:>8} {:>8} {:>8} {:>8} {:>8.1} {:>8.0}",
            name,
            count(&o.requests, RequestKind::TagList),
            count(&o.requests, RequestKind::ManifestHead),
            count(&o.requests, RequestKind::ManifestGet),
            count(&o.requests, RequestKind::BlobGet),
            wall.as_secs_f64(),
            tags as f64 / wall.as_secs_f64()
        );
    }
    let m = store
        .get_image_repository_metadata(&scope, &repository)
        .await
        .expect("library read after the passes");
    let by_tag: BTreeMap<String, String> = m
        .images
        .iter()
        .map(|(t, i)| (t.clone(), i.digest.to_string()))
        .collect();
    check_all("library after the passes", &m.tags, &by_tag, &expected);
    println!("  read back after the passes: all {tags} tags and digests present");
}
