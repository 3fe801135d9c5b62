//! The registry client against the real distribution registry (every auth mode, TLS,
//! every manifest kind) and against the fault proxy in front of it.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use regcache::credentials::Credential;
use regcache::image::{Digest, Platform, Reference, Repository};
use regcache::registry::limiter::LimiterSettings;
use regcache::registry::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
use regcache::registry::{
    ClientOptions, Endpoint, Error, RegistryClient, RepositoryClient, RequestKind,
};
use support::{
    CANARY_PASSWORD, Fault, ImageSpec, IndexKind, Kind, LinkStyle, ManifestKind, PlatformSpec,
    Registry, RegistryAuth, Rule, TEST_USER,
};

/// Options for tests: short back-offs, a limiter that does not slow the test down.
fn options() -> ClientOptions {
    ClientOptions {
        retry_backoff: Duration::from_millis(10),
        request_timeout: Duration::from_secs(10),
        limiter: LimiterSettings {
            max_rate: 10_000.0,
            burst: 1_000.0,
            ..LimiterSettings::default()
        },
        ..ClientOptions::default()
    }
}

fn repo(host: &str, path: &str) -> Repository {
    Repository::parse(&format!("{host}/{path}")).unwrap()
}

fn endpoint(registry: &Registry) -> Endpoint {
    Endpoint {
        insecure: !registry.is_tls(),
        ca_pem: registry.ca_pem().map(Arc::new),
    }
}

fn right_credential(registry: &Registry) -> Credential {
    match registry.credentials() {
        Some((u, p)) => Credential::basic(u, p),
        None => Credential::Anonymous,
    }
}

/// A client for `path` at `host` (a registry or a proxy in front of it).
fn client_at(
    options: ClientOptions,
    host: &str,
    path: &str,
    credential: Credential,
    endpoint: &Endpoint,
) -> (RegistryClient, RepositoryClient) {
    let client = RegistryClient::new(options);
    let rc = client
        .repository(&repo(host, path), credential, endpoint)
        .unwrap();
    (client, rc)
}

fn client_for(registry: &Registry, path: &str) -> (RegistryClient, RepositoryClient) {
    client_at(
        options(),
        &registry.host(),
        path,
        right_credential(registry),
        &endpoint(registry),
    )
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn tag(t: &str) -> Reference {
    Reference::Tag(t.to_string())
}

fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn single_platform_oci_and_docker_manifests() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let oci = pusher
        .push_image("team/app", "oci", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let docker = pusher
        .push_image(
            "team/app",
            "docker",
            &ImageSpec::new(ManifestKind::Docker)
                .platform(PlatformSpec::linux("arm", Some("v7")))
                .created("2023-05-06T07:08:09Z")
                .label("maintainer", "someone"),
        )
        .await;
    let (_, rc) = client_for(&registry, "team/app");

    let m = rc.inspect(&tag("oci"), &[]).await.unwrap();
    assert_eq!(m.canonical_name, format!("{}/team/app", registry.host()));
    assert_eq!(m.tag.as_deref(), Some("oci"));
    assert_eq!(m.digest, digest(&oci.digest));
    assert_eq!(m.media_type, OCI_MANIFEST);
    assert_eq!(m.created.unwrap().to_rfc3339(), "2024-03-01T12:00:00+00:00");
    assert_eq!(
        m.labels
            .get("org.opencontainers.image.created")
            .map(String::as_str),
        Some("2024-03-02T00:00:00Z")
    );
    assert_eq!(
        m.labels
            .get("org.label-schema.build-date")
            .map(String::as_str),
        Some("2024-03-03T00:00:00Z")
    );
    assert_eq!(m.platforms.len(), 1);
    assert_eq!(m.platforms[0].platform, Some(platform("linux/amd64")));
    assert_eq!(
        m.platforms[0].config_digest,
        Some(digest(&oci.config_digest))
    );
    assert!(!m.platforms[0].config_missing);

    let d = rc.inspect(&tag("docker"), &[]).await.unwrap();
    assert_eq!(d.digest, digest(&docker.digest));
    assert_eq!(d.media_type, DOCKER_MANIFEST);
    assert_eq!(d.created.unwrap().to_rfc3339(), "2023-05-06T07:08:09+00:00");
    assert_eq!(
        d.labels.get("maintainer").map(String::as_str),
        Some("someone")
    );
    assert_eq!(d.platforms[0].platform, Some(platform("linux/arm/v7")));

    // By digest gives the same answer, without a tag.
    let by_digest = rc
        .inspect(&Reference::Digest(digest(&docker.digest)), &[])
        .await
        .unwrap();
    assert_eq!(by_digest.tag, None);
    assert_eq!(by_digest.platforms, d.platforms);
}

#[tokio::test(flavor = "multi_thread")]
async fn indexes_and_manifest_lists_with_platform_selection() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let proxy = registry.fault_proxy();
    for (kind, tag_name, media_type) in [
        (IndexKind::Oci, "oci-index", OCI_INDEX),
        (IndexKind::DockerList, "docker-list", DOCKER_MANIFEST_LIST),
    ] {
        let pushed = pusher
            .push_index("multi", tag_name, kind, &PlatformSpec::default_set())
            .await;
        let (_, rc) = client_at(
            options(),
            &proxy.host(),
            "multi",
            Credential::Anonymous,
            &Endpoint {
                insecure: true,
                ca_pem: None,
            },
        );
        proxy.reset_counts();
        let all = rc.inspect(&tag(tag_name), &[]).await.unwrap();
        assert_eq!(all.media_type, media_type);
        assert_eq!(all.digest, digest(&pushed.digest));
        let got: Vec<String> = all
            .platforms
            .iter()
            .map(|p| p.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "linux/amd64",
                "linux/arm64",
                "linux/arm/v7",
                "windows/amd64"
            ]
        );
        for (child, pushed_child) in all.platforms.iter().zip(&pushed.children) {
            assert_eq!(child.digest, digest(&pushed_child.digest));
            assert_eq!(
                child.created.map(|c| c.to_rfc3339()),
                pushed_child
                    .created
                    .as_ref()
                    .map(|c| chrono::DateTime::parse_from_rfc3339(c)
                        .unwrap()
                        .to_rfc3339())
            );
        }
        assert_eq!(
            all.platforms[3].os_version.as_deref(),
            Some("10.0.17763.5458")
        );
        // The index's created time is its newest platform's.
        assert_eq!(
            all.created,
            all.platforms.iter().filter_map(|p| p.created).max()
        );
        // One GET for the index, one per child manifest, one per config.
        assert_eq!(proxy.count("GET", Kind::Manifest), 5, "{kind:?}");
        assert_eq!(proxy.count("GET", Kind::Blob), 4, "{kind:?}");

        proxy.reset_counts();
        let arm = rc
            .inspect(
                &tag(tag_name),
                &[platform("linux/arm64/v8"), platform("linux/arm")],
            )
            .await
            .unwrap();
        let got: Vec<String> = arm
            .platforms
            .iter()
            .map(|p| p.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(got, ["linux/arm64", "linux/arm/v7"]);
        assert_eq!(arm.platforms[0].digest, digest(&pushed.children[1].digest));
        assert_eq!(
            proxy.count("GET", Kind::Manifest),
            3,
            "wanted platforms only"
        );
        assert_eq!(proxy.count("GET", Kind::Blob), 2);

        let err = rc
            .inspect(&tag(tag_name), &[platform("linux/s390x")])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PlatformNotFound { .. }), "{err}");
        assert!(err.to_string().contains("linux/arm/v7"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_from_container_config_and_missing_config_blob() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    pusher
        .push_image(
            "odd",
            "old-docker",
            &ImageSpec::new(ManifestKind::Docker)
                .use_container_config(true)
                .label("built-by", "legacy"),
        )
        .await;
    let missing = pusher
        .push_image(
            "odd",
            "no-config",
            &ImageSpec::new(ManifestKind::Oci).missing_config(true),
        )
        .await;
    let (_, rc) = client_for(&registry, "odd");

    let old = rc.inspect(&tag("old-docker"), &[]).await.unwrap();
    assert_eq!(
        old.labels.get("built-by").map(String::as_str),
        Some("legacy")
    );

    let m = rc.inspect(&tag("no-config"), &[]).await.unwrap();
    assert_eq!(m.digest, digest(&missing.digest));
    assert!(m.platforms[0].config_missing);
    assert_eq!(m.created, None);
    assert!(m.labels.is_empty());
    assert!(matches!(
        rc.get_config(&digest(&missing.config_digest)).await,
        Err(Error::BlobUnknown { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_and_signature_tags() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let image = pusher
        .push_image("alias", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    pusher
        .alias_tags("alias", &image, &["latest", "1", "1.0"])
        .await;
    let sig = pusher.push_signature_tag("alias", &image.digest).await;
    let (client, rc) = client_for(&registry, "alias");

    let mut tags = rc.list_tags().await.unwrap();
    tags.sort();
    let sig_tag = format!("sha256-{}.sig", image.digest.trim_start_matches("sha256:"));
    assert_eq!(tags, ["1", "1.0", "latest", sig_tag.as_str(), "v1"]);
    for t in ["v1", "latest", "1", "1.0"] {
        let head = rc.head_manifest(&tag(t)).await.unwrap();
        assert_eq!(head.digest, digest(&image.digest), "{t}");
        assert!(head.fetched.is_none(), "HEAD alone answered");
        assert_eq!(head.media_type.as_deref(), Some(OCI_MANIFEST));
    }
    let s = rc.inspect(&tag(&sig_tag), &[]).await.unwrap();
    assert_eq!(s.digest, digest(&sig.digest));
    assert_eq!(client.stats().get(RequestKind::ManifestHead), 4);
    assert_eq!(client.stats().get(RequestKind::ManifestGet), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_right_wrong_and_missing_credentials() {
    let registry = Registry::start(RegistryAuth::Basic);
    registry
        .pusher()
        .push_image("private/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let (_, rc) = client_for(&registry, "private/app");
    assert_eq!(rc.list_tags().await.unwrap(), ["v1"]);
    assert_eq!(
        rc.inspect(&tag("v1"), &[]).await.unwrap().platforms.len(),
        1
    );

    for credential in [
        Credential::basic(TEST_USER, "wrong-password"),
        Credential::Anonymous,
    ] {
        let (_, rc) = client_at(
            options(),
            &registry.host(),
            "private/app",
            credential,
            &endpoint(&registry),
        );
        let err = rc.list_tags().await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&registry.host()) && msg.contains("401"),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_auth_caches_and_renews_tokens() {
    let registry = Registry::start(RegistryAuth::Token);
    let pusher = registry.pusher();
    pusher
        .push_index(
            "tok/app",
            "multi",
            IndexKind::Oci,
            &PlatformSpec::default_set(),
        )
        .await;
    pusher
        .push_image("tok/app", "single", &ImageSpec::new(ManifestKind::Docker))
        .await;
    let tokens = registry.token_server().unwrap();
    tokens.reset_counts();

    let (client, rc) = client_for(&registry, "tok/app");
    let mut tags = rc.list_tags().await.unwrap();
    tags.sort();
    assert_eq!(tags, ["multi", "single"]);
    let m = rc.inspect(&tag("multi"), &[]).await.unwrap();
    assert_eq!(m.platforms.len(), 4);
    rc.inspect(&tag("single"), &[]).await.unwrap();
    assert_eq!(
        tokens.issued(),
        1,
        "one token serves every request of the scope"
    );
    assert_eq!(client.cached_tokens(), 1);
    assert_eq!(client.stats().get(RequestKind::Ping), 1);

    // Concurrent first requests from a new client share one ping and one token.
    tokens.reset_counts();
    let (client, rc) = client_for(&registry, "tok/app");
    let single = tag("single");
    let heads = (0..16).map(|_| rc.head_manifest(&single));
    for head in futures::future::join_all(heads).await {
        head.unwrap();
    }
    assert_eq!(tokens.issued(), 1);
    assert_eq!(client.stats().get(RequestKind::Ping), 1);
    assert_eq!(client.stats().get(RequestKind::Token), 1);

    // A short-lived token is renewed before it lapses.
    tokens.reset_counts();
    tokens.set_expires_in(1);
    let (_, rc) = client_for(&registry, "tok/app");
    rc.head_manifest(&tag("single")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rc.head_manifest(&tag("single")).await.unwrap();
    assert_eq!(tokens.issued(), 2);

    // A token endpoint that fails for a moment is retried; one that keeps failing is
    // reported as a server error at the realm's host.
    tokens.fail_with(Some(503));
    let (_, rc) = client_for(&registry, "tok/app");
    let err = rc.list_tags().await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { host, .. } if *host == tokens.host()),
        "{err}"
    );
    tokens.fail_with(None);
    assert_eq!(rc.list_tags().await.unwrap().len(), 2);

    // Wrong password: the token endpoint refuses. No credentials: the token carries no
    // access and the registry refuses.
    for credential in [
        Credential::basic(TEST_USER, "wrong-password"),
        Credential::Anonymous,
    ] {
        let (_, rc) = client_at(
            options(),
            &registry.host(),
            "tok/app",
            credential.clone(),
            &endpoint(&registry),
        );
        let err = rc.inspect(&tag("single"), &[]).await.unwrap_err();
        assert!(
            matches!(err, Error::Unauthorized { .. }),
            "{credential:?}: {err}"
        );
        assert!(err.to_string().contains(&registry.host()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_registry_tokens() {
    let registry = Registry::start(RegistryAuth::Token);
    let pushed = registry
        .pusher()
        .push_image("tok/id", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let tokens = registry.token_server().unwrap();

    // docker config `identitytoken`: exchanged at the realm by the refresh-token grant.
    let identity = Credential::IdentityToken {
        username: TEST_USER.to_string(),
        token: regcache::credentials::Secret::new(CANARY_PASSWORD),
    };
    let (_, rc) = client_at(
        options(),
        &registry.host(),
        "tok/id",
        identity,
        &endpoint(&registry),
    );
    assert_eq!(
        rc.head_manifest(&tag("v1")).await.unwrap().digest,
        digest(&pushed.digest)
    );
    assert!(
        tokens
            .request_log()
            .iter()
            .any(|r| r.method == "POST" && r.authenticated)
    );

    // docker config `registrytoken`: sent as the bearer token directly, no token request.
    let minted = tokens.mint(
        TEST_USER,
        &[("tok/id".to_string(), vec!["pull".to_string()])],
    );
    tokens.reset_counts();
    let (client, rc) = client_at(
        options(),
        &registry.host(),
        "tok/id",
        Credential::RegistryToken(regcache::credentials::Secret::new(minted)),
        &endpoint(&registry),
    );
    assert_eq!(rc.list_tags().await.unwrap(), ["v1"]);
    assert_eq!(client.stats().get(RequestKind::Token), 0);
    assert_eq!(tokens.requests(), 0);

    // A refused registry token is reported, not retried forever.
    let (_, rc) = client_at(
        options(),
        &registry.host(),
        "tok/id",
        Credential::RegistryToken(regcache::credentials::Secret::new("not-a-token")),
        &endpoint(&registry),
    );
    assert!(matches!(
        rc.list_tags().await,
        Err(Error::Unauthorized { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_custom_ca() {
    for auth in [RegistryAuth::Anonymous, RegistryAuth::Basic] {
        let registry = Registry::start_tls(auth);
        let pushed = registry
            .pusher()
            .push_image("secure", "v1", &ImageSpec::new(ManifestKind::Oci))
            .await;
        let (_, rc) = client_for(&registry, "secure");
        assert_eq!(
            rc.inspect(&tag("v1"), &[]).await.unwrap().digest,
            digest(&pushed.digest)
        );

        // Without the CA the certificate is not trusted, and the error says TLS.
        let (_, rc) = client_at(
            options(),
            &registry.host(),
            "secure",
            right_credential(&registry),
            &Endpoint::default(),
        );
        let err = rc.list_tags().await.unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
    }
    let client = RegistryClient::new(options());
    let err = client
        .repository(
            &repo("127.0.0.1:1", "x"),
            Credential::Anonymous,
            &Endpoint {
                insecure: false,
                ca_pem: Some(Arc::new(b"-----BEGIN CERTIFICATE-----\nnope\n".to_vec())),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCa { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paginated_tag_lists_with_relative_and_absolute_links() {
    let registry = Registry::start(RegistryAuth::Basic);
    registry.pusher().push_many("many", 25, 5).await;
    let proxy = registry.fault_proxy();
    for style in [LinkStyle::Relative, LinkStyle::Absolute] {
        proxy.paginate_tags(10, style);
        proxy.reset_counts();
        let (_, rc) = client_at(
            options(),
            &proxy.host(),
            "many",
            right_credential(&registry),
            &endpoint(&registry),
        );
        let tags = rc.list_tags().await.unwrap();
        let want: Vec<String> = (0..25).map(|i| format!("tag-{i:05}")).collect();
        assert_eq!(tags, want, "{style:?}");
        assert_eq!(proxy.count("GET", Kind::TagList), 3, "{style:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_repository_and_manifest() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry
        .pusher()
        .push_image("known", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let (_, rc) = client_for(&registry, "does/not/exist");
    assert!(matches!(
        rc.list_tags().await,
        Err(Error::NameUnknown { .. })
    ));
    let (_, rc) = client_for(&registry, "known");
    let err = rc.get_manifest(&tag("nope")).await.unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(matches!(
        rc.head_manifest(&tag("nope")).await,
        Err(Error::ManifestUnknown { .. })
    ));
    let absent = Digest::sha256_of(b"absent");
    assert!(matches!(
        rc.get_manifest(&Reference::Digest(absent)).await,
        Err(Error::ManifestUnknown { .. })
    ));
}

/// A registry with one image behind the fault proxy, and a client pointed at the proxy.
async fn faulty(auth: RegistryAuth) -> (Registry, support::FaultProxy, support::PushedImage) {
    let registry = Registry::start(auth);
    let image = registry
        .pusher()
        .push_image("flaky", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let proxy = registry.fault_proxy();
    (registry, proxy, image)
}

fn proxied(
    registry: &Registry,
    proxy: &support::FaultProxy,
    options: ClientOptions,
) -> (RegistryClient, RepositoryClient) {
    client_at(
        options,
        &proxy.host(),
        "flaky",
        right_credential(registry),
        &endpoint(registry),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_with_retry_after_is_waited_out_and_halves_the_rate() {
    let (registry, proxy, image) = faulty(RegistryAuth::Anonymous).await;
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::too_many(Some("1"))).times(1));
    let (client, rc) = proxied(&registry, &proxy, options());
    let before = client.limiter(&proxy.host()).rate();
    let started = Instant::now();
    let m = rc.inspect(&tag("v1"), &[]).await.unwrap();
    assert_eq!(m.digest, digest(&image.digest));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    assert_eq!(client.limiter(&proxy.host()).rate(), before / 2.0);
    assert_eq!(proxy.count("GET", Kind::Manifest), 2);

    // A pause longer than the client will wait ends the request with a typed error that
    // carries the pause, for the caller to resume later.
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::too_many(Some("3600"))));
    let err = rc.inspect(&tag("v1"), &[]).await.unwrap_err();
    match &err {
        Error::RateLimited { retry_after, host } => {
            assert_eq!(host, &proxy.host());
            assert!(retry_after.unwrap() > Duration::from_secs(60), "{err}");
        }
        other => panic!("expected RateLimited, got {other}"),
    }
    assert!(client.limiter(&proxy.host()).closed_for().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_without_retry_after_backs_off_then_succeeds() {
    let (registry, proxy, _) = faulty(RegistryAuth::Anonymous).await;
    proxy.add_rule(Rule::kind(Kind::TagList, Fault::too_many(None)).times(1));
    let (client, rc) = proxied(&registry, &proxy, options());
    let started = Instant::now();
    assert_eq!(rc.list_tags().await.unwrap(), ["v1"]);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "default back-off of 1s"
    );
    assert!(client.limiter(&proxy.host()).rate() < options().limiter.max_rate);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_then_reported() {
    let (registry, proxy, image) = faulty(RegistryAuth::Anonymous).await;
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::unavailable(None)).times(2));
    let (_, rc) = proxied(&registry, &proxy, options());
    assert_eq!(
        rc.inspect(&tag("v1"), &[]).await.unwrap().digest,
        digest(&image.digest)
    );

    for code in [500, 502, 503] {
        proxy.clear_rules();
        proxy.add_rule(Rule::kind(Kind::Blob, Fault::status(code)));
        proxy.reset_counts();
        let err = rc.inspect(&tag("v1"), &[]).await.unwrap_err();
        assert!(
            matches!(err, Error::Server { status, .. } if status.as_u16() == code),
            "{err}"
        );
        assert_eq!(
            proxy.count("GET", Kind::Blob),
            3,
            "first try and two retries"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_resets_and_truncated_bodies() {
    let (registry, proxy, image) = faulty(RegistryAuth::Anonymous).await;
    let (_, rc) = proxied(&registry, &proxy, options());
    let manifest_get = || Rule::kind(Kind::Manifest, Fault::Reset).method("GET");

    proxy.add_rule(manifest_get().times(1));
    assert_eq!(
        rc.inspect(&tag("v1"), &[]).await.unwrap().digest,
        digest(&image.digest)
    );

    proxy.clear_rules();
    proxy.add_rule(manifest_get());
    let err = rc.inspect(&tag("v1"), &[]).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");

    proxy.clear_rules();
    proxy.add_rule(Rule::kind(Kind::Blob, Fault::TruncateBody { keep: 10 }).times(1));
    assert!(
        rc.inspect(&tag("v1"), &[]).await.is_ok(),
        "retried after truncation"
    );

    proxy.clear_rules();
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::TruncateBody { keep: 10 }).method("GET"));
    let err = rc.inspect(&tag("v1"), &[]).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_registry_times_out() {
    let (registry, proxy, _) = faulty(RegistryAuth::Anonymous).await;
    proxy.add_rule(Rule::kind(
        Kind::Manifest,
        Fault::Delay(Duration::from_secs(5)),
    ));
    let (_, rc) = proxied(
        &registry,
        &proxy,
        ClientOptions {
            request_timeout: Duration::from_millis(300),
            retries: 0,
            ..options()
        },
    );
    let err = rc.head_manifest(&tag("v1")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");

    proxy.clear_rules();
    proxy.add_rule(Rule::kind(
        Kind::Blob,
        Fault::SlowBody {
            chunk: 16,
            pause: Duration::from_millis(200),
        },
    ));
    let err = rc.inspect(&tag("v1"), &[]).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_digest_header_falls_back_to_get() {
    let (registry, proxy, image) = faulty(RegistryAuth::Anonymous).await;
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::DropDigestHeader));
    let (_, rc) = proxied(&registry, &proxy, options());
    proxy.reset_counts();
    let head = rc.head_manifest(&tag("v1")).await.unwrap();
    assert_eq!(head.digest, digest(&image.digest));
    let fetched = head.fetched.expect("fell back to GET");
    assert_eq!(fetched.bytes.as_ref(), image.manifest_bytes.as_slice());
    assert_eq!(proxy.count("HEAD", Kind::Manifest), 1);
    assert_eq!(proxy.count("GET", Kind::Manifest), 1);
    // GET by tag without a header: the digest is computed from the body.
    assert_eq!(
        rc.get_manifest(&tag("v1")).await.unwrap().digest,
        digest(&image.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_content_fails_digest_verification() {
    let (registry, proxy, _) = faulty(RegistryAuth::Anonymous).await;
    let (_, rc) = proxied(&registry, &proxy, options());
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::CorruptBody).method("GET"));
    let err = rc.get_manifest(&tag("v1")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DigestMismatch {
                what: "manifest",
                ..
            } | Error::Invalid { .. }
        ),
        "{err}"
    );
    proxy.clear_rules();
    proxy.add_rule(Rule::kind(Kind::Blob, Fault::CorruptBody));
    let err = rc.inspect(&tag("v1"), &[]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DigestMismatch {
                what: "config blob",
                ..
            } | Error::Invalid { .. }
        ),
        "{err}"
    );
    // A body that parses but is not what was asked for.
    proxy.clear_rules();
    let other = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    proxy.add_rule(Rule::kind(
        Kind::Manifest,
        Fault::ReplaceBody {
            body: other.to_vec(),
            content_type: None,
        },
    ));
    let err = rc.get_manifest(&tag("v1")).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_cap_are_refused() {
    let (registry, proxy, _) = faulty(RegistryAuth::Anonymous).await;
    let (_, rc) = proxied(
        &registry,
        &proxy,
        ClientOptions {
            max_manifest_bytes: 64,
            ..options()
        },
    );
    let err = rc.get_manifest(&tag("v1")).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 64, .. }), "{err}");
}

/// Collects everything the client logs, at trace level, into a buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn canary_password_never_appears_in_logs_or_errors() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread, so every task logs into the subscriber set above.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut shown = String::new();
    rt.block_on(async {
        for auth in [RegistryAuth::Basic, RegistryAuth::Token] {
            let registry = Registry::start(auth);
            registry
                .pusher()
                .push_image("secret/app", "v1", &ImageSpec::new(ManifestKind::Oci))
                .await;
            let proxy = registry.fault_proxy();
            proxy.add_rule(Rule::kind(Kind::Blob, Fault::status(500)));
            for credential in [
                Credential::basic(TEST_USER, CANARY_PASSWORD),
                Credential::basic(TEST_USER, format!("{CANARY_PASSWORD}-wrong")),
            ] {
                for host in [registry.host(), proxy.host()] {
                    let (client, rc) = client_at(
                        options(),
                        &host,
                        "secret/app",
                        credential.clone(),
                        &endpoint(&registry),
                    );
                    shown.push_str(&format!("{rc:?} {credential:?}\n"));
                    let results = [
                        rc.list_tags().await.map(|t| format!("{t:?}")),
                        rc.inspect(&tag("v1"), &[]).await.map(|m| format!("{m:?}")),
                        rc.head_manifest(&tag("v1")).await.map(|h| format!("{h:?}")),
                    ];
                    for r in results {
                        match r {
                            Ok(s) => shown.push_str(&s),
                            Err(e) => shown
                                .push_str(&format!("{e} {e:?} {}\n", regcache::cli::report(&e))),
                        }
                    }
                    shown.push_str(&format!("{:?}", client.stats().snapshot()));
                }
            }
        }
    });
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        shown.contains("refused the credentials"),
        "the wrong password was exercised"
    );
    assert!(shown.contains("500"), "failures were exercised");
    assert!(logs.len() > 1000, "trace logging captured something");
    for (name, text) in [("errors and debug output", &shown), ("logs", &logs)] {
        assert!(!text.contains(CANARY_PASSWORD), "canary found in {name}");
        let encoded = support::basic_auth_header(TEST_USER, CANARY_PASSWORD);
        assert!(
            !text.contains(encoded.trim_start_matches("Basic ")),
            "encoded canary in {name}"
        );
    }
}

/// `regcache_registry_requests_total` by `(kind, status)` for `host`, from a scrape.
fn requests_by_status(text: &str, host: &str) -> std::collections::BTreeMap<(String, String), f64> {
    let prefix = format!("regcache_registry_requests_total{{host=\"{host}\",");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let (kind, status) = labels.split_once(",")?;
            let unquote = |s: &str, key: &str| {
                s.strip_prefix(key)
                    .and_then(|v| v.strip_prefix("=\""))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string)
            };
            Some((
                (unquote(kind, "kind")?, unquote(status, "status")?),
                value.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_attempt_is_in_the_metrics_with_its_status_or_error() {
    let (registry, proxy, _) = faulty(RegistryAuth::Anonymous).await;
    let metrics = regcache::runtime::Metrics::new();
    let client = RegistryClient::with_metrics(
        ClientOptions {
            request_timeout: Duration::from_millis(500),
            ..options()
        },
        metrics.registry.clone(),
    );
    let rc = client
        .repository(
            &repo(&proxy.host(), "flaky"),
            Credential::Anonymous,
            &endpoint(&registry),
        )
        .unwrap();
    let host = proxy.host();

    // Two 503s, then the GET succeeds.
    proxy.add_rule(
        Rule::kind(Kind::Manifest, Fault::unavailable(None))
            .method("GET")
            .times(2),
    );
    rc.get_manifest(&tag("v1")).await.unwrap();
    // A reset connection: no status, the error's name.
    proxy.clear_rules();
    proxy.add_rule(Rule::kind(Kind::Manifest, Fault::Reset).method("HEAD"));
    rc.head_manifest(&tag("v1")).await.unwrap_err();
    // Too slow: timed out.
    proxy.clear_rules();
    proxy.add_rule(Rule::kind(
        Kind::TagList,
        Fault::Delay(Duration::from_secs(3)),
    ));
    rc.list_tags().await.unwrap_err();

    let by_status = requests_by_status(&metrics.encode(), &host);
    let n = |kind: &str, status: &str| {
        by_status
            .get(&(kind.to_string(), status.to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(n("manifest_get", "503"), 2.0, "{by_status:?}");
    assert_eq!(n("manifest_get", "200"), 1.0, "{by_status:?}");
    assert_eq!(
        n("manifest_head", "transport"),
        3.0,
        "first try and two retries"
    );
    assert_eq!(n("tag_list", "timeout"), 3.0, "{by_status:?}");
    assert_eq!(n("ping", "200"), 1.0);
    // Every attempt the client counted is in the metrics exactly once.
    let total: f64 = by_status.values().sum();
    assert_eq!(total, client.stats().total() as f64, "{by_status:?}");
}

/// Asserts that `foreign` never received a credential: no `Authorization` header, no
/// request to its token realm, and the canary password nowhere in what arrived.
fn assert_nothing_leaked_to(foreign: &support::ForeignHost, case: &str) {
    for r in foreign.received() {
        assert_eq!(
            r.authorization, None,
            "{case}: an Authorization header reached the other origin: {r:?}"
        );
        assert!(
            !r.path_and_query.starts_with("/token"),
            "{case}: the other origin's token realm was asked: {r:?}"
        );
        assert!(
            !r.raw.contains(CANARY_PASSWORD),
            "{case}: the canary password reached the other origin"
        );
    }
}

/// Credentials go only to the origin they belong to. A registry (basic and token auth)
/// behind the fault proxy points the client at another origin — by a tag-list `Link`, by a
/// 3xx of every request kind — and the other origin answers 401 with a challenge naming
/// its own token realm. It must receive no credential, and the client must say which
/// origins were involved instead of merging or authenticating.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_reach_another_origin() {
    for auth in [RegistryAuth::Basic, RegistryAuth::Token] {
        let (registry, proxy, image) = faulty(auth).await;
        let foreign = support::ForeignHost::start();
        let other = foreign.base_url();

        // A tag-list page linking to another origin: an error naming both, no request.
        proxy.add_rule(
            Rule::kind(
                Kind::TagList,
                Fault::Header {
                    name: "link".to_string(),
                    value: format!("<{other}/v2/flaky/tags/list?last=v1&n=100>; rel=\"next\""),
                },
            )
            .times(1),
        );
        let (_, rc) = proxied(&registry, &proxy, options());
        let err = rc.list_tags().await.unwrap_err();
        assert!(matches!(err, Error::CrossOrigin { .. }), "{auth:?}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&proxy.base_url()) && text.contains(&other),
            "{auth:?}: the error names both origins: {text}"
        );
        assert!(
            foreign.received().is_empty(),
            "{auth:?}: the Link target was requested: {:?}",
            foreign.received()
        );
        proxy.clear_rules();

        // Each request kind redirected (both a 302 and a 307) to the other origin.
        let config = digest(&image.config_digest);
        for status in [302, 307] {
            for (kind, method) in [
                (Kind::Ping, "GET"),
                (Kind::TagList, "GET"),
                (Kind::Manifest, "HEAD"),
                (Kind::Manifest, "GET"),
                (Kind::Blob, "GET"),
            ] {
                let case = format!("{auth:?} {status} {method} {kind:?}");
                let before = foreign.received().len();
                proxy.clear_rules();
                proxy.add_rule(
                    Rule::kind(
                        kind,
                        Fault::Redirect {
                            status,
                            base: other.clone(),
                        },
                    )
                    .method(method),
                );
                // A fresh client each time, so the ping (and its challenge) happens anew.
                let (_, rc) = proxied(&registry, &proxy, options());
                let result = match (kind, method) {
                    (Kind::Ping | Kind::TagList, _) => rc.list_tags().await.map(|_| ()),
                    (Kind::Manifest, "HEAD") => rc.head_manifest(&tag("v1")).await.map(|_| ()),
                    (Kind::Manifest, _) => rc.get_manifest(&tag("v1")).await.map(|_| ()),
                    _ => rc.get_config(&config).await.map(|_| ()),
                };
                let err = result.expect_err(&case);
                assert!(matches!(err, Error::CrossOrigin { .. }), "{case}: {err}");
                assert!(
                    foreign.received().len() > before,
                    "{case}: the redirect was not followed at all"
                );
                assert_nothing_leaked_to(&foreign, &case);
            }
        }
        proxy.clear_rules();
        // The same registry, not redirected, still works with the same credentials.
        let (_, rc) = proxied(&registry, &proxy, options());
        assert_eq!(
            rc.head_manifest(&tag("v1")).await.unwrap().digest,
            digest(&image.digest)
        );
    }
}

/// A registry served over HTTPS whose token realm is plain HTTP: the credentials would
/// cross the network in the clear, so regcache refuses (it sends them over plain HTTP only
/// to a registry marked insecure) and says why; the realm receives nothing.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_go_to_a_plain_http_realm_of_an_https_registry() {
    let registry = Registry::start_tls(RegistryAuth::Token);
    registry
        .pusher()
        .push_image("secure", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let tokens = registry.token_server().unwrap();
    assert!(tokens.realm().starts_with("http://"));
    tokens.reset_counts(); // the push above asked for its own token
    let (_, rc) = client_for(&registry, "secure");
    let err = rc.list_tags().await.unwrap_err();
    assert!(matches!(err, Error::InsecureRealm { .. }), "{err}");
    assert!(err.to_string().contains(&tokens.realm()), "{err}");
    assert_eq!(tokens.requests(), 0, "{:?}", tokens.request_log());

    // Anonymous pulls send no credential, so a plain-HTTP realm is still usable for them
    // (the registry then decides what an anonymous token may read).
    let (_, rc) = client_at(
        options(),
        &registry.host(),
        "secure",
        Credential::Anonymous,
        &endpoint(&registry),
    );
    let err = rc.list_tags().await.unwrap_err();
    assert!(
        !matches!(err, Error::InsecureRealm { .. }),
        "anonymous token requests are allowed: {err}"
    );
    assert!(tokens.requests() > 0);
}
