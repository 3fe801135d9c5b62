//! The registry API (`/v2/...`) under load: the real `regcache standalone` (release build)
//! serving a repository it warmed into memcached, against the distribution registry it
//! warmed from serving the very same requests, with the same client and concurrency, in the
//! same run. One operation is what a registry client checking and pulling a few tags sends:
//! 1 tags/list (every tag), 4 manifest HEADs by tag, then the 4 manifest GETs of the same
//! tags (Accept: the four manifest types). Rounds alternate between the two servers; the
//! figures are the median rate over the rounds and p50/p99 per request over all of them.
//!
//! Every answer is checked (status 200, the tag's digest, the manifest's bytes, the full tag
//! list): the bench panics on a wrong one. Before timing, regcache's digest and manifest of
//! every tag are compared with the registry's. The upstream is watched through a counting
//! proxy, to show regcache's rounds sent it nothing.
//!
//! `cargo bench --bench registry_api` (env `BENCH_TAGS` 200, `BENCH_IMAGES` 50 distinct
//! images under them, `BENCH_CONCURRENCY` 16 workers, `BENCH_SECS` 3 per round,
//! `BENCH_ROUNDS` 5 per server).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ms, p50_p99};
use support::{ACCEPT_MANIFESTS, Registry, RegistryAuth};

/// The repository: pushed under this name, and watched as `bench/app` (namespace `bench`,
/// watch `app`), so both servers are asked the same paths.
const REPO: &str = "bench/app";
/// Manifest HEADs, then GETs of the same tags, per operation.
const TAGS_PER_OPERATION: usize = 4;

/// The request kinds of an operation, for latency per kind.
const KINDS: [&str; 3] = ["tags/list", "manifest HEAD", "manifest GET"];
const LIST: usize = 0;
const HEAD: usize = 1;
const GET: usize = 2;

/// What every answer must be: the tags, and per tag its digest and manifest bytes.
struct Expected {
    tags: Vec<String>,
    digests: Vec<String>,
    manifests: Vec<Bytes>,
}

/// One server under test: its repository URL (`http://HOST/v2/bench/app`) and the tag list
/// it answered before timing (checked against the pushed tags).
struct Target {
    name: &'static str,
    base: String,
    tag_list: Bytes,
}

struct Round {
    requests: usize,
    wall: Duration,
    /// Per request, by kind (see [`KINDS`]).
    latencies: [Vec<Duration>; 3],
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The tags of a tags/list answer, sorted; panics when it is not one.
fn listed_tags(body: &[u8]) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("tags/list is not JSON ({e}): {body:?}"));
    assert_eq!(value["name"], REPO, "tags/list name");
    support::sorted_tags(&value)
}

/// `clients` workers send operations to `target` for `secs`, checking every answer.
async fn round(
    http: &reqwest::Client,
    target: &Arc<Target>,
    expected: &Arc<Expected>,
    clients: usize,
    secs: f64,
) -> Round {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (http, target, expected) = (http.clone(), target.clone(), expected.clone());
            tokio::spawn(async move {
                let mut latencies: [Vec<Duration>; 3] = Default::default();
                let n = expected.tags.len();
                let list_url = format!("{}/tags/list", target.base);
                let mut op = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    let r = http.get(&list_url).send().await.unwrap();
                    let status = r.status();
                    let body = r.bytes().await.unwrap();
                    latencies[LIST].push(t.elapsed());
                    assert_eq!(status, 200, "{} GET {list_url}", target.name);
                    // Byte for byte as before timing (whose tags were checked); any other
                    // body must still list exactly the pushed tags.
                    if body != target.tag_list {
                        assert_eq!(listed_tags(&body), expected.tags, "{}", target.name);
                    }
                    // Tags spread over the repository; the same sequence on both servers.
                    let first = (c as u64 * 1_000_003 + op * 7919) as usize % n;
                    let picks: Vec<usize> = (0..TAGS_PER_OPERATION)
                        .map(|k| (first + k * n.div_ceil(TAGS_PER_OPERATION)) % n)
                        .collect();
                    for (kind, method) in
                        [(HEAD, reqwest::Method::HEAD), (GET, reqwest::Method::GET)]
                    {
                        for &i in &picks {
                            let url = format!("{}/manifests/{}", target.base, expected.tags[i]);
                            let t = Instant::now();
                            let r = http
                                .request(method.clone(), &url)
                                .header("accept", ACCEPT_MANIFESTS)
                                .send()
                                .await
                                .unwrap();
                            let status = r.status();
                            let digest = header(&r, "docker-content-digest").to_string();
                            let body = r.bytes().await.unwrap();
                            latencies[kind].push(t.elapsed());
                            assert_eq!(status, 200, "{} {method} {url}", target.name);
                            assert_eq!(
                                digest, expected.digests[i],
                                "{} {method} {url}",
                                target.name
                            );
                            if kind == GET {
                                assert!(
                                    body == expected.manifests[i],
                                    "{} GET {url}: other bytes than the pushed manifest",
                                    target.name
                                );
                            } else {
                                assert!(body.is_empty(), "{} HEAD {url} has a body", target.name);
                            }
                        }
                    }
                    op += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    for w in workers {
        for (all, mine) in latencies.iter_mut().zip(w.await.unwrap()) {
            all.extend(mine);
        }
    }
    let wall = start.elapsed();
    Round {
        requests: latencies.iter().map(Vec::len).sum(),
        wall,
        latencies,
    }
}

/// Checks `target` answers every tag as the registry does, before anything is timed: the
/// tag list, and per tag the digest of a HEAD and of a GET and the GET's bytes. Returns its
/// tag list's bytes.
async fn check_target(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    expected: &Expected,
) -> Bytes {
    let r = http.get(format!("{base}/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{name} tags/list");
    let tag_list = r.bytes().await.unwrap();
    assert_eq!(listed_tags(&tag_list), expected.tags, "{name} tags/list");
    for (i, tag) in expected.tags.iter().enumerate() {
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            let r = http
                .request(method.clone(), format!("{base}/manifests/{tag}"))
                .header("accept", ACCEPT_MANIFESTS)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{name} {method} {tag}");
            assert_eq!(
                header(&r, "docker-content-digest"),
                expected.digests[i],
                "{name} {method} {tag}: digest"
            );
            let body = r.bytes().await.unwrap();
            if method == reqwest::Method::GET {
                assert!(
                    body == expected.manifests[i],
                    "{name} GET {tag}: manifest bytes"
                );
            }
        }
    }
    tag_list
}

/// Waits until regcache's registry API lists every tag and answers the last one.
async fn wait_warmed(
    http: &reqwest::Client,
    base: &str,
    expected: &Expected,
    regcache: &common::Standalone,
) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let listed = match http.get(format!("{base}/tags/list")).send().await {
            Ok(r) if r.status() == 200 => listed_tags(&r.bytes().await.unwrap()),
            _ => Vec::new(),
        };
        if listed == expected.tags {
            let last = expected.tags.last().unwrap();
            let r = http
                .head(format!("{base}/manifests/{last}"))
                .header("accept", ACCEPT_MANIFESTS)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "regcache did not warm {} tags in 300 s:\n{}",
            expected.tags.len(),
            regcache.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    let tags = support::env_usize("BENCH_TAGS", 200);
    let images = support::env_usize("BENCH_IMAGES", 50).min(tags);
    let clients = support::env_usize("BENCH_CONCURRENCY", 16);
    let secs = support::env_usize("BENCH_SECS", 3) as f64;
    let rounds = support::env_usize("BENCH_ROUNDS", 5);
    assert!(
        tags >= TAGS_PER_OPERATION,
        "BENCH_TAGS must be at least {TAGS_PER_OPERATION}"
    );

    let registry = Registry::start(RegistryAuth::Anonymous);
    let t = Instant::now();
    let pushed = registry.pusher().push_many(REPO, tags, images).await;
    let pushed_in = t.elapsed();
    let expected = Arc::new(Expected {
        tags: pushed.iter().map(|(tag, _)| tag.clone()).collect(),
        digests: pushed
            .iter()
            .map(|(_, image)| image.digest.clone())
            .collect(),
        manifests: pushed
            .iter()
            .map(|(_, image)| Bytes::from(image.manifest_bytes.clone()))
            .collect(),
    });
    // `tag-00000`... in order, as tags/list sorts them.
    assert!(expected.tags.is_sorted());

    // regcache warms through a counting proxy: its rounds must not reach the upstream.
    let proxy = registry.fault_proxy();
    let memcached = support::Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let watches = dir.path().join("watches.yaml");
    std::fs::write(
        &watches,
        common::watch_yaml("app", &format!("{}/{REPO}", proxy.host()), "1h"),
    )
    .unwrap();
    let mut regcache = common::Standalone::start(
        &watches,
        &memcached.addr(),
        &[],
        dir.path().join("regcache.log"),
    );
    let http = support::http_client_builder(None)
        .pool_max_idle_per_host(4 * clients)
        .build()
        .unwrap();
    let ours = format!("{}/v2/{REPO}", regcache.api_url());
    let theirs = format!("{}/v2/{REPO}", registry.base_url());
    let t = Instant::now();
    wait_warmed(&http, &ours, &expected, &regcache).await;
    let warmed_in = t.elapsed();

    let upstream = Arc::new(Target {
        name: "registry",
        tag_list: check_target(&http, &theirs, "registry", &expected).await,
        base: theirs,
    });
    let cached = Arc::new(Target {
        name: "regcache",
        tag_list: check_target(&http, &ours, "regcache", &expected).await,
        base: ours,
    });
    println!(
        "dataset: one repository of {tags} tags over {images} OCI images, pushed to docker-registry \
         2.8 in {:.1}s and warmed by regcache standalone (release build) into memcached in {:.1}s; \
         before timing, every tag's digest and manifest bytes from regcache equal the registry's",
        pushed_in.as_secs_f64(),
        warmed_in.as_secs_f64()
    );
    println!(
        "operation: 1 tags/list ({tags} tags), {TAGS_PER_OPERATION} manifest HEADs by tag, the \
         {TAGS_PER_OPERATION} manifest GETs of the same tags (Accept: the four manifest types); \
         every answer checked"
    );
    println!(
        "load: {clients} workers, one keep-alive HTTP/1.1 client, {rounds} rounds of {secs}s per \
         server, alternating (registry first), after an untimed 1s round on each"
    );

    // Untimed: connections opened, both servers' caches as in steady use.
    for target in [&upstream, &cached] {
        round(&http, target, &expected, clients, 1.0).await;
    }
    proxy.reset_counts();
    println!(
        "  {:<5} {:<9} {:>9} {:>9} {:>8} {:>8}",
        "round", "server", "requests", "req/s", "p50 ms", "p99 ms"
    );
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut all: [[Vec<Duration>; 3]; 2] = Default::default();
    for r in 1..=rounds {
        for (side, target) in [&upstream, &cached].into_iter().enumerate() {
            let run = round(&http, target, &expected, clients, secs).await;
            let rate = run.requests as f64 / run.wall.as_secs_f64();
            let (p50, p99) = p50_p99(run.latencies.iter().flatten().copied().collect());
            println!(
                "  {:<5} {:<9} {:>9} {:>9.0} {:>8.2} {:>8.2}",
                r,
                target.name,
                run.requests,
                rate,
                ms(p50),
                ms(p99)
            );
            rates[side].push(rate);
            for (kind, latencies) in run.latencies.into_iter().enumerate() {
                all[side][kind].extend(latencies);
            }
        }
    }
    let upstream_requests = proxy.total();
    assert_eq!(
        upstream_requests,
        0,
        "regcache's rounds reached the upstream: {:?}",
        proxy.seen()
    );

    println!("medians of {rounds} rounds; p50/p99 per request over every round");
    print!("  {:<9} {:>9} {:>22}", "server", "req/s", "all p50/p99 ms");
    for kind in KINDS {
        print!(" {:>22}", format!("{kind} p50/p99"));
    }
    println!();
    let medians: Vec<f64> = rates.iter().map(|r| median(r.clone())).collect();
    for (side, target) in [&upstream, &cached].into_iter().enumerate() {
        let pair = |samples: Vec<Duration>| {
            let (p50, p99) = p50_p99(samples);
            format!("{:.2} / {:.2}", ms(p50), ms(p99))
        };
        print!(
            "  {:<9} {:>9.0} {:>22}",
            target.name,
            medians[side],
            pair(all[side].iter().flatten().copied().collect())
        );
        for kind in [LIST, HEAD, GET] {
            print!(" {:>22}", pair(all[side][kind].clone()));
        }
        println!();
    }
    let ratio = medians[1] / medians[0];
    println!(
        "regcache / registry requests/s: {ratio:.2}x; the upstream saw {upstream_requests} requests \
         during regcache's rounds"
    );
    common::summary(
        "Registry API: a tags/list, manifest HEAD and GET mix at least 2x the registry's own rate",
        &format!(
            "{}: {ratio:.2}x ({:.0} against {:.0} req/s, medians of {rounds} rounds, {clients} \
             workers on both sides, {tags} tags)",
            if ratio >= 2.0 { "met" } else { "not met" },
            medians[1],
            medians[0]
        ),
    );
    let m = common::Memory::of(regcache.pid()).expect("regcache memory");
    println!(
        "regcache standalone after the load: VmRSS {:.1} MiB, peak (VmHWM) {:.1} MiB",
        common::mib(m.rss),
        common::mib(m.hwm)
    );
}
