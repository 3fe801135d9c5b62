//! Warm passes over a generated dataset (many repositories, aliasing tags, multi-arch
//! indexes): requests by kind, wall time and images/s for a cold and a steady pass, beside
//! the requests Flux v1's algorithm makes on the same dataset, and beside the registry's
//! own rate for the same requests replayed raw, all in one run.
//!
//! `cargo bench --bench warmer` (env `BENCH_REPOS`, `BENCH_TAGS`, `BENCH_IMAGES`,
//! `BENCH_INDEXES`, `BENCH_CONCURRENCY`).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use regcache::registry::limiter::LimiterSettings;
use regcache::registry::{ClientOptions, RegistryClient, RequestKind};
use regcache::warmer::schedule::RefreshPolicy;
use regcache::warmer::{Outcome, PassOptions, Target, Warmer, WarmerOptions};
use support::{IndexKind, PlatformSpec, Registry, RegistryAuth};

struct Pass {
    wall: Duration,
    requests: BTreeMap<RequestKind, u64>,
    images: usize,
    tags: usize,
}

async fn pass(warmer: &Warmer<Memcached>, targets: &[Target], concurrency: usize) -> Pass {
    let t = Instant::now();
    let outcomes: Vec<Outcome> = futures::stream::iter(targets.iter())
        .map(|target| warmer.warm_now(target))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = t.elapsed();
    let mut requests = BTreeMap::new();
    for o in &outcomes {
        assert!(o.error.is_none(), "{:?}", o.error);
        for (k, v) in &o.requests {
            *requests.entry(*k).or_insert(0) += v;
        }
    }
    Pass {
        wall,
        requests,
        images: outcomes.iter().map(|o| o.images_updated).sum(),
        tags: outcomes.iter().map(|o| o.tags).sum(),
    }
}

fn get(p: &BTreeMap<RequestKind, u64>, k: RequestKind) -> u64 {
    p.get(&k).copied().unwrap_or(0)
}

fn gets_of(p: &BTreeMap<RequestKind, u64>) -> u64 {
    get(p, RequestKind::ManifestGet) + get(p, RequestKind::BlobGet)
}

#[tokio::main]
async fn main() {
    let repos = support::env_usize("BENCH_REPOS", 10);
    let tags = support::env_usize("BENCH_TAGS", 200);
    let images = support::env_usize("BENCH_IMAGES", 40);
    let indexes = support::env_usize("BENCH_INDEXES", 5);
    let concurrency = support::env_usize("BENCH_CONCURRENCY", 4);
    let index_aliases = 3;
    let single_tags = tags - indexes * (1 + index_aliases);

    let registry = Registry::start(RegistryAuth::Anonymous);
    let proxy = registry.fault_proxy();
    let memcached = support::Memcached::start_with_args(&["-m", "512"]);
    let pusher = registry.pusher();
    let t = Instant::now();
    // Every manifest (single images, indexes, index children) and every config of the
    // dataset: each repository's images are its own (distinct digests).
    let mut manifests = std::collections::BTreeSet::new();
    let mut configs = std::collections::BTreeSet::new();
    for r in 0..repos {
        let repo = format!("bench/repo{r:02}");
        for (_, image) in pusher.push_many(&repo, single_tags, images).await {
            manifests.insert(image.digest);
            configs.insert(image.config_digest);
        }
        for i in 0..indexes {
            let index = pusher
                .push_index(
                    &repo,
                    &format!("multi-{i}"),
                    IndexKind::Oci,
                    &PlatformSpec::default_set(),
                )
                .await;
            manifests.insert(index.digest.clone());
            for child in &index.children {
                manifests.insert(child.digest.clone());
                configs.insert(child.config_digest.clone());
            }
            for a in 0..index_aliases {
                pusher
                    .tag_index(&repo, &index, &format!("multi-{i}-alias-{a}"))
                    .await;
            }
        }
    }
    println!(
        "dataset: {repos} repositories x {tags} tags ({single_tags} tags over {images} single-platform images, \
         {indexes} indexes of 4 platforms with {index_aliases} aliases each); pushed in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Flux v1 is not run here: its GETs are modelled from its warmer's algorithm, which
    // fetches every due tag in full: per tag a manifest GET, for an index also the child of
    // its one platform, and the config blob (the tag lists are not counted).
    let flux_per_pass = (repos * (single_tags * 2 + indexes * (1 + index_aliases) * 3)) as u64;

    let warmer_for = |host: String| {
        let client = RegistryClient::new(ClientOptions {
            limiter: LimiterSettings {
                max_rate: 1e6,
                burst: 1e6,
                ..LimiterSettings::default()
            },
            ..ClientOptions::default()
        });
        let store = Arc::new(MetadataStore::new(Memcached::new(
            vec![memcached.addr()],
            MemcachedOptions::default(),
        )));
        let warmer = Warmer::new(
            client,
            store,
            WarmerOptions {
                pass: PassOptions {
                    // Every tag due at every pass: the steady pass is the worst case.
                    policy: RefreshPolicy {
                        new_tag: Duration::ZERO,
                        min: Duration::ZERO,
                        ..RefreshPolicy::default()
                    },
                },
                ..WarmerOptions::default()
            },
        );
        let targets: Vec<Target> = (0..repos)
            .map(|r| {
                let repository = Repository::parse(&format!("{host}/bench/repo{r:02}")).unwrap();
                support::plain_target(
                    &format!("bench/{r}"),
                    repository,
                    Credential::Anonymous,
                    Scope::public(),
                )
            })
            .collect();
        (warmer, targets)
    };

    // Through the counting proxy once, to record the cold pass's exact requests.
    let (warmer, targets) = warmer_for(proxy.host());
    proxy.reset_counts();
    let counted = pass(&warmer, &targets, concurrency).await;
    let in_flight = proxy.peak_in_flight();
    let seen: Vec<(String, String)> = proxy
        .seen()
        .into_iter()
        .map(|r| (r.method, r.path_and_query))
        .collect();
    assert_eq!(
        proxy.count("GET", support::Kind::Manifest) as u64,
        get(&counted.requests, RequestKind::ManifestGet)
    );
    memcached.flush();

    // Then straight at the registry, timed.
    let (warmer, targets) = warmer_for(registry.host());
    let cold = pass(&warmer, &targets, concurrency).await;
    let steady = pass(&warmer, &targets, concurrency).await;
    // The design's request targets, checked on this dataset: a cold pass GETs each distinct
    // manifest and config once, however many tags alias it; a steady pass GETs nothing.
    for (name, p) in [("counted", &counted), ("cold", &cold)] {
        assert_eq!(
            get(&p.requests, RequestKind::ManifestGet),
            manifests.len() as u64,
            "{name} pass: one manifest GET per distinct manifest"
        );
        assert_eq!(
            get(&p.requests, RequestKind::BlobGet),
            configs.len() as u64,
            "{name} pass: one blob GET per distinct config"
        );
    }
    assert_eq!(gets_of(&steady.requests), 0, "steady pass: no GETs");

    // The registry's own rate for the same requests, raw, with as many in flight as the
    // warmer had at its peak (measured by the proxy during the counted pass).
    let raw_rate = common::raw_replay(&registry.base_url(), &seen, in_flight).await;

    let total = |p: &Pass| p.requests.values().sum::<u64>();
    let gets = |p: &Pass| gets_of(&p.requests);
    println!("passes run {concurrency} targets at once; requests by kind:");
    println!(
        "  {:<8} {:>8} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>10}",
        "pass",
        "tag_list",
        "mf_head",
        "mf_get",
        "blob_get",
        "total",
        "wall_s",
        "tags/s",
        "images/s"
    );
    for (name, p) in [("cold", &cold), ("steady", &steady)] {
        println!(
            "  {:<8} {:>8} {:>10} {:>10} {:>10} {:>8} {:>9.2} {:>9.0} {:>10.0}",
            name,
            get(&p.requests, RequestKind::TagList),
            get(&p.requests, RequestKind::ManifestHead),
            get(&p.requests, RequestKind::ManifestGet),
            get(&p.requests, RequestKind::BlobGet),
            total(p),
            p.wall.as_secs_f64(),
            p.tags as f64 / p.wall.as_secs_f64(),
            p.images as f64 / p.wall.as_secs_f64(),
        );
    }
    println!(
        "distinct digests: {} manifests, {} configs; cold pass GETs: {} manifests, {} configs (asserted equal)",
        manifests.len(),
        configs.len(),
        get(&cold.requests, RequestKind::ManifestGet),
        get(&cold.requests, RequestKind::BlobGet)
    );
    println!(
        "Flux v1 (modelled, not run: a manifest GET per due tag, the platform's child for an \
         index, and its config blob): {flux_per_pass} GETs per pass, cold and steady alike"
    );
    println!(
        "  regcache GETs / modelled Flux v1 GETs: cold {:.3}, steady {:.3} ({} and {} GETs)",
        gets(&cold) as f64 / flux_per_pass as f64,
        gets(&steady) as f64 / flux_per_pass as f64,
        gets(&cold),
        gets(&steady)
    );
    let cold_rate = total(&cold) as f64 / cold.wall.as_secs_f64();
    println!(
        "cold pass request rate {cold_rate:.0} req/s; the registry serving the same {} requests raw, \
         {in_flight} in flight (the warmer's peak): {raw_rate:.0} req/s; ratio {:.2}",
        seen.len(),
        cold_rate / raw_rate
    );
    common::summary(
        "Cold pass: one GET per distinct manifest and per distinct config",
        &format!(
            "met (asserted): {} manifest + {} config GETs for {} tags = the dataset's distinct \
             digests; modelled Flux v1: {flux_per_pass} GETs ({:.3}x)",
            get(&cold.requests, RequestKind::ManifestGet),
            get(&cold.requests, RequestKind::BlobGet),
            cold.tags,
            gets(&cold) as f64 / flux_per_pass as f64
        ),
    );
    common::summary(
        "Steady pass, every tag due, nothing changed: zero manifest GETs",
        &format!(
            "met (asserted): 0 GETs, {} HEADs",
            get(&steady.requests, RequestKind::ManifestHead)
        ),
    );
    common::summary(
        "Cold warm throughput: at least 0.70x the registry's own rate (warmer, many repositories)",
        &format!(
            "{}: {:.2}x ({cold_rate:.0} against {raw_rate:.0} req/s, {in_flight} in flight)",
            if cold_rate / raw_rate >= 0.7 {
                "met"
            } else {
                "not met"
            },
            cold_rate / raw_rate
        ),
    );
}
