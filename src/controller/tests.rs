//! Reconcile tests with scripted API conversations (kube-rs's `tower-test` mock): every
//! branch of resolve, plan and status, request by request.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::plan::Defaults;
use super::{Context, ControllerError, error_policy, reconcile};
use crate::cache::memory::MemoryCache;
use crate::cache::store::MetadataStore;
use crate::crd::{ImageRepositoryWatch, reasons};
use crate::registry::{ClientOptions, RegistryClient};
use crate::warmer::{Warmer, WarmerOptions};

const CANARY: &str = "canary-reconcile-51d2";

/// One expected request and the answer to give.
struct Expect {
    method: Method,
    path: String,
    status: StatusCode,
    body: Value,
}

fn expect(method: Method, path: &str, status: StatusCode, body: Value) -> Expect {
    Expect {
        method,
        path: path.to_string(),
        status,
        body,
    }
}

fn not_found(path: &str) -> Expect {
    expect(
        Method::GET,
        path,
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// What the API server saw: status patches sent.
#[derive(Default)]
struct Seen {
    status_patches: Vec<Value>,
    events: Vec<Value>,
}

/// A client whose API server answers `script` in order and fails the test on anything
/// else; returns what was sent.
fn scripted(script: Vec<Expect>) -> (Client, tokio::task::JoinHandle<Seen>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut seen = Seen::default();
        for e in script {
            let (request, send) =
                tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                    .await
                    .unwrap_or_else(|_| panic!("no request came for {} {}", e.method, e.path))
                    .expect("the expected request");
            assert_eq!(
                (request.method(), request.uri().path()),
                (&e.method, e.path.as_str()),
                "unexpected request"
            );
            let body = request.into_body().collect_bytes().await.unwrap();
            let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if e.path.ends_with("/status") {
                seen.status_patches.push(sent.clone());
            }
            if e.path.contains("/events") {
                seen.events.push(sent.clone());
            }
            let answer = match (e.body.is_null(), e.path.ends_with("/status")) {
                // The API server answers a status write with the whole object.
                (true, true) => json!({
                    "apiVersion": "regcache.io/v1alpha1",
                    "kind": "ImageRepositoryWatch",
                    "metadata": {"name": "app", "namespace": "team"},
                    "spec": {"image": "nginx"},
                    "status": sent["status"],
                }),
                (true, false) => sent,
                (false, _) => e.body,
            };
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
        // Nothing more may be asked.
        let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        if let Ok(Some((request, _))) = more {
            panic!(
                "unexpected extra request {} {}",
                request.method(),
                request.uri()
            );
        }
        seen
    });
    (Client::new(service, "default"), task)
}

fn context(client: Client) -> Arc<Context<MemoryCache>> {
    let warmer = Warmer::new(
        RegistryClient::new(ClientOptions::default()),
        Arc::new(MetadataStore::new(MemoryCache::default())),
        WarmerOptions::default(),
    );
    let ctx = Arc::new(Context::new(
        client,
        warmer,
        Defaults::default(),
        "test".into(),
    ));
    ctx.leading.store(true, std::sync::atomic::Ordering::SeqCst);
    ctx
}

fn watch(spec: Value, status: Option<Value>) -> Arc<ImageRepositoryWatch> {
    let mut obj = json!({
        "apiVersion": "regcache.io/v1alpha1",
        "kind": "ImageRepositoryWatch",
        "metadata": {"name": "app", "namespace": "team", "generation": 2, "uid": "u-1"},
        "spec": spec,
    });
    if let Some(s) = status {
        obj["status"] = s;
    }
    Arc::new(serde_json::from_value(obj).unwrap())
}

fn dockerconfig_secret(name: &str, type_: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "team"}, "type": type_, "data": data})
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn good_secret(name: &str) -> Value {
    let config = json!({"auths": {"ghcr.io": {"auth": b64(&format!("bob:{CANARY}"))}}});
    dockerconfig_secret(
        name,
        "kubernetes.io/dockerconfigjson",
        json!({".dockerconfigjson": b64(&config.to_string())}),
    )
}

const SECRETS: &str = "/api/v1/namespaces/team/secrets";
const STATUS: &str = "/apis/regcache.io/v1alpha1/namespaces/team/imagerepositorywatches/app/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";

fn ready_of(patch: &Value) -> (String, String, String) {
    let c = &patch["status"]["conditions"][0];
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
        c["message"].as_str().unwrap().to_string(),
    )
}

/// Reconciles `w` against `script`; returns the status patches and events sent.
async fn run(
    w: Arc<ImageRepositoryWatch>,
    script: Vec<Expect>,
) -> (Result<(), ControllerError>, Seen, Arc<Context<MemoryCache>>) {
    let (client, server) = scripted(script);
    let ctx = context(client);
    let result = reconcile(w, ctx.clone()).await.map(|_| ());
    (result, server.await.unwrap(), ctx)
}

fn status_and_event() -> Vec<Expect> {
    vec![
        expect(Method::PATCH, STATUS, StatusCode::OK, Value::Null),
        expect(Method::POST, EVENTS, StatusCode::CREATED, Value::Null),
    ]
}

#[tokio::test]
async fn a_valid_watch_with_a_pull_secret_becomes_a_target() {
    let mut script = vec![expect(
        Method::GET,
        &format!("{SECRETS}/regcred"),
        StatusCode::OK,
        good_secret("regcred"),
    )];
    script.extend(status_and_event());
    let w = watch(
        json!({"image": "ghcr.io/org/app", "pullSecrets": [{"name": "regcred"}]}),
        None,
    );
    let (result, seen, ctx) = run(w, script).await;
    result.unwrap();
    let targets = ctx.warmer.targets();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].credential.identity(), "basic:bob");
    let (status, reason, _) = ready_of(&seen.status_patches[0]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", reasons::PROGRESSING)
    );
    assert_eq!(
        seen.status_patches[0]["status"]["canonicalImageName"],
        "ghcr.io/org/app"
    );
    assert_eq!(seen.status_patches[0]["status"]["observedGeneration"], 2);
    assert!(!seen.status_patches[0].to_string().contains(CANARY));
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    // First reconcile computes the status; the second sees it on the object and is quiet.
    let w = watch(json!({"image": "nginx"}), None);
    let (result, seen, _) = run(w, status_and_event()).await;
    result.unwrap();
    let status = seen.status_patches[0]["status"].clone();
    let w = watch(json!({"image": "nginx"}), Some(status));
    let (result, seen, ctx) = run(w, vec![]).await;
    result.unwrap();
    assert!(seen.status_patches.is_empty());
    assert_eq!(ctx.warmer.targets().len(), 1);
}

#[tokio::test]
async fn user_errors_become_conditions_and_stop_warming() {
    let ca_secret = |data: Value| dockerconfig_secret("corp-ca", "Opaque", data);
    let cases: Vec<(Value, Vec<Expect>, &str, Vec<&str>)> = vec![
        (
            json!({"image": "Nginx:Latest"}),
            vec![],
            reasons::INVALID_IMAGE,
            vec!["team/app", "Nginx:Latest"],
        ),
        (
            json!({"image": "nginx", "pullSecrets": [{"name": "gone"}]}),
            vec![not_found(&format!("{SECRETS}/gone"))],
            reasons::SECRET_NOT_FOUND,
            vec!["team/app", "team/gone"],
        ),
        (
            json!({"image": "nginx", "pullSecrets": [{"name": "opaque"}]}),
            vec![expect(
                Method::GET,
                &format!("{SECRETS}/opaque"),
                StatusCode::OK,
                dockerconfig_secret("opaque", "Opaque", json!({"password": b64(CANARY)})),
            )],
            reasons::INVALID_SECRET,
            vec!["team/opaque", "Opaque", "kubernetes.io/dockerconfigjson"],
        ),
        (
            json!({"image": "nginx", "pullSecrets": [{"name": "broken"}]}),
            vec![expect(
                Method::GET,
                &format!("{SECRETS}/broken"),
                StatusCode::OK,
                dockerconfig_secret(
                    "broken",
                    "kubernetes.io/dockerconfigjson",
                    json!({".dockerconfigjson": b64(&format!("{{\"auths\": {CANARY}"))}),
                ),
            )],
            reasons::INVALID_SECRET,
            vec!["team/broken", "not valid JSON"],
        ),
        (
            json!({"image": "nginx", "serviceAccountName": "puller"}),
            vec![not_found("/api/v1/namespaces/team/serviceaccounts/puller")],
            reasons::SERVICE_ACCOUNT_NOT_FOUND,
            vec!["team/puller"],
        ),
        (
            json!({"image": "nginx", "certSecretRef": {"name": "corp-ca"}}),
            vec![expect(
                Method::GET,
                &format!("{SECRETS}/corp-ca"),
                StatusCode::OK,
                ca_secret(json!({"tls.crt": b64("x")})),
            )],
            reasons::INVALID_CERTIFICATE,
            vec!["team/corp-ca", "ca.crt"],
        ),
        (
            json!({"image": "nginx", "certSecretRef": {"name": "corp-ca"}}),
            vec![expect(
                Method::GET,
                &format!("{SECRETS}/corp-ca"),
                StatusCode::OK,
                ca_secret(json!({"ca.crt": b64("not a certificate")})),
            )],
            reasons::INVALID_CERTIFICATE,
            vec!["team/corp-ca", "docker.io"],
        ),
        (
            json!({"image": "nginx", "interval": "soon"}),
            vec![],
            reasons::INVALID_SPEC,
            vec!["spec.interval"],
        ),
    ];
    for (spec, mut script, reason, needles) in cases {
        script.extend(status_and_event());
        let (result, seen, ctx) = run(watch(spec.clone(), None), script).await;
        result.unwrap();
        assert!(ctx.warmer.targets().is_empty(), "{spec}: not warmed");
        let (status, got, message) = ready_of(&seen.status_patches[0]);
        assert_eq!((status.as_str(), got.as_str()), ("False", reason), "{spec}");
        for n in needles {
            assert!(message.contains(n), "{spec}: {message:?} lacks {n:?}");
        }
        assert!(
            !message.contains(CANARY),
            "{spec}: secret content in {message}"
        );
        assert_eq!(seen.events[0]["reason"], reason);
        assert_eq!(seen.events[0]["type"], "Warning");
    }
}

#[tokio::test]
async fn service_account_pull_secrets_are_used_after_the_watch_own() {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "puller", "namespace": "team"},
        "imagePullSecrets": [{"name": "first"}, {"name": "from-sa"}]});
    let mut script = vec![
        expect(
            Method::GET,
            "/api/v1/namespaces/team/serviceaccounts/puller",
            StatusCode::OK,
            sa,
        ),
        expect(
            Method::GET,
            &format!("{SECRETS}/first"),
            StatusCode::OK,
            good_secret("first"),
        ),
        expect(
            Method::GET,
            &format!("{SECRETS}/from-sa"),
            StatusCode::OK,
            good_secret("from-sa"),
        ),
    ];
    script.extend(status_and_event());
    let w = watch(
        json!({"image": "ghcr.io/org/app", "pullSecrets": [{"name": "first"}], "serviceAccountName": "puller"}),
        None,
    );
    let (result, _, ctx) = run(w, script).await;
    result.unwrap();
    assert_eq!(ctx.warmer.targets()[0].credential.identity(), "basic:bob");
}

#[tokio::test]
async fn suspended_watches_are_not_warmed() {
    let w = watch(json!({"image": "nginx", "suspend": true}), None);
    let (result, seen, ctx) = run(w, status_and_event()).await;
    result.unwrap();
    assert!(ctx.warmer.targets().is_empty());
    assert_eq!(ready_of(&seen.status_patches[0]).1, reasons::SUSPENDED);
}

#[tokio::test]
async fn a_rescan_request_is_acknowledged_in_status() {
    let mut w = (*watch(json!({"image": "nginx"}), None)).clone();
    w.metadata.annotations = Some(
        [(
            crate::crd::REQUESTED_AT_ANNOTATION.to_string(),
            "2026-11-27T10:00:00Z".to_string(),
        )]
        .into(),
    );
    let (result, seen, ctx) = run(Arc::new(w), status_and_event()).await;
    result.unwrap();
    assert_eq!(ctx.warmer.targets().len(), 1);
    assert_eq!(
        seen.status_patches[0]["status"]["lastHandledRequestedAt"],
        "2026-11-27T10:00:00Z"
    );
}

#[tokio::test]
async fn api_failures_back_off_exponentially() {
    let w = watch(
        json!({"image": "nginx", "pullSecrets": [{"name": "regcred"}]}),
        None,
    );
    let failure = || {
        vec![expect(
            Method::GET,
            &format!("{SECRETS}/regcred"),
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "etcd down"}),
        )]
    };
    let (client, server) = scripted(failure());
    let ctx = context(client);
    let err = reconcile(w.clone(), ctx.clone()).await.unwrap_err();
    server.await.unwrap();
    let first = error_policy(w.clone(), &err, ctx.clone());
    let second = error_policy(w.clone(), &err, ctx.clone());
    assert_eq!(
        first,
        kube::runtime::controller::Action::requeue(Duration::from_millis(750))
    );
    assert_eq!(
        second,
        kube::runtime::controller::Action::requeue(Duration::from_millis(1500))
    );
}

#[tokio::test]
async fn followers_plan_targets_but_write_nothing() {
    let (client, server) = scripted(vec![]);
    let ctx = context(client);
    ctx.leading
        .store(false, std::sync::atomic::Ordering::SeqCst);
    reconcile(watch(json!({"image": "nginx"}), None), ctx.clone())
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert!(seen.status_patches.is_empty() && seen.events.is_empty());
    assert_eq!(
        ctx.warmer.targets().len(),
        1,
        "known to the follower's read API"
    );
}

/// Readiness comes with the first complete list of watches, not before; the lists of
/// Secrets and ServiceAccounts do not count.
#[tokio::test]
async fn readiness_waits_for_the_first_complete_list_of_watches() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(super::run(
        ctx.clone(),
        Some("team".into()),
        async {},
        async move {
            let _ = stopped.await;
        },
    ));
    let empty_list = || {
        Response::builder()
            .body(Body::from(
                serde_json::to_vec(&json!({"metadata": {"resourceVersion": "7"}, "items": []}))
                    .unwrap(),
            ))
            .unwrap()
    };
    // Lists of anything else are answered; watch streams stay open, unanswered; the list of
    // watches is held back until the test lets it go.
    enum Served {
        List,
        Stream,
        WatchListHeld(tower_test::mock::SendResponse<Response<Body>>),
    }
    let mut open_streams = Vec::new();
    let mut serve = async |release_watch_list: bool| {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .ok()
            .flatten()?;
        let uri = request.uri().to_string();
        Some(if uri.contains("watch=true") {
            open_streams.push(send);
            Served::Stream
        } else if uri.contains("/imagerepositorywatches") && !release_watch_list {
            Served::WatchListHeld(send)
        } else {
            send.send_response(empty_list());
            Served::List
        })
    };
    let (mut held, mut lists) = (None, 0);
    while held.is_none() || lists < 2 {
        match serve(false).await.expect("the controller lists its inputs") {
            Served::WatchListHeld(send) => held = Some(send),
            Served::List => lists += 1,
            Served::Stream => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ctx.watches_are_listed(),
        "Secrets and ServiceAccounts are listed, the watches are not"
    );
    held.unwrap().send_response(empty_list());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ctx.watches_are_listed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the list of watches came and readiness did not follow"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), serve(true)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), controller)
        .await
        .expect("the controller stops")
        .unwrap();
    drop(open_streams);
}
