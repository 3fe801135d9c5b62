//! The read API over HTTP: every endpoint and error reason, the registry webhook with a real
//! warmer, and ServiceAccount authentication through a real API server's TokenReview and
//! SubjectAccessReview.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use regcache::api::{self, ApiAuth, ApiState, ReadApi, WatchDirectory};
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::memory::MemoryCache;
use regcache::cache::store::{ImageRecord, MetadataStore, TagEntry};
use regcache::cache::{CacheWriter, Millis};
use regcache::credentials::{Credential, Secret};
use regcache::image::{Digest, Repository};
use regcache::registry::{Endpoint, RegistryClient};
use regcache::warmer::filter::TagFilter;
use regcache::warmer::{Target, Warmer, WarmerOptions};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const CREATED_LABEL: &str = "org.opencontainers.image.created";

struct Fixed(Vec<Arc<Target>>);

impl WatchDirectory for Fixed {
    fn targets(&self) -> Vec<Arc<Target>> {
        self.0.clone()
    }
}

fn target(id: &str, repository: &str, scope: Scope, timestamp_labels: bool) -> Target {
    Target {
        id: id.to_string(),
        repository: Repository::parse(repository).unwrap(),
        credential: Credential::Anonymous,
        cloud: None,
        scope,
        endpoint: Endpoint::default(),
        filter: TagFilter::default(),
        platforms: Vec::new(),
        interval: Duration::from_secs(300),
        timestamp_labels,
    }
}

fn later() -> Millis {
    Millis::now().plus(Duration::from_secs(3600))
}

fn record(digest: &Digest) -> ImageRecord {
    ImageRecord {
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
        // A reproducible build: the config says 1970, the label says when it was built.
        created: chrono::DateTime::from_timestamp(0, 0),
        labels: BTreeMap::from([(
            CREATED_LABEL.to_string(),
            "2024-05-06T07:08:09Z".to_string(),
        )]),
        platforms: Vec::new(),
        available_platforms: Vec::new(),
    }
}

async fn publish<B: CacheWriter>(
    store: &MetadataStore<B>,
    scope: &Scope,
    repository: &str,
    tags: &[&str],
    digest: &Digest,
) {
    store
        .put_image(scope, &record(digest), &[], later())
        .await
        .unwrap();
    let entries: Vec<TagEntry> = tags
        .iter()
        .map(|t| TagEntry {
            tag: t.to_string(),
            digest: Some(digest.clone()),
            fetched: 1,
            deadline: 2,
            interval: 3,
        })
        .collect();
    store
        .publish_index(
            scope,
            &Repository::parse(repository).unwrap(),
            &entries,
            Utc::now(),
            later(),
        )
        .await
        .unwrap();
}

/// A served API and the way to stop it.
struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

impl Server {
    async fn start<B: CacheWriter + 'static>(state: ApiState<B>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(regcache::runtime::serve(
            listener,
            api::router(state),
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            base,
            stop: Some(stop),
            done,
            http: support::http_client(None),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("API request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        self.send(request).await
    }

    async fn hook(&self, query: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/hooks/registry{query}", self.base))
            .header(
                "content-type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .body(body.to_string());
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        self.send(request).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.done)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .expect("serve ends cleanly");
    }
}

fn reason(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["reason"].as_str().unwrap_or("<none>"))
}

fn private_scope() -> Scope {
    Scope::for_credential("ghcr.io", "team", &Credential::basic("bot", "pw"))
}

/// A store with nginx (public, decorated with label times), a private repository, a
/// repository on a host with a port, and one whose warming only ever failed.
async fn fixture() -> (Arc<MetadataStore<MemoryCache>>, Arc<Fixed>, Digest) {
    let store = Arc::new(MetadataStore::new(MemoryCache::default()));
    let d = Digest::sha256_of(b"nginx");
    publish(
        &store,
        &Scope::public(),
        "docker.io/library/nginx",
        &["latest", "v1"],
        &d,
    )
    .await;
    publish(
        &store,
        &private_scope(),
        "ghcr.io/team/private",
        &["v7"],
        &d,
    )
    .await;
    publish(
        &store,
        &Scope::public(),
        "127.0.0.1:5000/team/app",
        &["v3"],
        &d,
    )
    .await;
    store
        .record_error(
            &Scope::public(),
            &Repository::parse("ghcr.io/org/broken").unwrap(),
            "registry ghcr.io refused the credentials",
            later(),
        )
        .await
        .unwrap();
    let directory = Arc::new(Fixed(vec![
        Arc::new(target("web/nginx", "nginx", Scope::public(), true)),
        Arc::new(target(
            "team/private",
            "ghcr.io/team/private",
            private_scope(),
            false,
        )),
        Arc::new(target(
            "team/app",
            "127.0.0.1:5000/team/app",
            Scope::public(),
            false,
        )),
        Arc::new(target(
            "ops/broken",
            "ghcr.io/org/broken",
            Scope::public(),
            false,
        )),
    ]));
    (store, directory, d)
}

fn open_state<B: CacheWriter + 'static>(
    store: Arc<MetadataStore<B>>,
    directory: Arc<dyn WatchDirectory>,
) -> ApiState<B> {
    ApiState {
        read: ReadApi::new(store),
        directory,
        auth: ApiAuth::None,
        warmer: None,
        forward: None,
        webhook_token: None,
        registry: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_repositories_images_and_watches_by_any_spelling() {
    let (store, directory, d) = fixture().await;
    let server = Server::start(open_state(store, directory)).await;

    assert_eq!(
        server.get("/healthz", None).await,
        (200, Value::String("ok".into()))
    );

    let (status, nginx) = server.get("/api/v1/repositories/nginx", None).await;
    assert_eq!(status, 200, "{nginx}");
    assert_eq!(nginx["canonicalName"], "docker.io/library/nginx");
    assert_eq!(
        nginx["tags"],
        json!({"latest": d.to_string(), "v1": d.to_string()})
    );
    // Each image once, keyed by digest, however many tags point at it.
    assert_eq!(nginx["images"].as_object().map(|m| m.len()), Some(1));
    let v1 = &nginx["images"][d.as_str()];
    assert_eq!(v1["digest"], d.to_string());
    assert_eq!(
        v1["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(v1["labels"][CREATED_LABEL], "2024-05-06T07:08:09Z");
    // The watch asked for label times: created comes from the label, not 1970.
    assert!(
        v1["created"]
            .as_str()
            .unwrap()
            .starts_with("2024-05-06T07:08:09"),
        "{v1}"
    );
    assert!(nginx["lastUpdate"].is_string());
    for spelling in [
        "docker.io/nginx",
        "docker.io/library/nginx",
        "library/nginx",
    ] {
        let (status, body) = server
            .get(&format!("/api/v1/repositories/{spelling}"), None)
            .await;
        assert_eq!((status, &body), (200, &nginx), "{spelling}");
    }

    let (status, image) = server.get("/api/v1/images/nginx:v1", None).await;
    assert_eq!(status, 200, "{image}");
    assert_eq!(image["tag"], "v1");
    assert_eq!(image["digest"], d.to_string());
    assert_eq!(image["canonicalName"], "docker.io/library/nginx");
    let (status, by_digest) = server
        .get(&format!("/api/v1/images/docker.io/library/nginx@{d}"), None)
        .await;
    assert_eq!(status, 200, "{by_digest}");
    assert_eq!(by_digest["digest"], d.to_string());
    assert!(by_digest.get("tag").is_none());
    // Host with a port: the tag split must not take the port for a tag.
    let (status, ported) = server
        .get("/api/v1/images/127.0.0.1:5000/team/app:v3", None)
        .await;
    assert_eq!(status, 200, "{ported}");
    assert_eq!(ported["canonicalName"], "127.0.0.1:5000/team/app");

    // Private metadata is read under the scope of the watch that warmed it.
    let (status, private) = server
        .get("/api/v1/repositories/ghcr.io/team/private", None)
        .await;
    assert_eq!(status, 200, "{private}");
    assert_eq!(private["tags"], json!({"v7": d.to_string()}));
    assert_eq!(private["images"][d.as_str()]["digest"], d.to_string());

    let (status, watch) = server
        .get("/api/v1/namespaces/web/imagerepositorywatches/nginx", None)
        .await;
    assert_eq!((status, &watch), (200, &nginx));
    let missing = server
        .get("/api/v1/namespaces/web/imagerepositorywatches/gone", None)
        .await;
    assert_eq!(reason(&missing), (404, "NotFound"), "{}", missing.1);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_have_reasons_a_program_can_switch_on() {
    let (store, directory, _) = fixture().await;
    let server = Server::start(open_state(store, directory)).await;

    let broken = server
        .get("/api/v1/repositories/ghcr.io/org/broken", None)
        .await;
    assert_eq!(reason(&broken), (404, "NotCached"));
    let message = broken.1["message"].as_str().unwrap();
    assert!(
        message.contains("last error: registry ghcr.io refused the credentials"),
        "{message}"
    );
    assert!(
        message.contains("check that an ImageRepositoryWatch covers"),
        "{message}"
    );

    let uncovered = server
        .get("/api/v1/repositories/quay.io/nobody/x", None)
        .await;
    assert_eq!(reason(&uncovered), (404, "NotFound"));
    assert_eq!(
        uncovered.1["message"],
        "no ImageRepositoryWatch covers quay.io/nobody/x"
    );
    let uncovered_image = server.get("/api/v1/images/quay.io/nobody/x:1", None).await;
    assert_eq!(reason(&uncovered_image), (404, "NotFound"));

    let no_tag = server.get("/api/v1/images/nginx:v9", None).await;
    assert_eq!(reason(&no_tag), (404, "TagNotFound"), "{}", no_tag.1);
    let no_image = server
        .get(
            &format!("/api/v1/images/nginx@{}", Digest::sha256_of(b"other")),
            None,
        )
        .await;
    assert_eq!(reason(&no_image), (404, "NotCached"), "{}", no_image.1);

    for (path, says) in [
        ("/api/v1/repositories/Nginx", "lowercase"),
        ("/api/v1/repositories/nginx:v1", "tag"),
        ("/api/v1/images/nginx:-v1", "tag"),
        ("/api/v1/images/nginx@sha256:abc", "digest"),
    ] {
        let answer = server.get(path, None).await;
        assert_eq!(reason(&answer), (400, "BadRequest"), "{path}: {}", answer.1);
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains(says), "{path}: {message}");
    }

    let unknown = server.get("/api/v2/whatever", None).await;
    assert_eq!(reason(&unknown), (404, "NotFound"));
    server.stop().await;

    // A cache with no server at all cannot answer.
    let store = Arc::new(MetadataStore::new(Memcached::new(
        Vec::new(),
        MemcachedOptions::default(),
    )));
    let directory = Arc::new(Fixed(vec![Arc::new(target(
        "web/nginx",
        "nginx",
        Scope::public(),
        false,
    ))]));
    let server = Server::start(open_state(store, directory)).await;
    let down = server.get("/api/v1/repositories/nginx", None).await;
    assert_eq!(reason(&down), (503, "CacheUnavailable"), "{}", down.1);
    server.stop().await;
}

/// An unreachable cache is not an empty one: with the memcached server that holds a
/// repository stopped, the read API answers 503 `CacheUnavailable` and `regcache get` says
/// which server it cannot reach (a consumer retries rather than concluding the image is not
/// watched); with the server back and the keys gone, both say "not cached".
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_cache_is_unavailable_not_a_miss() {
    let mut mc = support::Memcached::start();
    let options = MemcachedOptions {
        down_backoff: Duration::from_millis(50),
        max_down_backoff: Duration::from_millis(200),
        ..MemcachedOptions::default()
    };
    let store = Arc::new(MetadataStore::new(Memcached::new(vec![mc.addr()], options)));
    let d = Digest::sha256_of(b"nginx");
    publish(
        &store,
        &Scope::public(),
        "docker.io/library/nginx",
        &["v1"],
        &d,
    )
    .await;
    let directory = Arc::new(Fixed(vec![Arc::new(target(
        "web/nginx",
        "nginx",
        Scope::public(),
        false,
    ))]));
    let server = Server::start(open_state(store, directory)).await;
    let repository = "/api/v1/repositories/nginx";
    let image = "/api/v1/images/nginx:v1";
    assert_eq!(server.get(repository, None).await.0, 200);
    let addr = mc.addr();
    let get = |what: &str| support::run_regcache(&["get", what, "--memcached", &addr]);
    let (ok, out, err) = get("nginx:v1");
    assert!(ok, "{out}{err}");

    mc.stop();
    let cannot_reach = format!("cannot reach memcached {addr}");
    for path in [repository, image] {
        let answer = server.get(path, None).await;
        assert_eq!(
            reason(&answer),
            (503, "CacheUnavailable"),
            "{path}: {}",
            answer.1
        );
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains(&cannot_reach), "{path}: {message}");
    }
    for what in ["nginx", "nginx:v1"] {
        let (ok, out, err) = get(what);
        assert!(!ok, "{what}: {out}");
        assert!(err.contains(&cannot_reach), "{what}: {err}");
        assert!(!err.contains("is not cached"), "{what}: {err}");
    }

    // Back, but empty: now the servers answer, and they answer a miss.
    mc.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = server.get(repository, None).await;
        if answer.0 != 503 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reason(&answer), (404, "NotCached"), "{}", answer.1);
    assert_eq!(reason(&server.get(image, None).await), (404, "NotCached"));
    let (ok, _, err) = get("nginx:v1");
    assert!(!ok && err.contains("is not cached"), "{err}");
    server.stop().await;
}

const HOOK_TOKEN: &str = "hook-s3cret";

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_ask_the_warmer_for_passes_of_the_pushed_repositories() {
    let store = Arc::new(MetadataStore::new(MemoryCache::default()));
    let warmer = Warmer::new(
        RegistryClient::new(Default::default()),
        store.clone(),
        WarmerOptions::default(),
    );
    for t in [
        target("ci/app", "127.0.0.1:5000/team/app", Scope::public(), false),
        target(
            "ci/app-again",
            "127.0.0.1:5000/team/app",
            Scope::public(),
            false,
        ),
        target("hub/app", "docker.io/org/app", Scope::public(), false),
        target(
            "harbor/app",
            "harbor.example.com/proj/app",
            Scope::public(),
            false,
        ),
    ] {
        warmer.upsert(t);
    }
    let server = Server::start(ApiState {
        read: ReadApi::new(store.clone()),
        directory: Arc::new(warmer.clone()),
        auth: ApiAuth::None,
        warmer: Some(Arc::new(warmer.clone())),
        forward: None,
        webhook_token: Some(Secret::new(HOOK_TOKEN)),
        registry: Default::default(),
    })
    .await;

    let distribution = json!({"events": [
        {"id": "1", "timestamp": "2024-01-01T00:00:00Z", "action": "push",
         "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:00",
                    "repository": "team/app", "tag": "v2",
                    "url": "http://127.0.0.1:5000/v2/team/app/manifests/sha256:00"},
         "request": {"id": "r", "addr": "10.0.0.1", "host": "127.0.0.1:5000", "method": "PUT"},
         "actor": {}, "source": {"addr": "reg:5000"}},
        {"action": "pull", "target": {"repository": "team/other"}, "request": {"host": "127.0.0.1:5000"}}
    ]});
    let answer = server.hook("", Some(HOOK_TOKEN), &distribution).await;
    assert_eq!(answer, (202, json!({"queued": ["ci/app", "ci/app-again"]})));

    let hub = json!({"callback_url": "https://registry.hub.docker.com/u/org/app/hook/x/",
        "push_data": {"pushed_at": 1, "pusher": "me", "tag": "latest"},
        "repository": {"name": "app", "namespace": "org", "repo_name": "org/app"}});
    let answer = server
        .hook(&format!("?token={HOOK_TOKEN}"), None, &hub)
        .await;
    assert_eq!(answer, (202, json!({"queued": ["hub/app"]})));

    let harbor = json!({"type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "admin",
        "event_data": {"resources": [{"digest": "sha256:00", "tag": "v1",
            "resource_url": "harbor.example.com/proj/app:v1"}],
            "repository": {"name": "app", "namespace": "proj", "repo_full_name": "proj/app",
                           "repo_type": "private"}}});
    let answer = server.hook("", Some(HOOK_TOKEN), &harbor).await;
    assert_eq!(answer, (202, json!({"queued": ["harbor/app"]})));

    let unwatched = json!({"push_data": {"tag": "1"}, "repository": {"repo_name": "org/other"}});
    assert_eq!(
        server.hook("", Some(HOOK_TOKEN), &unwatched).await,
        (202, json!({"queued": []}))
    );

    let malformed = server
        .hook(
            "",
            Some(HOOK_TOKEN),
            &json!({"events": [{"action": "push"}]}),
        )
        .await;
    assert_eq!(reason(&malformed), (400, "BadRequest"));
    assert_eq!(
        malformed.1["message"],
        "events[0].target.repository is missing"
    );

    for (query, token) in [
        ("", None),
        ("", Some("wrong")),
        ("?token=wrong", None),
        ("?token=", None),
    ] {
        let answer = server.hook(query, token, &hub).await;
        assert_eq!(reason(&answer), (401, "Unauthorized"), "{query} {token:?}");
    }

    // The warmer is also a watch directory: reads answer for its targets.
    let cold = server.get("/api/v1/repositories/org/app", None).await;
    assert_eq!(reason(&cold), (404, "NotCached"), "{}", cold.1);
    server.stop().await;

    // Without a token webhooks do not exist; without a warmer they cannot be served.
    let server = Server::start(open_state(store.clone(), Arc::new(warmer.clone()))).await;
    let answer = server.hook("", Some(HOOK_TOKEN), &hub).await;
    assert_eq!(reason(&answer), (404, "NotFound"));
    server.stop().await;
    let server = Server::start(ApiState {
        forward: None,
        webhook_token: Some(Secret::new(HOOK_TOKEN)),
        registry: Default::default(),
        ..open_state(store, Arc::new(warmer))
    })
    .await;
    let answer = server.hook("", Some(HOOK_TOKEN), &hub).await;
    assert_eq!(reason(&answer), (503, "Unavailable"));
    server.stop().await;
}

/// A kube client as the API server's admin.
async fn kube_client(server: &support::apiserver::ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_are_reviewed_by_the_kubernetes_api() {
    support::install_crypto_provider();
    let cluster = tokio::task::spawn_blocking(support::apiserver::ApiServer::start)
        .await
        .unwrap();
    cluster.namespace("web").await;
    // `reader` may get the watches in `web` (a Role and RoleBinding, as a user would write
    // them); `outsider` is a ServiceAccount with no access granted.
    let reader = cluster.service_account_token("web", "reader").await;
    let outsider = cluster.service_account_token("web", "outsider").await;
    cluster.grant_watch_reading("web", ("web", "reader")).await;
    let (store, directory, _) = fixture().await;
    let server = Server::start(ApiState {
        auth: ApiAuth::Kubernetes(kube_client(&cluster).await),
        ..open_state(store, directory)
    })
    .await;

    let path = "/api/v1/repositories/nginx";
    let anonymous = server.get(path, None).await;
    assert_eq!(reason(&anonymous), (401, "Unauthorized"));
    let unknown = server.get(path, Some("not-a-token")).await;
    assert_eq!(reason(&unknown), (401, "Unauthorized"), "{}", unknown.1);

    let (status, body) = server.get(path, Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get("/api/v1/images/nginx:v1", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .get(
            "/api/v1/namespaces/web/imagerepositorywatches/nginx",
            Some(&reader),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let denied = server.get(path, Some(&outsider)).await;
    assert_eq!(reason(&denied), (403, "Forbidden"), "{}", denied.1);
    let denied = server
        .get(
            "/api/v1/namespaces/web/imagerepositorywatches/nginx",
            Some(&outsider),
        )
        .await;
    assert_eq!(reason(&denied), (403, "Forbidden"), "{}", denied.1);
    // Nothing is told about watches the caller may not get, not even whether they exist.
    let denied = server
        .get(
            "/api/v1/namespaces/web/imagerepositorywatches/gone",
            Some(&outsider),
        )
        .await;
    assert_eq!(reason(&denied), (403, "Forbidden"), "{}", denied.1);

    // The registry API: no credentials are challenged as registry clients expect; the
    // token goes as the password of Basic credentials (a docker-registry Secret).
    let challenged = server
        .http
        .get(format!("{}/v2/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(challenged.status(), 401);
    let host = server.base.trim_start_matches("http://").to_string();
    assert_eq!(
        challenged.headers()["www-authenticate"],
        format!("Bearer realm=\"http://{host}/v2/token\",service=\"regcache\"").as_str()
    );
    let body: Value = serde_json::from_slice(&challenged.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    let basic = |token: &str| {
        server
            .http
            .get(format!("{}/v2/web/nginx/tags/list", server.base))
            .basic_auth("anything", Some(token))
    };
    let (status, body) = server.send(basic(&reader)).await;
    assert_eq!(
        (status, &body["tags"]),
        (200, &json!(["latest", "v1"])),
        "{body}"
    );
    let (status, body) = server.send(basic(&outsider)).await;
    assert_eq!(
        (status, &body["errors"][0]["code"]),
        (403, &json!("DENIED")),
        "{body}"
    );

    // The token endpoint: a Kubernetes token as the Basic password buys a regcache token
    // for the repositories the caller may read, and for nothing else.
    let issue = |token: &str, scope: &str| {
        server
            .http
            .get(format!(
                "{}/v2/token?service=regcache&scope=repository:{scope}:pull",
                server.base
            ))
            .basic_auth("anything", Some(token))
    };
    let (status, body) = server.send(issue(&reader, "web/nginx")).await;
    assert_eq!(status, 200, "{body}");
    let granted = body["token"].as_str().unwrap().to_string();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    let bearer = |token: &str, path: &str| {
        server
            .http
            .get(format!("{}{path}", server.base))
            .bearer_auth(token)
    };
    let (status, body) = server
        .send(bearer(&granted, "/v2/web/nginx/tags/list"))
        .await;
    assert_eq!(
        (status, &body["tags"]),
        (200, &json!(["latest", "v1"])),
        "{body}"
    );
    // A token issued for web/nginx cannot read another watch, even one its holder may get.
    let (status, body) = server
        .send(bearer(&granted, "/v2/web/gone/tags/list"))
        .await;
    assert_eq!(
        (status, &body["errors"][0]["code"]),
        (403, &json!("DENIED")),
        "{body}"
    );
    // The outsider's token grants nothing; a forged or altered token is refused.
    let (status, body) = server.send(issue(&outsider, "web/nginx")).await;
    assert_eq!(status, 200, "{body}");
    let empty = body["token"].as_str().unwrap().to_string();
    let (status, body) = server.send(bearer(&empty, "/v2/web/nginx/tags/list")).await;
    assert_eq!(
        (status, &body["errors"][0]["code"]),
        (403, &json!("DENIED")),
        "{body}"
    );
    let mut forged = granted.clone();
    forged.pop();
    let (status, body) = server
        .send(bearer(&forged, "/v2/web/nginx/tags/list"))
        .await;
    assert_eq!(
        (status, &body["errors"][0]["code"]),
        (401, &json!("UNAUTHORIZED")),
        "{body}"
    );
    let (status, _) = server.send(issue("not-a-token", "web/nginx")).await;
    assert_eq!(status, 401);

    // Each token was reviewed once (the unknown one too): answers are cached. The API
    // server's own request counter says so.
    let reviews = cluster
        .request_count(&[("resource", "tokenreviews"), ("verb", "POST")])
        .await;
    assert_eq!(reviews, 3.0, "regcache tokens are never sent for review");
    server.stop().await;
}

/// The registry API's tags/list, as a registry client reads it: the distribution spec's
/// names, pagination, headers and error format.
#[tokio::test(flavor = "multi_thread")]
async fn registry_api_lists_tags_with_pagination_and_spec_errors() {
    let (store, directory, _) = fixture().await;
    let server = Server::start(open_state(store, directory)).await;
    let code = |answer: &(u16, Value)| {
        (
            answer.0,
            answer.1["errors"][0]["code"]
                .as_str()
                .unwrap_or("<none>")
                .to_string(),
        )
    };

    let base = server
        .http
        .get(format!("{}/v2/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(base.status(), 200);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let head = server
        .http
        .head(format!("{}/v2/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    // One watch by <namespace>/<watch>, or the repository by its upstream name.
    let (status, body) = server.get("/v2/web/nginx/tags/list", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"name": "web/nginx", "tags": ["latest", "v1"]}));
    let (status, body) = server
        .get("/v2/docker.io/library/nginx/tags/list", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tags"], json!(["latest", "v1"]));
    // A port is `_PORT` (a colon cannot appear in a reference's path); `:PORT` works too.
    for host in ["127.0.0.1_5000", "127.0.0.1:5000"] {
        let (status, body) = server
            .get(&format!("/v2/{host}/team/app/tags/list"), None)
            .await;
        assert_eq!(
            (status, &body["tags"]),
            (200, &json!(["v3"])),
            "{host}: {body}"
        );
    }

    // Pages of n, linked as registries link them.
    let first = server
        .http
        .get(format!("{}/v2/web/nginx/tags/list?n=1", server.base))
        .send()
        .await
        .unwrap();
    let link = first.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(
        link,
        "</v2/web/nginx/tags/list?n=1&last=latest>; rel=\"next\""
    );
    let first: Value = serde_json::from_slice(&first.bytes().await.unwrap()).unwrap();
    assert_eq!(first["tags"], json!(["latest"]));
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let second = server
        .http
        .get(format!("{}{next}", server.base))
        .send()
        .await
        .unwrap();
    assert!(
        second.headers().get("link").is_none(),
        "the last page links nowhere"
    );
    let second: Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(second["tags"], json!(["v1"]));

    // Errors in the spec's format and codes.
    for (path, expected) in [
        (
            "/v2/web/nginx/tags/list?n=many",
            (400, "PAGINATION_NUMBER_INVALID"),
        ),
        ("/v2/ghcr.io/org/broken/tags/list", (404, "NAME_UNKNOWN")),
        ("/v2/ghcr.io/org/unwatched/tags/list", (404, "NAME_UNKNOWN")),
        ("/v2/web/absent/tags/list", (404, "NAME_UNKNOWN")),
        ("/v2/nginx/tags/list", (404, "NAME_UNKNOWN")),
        // The record was cached without its manifest's bytes.
        ("/v2/web/nginx/manifests/v1", (404, "MANIFEST_UNKNOWN")),
        ("/v2/web/nginx/manifests/nope", (404, "MANIFEST_UNKNOWN")),
        ("/v2/web/nginx/blobs/sha256:00", (400, "DIGEST_INVALID")),
        ("/v2/web/nginx/_catalog", (405, "UNSUPPORTED")),
    ] {
        let answer = server.get(path, None).await;
        assert_eq!(
            code(&answer),
            (expected.0, expected.1.to_string()),
            "{path}: {}",
            answer.1
        );
        assert!(
            answer.1["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {}",
            answer.1
        );
    }
    // Not cached says why: the watch's last error.
    let broken = server.get("/v2/ghcr.io/org/broken/tags/list", None).await;
    assert!(
        broken.1["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("refused the credentials"),
        "{}",
        broken.1
    );
    server.stop().await;
}
