//! Operator memory with many watches: the real `regcache controller` (release build)
//! against a real API server (etcd and kube-apiserver), with real memcached and the real registry holding
//! one repository per watch. Prints the controller's resident memory (VmRSS, and the peak
//! VmHWM, from /proc/PID/status) idle before any watch, after the first full warm of every
//! watch, and in steady state (tag lists every interval, no tag due), with bytes per watch
//! and per tag, beside the size of what memcached holds for the same data.
//!
//! `cargo bench --bench memory` (env `BENCH_WATCHES` 1000, `BENCH_TAGS` tags per
//! repository 100, `BENCH_IMAGES` distinct images per repository 10, `BENCH_CONCURRENT`
//! 8, `BENCH_INTERVAL` 1m, `BENCH_STEADY_SECS` 90).
//!
//! `BENCH_SECRETS` (default 0) unrelated Secrets of `BENCH_SECRET_KIB` KiB each (default
//! 64, the size of a Helm release Secret) are created in another namespace first: the
//! controller watches Secrets cluster-wide, and the idle figures show what they cost it.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::{Memory, RssSampler, mib, rss_summary};
use serde_json::json;
use support::apiserver::ApiServer;
use support::kube::{ControllerProcess, KubeClient};
use support::seed::Seeder;

const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/bench/imagerepositorywatches";

fn print_memory(what: &str, m: Memory) {
    println!(
        "  {what:<44} VmRSS {:>7.1} MiB   VmHWM {:>7.1} MiB",
        mib(m.rss),
        mib(m.hwm)
    );
}

/// Helm-release-like Secrets no watch names, created a few at a time.
async fn create_unrelated_secrets(kube: &KubeClient, n: usize, kib: usize) {
    use base64::Engine as _;
    use futures::StreamExt;
    const SECRETS: &str = "/api/v1/namespaces/apps/secrets";
    let payload: Vec<u8> = (0..kib * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let data = base64::engine::general_purpose::STANDARD.encode(&payload);
    futures::stream::iter(0..n)
        .map(|i| {
            let data = data.clone();
            async move {
                kube.create(
                    SECRETS,
                    json!({
                        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                        "metadata": {"name": format!("sh.helm.release.v1.app{i}.v1"),
                                     "namespace": "apps"},
                        "data": {"release": data},
                    }),
                )
                .await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::main]
async fn main() {
    let watches = support::env_usize("BENCH_WATCHES", 1000);
    let tags = support::env_usize("BENCH_TAGS", 100);
    let images = support::env_usize("BENCH_IMAGES", 10);
    let concurrent = support::env_usize("BENCH_CONCURRENT", 8);
    let steady_secs = support::env_usize("BENCH_STEADY_SECS", 90);
    let interval = std::env::var("BENCH_INTERVAL").unwrap_or_else(|_| "1m".to_string());

    let registry = support::Registry::start(support::RegistryAuth::Anonymous);
    let memcached = support::Memcached::start_with_args(&["-m", "1024"]);
    let host = registry.host();

    let t = Instant::now();
    let seeder = Seeder::new(registry.storage_dir());
    // Repositories are independent: written from a few threads, so the dataset's file
    // creation overlaps instead of waiting on one syscall at a time.
    let seeders = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let first = std::thread::scope(|s| {
        let seeder = &seeder;
        let workers: Vec<_> = (0..seeders)
            .map(|k| {
                s.spawn(move || {
                    let mut first = Vec::new();
                    for w in (k..watches).step_by(seeders) {
                        let seeded = common::seed_repository(
                            seeder,
                            &format!("bench/w{w:04}"),
                            tags,
                            images,
                            (w * images) as u64,
                        );
                        if w == 0 {
                            first = seeded;
                        }
                    }
                    first
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("seeding thread"))
            .find(|f| !f.is_empty())
            .unwrap_or_default()
    });
    let seeded_in = t.elapsed();
    common::check_seeded(&registry.base_url(), "bench/w0000", &first).await;
    println!(
        "dataset: {watches} repositories x {tags} tags over {images} distinct images each \
         ({} tags, {} distinct images); written to the registry's storage in {:.1}s",
        watches * tags,
        watches * images,
        seeded_in.as_secs_f64()
    );

    let kube = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
    kube.install_crd().await;
    for ns in ["bench", "apps"] {
        kube.namespace(ns).await;
    }
    let secrets = support::env_usize("BENCH_SECRETS", 0);
    let secret_kib = support::env_usize("BENCH_SECRET_KIB", 64);
    if secrets > 0 {
        let t = Instant::now();
        create_unrelated_secrets(&kube, secrets, secret_kib).await;
        println!(
            "{secrets} unrelated Secrets of {secret_kib} KiB in namespace apps, created in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(
        &kube.kubeconfig,
        &[
            "--memcached",
            &memcached.addr(),
            "--api-auth",
            "none",
            "--concurrent",
            &concurrent.to_string(),
            "--registry-qps",
            "1000000",
            "--registry-burst",
            "1000000",
        ],
        dir.path().join("controller.log"),
    );
    controller.address("read API").await;
    let pid = controller.pid().expect("controller runs");
    // The controller has listed every Secret when its watch of them starts.
    let deadline = Instant::now() + Duration::from_secs(300);
    let watching_secrets = |server: &ApiServer| {
        server.audit_events().iter().any(|e| {
            e["verb"] == "watch"
                && e["objectRef"]["resource"] == "secrets"
                && e["objectRef"]["namespace"].is_null()
        })
    };
    while !watching_secrets(&kube) {
        assert!(
            Instant::now() < deadline,
            "the controller never watched Secrets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = Memory::of(pid).expect("controller memory");
    println!("regcache controller (pid {pid}), {concurrent} passes at once:");
    print_memory(
        &if secrets > 0 {
            format!("idle, no watches, {secrets} unrelated Secrets")
        } else {
            "idle, no watches".to_string()
        },
        idle,
    );

    let sampler = RssSampler::start(pid, Duration::from_millis(200));
    let t = Instant::now();
    for w in 0..watches {
        kube.create(
            WATCHES,
            json!({
                "apiVersion": "regcache.io/v1alpha1",
                "kind": "ImageRepositoryWatch",
                "metadata": {"name": format!("w{w:04}"), "namespace": "bench"},
                "spec": {"image": format!("{host}/bench/w{w:04}"), "insecure": true,
                         "interval": interval},
            }),
        )
        .await;
    }
    let created_in = t.elapsed();
    // Warm is complete when every watch reports all its tags and a lastUpdate.
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let list = kube.get(WATCHES).await.unwrap_or_default();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let done = items
            .iter()
            .filter(|w| {
                w["status"]["tagCount"].as_u64() == Some(tags as u64)
                    && w["status"]["lastUpdate"].is_string()
            })
            .count();
        if done == watches {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {watches} watches warmed; controller log tail:\n{}",
            controller.log_tail(20)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let warm_wall = t.elapsed();
    let during_warm = sampler.stop();
    let warmed = Memory::of(pid).expect("controller memory");
    let (_, warm_max) = rss_summary(during_warm);
    println!(
        "  {watches} watches created in {:.1}s; all warmed {:.1}s after the first was created \
         ({:.0} tags/s)",
        created_in.as_secs_f64(),
        warm_wall.as_secs_f64(),
        (watches * tags) as f64 / warm_wall.as_secs_f64()
    );
    print_memory("after the first full warm", warmed);
    println!(
        "  {:<44} {:>7.1} MiB (sampled every 200 ms)",
        "highest VmRSS sampled during the warm",
        mib(warm_max)
    );

    let sampler = RssSampler::start(pid, Duration::from_millis(500));
    tokio::time::sleep(Duration::from_secs(steady_secs as u64)).await;
    let (steady_median, steady_max) = rss_summary(sampler.stop());
    let steady = Memory::of(pid).expect("controller memory");
    print_memory(&format!("steady, after {steady_secs}s more"), steady);
    println!(
        "  {:<44} median {:.1} MiB, max {:.1} MiB (interval {interval}: every watch relisted)",
        "VmRSS over the steady window",
        mib(steady_median),
        mib(steady_max)
    );
    let log_lines = controller.logs().lines().count();
    assert!(
        controller.logs().lines().all(|l| !l.contains("panicked")),
        "controller panicked"
    );

    let grown = steady.rss.saturating_sub(idle.rss);
    println!("per watch and per tag (steady VmRSS minus idle VmRSS):");
    println!(
        "  {:.1} MiB over idle: {:.0} bytes per watch, {:.0} bytes per tag",
        mib(grown),
        grown as f64 / watches as f64,
        grown as f64 / (watches * tags) as f64
    );
    let stats = memcached.stats();
    let stat = |n: &str| -> u64 { stats.get(n).and_then(|v| v.parse().ok()).unwrap_or(0) };
    println!(
        "what memcached holds for the same data: {:.1} MiB in {} items ({:.0} bytes per tag); \
         process growth / memcached bytes = {:.2}",
        mib(stat("bytes")),
        stat("curr_items"),
        stat("bytes") as f64 / (watches * tags) as f64,
        grown as f64 / stat("bytes").max(1) as f64
    );
    println!(
        "target (the design): at most 64 MiB resident with 1,000 watches and 100,000 tags; \
         peak VmHWM here {:.1} MiB with {watches} watches and {} tags ({log_lines} log lines)",
        mib(steady.hwm),
        watches * tags
    );
    let full_size = watches >= 1000 && watches * tags >= 100_000;
    common::summary(
        "At most 64 MiB resident with 1,000 watches and 100,000 tags",
        &format!(
            "{}: peak VmHWM {:.1} MiB with {watches} watches and {} tags (idle {:.1} MiB)",
            match (full_size, mib(steady.hwm) <= 64.0) {
                (false, _) => "smaller dataset than the target's",
                (true, true) => "met",
                (true, false) => "not met",
            },
            mib(steady.hwm),
            watches * tags,
            mib(idle.rss)
        ),
    );
}
