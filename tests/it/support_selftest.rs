//! Self-tests of the integration-test harness in `tests/support`.
use crate::support;

use std::time::{Duration, Instant};
use support::*;

async fn get_manifest_raw(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    auth: Option<String>,
) -> reqwest::Response {
    let mut rb = client
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", ACCEPT_MANIFESTS);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    rb.send().await.expect("GET manifest")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Fetch a bearer token from the registry's token server by hand.
async fn bearer(reg: &Registry, repo: &str, creds: Option<(&str, &str)>) -> reqwest::Response {
    let ts = reg.token_server().expect("token registry");
    let client = http_client(None);
    let mut rb = client.get(format!(
        "{}?service={}&scope=repository:{repo}:pull",
        ts.realm(),
        ts.service()
    ));
    if let Some((u, p)) = creds {
        rb = rb.basic_auth(u, Some(p));
    }
    rb.send().await.expect("token request")
}

async fn json_of(resp: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

async fn token_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["expires_in"].is_i64());
    assert!(v["issued_at"].is_string());
    v["token"].as_str().unwrap().to_string()
}

/// A token for [`TEST_USER`] with pull access to `repo`.
async fn user_token(reg: &Registry, repo: &str) -> String {
    token_of(bearer(reg, repo, Some((TEST_USER, CANARY_PASSWORD))).await).await
}

/// Status of `GET /v2/REPO/manifests/v1` with `Authorization: Bearer TOKEN`.
async fn v1_status_with_token(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    token: &str,
) -> reqwest::StatusCode {
    let auth = Some(format!("Bearer {token}"));
    get_manifest_raw(client, base, repo, "v1", auth)
        .await
        .status()
}

async fn push_and_check(reg: &Registry) {
    let pusher = reg.pusher();
    let img = pusher
        .push_image("team/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    assert_eq!(img.digest, sha256_digest(&img.manifest_bytes));
    let client = reg.client();
    let base = reg.base_url();
    let good_auth = match reg.auth() {
        RegistryAuth::Anonymous => None,
        RegistryAuth::Basic => Some(basic_auth_header(TEST_USER, CANARY_PASSWORD)),
        RegistryAuth::Token => Some(format!("Bearer {}", user_token(reg, "team/app").await)),
    };
    let r = get_manifest_raw(&client, &base, "team/app", "v1", good_auth).await;
    assert_eq!(r.status(), 200, "log: {}", reg.log());
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_MANIFEST));
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        img.manifest_bytes.as_slice()
    );

    if reg.auth() != RegistryAuth::Anonymous {
        let r = get_manifest_raw(&client, &base, "team/app", "v1", None).await;
        assert_eq!(r.status(), 401);
        let challenge = header(&r, "www-authenticate").unwrap();
        let wrong = basic_auth_header(TEST_USER, "wrong-password");
        let r = get_manifest_raw(&client, &base, "team/app", "v1", Some(wrong)).await;
        assert_eq!(r.status(), 401);
        if reg.auth() == RegistryAuth::Token {
            assert!(challenge.starts_with("Bearer realm="), "{challenge}");
            assert!(challenge.contains("scope=\"repository:team/app:pull\""));
            // An anonymous token has an empty access list: still 401.
            let tok = token_of(bearer(reg, "team/app", None).await).await;
            assert_eq!(
                v1_status_with_token(&client, &base, "team/app", &tok).await,
                401
            );
            // A token for another repository does not work either.
            let tok = user_token(reg, "other/repo").await;
            assert_eq!(
                v1_status_with_token(&client, &base, "team/app", &tok).await,
                401
            );
        } else {
            assert!(challenge.starts_with("Basic realm="), "{challenge}");
        }
    }
    assert!(!reg.log().contains(CANARY_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_registry_push_and_pull() {
    let reg = Registry::start(RegistryAuth::Anonymous);
    assert!(reg.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(reg.credentials(), None);
    assert!(reg.ca_pem().is_none() && reg.token_server().is_none());
    push_and_check(&reg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_registry_push_and_pull() {
    let reg = Registry::start(RegistryAuth::Basic);
    assert_eq!(
        reg.credentials(),
        Some((TEST_USER.to_string(), CANARY_PASSWORD.to_string()))
    );
    push_and_check(&reg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_registry_push_and_pull() {
    let reg = Registry::start(RegistryAuth::Token);
    push_and_check(&reg).await;
    let ts = reg.token_server().unwrap();
    assert!(ts.issued() >= 3, "issued {}", ts.issued());
    assert!(ts.requests() >= ts.issued());
    // Wrong password: 401 from the token server itself.
    let denied_before = ts.denied();
    let r = bearer(&reg, "team/app", Some((TEST_USER, "nope"))).await;
    assert_eq!(r.status(), 401);
    assert_eq!(ts.denied(), denied_before + 1);
    let log = ts.request_log();
    assert!(log.iter().any(|r| r.authenticated));
    assert!(log.iter().any(|r| r.user.is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_expiry_is_settable() {
    let reg = Registry::start(RegistryAuth::Token);
    let pusher = reg.pusher();
    pusher
        .push_image("app", "v1", &ImageSpec::new(ManifestKind::Docker))
        .await;
    let ts = reg.token_server().unwrap();
    ts.set_expires_in(-60);
    let tok = user_token(&reg, "app").await;
    assert_eq!(
        v1_status_with_token(&reg.client(), &reg.base_url(), "app", &tok).await,
        401,
        "expired token must be refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registries_push_and_pull() {
    for auth in [
        RegistryAuth::Anonymous,
        RegistryAuth::Basic,
        RegistryAuth::Token,
    ] {
        let reg = Registry::start_tls(auth);
        assert!(reg.base_url().starts_with("https://127.0.0.1:"));
        assert!(reg.ca_file().unwrap().exists());
        push_and_check(&reg).await;
        // Not trusted without the CA.
        let r = http_client(None)
            .get(format!("{}/v2/", reg.base_url()))
            .send()
            .await;
        assert!(r.is_err(), "TLS without CA must fail");
        // https://localhost works too (SAN DNS:localhost).
        let r = reg
            .client()
            .get(format!("https://localhost:{}/v2/", reg.port()))
            .send()
            .await
            .unwrap();
        let expect = if auth == RegistryAuth::Anonymous {
            200
        } else {
            401
        };
        assert_eq!(r.status(), expect);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_extra_config_and_drop() {
    let reg = Registry::start_with(
        RegistryAuth::Anonymous,
        false,
        Some("health:\n  storagedriver:\n    enabled: false\n"),
    );
    let cfg = std::fs::read_to_string(reg.config_path()).unwrap();
    assert!(cfg.contains("health:"));
    let host = reg.host();
    drop(reg);
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "registry still listening after drop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_manifest_and_labels_config() {
    let reg = Registry::start(RegistryAuth::Anonymous);
    let p = reg.pusher();
    let spec = ImageSpec::new(ManifestKind::Docker)
        .platform(PlatformSpec::linux("arm64", Some("v8")))
        .use_container_config(true)
        .label("a", "b")
        .seed(7);
    let img = p.push_image("lib/x", "cc", &spec).await;
    assert_eq!(img.media_type, DOCKER_MANIFEST);
    let (status, ct, digest, body) = p.get_manifest("lib/x", "cc").await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some(DOCKER_MANIFEST));
    assert_eq!(digest.as_deref(), Some(img.digest.as_str()));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG);
    let cfg: serde_json::Value = serde_json::from_slice(&img.config_bytes).unwrap();
    assert_eq!(cfg["container_config"]["Labels"]["a"], "b");
    assert_eq!(
        cfg["container_config"]["Labels"]["org.label-schema.build-date"],
        "2024-03-03T00:00:00Z"
    );
    assert_eq!(cfg["config"], serde_json::json!({}));
    assert_eq!(cfg["variant"], "v8");
    assert_eq!(cfg["created"], "2024-03-01T12:00:00Z");
    assert_eq!(p.blob_status("lib/x", &img.config_digest).await, 200);
    // Different seed → different image.
    let other = p.push_image("lib/x", "other", &spec.clone().seed(8)).await;
    assert_ne!(other.digest, img.digest);
    // Aliases share the digest.
    p.alias_tags("lib/x", &img, &["latest", "stable"]).await;
    let (_, _, d, _) = p.get_manifest("lib/x", "stable").await;
    assert_eq!(d.as_deref(), Some(img.digest.as_str()));
    assert_eq!(
        p.list_tags("lib/x").await,
        vec!["cc", "latest", "other", "stable"]
    );
    // Delete by digest removes the tags.
    p.delete_manifest("lib/x", &img.digest).await;
    assert_eq!(p.get_manifest("lib/x", "cc").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_config_blob_is_404() {
    let reg = Registry::start(RegistryAuth::Basic);
    let p = reg.pusher();
    let img = p
        .push_image(
            "broken",
            "v1",
            &ImageSpec::new(ManifestKind::Oci).missing_config(true),
        )
        .await;
    assert_eq!(p.get_manifest("broken", "v1").await.0, 200);
    assert_eq!(p.blob_status("broken", &img.config_digest).await, 404);
    assert_eq!(p.blob_status("broken", &img.layer_digests[0]).await, 200);
    let r = reg
        .client()
        .head(format!(
            "{}/v2/broken/blobs/{}",
            reg.base_url(),
            img.config_digest
        ))
        .basic_auth(TEST_USER, Some(CANARY_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn index_children_fetchable_by_digest() {
    let reg = Registry::start(RegistryAuth::Token);
    let p = reg.pusher();
    for kind in [IndexKind::Oci, IndexKind::DockerList] {
        let repo = format!("multi/{kind:?}").to_lowercase();
        let idx = p
            .push_index(&repo, "v1", kind, &PlatformSpec::default_set())
            .await;
        assert_eq!(idx.children.len(), 4);
        let (status, ct, digest, body) = p.get_manifest(&repo, "v1").await;
        assert_eq!(status, 200);
        assert_eq!(ct.as_deref(), Some(kind.media_type()));
        assert_eq!(digest.as_deref(), Some(idx.digest.as_str()));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let entries = v["manifests"].as_array().unwrap();
        assert_eq!(entries[1]["platform"]["variant"], "v8");
        assert_eq!(entries[3]["platform"]["os.version"], "10.0.17763.5458");
        let mut created = std::collections::BTreeSet::new();
        for (child, entry) in idx.children.iter().zip(entries) {
            assert_eq!(entry["digest"], child.digest.as_str());
            assert_eq!(child.media_type, kind.child_kind().media_type());
            let (status, ct, d, _) = p.get_manifest(&repo, &child.digest).await;
            assert_eq!(status, 200);
            assert_eq!(ct.as_deref(), Some(child.media_type.as_str()));
            assert_eq!(d.as_deref(), Some(child.digest.as_str()));
            assert_eq!(p.blob_status(&repo, &child.config_digest).await, 200);
            created.insert(child.created.clone());
        }
        assert_eq!(created.len(), 4, "children have distinct created times");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_tag_and_push_many() {
    let reg = Registry::start(RegistryAuth::Anonymous);
    let p = reg.pusher();
    let img = p
        .push_image("sig", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let sig = p.push_signature_tag("sig", &img.digest).await;
    let tag = format!("sha256-{}.sig", img.digest.strip_prefix("sha256:").unwrap());
    let (status, _, d, body) = p.get_manifest("sig", &tag).await;
    assert_eq!(status, 200);
    assert_eq!(d.as_deref(), Some(sig.digest.as_str()));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["layers"][0]["mediaType"], COSIGN_LAYER);

    let t = Instant::now();
    let many = p.push_many("bench", 200, 20).await;
    let took = t.elapsed();
    assert_eq!(many.len(), 200);
    let distinct: std::collections::BTreeSet<_> = many.iter().map(|(_, i)| &i.digest).collect();
    assert_eq!(distinct.len(), 20);
    let tags = p.list_tags("bench").await;
    assert_eq!(tags.len(), 200);
    let (_, _, d, _) = p.get_manifest("bench", &many[137].0).await;
    assert_eq!(d.as_deref(), Some(many[137].1.digest.as_str()));
    eprintln!("push_many(200 tags, 20 images) took {took:?}");
}

#[test]
fn memcached_start_stop_restart() {
    let mut mc = Memcached::start();
    assert!(mc.is_running());
    assert!(mc.set("k1", b"hello", 0));
    assert_eq!(mc.get("k1").as_deref(), Some(&b"hello"[..]));
    assert_eq!(mc.get("missing"), None);
    // Raw protocol by hand.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(mc.addr()).unwrap();
        s.write_all(b"set raw 0 0 3\r\nabc\r\nget raw\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"END\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"STORED\r\nVALUE raw 0 3\r\nabc\r\nEND\r\n");
    }
    let port = mc.port();
    mc.stop();
    assert!(!mc.is_running());
    assert!(std::net::TcpStream::connect(mc.addr()).is_err());
    mc.restart();
    assert!(mc.is_running());
    assert_eq!(mc.port(), port);
    assert_eq!(mc.get("k1"), None, "restart empties the cache");
    assert!(mc.set("k2", b"x", 0));
    let big = Memcached::start_with_args(&["-I", "2m"]);
    assert_eq!(
        big.stats().get("limit_maxbytes").map(String::as_str),
        Some("67108864")
    );
    let big_value = vec![b'z'; 1_500_000];
    assert!(big.set("big", &big_value, 0));
    assert!(!mc.set("big", &big_value, 0), "default -I is 1m");
    let addr = mc.addr();
    drop(mc);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

// ---------------------------------------------------------------- proxy

struct ProxyFixture {
    reg: Registry,
    proxy: FaultProxy,
    img: PushedImage,
    client: reqwest::Client,
}

async fn proxy_fixture(auth: RegistryAuth) -> ProxyFixture {
    let reg = Registry::start(auth);
    let img = reg
        .pusher()
        .push_image("app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let proxy = FaultProxy::start(&reg.base_url(), reg.ca_pem().as_deref());
    ProxyFixture {
        reg,
        proxy,
        img,
        client: http_client(None),
    }
}

impl ProxyFixture {
    async fn get(&self, method: &str, path: &str) -> reqwest::Result<reqwest::Response> {
        let mut rb = self
            .client
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.proxy.base_url()),
            )
            .header("accept", ACCEPT_MANIFESTS);
        if let Some((u, p)) = self.reg.credentials() {
            rb = rb.basic_auth(u, Some(p));
        }
        rb.send().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_forwards_and_counts_by_kind() {
    let f = proxy_fixture(RegistryAuth::Basic).await;
    assert_eq!(f.get("GET", "/v2/").await.unwrap().status(), 200);
    let r = f.get("GET", "/v2/app/manifests/v1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(f.img.digest.as_str())
    );
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        f.img.manifest_bytes.as_slice()
    );
    let r = f.get("HEAD", "/v2/app/manifests/v1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(f.img.size.to_string()),
        "HEAD keeps Content-Length"
    );
    let blob = format!("/v2/app/blobs/{}", f.img.config_digest);
    let r = f.get("GET", &blob).await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        f.img.config_bytes.as_slice()
    );
    assert_eq!(
        f.get("GET", "/v2/app/tags/list").await.unwrap().status(),
        200
    );
    // Pushing through the proxy works (Location points at the upstream).
    let p = Pusher::new(&f.proxy.base_url(), f.reg.credentials(), None);
    p.push_image("app", "v2", &ImageSpec::new(ManifestKind::Docker).seed(3))
        .await;
    // No credentials: 401 passes through.
    let r = f
        .client
        .get(format!("{}/v2/app/manifests/v1", f.proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate").is_some());

    let c = f.proxy.counts();
    assert_eq!(c.get("GET", Kind::Ping), 1);
    assert_eq!(f.proxy.count("GET", Kind::Manifest), 2);
    assert_eq!(f.proxy.count("head", Kind::Manifest), 1);
    assert_eq!(f.proxy.count("GET", Kind::Blob), 1);
    assert_eq!(f.proxy.count("GET", Kind::TagList), 1);
    assert!(f.proxy.count("POST", Kind::Upload) >= 1);
    assert!(f.proxy.count("PUT", Kind::Manifest) >= 1);
    assert_eq!(c.total(), f.proxy.total());
    f.proxy.reset_counts();
    assert_eq!(f.proxy.total(), 0);
    assert_eq!(Kind::classify("/v2/a/b/blobs/uploads/x?y=1"), Kind::Upload);
    assert_eq!(Kind::classify("/healthz"), Kind::Other);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_status_faults_and_times() {
    let f = proxy_fixture(RegistryAuth::Anonymous).await;
    let m = "/v2/app/manifests/v1";
    f.proxy
        .add_rule(Rule::new("/manifests/", Fault::too_many(Some("2"))).times(1));
    f.proxy
        .add_rule(Rule::new("/manifests/", Fault::too_many(None)).times(1));
    f.proxy
        .add_rule(Rule::new("/manifests/", Fault::status(503)).method("HEAD"));
    let r = f.get("GET", m).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
    let v = json_of(r).await;
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    let r = f.get("GET", m).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), None);
    // Both times-limited rules are used up now.
    assert_eq!(f.get("GET", m).await.unwrap().status(), 200);
    for _ in 0..3 {
        assert_eq!(f.get("HEAD", m).await.unwrap().status(), 503);
    }
    assert_eq!(f.proxy.rule_hits(), vec![1, 1, 3]);
    // Faulted requests are counted too.
    assert_eq!(f.proxy.count("GET", Kind::Manifest), 3);
    assert_eq!(f.proxy.count("HEAD", Kind::Manifest), 3);
    f.proxy.clear_rules();
    assert_eq!(f.get("HEAD", m).await.unwrap().status(), 200);
    f.proxy.add_rule(Rule::kind(Kind::Blob, Fault::status(500)));
    let blob = format!("/v2/app/blobs/{}", f.img.config_digest);
    assert_eq!(f.get("GET", &blob).await.unwrap().status(), 500);
    assert_eq!(f.get("GET", m).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_delay_reset_truncate() {
    let f = proxy_fixture(RegistryAuth::Anonymous).await;
    let m = "/v2/app/manifests/v1";
    f.proxy
        .add_rule(Rule::new("/manifests/v1", Fault::delay_ms(400)).times(1));
    let t = Instant::now();
    let r = f.get("GET", m).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(r.bytes().await.unwrap().len(), f.img.manifest_bytes.len());

    f.proxy
        .add_rule(Rule::new("/manifests/v1", Fault::Reset).times(1));
    let err = f.get("GET", m).await.expect_err("reset must fail");
    assert!(!err.is_status(), "{err}");
    assert_eq!(f.get("GET", m).await.unwrap().status(), 200);

    f.proxy
        .add_rule(Rule::new("/manifests/v1", Fault::TruncateBody { keep: 10 }).times(1));
    let r = f.get("GET", m).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(f.img.manifest_bytes.len().to_string())
    );
    assert!(r.bytes().await.is_err(), "truncated body must error");

    f.proxy.add_rule(
        Rule::new(
            "/manifests/v1",
            Fault::SlowBody {
                chunk: 100,
                pause: Duration::from_millis(50),
            },
        )
        .times(1),
    );
    let t = Instant::now();
    let r = f.get("GET", m).await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        f.img.manifest_bytes.as_slice()
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_body_and_header_faults() {
    let f = proxy_fixture(RegistryAuth::Token).await;
    let m = "/v2/app/manifests/v1";
    // The proxy passes token challenges through; fetch a token and use it.
    let tok = user_token(&f.reg, "app").await;
    let get = |path: &str| {
        f.client
            .get(format!("{}{path}", f.proxy.base_url()))
            .header("accept", ACCEPT_MANIFESTS)
            .bearer_auth(&tok)
            .send()
    };
    f.proxy
        .add_rule(Rule::new("/manifests/", Fault::DropDigestHeader).times(1));
    let r = get(m).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), None);
    let r = get(m).await.unwrap();
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(f.img.digest.as_str())
    );

    f.proxy
        .add_rule(Rule::new("/manifests/", Fault::CorruptBody).times(1));
    let r = get(m).await.unwrap();
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(f.img.digest.as_str())
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), f.img.manifest_bytes.len());
    assert_ne!(body.as_ref(), f.img.manifest_bytes.as_slice());
    assert_ne!(sha256_digest(&body), f.img.digest);

    f.proxy.add_rule(
        Rule::new(
            "/manifests/",
            Fault::ReplaceBody {
                body: b"{}".to_vec(),
                content_type: Some("application/json".into()),
            },
        )
        .times(1),
    );
    let r = get(m).await.unwrap();
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"{}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_paginates_tags_both_link_styles() {
    let reg = Registry::start(RegistryAuth::Basic);
    let p = reg.pusher();
    let img = p
        .push_image("pages", "t00", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let mut expected = vec!["t00".to_string()];
    for i in 1..23 {
        let t = format!("t{i:02}");
        p.tag_existing("pages", &img, &t).await;
        expected.push(t);
    }
    expected.sort();
    let proxy = FaultProxy::start(&reg.base_url(), None);
    let client = http_client(None);
    let get_as_user = |url: String| {
        client
            .get(url)
            .basic_auth(TEST_USER, Some(CANARY_PASSWORD))
            .send()
    };
    for style in [LinkStyle::Relative, LinkStyle::Absolute] {
        proxy.paginate_tags(5, style);
        proxy.reset_counts();
        let mut url = format!("{}/v2/pages/tags/list", proxy.base_url());
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let r = get_as_user(url.clone()).await.unwrap();
            assert_eq!(r.status(), 200);
            pages += 1;
            let link = header(&r, "link");
            let v = json_of(r).await;
            assert_eq!(v["name"], "pages");
            let tags = v["tags"].as_array().unwrap();
            assert!(tags.len() <= 5);
            all.extend(tags.iter().map(|t| t.as_str().unwrap().to_string()));
            let Some(link) = link else { break };
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(t, _)| t.to_string())
                .unwrap_or_else(|| panic!("bad link {link}"));
            match style {
                LinkStyle::Relative => {
                    assert!(target.starts_with("/v2/pages/tags/list?last="), "{target}");
                    url = format!("{}{target}", proxy.base_url());
                }
                LinkStyle::Absolute => {
                    assert!(target.starts_with(&proxy.base_url()), "{target}");
                    url = target;
                }
            }
        }
        assert_eq!(all, expected);
        assert_eq!(pages, 5);
        assert_eq!(proxy.count("GET", Kind::TagList), 5);
    }
    // n smaller than the page size; last= continues after the given tag.
    let r = get_as_user(format!(
        "{}/v2/pages/tags/list?n=2&last=t10",
        proxy.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(
        header(&r, "link").as_deref(),
        Some(
            format!(
                "<{}/v2/pages/tags/list?last=t12&n=2>; rel=\"next\"",
                proxy.base_url()
            )
            .as_str()
        )
    );
    let v = json_of(r).await;
    assert_eq!(v["tags"], serde_json::json!(["t11", "t12"]));
    // Upstream errors pass through.
    let r = client
        .get(format!("{}/v2/pages/tags/list", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    proxy.stop_paginating();
    let r = get_as_user(format!("{}/v2/pages/tags/list?n=2", proxy.base_url()))
        .await
        .unwrap();
    let v = json_of(r).await;
    assert_eq!(
        v["tags"].as_array().unwrap().len(),
        23,
        "registry ignores n="
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_in_front_of_tls_registry() {
    let reg = Registry::start_tls(RegistryAuth::Anonymous);
    let img = reg
        .pusher()
        .push_image("app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let proxy = FaultProxy::start(&reg.base_url(), reg.ca_pem().as_deref());
    let r = http_client(None)
        .get(format!("{}/v2/app/manifests/v1", proxy.base_url()))
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
    let host = proxy.host();
    drop(proxy);
    assert!(std::net::TcpStream::connect(host).is_err());
}

#[test]
fn free_port_and_sync_start() {
    let p = free_port();
    assert!(p > 0);
    // Sync starts work outside any runtime as well.
    let reg = Registry::start(RegistryAuth::Token);
    assert_eq!(
        blocking_http_status(&reg.host(), "/v2/", Duration::from_secs(2)),
        Some(401)
    );
    let proxy = FaultProxy::start(&reg.base_url(), None);
    assert_eq!(
        blocking_http_status(&proxy.host(), "/v2/", Duration::from_secs(2)),
        Some(401)
    );
    assert_eq!(proxy.count("GET", Kind::Ping), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_notifications_reach_webhook_sink() {
    let sink = WebhookSink::start();
    let reg = Registry::start_with(
        RegistryAuth::Anonymous,
        false,
        Some(&sink.registry_config()),
    );
    let img = reg
        .pusher()
        .push_image("notify/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let events = sink
        .wait_for(Duration::from_secs(10), |ev| {
            ev.iter().any(|e| {
                e["action"] == "push"
                    && e["target"]["repository"] == "notify/app"
                    && e["target"]["tag"] == "v1"
            })
        })
        .await;
    let push = events
        .iter()
        .find(|e| e["action"] == "push" && e["target"]["tag"] == "v1")
        .unwrap_or_else(|| panic!("no push event; got {events:?}; log {}", reg.log()));
    assert_eq!(push["target"]["digest"], img.digest.as_str());
    // regcache's webhook tells a manifest push from the blob pushes before it by the URL.
    let url = |e: &serde_json::Value| e["target"]["url"].as_str().unwrap_or_default().to_string();
    assert!(url(push).contains("/v2/notify/app/manifests/"), "{push}");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "push" && url(e).contains("/v2/notify/app/blobs/")),
        "the blob pushes are reported too: {events:#?}"
    );
    let d = &sink.deliveries()[0];
    assert_eq!(d.method, "POST");
    assert_eq!(d.headers.get("x-test").unwrap(), "regcache");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_stop_and_restart_keep_port_and_data() {
    let mut reg = Registry::start(RegistryAuth::Token);
    let p = reg.pusher();
    let img = p
        .push_image("keep", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let proxy = reg.fault_proxy();
    reg.stop();
    assert!(!reg.is_running());
    // Through the proxy, a dead upstream looks like a dropped connection.
    let r = http_client(None)
        .get(format!("{}/v2/", proxy.base_url()))
        .send()
        .await;
    assert!(r.is_err());
    reg.restart();
    assert!(reg.is_running());
    let (status, _, d, _) = p.get_manifest("keep", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(d.as_deref(), Some(img.digest.as_str()));
}

/// Everything also works from a current-thread runtime (the default `#[tokio::test]`).
#[tokio::test]
async fn works_on_current_thread_runtime() {
    let reg = Registry::start_tls(RegistryAuth::Token);
    let p = reg.pusher();
    let img = p
        .push_image(
            "ct",
            "v1",
            &ImageSpec::new(ManifestKind::Docker).created("2020-01-01T00:00:00Z"),
        )
        .await;
    let proxy = reg.fault_proxy();
    proxy.add_rule(Rule::new("/manifests/", Fault::too_many(Some("1"))).times(1));
    let via = Pusher::new(&proxy.base_url(), reg.credentials(), None);
    assert_eq!(via.get_manifest("ct", "v1").await.0, 429);
    let (status, _, d, _) = via.get_manifest("ct", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(d.as_deref(), Some(img.digest.as_str()));
    let mc = Memcached::start();
    assert!(mc.set("a", b"1", 0));
    drop(proxy);
    drop(reg);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_server_can_fail() {
    let reg = Registry::start(RegistryAuth::Token);
    let ts = reg.token_server().unwrap();
    ts.fail_with(Some(503));
    let r = bearer(&reg, "x", Some((TEST_USER, CANARY_PASSWORD))).await;
    assert_eq!(r.status(), 503);
    ts.fail_with(None);
    let before = ts.issued();
    user_token(&reg, "x").await;
    assert_eq!(ts.issued(), before + 1);
    assert_eq!(ts.requests(), 2);
}

/// Cross-check with skopeo (installed by scripts/test.sh) that pushed images are
/// well-formed.
#[tokio::test(flavor = "multi_thread")]
async fn skopeo_accepts_pushed_images() {
    let version = std::process::Command::new("skopeo")
        .arg("--version")
        .output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "skopeo is missing: scripts/test.sh installs it (apt-get install skopeo)"
    );
    let reg = Registry::start(RegistryAuth::Basic);
    let p = reg.pusher();
    let img = p
        .push_image(
            "sk/app",
            "v1",
            &ImageSpec::new(ManifestKind::Docker).label("x", "y"),
        )
        .await;
    let idx = p
        .push_index(
            "sk/app",
            "multi",
            IndexKind::Oci,
            &PlatformSpec::default_set(),
        )
        .await;
    let creds = format!("--creds={TEST_USER}:{CANARY_PASSWORD}");
    let inspect = |args: Vec<String>| {
        let out = std::process::Command::new("skopeo")
            .arg("inspect")
            .arg("--tls-verify=false")
            .arg(&creds)
            .args(args)
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = inspect(vec![format!("docker://{}/sk/app:v1", reg.host())]);
    assert_eq!(v["Digest"], img.digest.as_str());
    assert_eq!(v["Created"], "2024-03-01T12:00:00Z");
    assert_eq!(v["Labels"]["x"], "y");
    assert_eq!(v["Architecture"], "amd64");
    let v = inspect(vec![
        "--override-arch=arm".into(),
        "--override-variant=v7".into(),
        format!("docker://{}/sk/app:multi", reg.host()),
    ]);
    assert_eq!(v["Digest"], idx.digest.as_str());
    assert_eq!(v["Architecture"], "arm");
    // (Debian's skopeo prints no Variant; Created identifies the arm/v7 child.)
    assert_eq!(v["Created"], idx.children[2].created.as_deref().unwrap());
}
