//! The cache against real memcached: one and three instances, chunked indexes, generations,
//! servers going away and coming back, scoping.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::{ImageRecord, MetadataStore, ReadError, TagEntry};
use regcache::cache::{CacheError, CacheReader, CacheStats, CacheWriter, Millis};
use regcache::credentials::Credential;
use regcache::image::{Digest, ImageRef, Repository};
use support::Memcached as Server;

fn options() -> MemcachedOptions {
    MemcachedOptions {
        op_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        down_backoff: Duration::from_millis(100),
        max_down_backoff: Duration::from_millis(400),
        ..MemcachedOptions::default()
    }
}

fn client(servers: &[&Server]) -> Memcached {
    Memcached::new(servers.iter().map(|s| s.addr()).collect(), options())
}

fn later() -> Millis {
    Millis::now().plus(Duration::from_secs(3600))
}

fn repo(s: &str) -> Repository {
    Repository::parse(s).unwrap()
}

fn entry(tag: String, digest: &Digest, marker: i64) -> TagEntry {
    TagEntry {
        tag,
        digest: Some(digest.clone()),
        fetched: marker,
        deadline: marker + 3_600_000,
        interval: 3_600_000,
    }
}

fn record(digest: &Digest) -> ImageRecord {
    ImageRecord {
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
        created: chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .ok()
            .map(|t| t.to_utc()),
        labels: [("a".to_string(), "b".to_string())].into(),
        platforms: Vec::new(),
        available_platforms: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_and_bytes_round_trip_on_one_and_three_servers() {
    let servers = [Server::start(), Server::start(), Server::start()];
    for set in [vec![&servers[0]], servers.iter().collect::<Vec<_>>()] {
        let cache = client(&set);
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let cases: Vec<(String, Vec<u8>, Millis)> = (0..60)
            .map(|i| {
                (
                    format!("rc2:test:{i}"),
                    all_bytes[..i * 80].to_vec(),
                    Millis(1_700_000_000_000 + i as i64 * 7919),
                )
            })
            .collect();
        for (k, v, d) in &cases {
            cache.set(k, v, *d).await.unwrap();
        }
        for (k, v, d) in &cases {
            let e = cache.get(k).await.unwrap().expect("hit");
            assert_eq!((e.value.as_ref(), e.deadline), (v.as_slice(), *d), "{k}");
        }
        let keys: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
        assert_eq!(cache.get_many(&keys).await.unwrap().len(), 60);
        assert_eq!(cache.get("rc2:test:absent").await.unwrap(), None);
        cache.delete("rc2:test:0").await.unwrap();
        assert_eq!(cache.get("rc2:test:0").await.unwrap(), None);
        cache.ping().await.unwrap();
    }
    // Keys are spread over all three servers.
    let cache = client(&servers.iter().collect::<Vec<_>>());
    for i in 0..300 {
        cache
            .set(&format!("rc2:spread:{i}"), b"x", later())
            .await
            .unwrap();
    }
    for s in &servers {
        let items: u64 = s.stats()["curr_items"].parse().unwrap();
        assert!(items > 50, "{} holds {items}", s.addr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200k_tag_repository_round_trips_with_1mb_items() {
    // Default item size (1 MB); memory raised so nothing is evicted.
    let server = Server::start_with_args(&["-m", "1024"]);
    assert!(
        server
            .raw("stats settings\r\n")
            .contains("item_size_max 1048576")
    );
    let store = MetadataStore::new(client(&[&server]));
    let scope = Scope::public();
    let r = repo("docker.io/library/huge");
    let digests: Vec<Digest> = (0..1000)
        .map(|i| Digest::sha256_of(format!("image {i}").as_bytes()))
        .collect();
    for d in &digests {
        store
            .put_image(&scope, &record(d), &[], later())
            .await
            .unwrap();
    }
    let entries: Vec<TagEntry> = (0..200_000)
        .map(|i| {
            entry(
                format!("1.{}.{}-build{i}", i / 1000, i % 1000),
                &digests[i % 1000],
                i as i64,
            )
        })
        .collect();
    let head = store
        .publish_index(&scope, &r, &entries, Utc::now(), later())
        .await
        .unwrap();
    assert_eq!(head.tag_count, 200_000);
    assert!(head.chunks.len() >= 20, "{} chunks", head.chunks.len());

    let (read_head, read) = store.read_index(&scope, &r).await.unwrap().unwrap();
    assert_eq!(read_head, head);
    let mut want = entries.clone();
    want.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(read, want);

    let m = store
        .get_image_repository_metadata(&scope, &r)
        .await
        .unwrap();
    assert_eq!(m.tags.len(), 200_000);
    assert_eq!(m.images.len(), 200_000);
    let one = store
        .get_image(
            &scope,
            &ImageRef::parse("huge:1.123.456-build123456").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(one.digest, digests[123_456 % 1000]);
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_never_see_a_mixed_generation() {
    let servers = [Server::start(), Server::start(), Server::start()];
    let store = Arc::new(MetadataStore::new(client(
        &servers.iter().collect::<Vec<_>>(),
    )));
    let scope = Scope::public();
    let r = repo("ghcr.io/org/churn");
    // Each publish moves every tag to the marker's digest; a reader must see one digest.
    let digest = |marker: i64| Digest::sha256_of(format!("x{marker}").as_bytes());
    // Small items force many chunks per generation.
    let tags = 20_000;
    let publish = |marker: i64| {
        let store = store.clone();
        let scope = scope.clone();
        let r = r.clone();
        async move {
            let entries: Vec<TagEntry> = (0..tags)
                .map(|i| entry(format!("t{i:05}"), &digest(marker), marker))
                .collect();
            store
                .publish_index(&scope, &r, &entries, Utc::now(), later())
                .await
                .unwrap();
        }
    };
    publish(0).await;
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let markers = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, scope, r) = (store.clone(), scope.clone(), r.clone());
            let (done, reads, markers) = (done.clone(), reads.clone(), markers.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    if let Some((head, entries)) = store.read_index(&scope, &r).await.unwrap() {
                        assert_eq!(entries.len(), tags, "whole generation");
                        assert_eq!(entries.len() as u64, head.tag_count);
                        let first = entries[0].digest.clone();
                        assert!(
                            entries.iter().all(|e| e.digest == first),
                            "mixed generations in one read"
                        );
                        markers.lock().unwrap().insert(first);
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for marker in 1..=15 {
        publish(marker).await;
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    let seen = markers.lock().unwrap().len();
    assert!(reads.load(Ordering::SeqCst) > 10, "readers kept reading");
    assert!(seen > 2, "readers saw several generations ({seen})");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_server_down_costs_only_its_keys_and_is_used_again() {
    let mut servers = [Server::start(), Server::start(), Server::start()];
    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    let cache = Memcached::new(addrs.clone(), options());
    let keys: Vec<String> = (0..600).map(|i| format!("rc2:k:{i}")).collect();
    for k in &keys {
        cache.set(k, k.as_bytes(), later()).await.unwrap();
    }
    let down = addrs[1].clone();
    let on_down: Vec<&String> = keys
        .iter()
        .filter(|k| regcache::cache::memcached::server_for(&addrs, k).as_deref() == Some(&*down))
        .collect();
    assert!(
        on_down.len() > 100 && on_down.len() < 350,
        "{}",
        on_down.len()
    );
    servers[1].stop();

    // A read that needs the stopped server cannot be answered: an error naming it, not a
    // miss (readers must retry rather than conclude the key is not cached).
    let unreachable = |r: Result<_, CacheError>| match r {
        Err(CacheError::Unavailable { server, .. } | CacheError::Timeout { server, .. }) => {
            server == down
        }
        _ => false,
    };
    assert!(unreachable(cache.get_many(&keys).await.map(|_| ())));
    assert!(unreachable(cache.get(on_down[0]).await.map(|_| ())));
    assert!(CacheStats::load(&cache.stats().errors) >= 1);
    // Reads that need only the live servers are answered.
    let elsewhere: Vec<String> = keys
        .iter()
        .filter(|k| !on_down.contains(k))
        .cloned()
        .collect();
    assert_eq!(
        cache.get_many(&elsewhere).await.unwrap().len(),
        elsewhere.len()
    );
    // Warming reads take what the live servers hold: only the stopped server's keys miss.
    let misses_before = CacheStats::load(&cache.stats().misses);
    let got = cache.get_many_available(&keys).await.unwrap();
    assert_eq!(
        got.len(),
        keys.len() - on_down.len(),
        "only the stopped server's keys miss"
    );
    assert_eq!(
        CacheStats::load(&cache.stats().misses),
        misses_before + on_down.len() as u64
    );
    assert!(matches!(
        cache.set(on_down[0], b"v", later()).await,
        Err(CacheError::Unavailable { .. } | CacheError::Timeout { .. })
    ));
    // Writes to the other servers keep working.
    let elsewhere = keys.iter().find(|k| !on_down.contains(k)).unwrap();
    cache.set(elsewhere, b"still", later()).await.unwrap();
    cache.ping().await.unwrap();

    // Back on the same port (empty): used again once its back-off passes.
    servers[1].restart();
    let mut stored = false;
    for _ in 0..40 {
        if cache.set(on_down[0], b"again", later()).await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "restarted server used again");
    assert_eq!(
        cache.get(on_down[0]).await.unwrap().unwrap().value.as_ref(),
        b"again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_survive_a_memcached_restart() {
    // A restart closes every idle pooled connection. The first operations afterwards must
    // not fail (nor mark the server down) just because they drew a dead connection.
    let mut server = Server::start();
    let cache = client(&[&server]);
    // Several operations at once, so the pool holds several idle connections.
    let writes = (0..8).map(|i| {
        let cache = &cache;
        async move { cache.set(&format!("rc2:k:{i}"), b"v", later()).await }
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    server.restart();
    for i in 0..8 {
        cache
            .set(&format!("rc2:k:{i}"), b"again", later())
            .await
            .unwrap_or_else(|e| panic!("write {i} after the restart: {e}"));
    }
    assert_eq!(
        cache.get("rc2:k:0").await.unwrap().unwrap().value.as_ref(),
        b"again"
    );
    assert_eq!(
        cache
            .get_many(&["rc2:k:1".to_string()])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_all_gives_readers_a_clean_not_cached() {
    let servers = [Server::start(), Server::start(), Server::start()];
    let store = MetadataStore::new(client(&servers.iter().collect::<Vec<_>>()));
    let scope = Scope::public();
    let r = repo("quay.io/org/app");
    let d = Digest::sha256_of(b"x");
    store
        .put_image(&scope, &record(&d), &[], later())
        .await
        .unwrap();
    store
        .publish_index(
            &scope,
            &r,
            &[entry("v1".into(), &d, 1)],
            Utc::now(),
            later(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_image_repository_metadata(&scope, &r)
            .await
            .unwrap()
            .tags,
        ["v1"]
    );
    for s in &servers {
        s.flush();
    }
    let err = store
        .get_image_repository_metadata(&scope, &r)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::NotCached {
                last_error: None,
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .get_image(&scope, &ImageRef::parse("quay.io/org/app:v1").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::NotCached { .. }), "{err}");
    store.backend().flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_fourth_server_moves_about_a_quarter_of_the_keys() {
    let servers = [
        Server::start(),
        Server::start(),
        Server::start(),
        Server::start(),
    ];
    let cache = client(&servers[..3].iter().collect::<Vec<_>>());
    let keys: Vec<String> = (0..3000)
        .map(|i| format!("rc2:img:pub:sha256:{i:064x}"))
        .collect();
    for k in &keys {
        cache.set(k, b"v", later()).await.unwrap();
    }
    assert!(cache.set_servers(servers.iter().map(|s| s.addr()).collect()));
    let found = cache.get_many(&keys).await.unwrap().len();
    let moved = (keys.len() - found) as f64 / keys.len() as f64;
    println!("adding a 4th server moved {:.1}% of keys", moved * 100.0);
    assert!(moved > 0.1 && moved < 0.34, "moved {moved}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_keep_tenants_apart() {
    let server = Server::start();
    let store = MetadataStore::new(client(&[&server]));
    let r = repo("registry.example.com/private/app");
    let alice = Scope::for_credential(
        "registry.example.com",
        "team-a",
        &Credential::basic("alice", "pw"),
    );
    let bob = Scope::for_credential(
        "registry.example.com",
        "team-b",
        &Credential::basic("bob", "pw"),
    );
    let (da, db) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
    for (scope, d, tag) in [(&alice, &da, "only-alice"), (&bob, &db, "only-bob")] {
        store
            .put_image(scope, &record(d), &[], later())
            .await
            .unwrap();
        store
            .publish_index(
                scope,
                &r,
                &[entry(tag.to_string(), d, 1)],
                Utc::now(),
                later(),
            )
            .await
            .unwrap();
    }
    let a = store
        .get_image_repository_metadata(&alice, &r)
        .await
        .unwrap();
    let b = store.get_image_repository_metadata(&bob, &r).await.unwrap();
    assert_eq!(a.tags, ["only-alice"]);
    assert_eq!(b.tags, ["only-bob"]);
    assert!(matches!(
        store
            .get_image_repository_metadata(&Scope::public(), &r)
            .await,
        Err(ReadError::NotCached { .. })
    ));
    // An image cached for alice is not served to bob, even by digest.
    let by_digest = ImageRef::parse(&format!("registry.example.com/private/app@{da}")).unwrap();
    assert!(store.get_image(&alice, &by_digest).await.is_ok());
    assert!(matches!(
        store.get_image(&bob, &by_digest).await,
        Err(ReadError::ImageNotCached { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and reads, never replies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let cache = Memcached::new(vec![addr], options());
    let started = std::time::Instant::now();
    assert!(matches!(
        cache.get("rc2:x").await,
        Err(CacheError::Timeout {
            operation: "get",
            ..
        })
    ));
    assert!(matches!(
        cache.set("rc2:y", b"v", later()).await,
        Err(CacheError::Timeout { .. } | CacheError::Unavailable { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(CacheStats::load(&cache.stats().errors) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_are_discovered_from_dns_srv_and_refreshed() {
    use regcache::cache::discovery::{SrvDiscovery, refresh_servers};
    let servers = [Server::start(), Server::start(), Server::start()];
    let dns = support::dns::DnsServer::start();
    let name = "_memcache._tcp.memcached.regcache.svc.cluster.local";
    let target = |s: &Server| format!("localhost:{}", s.port());
    dns.set_srv(
        name,
        &[
            ("localhost", servers[1].port()),
            ("localhost", servers[0].port()),
        ],
    );
    let discovery = SrvDiscovery::with_nameserver(name, dns.addr()).unwrap();
    let mut want = vec![target(&servers[0]), target(&servers[1])];
    want.sort();
    assert_eq!(
        discovery.discover().await.unwrap(),
        want,
        "sorted TARGET:PORT"
    );

    let cache = Arc::new(Memcached::new(Vec::new(), options()));
    assert!(matches!(
        cache.get_many(&["k".to_string()]).await,
        Err(CacheError::NoServers)
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let refresher = tokio::spawn(refresh_servers(
        cache.clone(),
        discovery,
        Duration::from_millis(100),
        async move {
            let _ = stopped.await;
        },
    ));
    let wait_for = |n: usize| {
        let cache = cache.clone();
        async move {
            for _ in 0..100 {
                if cache.servers().len() == n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(wait_for(2).await, "{:?}", cache.servers());
    // Servers named by SRV targets are reached through the name.
    cache.set("rc2:discovered", b"v", later()).await.unwrap();
    assert!(cache.get("rc2:discovered").await.unwrap().is_some());

    // Scaling up shows within a refresh.
    let all: Vec<(&str, u16)> = servers.iter().map(|s| ("localhost", s.port())).collect();
    dns.set_srv(name, &all);
    assert!(wait_for(3).await, "{:?}", cache.servers());

    // A lookup that fails keeps the last good list.
    dns.set_srv(name, &[]);
    let queries = dns.queries();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dns.queries() < queries + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresher stopped asking DNS ({} queries)",
            dns.queries() - queries
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.servers().len(), 3);
    let _ = stop.send(());
    refresher.await.unwrap();

    let missing = SrvDiscovery::with_nameserver("_x._tcp.nowhere.invalid", dns.addr()).unwrap();
    let err = missing.discover().await.unwrap_err();
    assert!(err.to_string().contains("_x._tcp.nowhere.invalid"), "{err}");
}

/// The value of one `regcache_cache_*` series in a scrape (0 when absent).
fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_hits_misses_sizes_and_reads_lost_to_a_stopped_server() {
    let mut server = Server::start();
    let metrics = regcache::runtime::Metrics::new();
    let store = MetadataStore::new(
        Memcached::new(vec![server.addr()], options()).with_metrics(metrics.cache.clone()),
    )
    .with_metrics(metrics.cache.clone());
    let scope = Scope::public();
    let r = repo("registry.example/metrics/app");
    let d = Digest::sha256_of(b"image");
    let other = Digest::sha256_of(b"never cached");

    assert_eq!(store.read_index(&scope, &r).await.unwrap(), None);
    store
        .put_image(&scope, &record(&d), &[], later())
        .await
        .unwrap();
    let entries: Vec<TagEntry> = (0..3).map(|i| entry(format!("v{i}"), &d, 1)).collect();
    store
        .publish_index(&scope, &r, &entries, Utc::now(), later())
        .await
        .unwrap();
    let found = store
        .cached_images(&scope, &[d.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let text = metrics.encode();
    assert_eq!(
        series(&text, "regcache_cache_misses_total{kind=\"image\"}"),
        1.0,
        "{text}"
    );
    assert!(
        series(
            &text,
            "regcache_cache_misses_total{kind=\"repository_head\"}"
        ) >= 1.0
    );
    assert!(
        series(
            &text,
            "regcache_cache_operations_total{op=\"get\",result=\"hit\"}"
        ) >= 1.0
    );
    let image_bytes = serde_json::to_vec(&record(&d)).unwrap().len() as f64;
    assert_eq!(
        series(&text, "regcache_cache_item_size_bytes_sum{kind=\"image\"}"),
        image_bytes
    );
    assert_eq!(
        series(
            &text,
            "regcache_cache_item_size_bytes_count{kind=\"tag_chunk\"}"
        ),
        1.0
    );
    assert!(
        !text.contains("regcache_cache_errors_total{"),
        "a read that finds nothing is a miss, not an error: {text}"
    );

    // The server goes away: reads miss (no caller sees an error), and are counted as errors.
    server.stop();
    let found = store
        .cached_images(&scope, std::slice::from_ref(&d))
        .await
        .unwrap();
    assert!(found.is_empty());
    let err = store.put_image(&scope, &record(&other), &[], later()).await;
    assert!(err.is_err());
    let text = metrics.encode();
    let lost_reads = series(
        &text,
        "regcache_cache_errors_total{op=\"get\",reason=\"unavailable\"}",
    );
    assert_eq!(lost_reads, 1.0, "{text}");
    assert!(
        series(
            &text,
            "regcache_cache_operations_total{op=\"set\",result=\"error\"}"
        ) >= 1.0,
        "{text}"
    );
}
