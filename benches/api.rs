//! Read API latency under load. The real `regcache standalone` (release build) serves a
//! small and a large repository it warmed into real memcached; N concurrent clients
//! (keep-alive HTTP/1.1) ask for single images by tag and for whole repositories. Beside
//! each, in the same run, N concurrent raw memcached clients fetch the same items the
//! lookup needs (head, chunk and image for one image; head, every chunk and every image
//! for a repository). Prints requests/s and p50/p99 per concurrency level.
//!
//! `cargo bench --bench api` (env `BENCH_SMALL_TAGS` 100, `BENCH_LARGE_TAGS` 10000,
//! `BENCH_LARGE_DIGESTS` 1000, `BENCH_CONCURRENCY` 1,4,16, `BENCH_SECS` 5 per measurement).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_memcached::AsciiProtocol;
use common::{Memory, mib, ms, p50_p99};
use regcache::cache::keys::{self, Scope};
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::image::{Digest, Repository};
use support::seed::{SeededImage, Seeder};

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// `clients` tasks call `one(client, i)` in a loop for `secs`; each call is one request.
async fn drive<F, Fut>(clients: usize, secs: u64, one: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    one(c, i).await;
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    let n = all.len();
    let (p50, p99) = p50_p99(all);
    Run {
        rate: n as f64 / wall,
        p50,
        p99,
    }
}

/// One raw reader per client (see [`common::RawReader`]).
type RawClients = Arc<Vec<common::RawReader>>;

async fn raw_clients(addr: &str, n: usize) -> RawClients {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(common::RawReader::connect(addr).await);
    }
    Arc::new(v)
}

fn row(workload: &str, clients: usize, ours: &Run, raw: &Run) {
    println!(
        "  {:<18} {:>3} {:>9.0} {:>8.2} {:>8.2} {:>9.0} {:>8.2} {:>8.2} {:>7.2} {:>7.2}",
        workload,
        clients,
        ours.rate,
        ms(ours.p50),
        ms(ours.p99),
        raw.rate,
        ms(raw.p50),
        ms(raw.p99),
        ours.p50.as_secs_f64() / raw.p50.as_secs_f64(),
        ours.p99.as_secs_f64() / raw.p99.as_secs_f64(),
    );
}

/// Every memcached key a full read of `repository` fetches.
async fn repository_keys(
    store: &MetadataStore<Memcached>,
    repository: &Repository,
    seeded: &[(String, SeededImage)],
) -> Vec<String> {
    let scope = Scope::public();
    let head = store.head(&scope, repository).await.unwrap().expect("head");
    let mut out = vec![keys::repository_head(&scope, repository)];
    out.extend(
        head.chunks
            .iter()
            .map(|c| keys::tag_chunk(&scope, repository, &c.id)),
    );
    let mut digests: Vec<&str> = seeded.iter().map(|(_, i)| i.digest.as_str()).collect();
    digests.sort();
    digests.dedup();
    out.extend(
        digests
            .iter()
            .map(|d| keys::image(&scope, &Digest::parse(d).unwrap())),
    );
    out
}

#[tokio::main]
async fn main() {
    let small_tags = support::env_usize("BENCH_SMALL_TAGS", 100);
    let large_tags = support::env_usize("BENCH_LARGE_TAGS", 10_000);
    let large_digests = support::env_usize("BENCH_LARGE_DIGESTS", 1000);
    let secs = support::env_usize("BENCH_SECS", 5) as u64;
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,4,16".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    let registry = support::Registry::start(support::RegistryAuth::Anonymous);
    let memcached = support::Memcached::start_with_args(&["-m", "1024"]);
    let host = registry.host();
    let seeder = Seeder::new(registry.storage_dir());
    let small = common::seed_repository(&seeder, "bench/small", small_tags, 20.min(small_tags), 0);
    let large =
        common::seed_repository(&seeder, "bench/large", large_tags, large_digests, 1_000_000);
    common::check_seeded(&registry.base_url(), "bench/large", &large).await;

    let dir = tempfile::tempdir().unwrap();
    let watches = dir.path().join("watches.yaml");
    std::fs::write(
        &watches,
        common::watch_yaml("small", &format!("{host}/bench/small"), "1h")
            + &common::watch_yaml("large", &format!("{host}/bench/large"), "1h"),
    )
    .unwrap();
    // First every answer is built from memcached (`--answer-cache-mib 0`); a second
    // instance with the default answer cache then serves the repositories again.
    let mut regcache = common::Standalone::start(
        &watches,
        &memcached.addr(),
        &["--answer-cache-mib", "0"],
        dir.path().join("regcache.log"),
    );
    let api = regcache.api_url();
    let http = support::http_client_builder(None)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let small_url = format!("{api}/api/v1/repositories/{host}/bench/small");
    let large_url = format!("{api}/api/v1/repositories/{host}/bench/large");
    let deadline = Instant::now() + Duration::from_secs(600);
    wait_serving(&http, &[&small_url, &large_url], deadline, &regcache).await;
    let small_body = body(&http, &small_url).await;
    let large_body = body(&http, &large_url).await;
    let v: serde_json::Value = serde_json::from_slice(&large_body).unwrap();
    assert_eq!(v["tags"].as_object().map(|m| m.len()), Some(large_tags));
    assert_eq!(
        v["images"].as_object().map(|m| m.len()),
        Some(large_digests)
    );

    let store = MetadataStore::new(Memcached::new(
        vec![memcached.addr()],
        MemcachedOptions::default(),
    ));
    let small_repo = Repository::parse(&format!("{host}/bench/small")).unwrap();
    let large_repo = Repository::parse(&format!("{host}/bench/large")).unwrap();
    let small_keys = Arc::new(repository_keys(&store, &small_repo, &small).await);
    let large_keys = Arc::new(repository_keys(&store, &large_repo, &large).await);
    let scope = Scope::public();
    let large_head = store.head(&scope, &large_repo).await.unwrap().unwrap();
    // Per tag of the large repository: the 3 keys a lookup by tag reads.
    let image_keys: Arc<Vec<[String; 3]>> = Arc::new(
        large
            .iter()
            .map(|(tag, img)| {
                let chunk = &large_head.chunk_of(tag).unwrap().id;
                [
                    keys::repository_head(&scope, &large_repo),
                    keys::tag_chunk(&scope, &large_repo, chunk),
                    keys::image(&scope, &Digest::parse(&img.digest).unwrap()),
                ]
            })
            .collect(),
    );
    let mut sizer = async_memcached::Client::new(format!("tcp://{}", memcached.addr()))
        .await
        .unwrap();
    let mut raw_size = async |keys: &[String]| {
        let mut n = 0;
        for batch in keys.chunks(100) {
            for v in sizer.get_multi(batch).await.unwrap() {
                n += v.data.map_or(0, |d| d.len());
            }
        }
        n
    };
    let small_raw = raw_size(&small_keys).await;
    let large_raw = raw_size(&large_keys).await;
    let one_image = http
        .get(format!("{api}/api/v1/images/{host}/bench/large:t-00000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let one_raw = raw_size(&image_keys[0]).await;
    println!(
        "dataset: small repository {small_tags} tags over {} images; large {large_tags} tags over \
         {large_digests} images; warmed by regcache standalone into one memcached",
        20.min(small_tags)
    );
    println!(
        "  bytes per answer (raw = the memcached items it reads): small repository {:.1} KB \
         (raw {:.1} KB), large repository {:.2} MB (raw {:.2} MB), one image {one_image} \
         (raw {one_raw})",
        small_body.len() as f64 / 1e3,
        small_raw as f64 / 1e3,
        large_body.len() as f64 / 1e6,
        large_raw as f64 / 1e6,
    );

    let max_clients = levels.iter().copied().max().unwrap_or(1);
    let raw = raw_clients(&memcached.addr(), max_clients).await;
    println!(
        "{secs}s per measurement; regcache = HTTP GET to the read API, raw = the same items from memcached"
    );
    println!(
        "  {:<18} {:>3} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7}",
        "workload",
        "N",
        "req/s",
        "p50 ms",
        "p99 ms",
        "raw r/s",
        "raw p50",
        "raw p99",
        "x p50",
        "x p99"
    );
    let pid = regcache.pid();
    let mut built = Vec::new();
    let mut kept = Vec::new();
    for &n in &levels {
        // One image by tag.
        let (h, tags) = (
            http.clone(),
            Arc::new(large.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()),
        );
        let base = format!("{api}/api/v1/images/{host}/bench/large");
        let ours = drive(n, secs, move |c, i| {
            let (h, tags, base) = (h.clone(), tags.clone(), base.clone());
            async move {
                let tag = &tags[((c as u64 * 1_000_003 + i * 7919) % tags.len() as u64) as usize];
                let r = h.get(format!("{base}:{tag}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        })
        .await;
        let (raw_c, ik) = (raw.clone(), image_keys.clone());
        let theirs = drive(n, secs, move |c, i| {
            let (raw_c, ik) = (raw_c.clone(), ik.clone());
            async move {
                let keys = &ik[((c as u64 * 1_000_003 + i * 7919) % ik.len() as u64) as usize];
                // One after another, as regcache must: the head names the chunk, the
                // chunk names the image.
                for k in keys {
                    let (found, _) = raw_c[c].read(std::slice::from_ref(k)).await;
                    assert_eq!(found, 1, "raw item {k}");
                }
            }
        })
        .await;
        row("image by tag", n, &ours, &theirs);

        repository_row(
            "small repository",
            n,
            secs,
            &http,
            &small_url,
            &raw,
            &small_keys,
        )
        .await;
        built.push((
            n,
            repository_row(
                "large repository",
                n,
                secs,
                &http,
                &large_url,
                &raw,
                &large_keys,
            )
            .await,
        ));
    }
    let m = Memory::of(pid).expect("regcache memory");
    println!(
        "regcache standalone (answers built every time) after the load: VmRSS {:.1} MiB, \
         peak (VmHWM) {:.1} MiB",
        mib(m.rss),
        mib(m.hwm)
    );
    let generations = async || {
        let mut g = Vec::new();
        for r in [&small_repo, &large_repo] {
            g.push(
                store
                    .head(&scope, r)
                    .await
                    .unwrap()
                    .expect("head")
                    .generation,
            );
        }
        g
    };
    let before = generations().await;
    drop(regcache);

    let mut regcache = common::Standalone::start(
        &watches,
        &memcached.addr(),
        &[],
        dir.path().join("regcache-answers.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let api = regcache.api_url();
    let small_url = format!("{api}/api/v1/repositories/{host}/bench/small");
    let large_url = format!("{api}/api/v1/repositories/{host}/bench/large");
    // Its first pass finds every tag fresh; give it time to end before measuring.
    wait_serving(&http, &[&small_url, &large_url], deadline, &regcache).await;
    // Its first pass publishes each index again (a new generation, and the old chunks go):
    // wait for both, then take the raw side's keys anew.
    while generations()
        .await
        .iter()
        .zip(&before)
        .any(|(now, old)| now == old)
    {
        assert!(
            Instant::now() < deadline,
            "the second instance published no index:\n{}",
            regcache.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let small_keys = Arc::new(repository_keys(&store, &small_repo, &small).await);
    let large_keys = Arc::new(repository_keys(&store, &large_repo, &large).await);
    let again = body(&http, &large_url).await;
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&again).unwrap(),
        serde_json::from_slice(&large_body).unwrap(),
    );
    assert_eq!(
        (&a["tags"], &a["images"]),
        (&b["tags"], &b["images"]),
        "the same data"
    );
    println!(
        "with the default answer cache (--answer-cache-mib 16): a read fetches the repository \
         head and reuses the answer built for it"
    );
    let pid = regcache.pid();
    for &n in &levels {
        repository_row(
            "small repo, kept",
            n,
            secs,
            &http,
            &small_url,
            &raw,
            &small_keys,
        )
        .await;
        kept.push((
            n,
            repository_row(
                "large repo, kept",
                n,
                secs,
                &http,
                &large_url,
                &raw,
                &large_keys,
            )
            .await,
        ));
    }
    let (reused, built_answers) = (
        regcache
            .metric("regcache_cache_answers_total{result=\"reused\"}")
            .await,
        regcache
            .metric("regcache_cache_answers_total{result=\"built\"}")
            .await,
    );
    let hit_rate = reused / (reused + built_answers).max(1.0);
    println!(
        "answer cache over this load: {reused:.0} answers reused, {built_answers:.0} built; \
         hit rate {:.1}% (regcache_cache_answers_total)",
        hit_rate * 100.0
    );
    let ratios = |rows: &[(usize, f64)]| {
        rows.iter()
            .map(|(n, r)| format!("{r:.2}x with {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let met = |rows: &[(usize, f64)]| rows.iter().all(|(_, r)| *r <= 2.0);
    common::summary(
        "Read API on a 10,000-tag repository: p99 at most 2x a raw memcached read of the same bytes",
        &format!(
            "with the default answer cache (hit rate {:.1}%): {} ({}); answers built every time \
             (`--answer-cache-mib 0`): {} ({})",
            hit_rate * 100.0,
            if met(&kept) { "met" } else { "not met" },
            ratios(&kept),
            if met(&built) { "met" } else { "not met" },
            ratios(&built)
        ),
    );
    let m = Memory::of(pid).expect("regcache memory");
    println!(
        "regcache standalone (answer cache) after the load: VmRSS {:.1} MiB, peak (VmHWM) \
         {:.1} MiB",
        mib(m.rss),
        mib(m.hwm)
    );
}

/// Waits until the read API answers 200 for every URL.
async fn wait_serving(
    http: &reqwest::Client,
    urls: &[&str],
    deadline: Instant,
    regcache: &common::Standalone,
) {
    for url in urls {
        while http.get(*url).send().await.unwrap().status() != 200 {
            assert!(
                Instant::now() < deadline,
                "not serving {url}:\n{}",
                regcache.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn body(http: &reqwest::Client, url: &str) -> bytes::Bytes {
    http.get(url).send().await.unwrap().bytes().await.unwrap()
}

/// One repository workload at `n` clients: regcache's read API beside raw memcached
/// multi-gets of the items the answer is built from.
async fn repository_row(
    name: &str,
    n: usize,
    secs: u64,
    http: &reqwest::Client,
    url: &str,
    raw: &RawClients,
    keys: &Arc<Vec<String>>,
) -> f64 {
    let (h, url) = (http.clone(), url.to_string());
    let ours = drive(n, secs, move |_, _| {
        let (h, url) = (h.clone(), url.clone());
        async move {
            let r = h.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    })
    .await;
    let (raw_c, keys) = (raw.clone(), keys.clone());
    let theirs = drive(n, secs, move |c, _| {
        let (raw_c, keys) = (raw_c.clone(), keys.clone());
        async move {
            let (found, _) = raw_c[c].read(&keys).await;
            assert_eq!(found, keys.len());
        }
    })
    .await;
    row(name, n, &ours, &theirs);
    ours.p99.as_secs_f64() / theirs.p99.as_secs_f64()
}
