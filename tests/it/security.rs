//! Security end to end: the real controller (trace-level logs), installed by the chart
//! into a real API server and running as its ServiceAccount, a
//! basic-auth registry and memcached, with canary secrets — a registry password, a wrong
//! password and a webhook token — in play.
//!
//! - No canary, in any form the process could have seen it (plain, base64 in a basic auth
//!   header, base64 inside a pull secret), appears in the logs, watch statuses, Events,
//!   metrics, any memcached value or any read API answer.
//! - A watch cannot use a Secret or ServiceAccount of another namespace, and nothing is
//!   cached for it under its namespace's scope.
//! - The read API refuses callers without a token, with an unknown token, and callers who may
//!   not `get` the watch covering a repository — even when another namespace's watch of the
//!   same repository exists — and tells them nothing about that watch's data.
//! - Registry webhooks need the token.

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use regcache::cache::keys::Scope;
use regcache::cache::memcached::{Memcached, MemcachedOptions};
use regcache::cache::store::MetadataStore;
use regcache::credentials::Credential;
use regcache::image::Repository;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::kube::{pull_secret, ready_is};
use support::{CANARY_PASSWORD, ImageSpec, ManifestKind, Registry, RegistryAuth, TEST_USER};

const WRONG_CANARY: &str = "wrong-canary-51ab0c";
const HOOK_CANARY: &str = "hook-canary-9d2f7e";

fn watch(namespace: &str, name: &str, image: &str, credentials: Value) -> Value {
    let mut spec = json!({"image": image, "insecure": true, "interval": "1h"});
    spec.as_object_mut()
        .unwrap()
        .extend(credentials.as_object().unwrap().clone());
    json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// Every form in which a secret could leak: as is, in a basic auth header, and inside the
/// base64 of a pull secret's data.
fn leak_forms(host: &str) -> Vec<(String, String)> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut forms = vec![("webhook token".to_string(), HOOK_CANARY.to_string())];
    for (what, password) in [
        ("password", CANARY_PASSWORD),
        ("wrong password", WRONG_CANARY),
    ] {
        forms.push((what.to_string(), password.to_string()));
        forms.push((
            format!("{what} in a basic auth header"),
            b64(&format!("{TEST_USER}:{password}")),
        ));
        let secret = pull_secret("team", "x", host, password);
        forms.push((
            format!("{what} as pull secret data"),
            secret["data"][".dockerconfigjson"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    forms
}

/// Every value in a memcached server, as text (the framing's binary header aside).
fn memcached_values(memcached: &support::Memcached) -> Vec<(String, String)> {
    // The LRU crawler's dump can come back empty or short for items written moments
    // before (seen about once in four runs): dump again until it lists every item. The
    // controller keeps writing meanwhile (a new index generation replaces the old chunks),
    // so the count to reach is read on both sides of each dump.
    let items = || -> usize {
        memcached
            .stats()
            .get("curr_items")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (keys, dump, items) = loop {
        let before = items();
        let dump = memcached.raw("lru_crawler metadump all\r\n");
        let items = before.min(items());
        let keys: Vec<String> = dump
            .lines()
            .filter_map(|l| l.strip_prefix("key="))
            .filter_map(|l| l.split_whitespace().next())
            .map(percent_decode)
            .collect();
        if keys.len() >= items || std::time::Instant::now() > deadline {
            break (keys, dump, items);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !keys.is_empty() && keys.len() >= items,
        "memcached holds {items} items but its dump lists {}; the sweep would prove \
         nothing. Dump: {dump:?}",
        keys.len()
    );
    keys.into_iter()
        .filter_map(|k| {
            let value = memcached.get(&k)?;
            Some((k, String::from_utf8_lossy(&value).into_owned()))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Api {
    base: String,
    http: reqwest::Client,
    /// Every answer, for the leak sweep.
    seen: std::sync::Mutex<Vec<String>>,
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("read API request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        self.send(request).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_leaks_and_no_namespace_reaches_another() {
    let registry = Registry::start(RegistryAuth::Basic);
    let pusher = registry.pusher();
    for (i, tag) in ["v1", "v2"].iter().enumerate() {
        pusher
            .push_image(
                "e2e/private",
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(i as u64),
            )
            .await;
    }
    let host = registry.host();
    let image = format!("{host}/e2e/private");
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&["team", "other"], &[]).await;

    cluster
        .create(
            "/api/v1/namespaces/team/secrets",
            pull_secret("team", "regcred", &host, CANARY_PASSWORD),
        )
        .await;
    cluster
        .create(
            "/api/v1/namespaces/team/secrets",
            pull_secret("team", "badcred", &host, WRONG_CANARY),
        )
        .await;
    cluster
        .create(
            "/api/v1/namespaces/team/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "puller", "namespace": "team"},
                   "imagePullSecrets": [{"name": "regcred"}]}),
        )
        .await;
    let watches = [
        (
            "team",
            "app",
            json!({"pullSecrets": [{"name": "regcred"}]}),
            "True",
            "Succeeded",
        ),
        (
            "team",
            "bad",
            json!({"pullSecrets": [{"name": "badcred"}]}),
            "False",
            "Unauthorized",
        ),
        // The Secret and the ServiceAccount exist, but in "team": not usable from "other".
        (
            "other",
            "thief",
            json!({"pullSecrets": [{"name": "regcred"}]}),
            "False",
            "SecretNotFound",
        ),
        (
            "other",
            "thief-sa",
            json!({"serviceAccountName": "puller"}),
            "False",
            "ServiceAccountNotFound",
        ),
    ];
    for (ns, name, credentials, _, _) in &watches {
        cluster
            .create(
                &format!("/apis/regcache.io/v1alpha1/namespaces/{ns}/imagerepositorywatches"),
                watch(ns, name, &image, credentials.clone()),
            )
            .await;
    }
    // A reader in each namespace, allowed to get the watches of its own namespace only.
    let mut tokens = Vec::new();
    for ns in ["team", "other"] {
        tokens.push(cluster.service_account_token(ns, "reader").await);
        cluster.grant_watch_reading(ns, (ns, "reader")).await;
    }
    let (team_token, other_token) = (tokens[0].as_str(), tokens[1].as_str());

    let dir = tempfile::tempdir().unwrap();
    let controller = cluster.controller(
        &[
            "--memcached",
            &memcached.addr(),
            "--log-level",
            "trace",
            "--webhook-token",
            HOOK_CANARY,
        ],
        dir.path().join("controller.log"),
    );
    let mut statuses = Vec::new();
    for (ns, name, _, status, reason) in &watches {
        let path =
            format!("/apis/regcache.io/v1alpha1/namespaces/{ns}/imagerepositorywatches/{name}");
        let w = cluster
            .wait_for(&path, Duration::from_secs(60), ready_is(status, reason))
            .await;
        statuses.push(w);
    }
    let thief = statuses[2]["status"].to_string();
    assert!(
        thief.contains("regcred"),
        "the status names the missing Secret: {thief}"
    );

    // Nothing is cached for "other" under the credential it tried to borrow.
    let store = MetadataStore::new(Memcached::new(
        vec![memcached.addr()],
        MemcachedOptions::default(),
    ));
    let repository = Repository::parse(&image).unwrap();
    let borrowed = Credential::basic(TEST_USER, "any");
    let other_scope = Scope::for_credential(&host, "other", &borrowed);
    assert!(
        store
            .get_image_repository_metadata(&other_scope, &repository)
            .await
            .is_err(),
        "a repository index under the other namespace's scope"
    );
    let team = store
        .get_image_repository_metadata(
            &Scope::for_credential(&host, "team", &borrowed),
            &repository,
        )
        .await
        .expect("team's data is cached");
    assert_eq!(team.tags, ["v1", "v2"]);

    // The read API.
    let api = Api {
        base: format!("http://{}", controller.address("read API").await),
        http: support::http_client(None),
        seen: Default::default(),
    };
    let repo_path = format!("/api/v1/repositories/{image}");
    let (status, _) = api.get(&repo_path, None).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = api.get(&repo_path, Some("not-a-token")).await;
    assert_eq!(status, 401, "unknown token");
    let (status, allowed) = api.get(&repo_path, Some(team_token)).await;
    assert_eq!(status, 200, "{allowed}");
    let digests: Vec<String> = team.images.values().map(|i| i.digest.to_string()).collect();
    assert!(!digests.is_empty());
    for d in &digests {
        assert!(allowed.to_string().contains(d.as_str()), "{allowed}");
    }
    for path in [
        repo_path.clone(),
        format!("/api/v1/images/{image}:v1"),
        format!("/api/v1/images/{image}@{}", digests[0]),
        "/api/v1/namespaces/team/imagerepositorywatches/app".to_string(),
    ] {
        // The only watches warming the image are in "team" (the two in "other" cannot use
        // team's credentials, so they warm nothing): the answer is that the caller may not.
        let (status, answer) = api.get(&path, Some(other_token)).await;
        assert_eq!(
            (status, answer["reason"].as_str()),
            (403, Some("Forbidden")),
            "{path}: a caller without rights in team: {answer}"
        );
        for d in &digests {
            assert!(!answer.to_string().contains(d.as_str()), "{path}: {answer}");
        }
    }
    let (status, own) = api
        .get(
            "/api/v1/namespaces/other/imagerepositorywatches/thief",
            Some(other_token),
        )
        .await;
    // Its own watch may be read, but it warms nothing: it cannot use team's Secret.
    assert_eq!(
        (status, own["reason"].as_str()),
        (404, Some("NotFound")),
        "{own}"
    );
    for d in &digests {
        assert!(!own.to_string().contains(d.as_str()), "{own}");
    }

    // Webhooks need the token.
    let hook = format!("{}/hooks/registry", api.base);
    let push = json!({"events": [{"action": "push",
        "target": {"repository": "e2e/private", "tag": "v2"}, "request": {"host": host}}]});
    let (status, _) = api
        .send(
            api.http
                .post(&hook)
                .body(push.to_string())
                .bearer_auth("wrong-token"),
        )
        .await;
    assert_eq!(status, 401);
    let (status, answer) = api
        .send(
            api.http
                .post(&hook)
                .body(push.to_string())
                .bearer_auth(HOOK_CANARY),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // The query form, for registries that cannot set headers, must not leak the token either.
    let (status, answer) = api
        .send(
            api.http
                .post(format!("{hook}?token={HOOK_CANARY}"))
                .body(push.to_string()),
        )
        .await;
    assert_eq!(status, 202, "{answer}");

    // The sweep.
    let metrics = support::scrape(&controller.address("metrics").await).await;
    assert!(metrics.contains("regcache_registry_requests_total"));
    let events = cluster
        .get("/apis/events.k8s.io/v1/events")
        .await
        .expect("events");
    assert!(
        events["items"].as_array().is_some_and(|e| !e.is_empty()),
        "Events were published"
    );
    let logs = controller.logs();
    assert!(
        logs.contains(" TRACE "),
        "trace-level lines are in the sweep"
    );
    let mut places: Vec<(String, String)> = vec![
        ("controller logs".into(), logs),
        ("metrics".into(), metrics),
        ("events".into(), events.to_string()),
    ];
    places.extend(statuses.iter().map(|w| {
        (
            format!("status of {}", w["metadata"]["name"]),
            w["status"].to_string(),
        )
    }));
    places.extend(
        api.seen
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("read API answer {i}"), a.clone())),
    );
    places.extend(
        memcached_values(&memcached)
            .into_iter()
            .map(|(k, v)| (format!("memcached value {k}"), v)),
    );
    // The sweep reaches real content: the cached images and the logged registry traffic.
    let cached = places
        .iter()
        .filter(|(p, _)| p.starts_with("memcached"))
        .any(|(_, v)| v.contains(digests[0].as_str()));
    assert!(cached, "memcached values hold the images");
    for (form, needle) in leak_forms(&host) {
        for (place, text) in &places {
            assert!(!text.contains(&needle), "the {form} is in the {place}");
        }
    }
}
