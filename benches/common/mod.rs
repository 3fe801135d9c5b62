//! Helpers shared by the benchmarks that run the real `regcache` binary: its memory from
//! /proc, a `regcache standalone` child process, seeded datasets, latency summaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::seed::{SeededImage, Seeder};

/// Resident memory of a process (bytes): now (`VmRSS`) and its peak so far (`VmHWM`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        };
        Some(Memory {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
        })
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Samples a process's `VmRSS` every `every` on a thread until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = Memory::of(pid) {
                        samples.lock().unwrap().push(m.rss);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        RssSampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the samples taken.
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// (median, max) of RSS samples.
pub fn rss_summary(mut samples: Vec<u64>) -> (u64, u64) {
    samples.sort_unstable();
    if samples.is_empty() {
        return (0, 0);
    }
    (samples[samples.len() / 2], *samples.last().unwrap())
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (p50, p99) of unsorted samples.
pub fn p50_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `regcache standalone` process (release build, as `cargo bench` builds it) with its log
/// in a file; killed on drop.
pub struct Standalone {
    child: Child,
    log: PathBuf,
}

/// The `regcache` binary the benches run: `BENCH_REGCACHE_BIN` when set (a copy of a
/// build, so a shared target directory rebuilt by someone else meanwhile does not change
/// what is measured), else the one cargo built with this bench.
pub fn regcache_binary() -> std::ffi::OsString {
    std::env::var_os("BENCH_REGCACHE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_regcache").into())
}

impl Standalone {
    /// Serves the read API on a free port; registry limits are lifted so the registry, not
    /// the limiter, sets the pace.
    pub fn start(watches: &Path, memcached: &str, extra: &[&str], log: PathBuf) -> Standalone {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(regcache_binary())
            .arg("standalone")
            .arg("--watches")
            .arg(watches)
            .args(["--memcached", memcached])
            // Free ports for every listener: several runs may share the machine.
            .args(["--api-bind-address", "127.0.0.1:0"])
            .args(["--metrics-bind-address", "127.0.0.1:0"])
            .args(["--health-probe-bind-address", "127.0.0.1:0"])
            .args(["--registry-qps", "1000000", "--registry-burst", "1000000"])
            .args(extra)
            .env("HOME", "/nonexistent")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGCACHE_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start regcache standalone");
        Standalone { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://ADDRESS` of the read API, from the "read API listening" log line.
    pub fn api_url(&mut self) -> String {
        self.listener_url("read API")
    }

    /// `http://ADDRESS` of a listener (`read API`, `metrics`), from its log line.
    pub fn listener_url(&mut self, what: &str) -> String {
        let marker = format!("{what} listening");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.logs();
            if let Some(address) = logs
                .lines()
                .filter(|l| l.contains(&marker))
                .find_map(|l| l.split("address=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return format!("http://{}", address.trim_matches('"'));
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "regcache standalone exited:\n{logs}"
            );
            assert!(Instant::now() < deadline, "no {what} address:\n{logs}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of one series (`name{labels}` as exposed) on the process's `/metrics`.
    pub async fn metric(&mut self, series: &str) -> f64 {
        let url = self.listener_url("metrics");
        crate::support::scrape_metric(url.trim_start_matches("http://"), series).await
    }
}

/// A line for the summary table of docs/benchmarks.md, which scripts/bench.sh collects
/// from every bench's output: the design's target and what this run measured.
pub fn summary(target: &str, measured: &str) {
    println!("summary | {target} | {measured}");
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One anonymous, insecure ImageRepositoryWatch manifest (YAML document).
pub fn watch_yaml(name: &str, image: &str, interval: &str) -> String {
    format!(
        "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata:\n  name: {name}\n  \
         namespace: bench\nspec:\n  image: {image}\n  insecure: true\n  interval: {interval}\n---\n"
    )
}

/// Seeds `repo` with `tags` tags `t-00000`... spread round-robin over `images` distinct
/// images (seeds `first_seed..first_seed+images`); returns (tag, image) in tag order.
pub fn seed_repository(
    seeder: &Seeder,
    repo: &str,
    tags: usize,
    images: usize,
    first_seed: u64,
) -> Vec<(String, SeededImage)> {
    let imgs: Vec<SeededImage> = (0..images as u64)
        .map(|i| seeder.image(repo, first_seed + i))
        .collect();
    (0..tags)
        .map(|i| {
            let tag = format!("t-{i:05}");
            let img = &imgs[i % images];
            seeder.tag(repo, &tag, &img.digest);
            (tag, img.clone())
        })
        .collect()
}

/// Checks over the registry's API that a seeded repository serves its tags and the
/// first tag's digest (so a layout mistake fails loudly, not as a fast benchmark).
pub async fn check_seeded(base_url: &str, repo: &str, expected: &[(String, SeededImage)]) {
    let http = crate::support::http_client(None);
    let body = http
        .get(format!("{base_url}/v2/{repo}/tags/list"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&body).expect("tag list JSON");
    let listed = crate::support::sorted_tags(&tags);
    assert_eq!(listed.len(), expected.len(), "tags listed for {repo}");
    let (tag, image) = &expected[0];
    let r = http
        .head(format!("{base_url}/v2/{repo}/manifests/{tag}"))
        .header("accept", crate::support::ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "HEAD {repo}:{tag}");
    assert_eq!(
        r.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()),
        Some(image.digest.as_str()),
        "digest of {repo}:{tag}"
    );
}

/// Raw memcached connections for one reader, used as regcache's multi-get uses its pool:
/// keys in batches of `MemcachedOptions::default().batch_size`, up to `batch_concurrency`
/// batches in flight, one connection each. The baseline for a read does the same work at
/// the same concurrency as regcache does, minus regcache.
pub struct RawReader {
    conns: Vec<tokio::sync::Mutex<async_memcached::Client>>,
    batch: usize,
}

impl RawReader {
    pub async fn connect(addr: &str) -> RawReader {
        let options = regcache::cache::memcached::MemcachedOptions::default();
        let mut conns = Vec::new();
        for _ in 0..options.batch_concurrency {
            let client = async_memcached::Client::new(format!("tcp://{addr}"))
                .await
                .expect("raw memcached connection");
            conns.push(tokio::sync::Mutex::new(client));
        }
        RawReader {
            conns,
            batch: options.batch_size,
        }
    }

    /// Reads every key; returns (items found, bytes of their values).
    pub async fn read(&self, keys: &[String]) -> (usize, usize) {
        use async_memcached::AsciiProtocol;
        use futures::StreamExt;
        let batches = keys.len().div_ceil(self.batch);
        futures::stream::iter(0..batches)
            .map(|i| async move {
                let batch = &keys[i * self.batch..((i + 1) * self.batch).min(keys.len())];
                let mut conn = self.conns[i % self.conns.len()].lock().await;
                let values = conn.get_multi(batch).await.expect("raw multi-get");
                let bytes: usize = values
                    .iter()
                    .map(|v| v.data.as_ref().map_or(0, Vec::len))
                    .sum();
                (values.len(), bytes)
            })
            .buffer_unordered(self.conns.len())
            .fold((0, 0), |(n, b), (n2, b2)| async move { (n + n2, b + b2) })
            .await
    }
}

/// The registry's own rate for `requests` (method and path under `base`), sent raw with
/// the manifest Accept header and `in_flight` at once, bodies read: requests per second.
pub async fn raw_replay(base: &str, requests: &[(String, String)], in_flight: usize) -> f64 {
    use futures::StreamExt;
    let raw = crate::support::http_client(None);
    let t = Instant::now();
    futures::stream::iter(requests.iter())
        .for_each_concurrent(in_flight, |(method, path)| {
            let raw = raw.clone();
            let url = format!("{base}{path}");
            async move {
                let req = if method == "HEAD" {
                    raw.head(&url)
                } else {
                    raw.get(&url)
                };
                let r = req
                    .header("accept", crate::support::ACCEPT_MANIFESTS)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{method} {url}: {}", r.status());
                r.bytes().await.unwrap();
            }
        })
        .await;
    requests.len() as f64 / t.elapsed().as_secs_f64()
}
