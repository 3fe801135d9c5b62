//! `/metrics`, `/healthz` and `/readyz` of the real binary: the controller (installed by the
//! chart into a real API server, as its ServiceAccount) with the token-auth registry
//! (behind a fault proxy) and memcached, and standalone.
//! Every metric `docs/metrics.md` lists must show up in a scrape, so docs and code cannot
//! drift apart.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::Cluster;
use support::kube::{pull_secret, ready_is};
use support::{
    CANARY_PASSWORD, Fault, ImageSpec, Kind, ManifestKind, Registry, RegistryAuth, Rule,
};

const NS: &str = "metrics";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/metrics/imagerepositorywatches";
const SECRETS: &str = "/api/v1/namespaces/metrics/secrets";
const WRONG_PASSWORD: &str = "wrong-Pa55-0b1d";

/// One sample of a scrape: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_sample(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut map = BTreeMap::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        map.insert(key.to_string(), after[..end].to_string());
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(Sample {
        name: name.to_string(),
        labels: map,
        value: value.parse().ok()?,
    })
}

struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn new(text: String) -> Scrape {
        let samples = text.lines().filter_map(parse_sample).collect();
        Scrape { text, samples }
    }

    /// Series of `name` carrying every label in `with`.
    fn series(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Sum over the series of `name` carrying every label in `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.series(name, with).iter().map(|s| s.value).sum()
    }
}

/// `(name, type)` of every metric in docs/metrics.md's table.
fn documented_metrics() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .expect("read docs/metrics.md");
    let rows: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            name.starts_with("regcache_")
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect();
    assert!(rows.len() >= 15, "the table lists the metrics: {rows:?}");
    rows
}

/// Checks that a scrape declares every documented metric with its documented type, and
/// has samples for each except those in `may_be_empty`.
fn assert_documented_metrics_present(scrape: &Scrape, may_be_empty: &[&str]) {
    for (name, kind) in documented_metrics() {
        // OpenMetrics names a counter family without its `_total` suffix.
        let family = match kind.as_str() {
            "counter" => name
                .strip_suffix("_total")
                .unwrap_or_else(|| panic!("counter {name} must end in _total")),
            _ => &name,
        };
        let declared = format!("# TYPE {family} {kind}\n");
        // prometheus-client leaves out families that have no series yet.
        if may_be_empty.contains(&name.as_str()) && !scrape.text.contains(&format!(" {family} ")) {
            continue;
        }
        assert!(
            scrape.text.contains(&declared),
            "docs/metrics.md lists {name} ({kind}) but the scrape has no `{}`:\n{}",
            declared.trim(),
            scrape.text
        );
        let sample = match kind.as_str() {
            "histogram" => format!("{name}_count"),
            _ => name.clone(),
        };
        assert!(
            !scrape.series(&sample, &[]).is_empty(),
            "no sample of {name} in the scrape:\n{}",
            scrape.text
        );
    }
    // And the other way round: nothing in the scrape that the docs do not list.
    let documented: Vec<String> = documented_metrics().into_iter().map(|(n, _)| n).collect();
    for line in scrape.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split(' ').next().unwrap();
            assert!(
                documented
                    .iter()
                    .any(|d| d == family || d == &format!("{family}_total")),
                "{family} is served but not documented in docs/metrics.md"
            );
        }
    }
}

/// Families the controller scrape has no series of (prometheus-client leaves out a family
/// with none), each with where it is shown; the dashboard may query them.
const SHOWN_ELSEWHERE: [(&str, &str); 2] = [
    ("regcache_cache_errors", "cache.rs, with memcached stopped"),
    (
        "regcache_cloud_sign_ins",
        "cloud.rs, whose watches sign in to ECR",
    ),
];

/// Every query of every panel of the shipped Grafana dashboard names regcache metrics, and
/// each is a family the running controller serves, with a suffix its type has
/// (`_total` of a counter, `_bucket`/`_sum`/`_count` of a histogram, a gauge as it is).
fn assert_dashboard_queries_are_served(scrape: &Scrape) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/regcache/dashboards/regcache.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let types: BTreeMap<&str, &str> = scrape
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut checked = 0;
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let names: Vec<&str> = expr
                .match_indices("regcache_")
                .map(|(at, _)| {
                    let rest = &expr[at..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                })
                .collect();
            assert!(
                !names.is_empty(),
                "panel {title:?}: {expr} queries no regcache metric"
            );
            for name in names {
                let served = [
                    ("_total", "counter"),
                    ("_bucket", "histogram"),
                    ("_sum", "histogram"),
                    ("_count", "histogram"),
                    ("", "gauge"),
                ]
                .iter()
                .find_map(|(suffix, kind)| {
                    let family = name.strip_suffix(suffix)?;
                    (types.get(family) == Some(kind)).then_some(family)
                });
                let elsewhere = SHOWN_ELSEWHERE
                    .iter()
                    .any(|(family, _)| name.strip_suffix("_total") == Some(family));
                assert!(
                    served.is_some() || elsewhere,
                    "panel {title:?} queries {name}, which the running controller does not serve \
                     as such:\n{expr}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "only {checked} metric references checked");
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let resp = http.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

async fn scrape(http: &reqwest::Client, metrics: &str) -> Scrape {
    let (status, text) = get(http, &format!("http://{metrics}/metrics"))
        .await
        .expect("scrape /metrics");
    assert_eq!(status, 200, "{text}");
    Scrape::new(text)
}

/// Scrapes until `ready` accepts the scrape (generous deadline: machines are noisy).
async fn scrape_until(
    http: &reqwest::Client,
    metrics: &str,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = scrape(http, metrics).await;
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn watch(name: &str, image: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "regcache.io/v1alpha1",
        "kind": "ImageRepositoryWatch",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"image": image, "pullSecrets": [{"name": secret}], "insecure": true, "interval": "1h"},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_scrape_after_a_warm_pass_has_every_documented_metric() {
    let registry = Registry::start(RegistryAuth::Token);
    let pusher = registry.pusher();
    for (i, tag) in ["v1", "v2", "v3"].iter().enumerate() {
        pusher
            .push_image(
                "metrics/app",
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(100 + i as u64),
            )
            .await;
    }
    // The registry asks regcache to slow down once: a 429 on a manifest HEAD.
    let proxy = registry.fault_proxy();
    proxy.add_rule(
        Rule::kind(Kind::Manifest, Fault::too_many(Some("1")))
            .method("HEAD")
            .times(1),
    );
    // And reports a pull quota, far from regcache's reserve, as Docker Hub does.
    proxy.set_pull_quota(1_000_000);
    let host = proxy.host();
    let image = format!("{host}/metrics/app");
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS], &[]).await;
    cluster
        .create(SECRETS, pull_secret(NS, "regcred", &host, CANARY_PASSWORD))
        .await;
    cluster
        .create(SECRETS, pull_secret(NS, "badcred", &host, WRONG_PASSWORD))
        .await;
    cluster
        .create(WATCHES, watch("app", &image, "regcred"))
        .await;
    cluster
        .create(WATCHES, watch("bad", &image, "badcred"))
        .await;

    let dir = tempfile::tempdir().unwrap();
    let controller = cluster.controller(
        &["--memcached", &memcached.addr(), "--log-level", "debug"],
        dir.path().join("controller.log"),
    );
    let metrics = controller.address("metrics").await;
    let probes = controller.address("health probes").await;
    cluster
        .wait_for(
            &format!("{WATCHES}/app"),
            Duration::from_secs(90),
            ready_is("True", "Succeeded"),
        )
        .await;
    cluster
        .wait_for(
            &format!("{WATCHES}/bad"),
            Duration::from_secs(90),
            ready_is("False", "Unauthorized"),
        )
        .await;

    let http = support::http_client(None);
    // One registry API request, without credentials: challenged, and counted.
    let api = controller.address("read API").await;
    let challenged = http.get(format!("http://{api}/v2/")).send().await.unwrap();
    assert_eq!(challenged.status(), 401);
    let good = [("watch", "metrics/app"), ("repository", image.as_str())];
    let s = scrape_until(&http, &metrics, "both passes and their reconciles", |s| {
        s.sum("regcache_warmer_passes_total", &[("result", "success")]) >= 1.0
            && s.sum(
                "regcache_warmer_pass_failures_total",
                &[("reason", "unauthorized")],
            ) >= 1.0
            && s.sum("regcache_reconcile_total", &[("result", "success")]) >= 2.0
    })
    .await;

    // Nothing in this run makes the cache or the Kubernetes API fail.
    assert_documented_metrics_present(
        &s,
        &[
            "regcache_cache_errors_total",
            "regcache_reconcile_errors_total",
            // Counted by tests/it/cloud.rs, whose watches sign in to ECR.
            "regcache_cloud_sign_ins_total",
            // Only registries that report a pull quota have them; shown by
            // controller_e2e's pull-quota test.
            "regcache_registry_pull_quota_remaining",
            "regcache_registry_pull_quota_limit",
        ],
    );

    assert_dashboard_queries_are_served(&s);

    assert_eq!(
        s.sum(
            "regcache_api_registry_requests_total",
            &[("route", "base"), ("result", "unauthorized")]
        ),
        1.0,
        "{}",
        s.text
    );

    // Requests to the registry's host, by kind and status.
    let requests = "regcache_registry_requests_total";
    for kind in ["tag_list", "manifest_head", "manifest_get", "blob_get"] {
        assert!(
            s.sum(
                requests,
                &[("host", &host), ("kind", kind), ("status", "200")]
            ) >= 1.0,
            "no successful {kind} to {host}:\n{}",
            s.text
        );
    }
    assert!(
        s.sum(
            requests,
            &[
                ("host", &host),
                ("kind", "manifest_head"),
                ("status", "429")
            ]
        ) >= 1.0,
        "{}",
        s.text
    );
    assert!(
        s.sum(
            "regcache_registry_rate_limit_backoffs_total",
            &[("host", &host)]
        ) >= 1.0,
        "{}",
        s.text
    );
    let rate = s.sum("regcache_registry_rate_limit", &[("host", &host)]);
    assert!(
        rate > 0.0 && rate < 100.0,
        "halved below --registry-qps: {rate}"
    );
    assert!(
        s.sum(
            "regcache_registry_request_duration_seconds_count",
            &[("host", &host), ("kind", "manifest_head")]
        ) >= 1.0
    );
    // The wrong password: refused by the token endpoint (401).
    assert!(
        s.sum(requests, &[("kind", "token"), ("status", "401")]) >= 1.0,
        "{}",
        s.text
    );

    // What the repository holds: three tags of three distinct images, fresh.
    assert_eq!(s.sum("regcache_warmer_tags", &good), 3.0, "{}", s.text);
    assert_eq!(s.sum("regcache_warmer_images", &good), 3.0, "{}", s.text);
    let ages = s.series("regcache_warmer_data_age_seconds", &good);
    assert_eq!(ages.len(), 1, "{}", s.text);
    assert!(
        (0.0..600.0).contains(&ages[0].value),
        "age {}",
        ages[0].value
    );
    assert_eq!(s.sum("regcache_warmer_targets", &[]), 2.0);
    assert!(s.sum("regcache_warmer_pass_duration_seconds_count", &[]) >= 2.0);

    // The cache: items of every kind written, reads counted, reachable.
    for kind in ["image", "repository_head", "tag_chunk"] {
        assert!(
            s.sum("regcache_cache_item_size_bytes_count", &[("kind", kind)]) >= 1.0,
            "no {kind} written:\n{}",
            s.text
        );
    }
    assert!(s.sum("regcache_cache_item_size_bytes_count", &[("kind", "image")]) >= 3.0);
    assert!(s.sum("regcache_cache_item_size_bytes_sum", &[("kind", "image")]) > 100.0);
    assert!(
        s.sum(
            "regcache_cache_operations_total",
            &[("op", "set"), ("result", "ok")]
        ) >= 5.0
    );
    assert!(s.sum("regcache_cache_operations_total", &[("op", "get")]) >= 1.0);
    assert_eq!(s.sum("regcache_cache_reachable", &[]), 1.0);
    assert!(s.sum("regcache_reconcile_duration_seconds_count", &[]) >= 2.0);

    // No credential anywhere in the scrape.
    assert!(!s.text.contains(CANARY_PASSWORD), "password in /metrics");
    assert!(!s.text.contains(WRONG_PASSWORD), "password in /metrics");
    assert!(!s.text.contains("Bearer"), "token in /metrics");

    // Probes.
    assert_eq!(
        get(&http, &format!("http://{probes}/healthz"))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        get(&http, &format!("http://{probes}/readyz"))
            .await
            .unwrap(),
        (200, "ok\n".to_string())
    );

    // Deleting a watch removes its series; the other watch of the repository keeps its own.
    cluster.delete(&format!("{WATCHES}/bad")).await;
    let s = scrape_until(&http, &metrics, "the deleted watch's series to go", |s| {
        !s.text.contains("watch=\"metrics/bad\"") && s.sum("regcache_warmer_targets", &[]) == 1.0
    })
    .await;
    assert_eq!(s.sum("regcache_warmer_tags", &good), 3.0, "{}", s.text);

    let logs = controller.logs();
    assert!(!logs.contains(CANARY_PASSWORD) && !logs.contains(WRONG_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_waits_for_the_cache_and_healthz_does_not() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry
        .pusher()
        .push_image("down/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let mut memcached = support::Memcached::start();
    // Nothing listens on its port until it is started again.
    memcached.stop();
    let cluster = Cluster::install(&[NS], &[]).await;
    cluster
        .create(
            WATCHES,
            json!({
                "apiVersion": "regcache.io/v1alpha1",
                "kind": "ImageRepositoryWatch",
                "metadata": {"name": "app", "namespace": NS},
                "spec": {"image": format!("{}/down/app", registry.host()), "insecure": true},
            }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let controller = cluster.controller(
        &["--memcached", &memcached.addr(), "--log-level", "debug"],
        dir.path().join("controller.log"),
    );
    let probes = controller.address("health probes").await;
    let metrics = controller.address("metrics").await;
    let http = support::http_client(None);
    let readyz = format!("http://{probes}/readyz");

    // Not ready while the cache does not answer, although the watches get listed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&http, &readyz).await.expect("GET /readyz");
        assert_ne!(status, 200, "ready without a cache: {body}");
        if body.starts_with("cache unreachable") && controller.logs().contains("watches listed") {
            assert_eq!(status, 503);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last /readyz: {status} {body}\n{}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&http, &format!("http://{probes}/healthz"))
            .await
            .unwrap()
            .0,
        200
    );
    // The pass could not write what it fetched: counted as cache errors.
    let s = scrape_until(&http, &metrics, "cache errors", |s| {
        s.sum(
            "regcache_cache_errors_total",
            &[("op", "set"), ("reason", "unavailable")],
        ) >= 1.0
    })
    .await;
    assert_eq!(s.sum("regcache_cache_reachable", &[]), 0.0, "{}", s.text);
    assert!(
        s.sum(
            "regcache_warmer_pass_failures_total",
            &[("reason", "cache")]
        ) >= 1.0
    );

    // Ready once memcached is back.
    memcached.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = get(&http, &readyz).await.expect("GET /readyz");
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert!(Instant::now() < deadline, "last /readyz: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = scrape(&http, &metrics).await;
    assert_eq!(s.sum("regcache_cache_reachable", &[]), 1.0, "{}", s.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_serves_metrics_and_probes_while_it_keeps_warming() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    for (i, tag) in ["a", "b"].iter().enumerate() {
        pusher
            .push_image(
                "solo/app",
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(200 + i as u64),
            )
            .await;
    }
    let memcached = support::Memcached::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("watch.yaml"),
        format!(
            "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: app, namespace: solo}}\nspec: {{image: {host}/solo/app, insecure: true, interval: 1h}}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("regcache.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["standalone", "--watches"])
        .arg(dir.path().join("watch.yaml"))
        .args(["--memcached", &memcached.addr()])
        .args(["--api-bind-address", "127.0.0.1:0"])
        .args(["--metrics-bind-address", "127.0.0.1:0"])
        .args(["--health-probe-bind-address", "127.0.0.1:0"])
        .env_remove("REGCACHE_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let metrics = support::wait_for_listener(&log, "metrics").await;
    let probes = support::wait_for_listener(&log, "health probes").await;
    let http = support::http_client(None);
    let repository = format!("{host}/solo/app");
    let labels = [("watch", "solo/app"), ("repository", repository.as_str())];
    let s = scrape_until(&http, &metrics, "the first pass", |s| {
        s.sum("regcache_warmer_passes_total", &[("result", "success")]) >= 1.0
    })
    .await;
    assert_eq!(s.sum("regcache_warmer_tags", &labels), 2.0, "{}", s.text);
    assert_eq!(s.sum("regcache_warmer_images", &labels), 2.0, "{}", s.text);
    assert!(
        s.sum(
            "regcache_registry_requests_total",
            &[
                ("host", &host),
                ("kind", "manifest_head"),
                ("status", "200")
            ]
        ) >= 2.0
    );
    // No reconciles without Kubernetes, but the families are declared all the same.
    assert_documented_metrics_present(
        &s,
        &[
            // No API request before this scrape.
            "regcache_api_request_duration_seconds",
            "regcache_api_registry_requests_total",
            "regcache_cache_errors_total",
            "regcache_cloud_sign_ins_total",
            "regcache_reconcile_errors_total",
            "regcache_reconcile_total",
            "regcache_reconcile_duration_seconds",
            "regcache_registry_rate_limit_backoffs_total",
            "regcache_registry_pull_quota_remaining",
            "regcache_registry_pull_quota_limit",
            "regcache_warmer_pass_failures_total",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&http, &format!("http://{probes}/readyz"))
            .await
            .expect("GET /readyz");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "last /readyz: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
