//! Discovery at scale: the real `regcache controller` (release build, `--discovery=labelled`)
//! against a real API server (etcd and kube-apiserver), with real memcached and the real
//! registry holding one single-tag repository per discovered watch. Creates Deployments in
//! a labelled namespace, each of two containers of two repositories, until every
//! repository is in use by several; waits until each repository has its watch and every
//! watch is warmed; then scales every Deployment and counts discovery's writes (none are
//! wanted). Prints the controller's VmRSS and VmHWM (from /proc/PID/status) idle, during,
//! and after, against the 64 MiB target.
//!
//! `cargo bench --bench discovery` (env `BENCH_DEPLOYMENTS` 1000, `BENCH_REPOSITORIES` 200).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::{Memory, RssSampler, mib, rss_summary};
use futures::StreamExt;
use serde_json::json;
use support::apiserver::ApiServer;
use support::kube::{ControllerProcess, deployment_object};
use support::seed::Seeder;

const NS: &str = "shop";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/shop/imagerepositorywatches";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";

fn print_memory(what: &str, m: Memory) {
    println!(
        "  {what:<52} VmRSS {:>7.1} MiB   VmHWM {:>7.1} MiB",
        mib(m.rss),
        mib(m.hwm)
    );
}

/// Discovery's writes of watches (status excluded), from the audit log.
fn discovery_writes(kube: &ApiServer) -> usize {
    kube.audit_events()
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "imagerepositorywatches")
        .filter(|e| e["objectRef"]["subresource"].is_null())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .unwrap_or_default()
                .contains("regcache-discovery")
        })
        .count()
}

#[tokio::main]
async fn main() {
    let deployments = support::env_usize("BENCH_DEPLOYMENTS", 1000);
    let repositories = support::env_usize("BENCH_REPOSITORIES", 200);

    let registry = support::Registry::start(support::RegistryAuth::Anonymous);
    let memcached = support::Memcached::start_with_args(&["-m", "256"]);
    let host = registry.host();
    let seeder = Seeder::new(registry.storage_dir());
    for r in 0..repositories {
        common::seed_repository(&seeder, &format!("shop/r{r:03}"), 1, 1, r as u64);
    }
    println!(
        "dataset: {deployments} Deployments (2 replicas, 2 containers each) over {repositories} \
         repositories of one tag, in one labelled namespace"
    );

    let kube = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
    kube.install_crd().await;
    kube.namespace(NS).await;
    kube.merge_patch(
        &format!("/api/v1/namespaces/{NS}"),
        json!({"metadata": {"labels": {"regcache.io/discover": "true"}}}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(
        &kube.kubeconfig,
        &[
            "--memcached",
            &memcached.addr(),
            "--api-auth",
            "none",
            "--discovery=labelled",
            &format!("--discovery-insecure-registry={host}"),
            "--registry-qps",
            "1000000",
            "--registry-burst",
            "1000000",
        ],
        dir.path().join("controller.log"),
    );
    controller.address("read API").await;
    let pid = controller.pid().expect("controller runs");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = Memory::of(pid).expect("controller memory");
    println!("regcache controller (pid {pid}), discovery on:");
    print_memory("idle, no workloads", idle);

    let sampler = RssSampler::start(pid, Duration::from_millis(200));
    let t = Instant::now();
    let image = |r: usize| format!("{host}/shop/r{:03}:t-00000", r % repositories);
    futures::stream::iter(0..deployments)
        .map(|i| {
            let body = deployment_object(
                NS,
                &format!("app{i:04}"),
                2,
                &[&image(i), &image(i + 1)],
                None,
            );
            let kube = &kube;
            async move {
                kube.create(DEPLOYMENTS, body).await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let created_in = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut found, mut warmed);
    loop {
        let list = kube.get(WATCHES).await.unwrap_or_default();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        found = items.len();
        warmed = items
            .iter()
            .filter(|w| {
                w["status"]["tagCount"].as_u64() == Some(1) && w["status"]["lastUpdate"].is_string()
            })
            .count();
        if found == repositories && warmed == repositories {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{found} watches, {warmed} warmed, of {repositories}; controller log tail:\n{}",
            controller.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_warm = t.elapsed();
    let writes = discovery_writes(&kube);
    println!(
        "  {deployments} Deployments created in {:.1}s; {found} watches, all warmed {:.1}s after \
         the first Deployment; discovery's writes: {writes}",
        created_in.as_secs_f64(),
        all_warm.as_secs_f64()
    );

    // Every Deployment scaled: discovery must write nothing.
    let t = Instant::now();
    futures::stream::iter(0..deployments)
        .map(|i| {
            let kube = &kube;
            async move {
                kube.merge_patch(
                    &format!("{DEPLOYMENTS}/app{i:04}"),
                    json!({"spec": {"replicas": 3}}),
                )
                .await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scaled_writes = discovery_writes(&kube) - writes;
    println!(
        "  every Deployment scaled in {:.1}s; discovery's writes after: {scaled_writes}",
        t.elapsed().as_secs_f64()
    );
    let (median, max) = rss_summary(sampler.stop());
    let after = Memory::of(pid).expect("controller memory");
    print_memory("after discovery, warming and scaling", after);
    println!(
        "  {:<52} median {:.1} MiB, max {:.1} MiB (sampled every 200 ms)",
        "VmRSS from the first Deployment on",
        mib(median),
        mib(max)
    );
    assert!(
        controller.logs().lines().all(|l| !l.contains("panicked")),
        "controller panicked"
    );
    common::summary(
        "Discovery: 1,000 Deployments over 200 repositories give 200 watches",
        &format!(
            "{}: {found} watches of {repositories} repositories from {deployments} Deployments, \
             {writes} writes, {scaled_writes} after scaling every Deployment",
            if found == repositories && writes == repositories && scaled_writes == 0 {
                "met"
            } else {
                "not met"
            }
        ),
    );
    common::summary(
        "Discovery: controller peak memory within 64 MiB",
        &format!(
            "{}: peak VmHWM {:.1} MiB with {deployments} Deployments and {found} watches (idle {:.1} MiB)",
            if mib(after.hwm) <= 64.0 {
                "met"
            } else {
                "not met"
            },
            mib(after.hwm),
            mib(idle.rss)
        ),
    );
}
