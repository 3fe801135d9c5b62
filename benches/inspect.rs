//! Inspect throughput against the harness registry, beside the registry's own maximum
//! manifest-GET rate measured in the same run, and the requests regcache makes per image.
//!
//! `cargo bench --bench inspect` (env `BENCH_IMAGES`, `BENCH_INDEXES`, `BENCH_ROUNDS`,
//! `BENCH_CONCURRENCY` change the dataset and the load).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::Instant;

use futures::StreamExt;
use regcache::credentials::Credential;
use regcache::image::{Reference, Repository};
use regcache::registry::limiter::LimiterSettings;
use regcache::registry::{ClientOptions, Endpoint, RegistryClient, RequestKind};
use support::{ImageSpec, IndexKind, ManifestKind, PlatformSpec, Registry, RegistryAuth};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

struct Round {
    secs: f64,
    requests: f64,
    images: usize,
    stats: std::collections::BTreeMap<RequestKind, u64>,
}

/// One full inspect of every tag at `host` (manifest, index children, configs) with
/// `concurrency` images at once, by a fresh client, so nothing is cached between rounds.
async fn inspect_round(
    host: &str,
    singles: &[(String, support::PushedImage)],
    indexes: usize,
    concurrency: usize,
) -> Round {
    let client = RegistryClient::new(ClientOptions {
        limiter: LimiterSettings {
            max_rate: 1e6,
            burst: 1e6,
            ..LimiterSettings::default()
        },
        ..ClientOptions::default()
    });
    let endpoint = Endpoint {
        insecure: true,
        ca_pem: None,
    };
    let repository = |path: &str| {
        client
            .repository(
                &Repository::parse(&format!("{host}/{path}")).unwrap(),
                Credential::Anonymous,
                &endpoint,
            )
            .unwrap()
    };
    let (single, multi) = (repository("bench/single"), repository("bench/multi"));
    let work: Vec<_> = singles
        .iter()
        .map(|(tag, _)| (single.clone(), tag.clone()))
        .chain((0..indexes).map(|i| (multi.clone(), format!("m{i:04}"))))
        .collect();
    let t = Instant::now();
    futures::stream::iter(work.iter())
        .for_each_concurrent(concurrency, |(rc, tag)| async move {
            rc.inspect(&Reference::Tag(tag.clone()), &[]).await.unwrap();
        })
        .await;
    Round {
        secs: t.elapsed().as_secs_f64(),
        requests: client.stats().total() as f64,
        images: work.len(),
        stats: client.stats().snapshot(),
    }
}

#[tokio::main]
async fn main() {
    let images = support::env_usize("BENCH_IMAGES", 300);
    let indexes = support::env_usize("BENCH_INDEXES", 40);
    let rounds = support::env_usize("BENCH_ROUNDS", 5);
    let concurrency = support::env_usize("BENCH_CONCURRENCY", 16);

    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let t = Instant::now();
    let singles = pusher.push_many("bench/single", images, images).await;
    let mut multis = Vec::new();
    for i in 0..indexes {
        let index = pusher
            .push_index(
                "bench/multi",
                &format!("m{i:04}"),
                IndexKind::Oci,
                &PlatformSpec::default_set(),
            )
            .await;
        multis.push(index);
    }
    pusher
        .push_image(
            "bench/single",
            "docker",
            &ImageSpec::new(ManifestKind::Docker),
        )
        .await;
    println!(
        "dataset: {images} single-platform images, {indexes} indexes of 4 platforms, pushed in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // The registry's own ceiling: the very requests a full inspect makes (manifests,
    // index children, configs), replayed raw at the same concurrency with no parsing and
    // no dependency between them.
    let base = registry.base_url();
    let mut urls: Vec<(String, String)> = Vec::new();
    let mut get = |path: String| urls.push(("GET".to_string(), path));
    for (tag, image) in &singles {
        get(format!("/v2/bench/single/manifests/{tag}"));
        get(format!("/v2/bench/single/blobs/{}", image.config_digest));
    }
    for (i, index) in multis.iter().enumerate() {
        get(format!("/v2/bench/multi/manifests/m{i:04}"));
        for child in &index.children {
            get(format!("/v2/bench/multi/manifests/{}", child.digest));
            get(format!("/v2/bench/multi/blobs/{}", child.config_digest));
        }
    }
    // inspect fetches an index's children in parallel, so regcache has more requests in
    // flight than images at once: measure how many (one untimed round through the counting
    // proxy), and give the raw replay exactly as many.
    let proxy = registry.fault_proxy();
    proxy.reset_counts();
    inspect_round(&proxy.host(), &singles, indexes, concurrency).await;
    let in_flight = proxy.peak_in_flight();
    drop(proxy);
    let mut raw_rates = Vec::new();
    let mut regcache_rates = Vec::new();
    let mut image_rates = Vec::new();
    let mut per_image = None;
    for _ in 0..rounds {
        raw_rates.push(common::raw_replay(&base, &urls, in_flight).await);

        // regcache: full inspect of every tag (manifest, children, configs), fresh client
        // each round so nothing is cached between rounds.
        let round = inspect_round(&registry.host(), &singles, indexes, concurrency).await;
        regcache_rates.push(round.requests / round.secs);
        image_rates.push(round.images as f64 / round.secs);
        per_image = Some((round.stats, round.images));
    }
    let (stats, n) = per_image.unwrap();
    println!(
        "rounds: {rounds}; regcache inspects {concurrency} images at once, which peaked at \
         {in_flight} requests in flight (measured through a counting proxy)"
    );
    println!(
        "registry raw replay of the same {} requests, {in_flight} in flight: median {:.0} req/s",
        urls.len(),
        median(raw_rates.clone())
    );
    println!(
        "regcache inspect: median {:.0} requests/s, {:.0} images/s ({} images per round)",
        median(regcache_rates.clone()),
        median(image_rates),
        n
    );
    let ratio = median(regcache_rates) / median(raw_rates);
    println!("regcache request rate / registry raw rate: {ratio:.2}");
    common::summary(
        "Cold warm throughput: at least 0.70x the registry's own rate (inspect, every tag)",
        &format!(
            "{}: {ratio:.2}x (medians of {rounds} rounds, {in_flight} requests in flight on both sides)",
            if ratio >= 0.7 { "met" } else { "not met" }
        ),
    );
    println!("requests per round, by kind:");
    for kind in RequestKind::ALL {
        let count = stats[&kind];
        println!(
            "  {:<14} {:>6}  ({:.2} per image)",
            kind.label(),
            count,
            count as f64 / n as f64
        );
    }
    println!(
        "expected minimum: single image = 1 manifest GET + 1 config GET; index of 4 = 5 manifest GETs + 4 config GETs"
    );
}
