//! Integration-test harness for regcache: real registries (docker-registry 2.8.2 in
//! anonymous, basic, token and TLS modes), a token server, memcached, a fault-injecting
//! reverse proxy, a notification webhook sink and an image pusher. Independent of the
//! library under test. Include it from every integration test file with `mod support;`.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn example() {
//!     let reg = Registry::start(RegistryAuth::Token);      // or start_tls / start_with
//!     let img = reg.pusher().push_image("team/app", "v1", &ImageSpec::new(ManifestKind::Oci)).await;
//!     let proxy = reg.fault_proxy();                        // FaultProxy::start(&reg.base_url(), ca)
//!     proxy.add_rule(Rule::new("/manifests/", Fault::too_many(Some("1"))).method("GET").times(2));
//!     let mc = Memcached::start();
//!     // point the code under test at proxy.base_url(), reg.credentials(), mc.addr() ...
//!     assert_eq!(proxy.count("GET", Kind::Manifest), 0);
//! }
//! ```
//!
//! Everything that starts a server is a sync fn that does not need (or block on) the
//! caller's tokio runtime, and stops its server/child process on drop (also on panic).
//! Servers written in Rust (token server, proxy, webhook sink) run on their own tokio
//! runtime on a background thread.
#![allow(dead_code, unused_imports)]

pub mod apiserver;
pub mod certs;
pub mod cluster;
pub mod dns;
pub mod entra;
pub mod foreign;
pub mod google;
pub mod kube;
pub mod memcached;
pub mod moto;
pub mod process;
pub mod proxy;
pub mod pusher;
pub mod registry;
pub mod rig;
pub mod seed;
pub mod server;
pub mod standalone;
pub mod token;
pub mod webhook;

pub use foreign::ForeignHost;
pub use memcached::Memcached;
pub use proxy::{Counts, Fault, FaultProxy, Kind, LinkStyle, Rule};
pub use pusher::{
    ImageSpec, IndexKind, ManifestKind, PlatformSpec, PushedImage, PushedIndex, Pusher,
};
pub use registry::{Registry, RegistryAuth};
pub use token::TokenServer;
pub use webhook::WebhookSink;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// User name accepted by the basic-auth and token-auth registries.
pub const TEST_USER: &str = "regcache-test";
/// Password of [`TEST_USER`]; tests check that it never leaks into logs, metrics or cache.
pub const CANARY_PASSWORD: &str = "canary-Pa55-7f3e9b";

/// Every manifest media type the harness knows, for `Accept` headers.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const COSIGN_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, drop the listener).
/// There is a small race until the caller binds it; servers started by the harness
/// retry on another port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range, for a server that is
/// stopped and started again on the same port (memcached, the registry). A port from [`free_port`] is in
/// the ephemeral range, where the kernel also picks the local ports of outgoing
/// connections: while the server is down, any connection (an API server's to its etcd, a
/// client's to anything) may take the port and keep it, and the restart cannot bind.
/// Ports below that range are never handed out that way.
pub fn restartable_port() -> u16 {
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = 20000u16;
    if lowest_ephemeral <= floor + 1000 {
        return free_port();
    }
    for _ in 0..100 {
        let port = floor + rand::random::<u16>() % (lowest_ephemeral - floor);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// Install ring as rustls' process-wide crypto provider (idempotent). The harness
/// itself does not need it (its clients carry their own provider), but code under test
/// that builds default rustls configs does.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls client config (ring provider) trusting only `ca_pem` (if given; no roots
/// otherwise, which is fine for plain HTTP).
pub fn rustls_config(ca_pem: Option<&[u8]>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for der in certs::pem_certs_der(pem) {
            roots
                .add(rustls_pki_types::CertificateDer::from(der))
                .expect("add CA certificate to root store");
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A reqwest client builder with the ring-backed rustls config (trusting `ca_pem`),
/// no proxy from the environment, and no automatic redirects.
pub fn http_client_builder(ca_pem: Option<&[u8]>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(rustls_config(ca_pem))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
}

/// A ready reqwest client, see [`http_client_builder`].
pub fn http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    http_client_builder(ca_pem)
        .build()
        .expect("build reqwest client")
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The `tags` of a `tags/list` answer, sorted (empty if there are none).
pub fn sorted_tags(tag_list: &serde_json::Value) -> Vec<String> {
    let mut tags: Vec<String> = tag_list
        .get("tags")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// `Basic base64(user:password)`.
pub fn basic_auth_header(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Poll until `addr` accepts a TCP connection or `timeout` passes.
pub fn wait_for_tcp(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let sock: std::net::SocketAddr = addr.parse().expect("socket address");
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A blocking plain-HTTP GET over std's TcpStream (no tokio), returning the status code.
/// Used for readiness checks from sync code that may run inside a tokio runtime.
pub fn blocking_http_status(addr: &str, path: &str, timeout: Duration) -> Option<u16> {
    let head = blocking_http_head(addr, path, timeout)?;
    head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Like [`blocking_http_status`], but the whole response head (status line and headers).
pub fn blocking_http_head(addr: &str, path: &str, timeout: Duration) -> Option<String> {
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 64 << 10 {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Runs the `regcache` binary as a user would (no docker config from the environment);
/// returns success, stdout and stderr.
pub fn run_regcache(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .env("HOME", "/nonexistent")
        .env_remove("DOCKER_CONFIG")
        .output()
        .expect("run regcache");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The address in regcache's `<what> listening address=HOST:PORT` log line, if logged.
pub fn listening_address(logs: &str, what: &str) -> Option<String> {
    let marker = format!("{what} listening");
    logs.lines()
        .filter(|l| l.contains(&marker))
        .find_map(|l| l.split_once("address=").map(|(_, a)| a))
        .and_then(|a| a.split_whitespace().next())
        .map(str::to_string)
}

/// Polls a regcache log file until the listener `what` has logged its address.
pub async fn wait_for_listener(log: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(a) = listening_address(&logs, what) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no `{what} listening` in the log:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `/metrics` page at `addr` (`HOST:PORT`).
pub async fn scrape(addr: &str) -> String {
    let url = format!("http://{addr}/metrics");
    http_client(None)
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("metrics text")
}

/// The sum of the series `series` on the `/metrics` page at `addr` (`HOST:PORT`): a bare
/// metric name sums every series of it (`0` when it has none); `name{labels}` takes that
/// one series.
pub async fn scrape_metric(addr: &str, series: &str) -> f64 {
    scrape(addr)
        .await
        .lines()
        .filter(|l| {
            l.strip_prefix(series).is_some_and(|rest| {
                rest.starts_with(' ') || (rest.starts_with('{') && !series.ends_with('}'))
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET `url` and its body as JSON (`Null` when it is not JSON or nothing answered).
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let Ok(response) = http.get(url).send().await else {
        return serde_json::Value::Null;
    };
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// A benchmark setting from the environment, or its default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A warm target for `repository` over plain HTTP, every tag and platform, with a 5 m
/// interval: what tests and benchmarks warm directly through a `Warmer`.
pub fn plain_target(
    id: &str,
    repository: regcache::image::Repository,
    credential: regcache::credentials::Credential,
    scope: regcache::cache::keys::Scope,
) -> regcache::warmer::Target {
    regcache::warmer::Target {
        id: id.to_string(),
        repository,
        credential,
        cloud: None,
        scope,
        endpoint: regcache::registry::Endpoint {
            insecure: true,
            ca_pem: None,
        },
        filter: regcache::warmer::filter::TagFilter::default(),
        platforms: Vec::new(),
        interval: std::time::Duration::from_secs(300),
        timestamp_labels: false,
    }
}
