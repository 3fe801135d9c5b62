//! One large repository and the per-host limits, all in one run:
//! 1. A cold pass over one repository of distinct single-platform images with the per-host
//!    ceiling lifted, HEAD first at two host concurrencies and with `countsPulls: false`
//!    (new tags by GET) at 8, beside the registry's own rate for the very same requests
//!    (HEADs included) replayed raw with as many in flight, beside wrk on the pass's GETs
//!    (wrk cannot send HEADs), and beside a `skopeo inspect` loop with 8 in flight.
//! 2. A per-host ceiling with four passes on one host at once: the requests per second the
//!    registry saw (through the counting proxy), overall and in its busiest second.
//! 3. Docker Hub's shipped limits (10 requests/s, burst 20, 4 in flight) over a cold warm of
//!    a 1,000-tag repository.
//!
//! `cargo bench --bench onerepo` (env `BENCH_IMAGES` 1000, `BENCH_ROUNDS` 3,
//! `BENCH_SKOPEO_TAGS` 200, `BENCH_CEILING` 200, `BENCH_HUB_TAGS` 1000).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use regcache::registry::limiter::LimiterSettings;
use regcache::registry::limits::{self, HostRule};
use regcache::registry::{ClientOptions, RegistryClient};
use regcache::warmer::{Outcome, Target, Warmer, WarmerOptions};
use support::{Registry, RegistryAuth};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// A warmer with `rule` as its only host rule; other hosts have the ceiling lifted.
fn warmer(memcached: &support::Memcached, rule: Option<HostRule>) -> Warmer<Memcached> {
    let client = RegistryClient::new(ClientOptions {
        limiter: LimiterSettings {
            max_rate: 1e6,
            burst: 1e6,
            ..LimiterSettings::default()
        },
        host_rules: rule.into_iter().collect(),
        ..ClientOptions::default()
    });
    let store = Arc::new(MetadataStore::new(Memcached::new(
        vec![memcached.addr()],
        MemcachedOptions::default(),
    )));
    Warmer::new(client, store, WarmerOptions::default())
}

fn target(host: &str, repo: &str) -> Target {
    support::plain_target(
        repo,
        Repository::parse(&format!("{host}/{repo}")).unwrap(),
        Credential::Anonymous,
        Scope::public(),
    )
}

fn requests(o: &Outcome) -> u64 {
    o.requests.values().sum()
}

/// The overall rate and the most requests in any one second, from arrival times.
fn rates(mut at: Vec<Instant>) -> (f64, usize) {
    at.sort();
    let span = at
        .last()
        .zip(at.first())
        .map(|(l, f)| l.duration_since(*f).as_secs_f64())
        .unwrap_or(0.0);
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..at.len() {
        while at[end].duration_since(at[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    (at.len() as f64 / span.max(1e-9), busiest)
}

/// wrk's requests per second over `paths` (each a GET with the manifest Accept header),
/// cycling through them for 5 s with `connections` connections; `None` without wrk.
fn wrk_rate(base: &str, paths: &[&str], connections: usize) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("paths");
    std::fs::write(&list, paths.join("\n")).unwrap();
    let script = dir.path().join("replay.lua");
    std::fs::write(
        &script,
        format!(
            "local paths = {{}}\n\
             local i = 0\n\
             function init(args)\n  for line in io.lines(args[1]) do paths[#paths + 1] = line end\nend\n\
             function request()\n  i = i % #paths + 1\n  \
             return wrk.format(\"GET\", paths[i], {{[\"Accept\"] = \"{}\"}})\nend\n",
            support::ACCEPT_MANIFESTS
        ),
    )
    .unwrap();
    let out = std::process::Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d", "5s", "-s"])
        .arg(&script)
        .arg(base)
        .arg("--")
        .arg(&list)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw failed requests:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A host rule for exactly `host`.
fn rule(host: &str, qps: f64, burst: f64, concurrency: usize) -> HostRule {
    HostRule::new(host, Some(qps), Some(burst), Some(concurrency)).unwrap()
}

#[tokio::main]
async fn main() {
    let images = support::env_usize("BENCH_IMAGES", 1000);
    let rounds = support::env_usize("BENCH_ROUNDS", 3);
    let skopeo_tags = support::env_usize("BENCH_SKOPEO_TAGS", 200).min(images);
    let ceiling = support::env_usize("BENCH_CEILING", 200) as f64;
    let hub_tags = support::env_usize("BENCH_HUB_TAGS", 1000);

    let registry = Registry::start(RegistryAuth::Anonymous);
    let memcached = support::Memcached::start_with_args(&["-m", "1024"]);
    let pusher = registry.pusher();
    let t = Instant::now();
    let pushed = pusher.push_many("bench/one", images, images).await;
    for r in 0..4 {
        pusher
            .push_many(&format!("bench/shared{r}"), images / 4, images / 4)
            .await;
    }
    pusher.push_many("bench/hub", hub_tags, 10).await;
    println!(
        "dataset: bench/one with {images} distinct single-platform images; 4 repositories of {} \
         images; bench/hub with {hub_tags} tags over 10 images; pushed in {:.1}s",
        images / 4,
        t.elapsed().as_secs_f64()
    );

    // 1. One repository, ceiling lifted.
    let base = registry.base_url();
    // Images per second at host concurrency 8: HEAD first, and new tags by GET.
    let (mut head_first_at_8, mut by_get_at_8) = (0.0, 0.0);
    for (concurrency, counts_pulls) in [(8usize, true), (32, true), (8, false)] {
        let lifted =
            |host: &str| rule(host, 1e6, 1e6, concurrency).counting_pulls(Some(counts_pulls));
        let mode = if counts_pulls {
            "HEAD first"
        } else {
            "countsPulls false, new tags by GET"
        };
        // The exact requests of a cold pass, and how many were in flight at once.
        memcached.flush();
        let proxy = registry.fault_proxy();
        let w = warmer(&memcached, Some(lifted(&proxy.host())));
        let counted = w.warm_now(&target(&proxy.host(), "bench/one")).await;
        assert!(counted.error.is_none(), "{:?}", counted.error);
        assert_eq!(counted.images_updated, images);
        let in_flight = proxy.peak_in_flight();
        let seen: Vec<(String, String)> = proxy
            .seen()
            .into_iter()
            .map(|r| (r.method, r.path_and_query))
            .collect();
        drop(proxy);
        let mut regcache_rates = Vec::new();
        let mut image_rates = Vec::new();
        let mut raw_rates = Vec::new();
        for _ in 0..rounds {
            memcached.flush();
            let w = warmer(&memcached, Some(lifted(&registry.host())));
            let t = Instant::now();
            let o = w.warm_now(&target(&registry.host(), "bench/one")).await;
            let secs = t.elapsed().as_secs_f64();
            assert!(
                o.error.is_none() && o.images_updated == images,
                "{:?}",
                o.error
            );
            regcache_rates.push(requests(&o) as f64 / secs);
            image_rates.push(images as f64 / secs);

            raw_rates.push(common::raw_replay(&base, &seen, in_flight).await);
        }
        let (ours, theirs) = (median(regcache_rates), median(raw_rates));
        let image_rate = median(image_rates);
        // wrk, a load generator in C, on the GETs of the same pass (it hangs on HEAD), with
        // as many connections as regcache had requests in flight.
        let gets: Vec<&str> = seen
            .iter()
            .filter(|(m, _)| m == "GET")
            .map(|(_, p)| p.as_str())
            .collect();
        match wrk_rate(&base, &gets, in_flight) {
            Some(rate) => {
                println!(
                    "  wrk on the pass's {} GETs, {in_flight} connections: {rate:.0} req/s; \
                     regcache's whole pass (HEADs included) / wrk: {:.2}x",
                    gets.len(),
                    ours / rate
                );
                common::summary(
                    &format!(
                        "One repository, cold, {mode}, host concurrency {concurrency}: regcache against wrk on the same GETs"
                    ),
                    &format!(
                        "{:.2}x ({ours:.0} vs {rate:.0} req/s, {in_flight} in flight)",
                        ours / rate
                    ),
                );
            }
            None => println!("  wrk is not installed (apt-get install wrk): no wrk figure"),
        }
        match (concurrency, counts_pulls) {
            (8, true) => head_first_at_8 = image_rate,
            (8, false) => by_get_at_8 = image_rate,
            _ => {}
        }
        println!(
            "{mode}, host concurrency {concurrency}: a cold pass is {} requests ({in_flight} in \
             flight at its peak); regcache median {ours:.0} req/s ({image_rate:.0} images/s), \
             the registry's raw replay of the same requests with {in_flight} in flight median \
             {theirs:.0} req/s: {:.2}x ({rounds} rounds)",
            seen.len(),
            ours / theirs
        );
        common::summary(
            &format!(
                "One repository, cold, ceiling lifted, {mode}, host concurrency {concurrency}: at least 0.70x the registry's own rate"
            ),
            &format!(
                "{}: {:.2}x ({ours:.0} vs {theirs:.0} req/s, medians of {rounds}, {in_flight} in flight on both sides)",
                if ours / theirs >= 0.7 {
                    "met"
                } else {
                    "not met"
                },
                ours / theirs
            ),
        );
    }

    // skopeo inspect --no-tags, 8 at a time, over the first tags (a manifest and a config
    // each, like regcache): images/s against regcache's images/s at host concurrency 8,
    // HEAD first (three requests an image) and new tags by GET (two).
    let tags: Vec<String> = pushed
        .iter()
        .take(skopeo_tags)
        .map(|(t, _)| t.clone())
        .collect();
    let host = registry.host();
    let t = Instant::now();
    futures::stream::iter(tags.iter())
        .for_each_concurrent(8, |tag| {
            let reference = format!("docker://{host}/bench/one:{tag}");
            async move {
                let out = tokio::process::Command::new("skopeo")
                    // --no-tags: the manifest and config per image, as regcache fetches;
                    // without it skopeo also lists the repository's tags for each image.
                    .args(["inspect", "--no-tags", "--tls-verify=false", &reference])
                    .output()
                    .await
                    .expect("run skopeo");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
        .await;
    let skopeo_images = tags.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "skopeo inspect --no-tags, 8 at a time: {skopeo_images:.1} images/s over {} tags; regcache \
         at host concurrency 8: HEAD first {head_first_at_8:.0} images/s ({:.1}x), new tags by \
         GET {by_get_at_8:.0} images/s ({:.1}x)",
        tags.len(),
        head_first_at_8 / skopeo_images,
        by_get_at_8 / skopeo_images
    );
    for (mode, rate) in [
        ("HEAD first", head_first_at_8),
        ("countsPulls false, new tags by GET", by_get_at_8),
    ] {
        common::summary(
            &format!(
                "One repository, cold, {mode}: at least 5x a skopeo inspect loop with 8 in flight"
            ),
            &format!(
                "{}: {:.1}x ({rate:.0} vs {skopeo_images:.1} images/s)",
                if rate / skopeo_images >= 5.0 {
                    "met"
                } else {
                    "not met"
                },
                rate / skopeo_images
            ),
        );
    }

    // 2. Four passes on one host under one ceiling.
    memcached.flush();
    let proxy = registry.fault_proxy();
    let w = warmer(&memcached, Some(rule(&proxy.host(), ceiling, 20.0, 8)));
    let targets: Vec<Target> = (0..4)
        .map(|r| target(&proxy.host(), &format!("bench/shared{r}")))
        .collect();
    let t = Instant::now();
    let outcomes: Vec<Outcome> =
        futures::future::join_all(targets.iter().map(|t| w.warm_now(t))).await;
    let wall = t.elapsed().as_secs_f64();
    assert!(outcomes.iter().all(|o| o.error.is_none()));
    let (overall, busiest) = rates(proxy.seen().into_iter().map(|r| r.at).collect());
    let per_pass: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{:.1}s", o.duration.as_secs_f64()))
        .collect();
    println!(
        "4 passes at once on one host, ceiling {ceiling:.0} req/s (burst 20, 8 in flight): {} \
         requests in {wall:.1}s; the registry saw {overall:.0} req/s overall and {busiest} in \
         its busiest second; each pass took {}",
        proxy.total(),
        per_pass.join(", ")
    );
    common::summary(
        "A per-host ceiling holds with 4 passes on one host",
        &format!(
            "{}: ceiling {ceiling:.0}/s + burst 20; measured {overall:.0}/s overall, {busiest} in the busiest second",
            if busiest as f64 <= ceiling + 20.0 {
                "met"
            } else {
                "not met"
            }
        ),
    );
    drop(proxy);

    // 3. Docker Hub's shipped limits over a cold warm of bench/hub.
    memcached.flush();
    let proxy = registry.fault_proxy();
    let hub = limits::shipped()
        .into_iter()
        .find(|r| r.pattern == "registry-1.docker.io")
        .expect("a shipped Docker Hub rule");
    let as_hub = rule(
        &proxy.host(),
        hub.qps.unwrap(),
        hub.burst.unwrap(),
        hub.concurrency.unwrap(),
    );
    let w = warmer(&memcached, Some(as_hub));
    let t = Instant::now();
    let o = w.warm_now(&target(&proxy.host(), "bench/hub")).await;
    let wall = t.elapsed().as_secs_f64();
    assert!(o.error.is_none() && o.tags == hub_tags, "{:?}", o.error);
    let (overall, busiest) = rates(proxy.seen().into_iter().map(|r| r.at).collect());
    let qps = hub.qps.unwrap();
    let burst = hub.burst.unwrap();
    println!(
        "Docker Hub's shipped limits ({qps:.0} req/s, burst {burst:.0}, {} in flight), cold warm \
         of {hub_tags} tags: {} requests in {wall:.1}s, {overall:.1} req/s overall, {busiest} in \
         the busiest second",
        hub.concurrency.unwrap(),
        proxy.total()
    );
    common::summary(
        "A Docker Hub-like entry keeps a cold warm of 1,000 tags within it",
        &format!(
            "{}: {qps:.0}/s + burst {burst:.0}; measured {overall:.1}/s overall, {busiest} in the busiest second ({hub_tags} tags, {wall:.0}s)",
            if busiest as f64 <= qps + burst {
                "met"
            } else {
                "not met"
            }
        ),
    );
}
