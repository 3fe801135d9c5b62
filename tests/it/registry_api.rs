//! The registry API read by real registry clients: `regcache standalone` warms a real
//! registry (through a counting proxy), then skopeo and crane read regcache as they read
//! any registry and must get what they get from the upstream (single images, OCI indexes,
//! Docker lists), while the upstream sees nothing. `Accept` negotiation is compared with
//! the distribution registry's answers request by request.

use crate::support;

use std::process::Command;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{ImageSpec, IndexKind, ManifestKind, PlatformSpec, Registry, RegistryAuth};

/// `skopeo list-tags` of `reference` (plain HTTP allowed); its tags, sorted.
fn skopeo_tags(reference: &str) -> Vec<String> {
    let out = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo list-tags {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("skopeo prints JSON");
    let mut tags: Vec<String> = answer["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

/// `crane ls` of `reference` (plain HTTP allowed); its tags, sorted.
fn crane_tags(reference: &str) -> Vec<String> {
    let crane = support::apiserver::testbin().join("crane");
    let out = Command::new(&crane)
        .args(["ls", "--insecure", reference])
        .env("HOME", "/nonexistent")
        .output()
        .expect("run crane (scripts/testbin.sh builds it)");
    assert!(
        out.status.success(),
        "crane ls {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    tags.sort();
    tags
}

/// Runs `program args…` and returns its stdout; panics with its stderr on failure.
fn run(program: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What skopeo and crane say of one image reference: each answer as bytes, `Name` (which
/// holds the address) left out of skopeo's JSON.
fn client_views(reference: &str) -> Vec<(String, Vec<u8>)> {
    let skopeo = std::path::Path::new("skopeo");
    let crane = support::apiserver::testbin().join("crane");
    let docker = format!("docker://{reference}");
    let mut inspect: Value =
        serde_json::from_slice(&run(skopeo, &["inspect", "--tls-verify=false", &docker])).unwrap();
    let inspect_map = inspect.as_object_mut().unwrap();
    inspect_map.remove("Name");
    // Registries list tags in any order.
    if let Some(Value::Array(tags)) = inspect_map.get_mut("RepoTags") {
        tags.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    vec![
        ("skopeo inspect".into(), inspect.to_string().into_bytes()),
        (
            "skopeo inspect --raw".into(),
            run(skopeo, &["inspect", "--tls-verify=false", "--raw", &docker]),
        ),
        (
            "crane digest".into(),
            run(&crane, &["digest", "--insecure", reference]),
        ),
        (
            "crane manifest".into(),
            run(&crane, &["manifest", "--insecure", reference]),
        ),
        (
            "crane config".into(),
            run(&crane, &["config", "--insecure", reference]),
        ),
    ]
}

/// Pushes one repository with every manifest kind: tags of OCI and Docker images, an OCI
/// index and a Docker list (linux/amd64 and linux/arm64 each). Returns its tags and a
/// config and a layer digest.
async fn push_every_kind(registry: &Registry, repo: &str) -> (Vec<&'static str>, String, String) {
    let pusher = registry.pusher();
    let oci = pusher
        .push_image(repo, "oci", &ImageSpec::new(ManifestKind::Oci).seed(1))
        .await;
    pusher
        .push_image(
            repo,
            "docker",
            &ImageSpec::new(ManifestKind::Docker).seed(2),
        )
        .await;
    let platforms = [
        PlatformSpec::linux_amd64(),
        PlatformSpec::linux("arm64", None),
    ];
    pusher
        .push_index(repo, "index", IndexKind::Oci, &platforms)
        .await;
    pusher
        .push_index(repo, "list", IndexKind::DockerList, &platforms)
        .await;
    for (i, tag) in ["1.0.0", "1.2.0", "2.0.0-rc.1"].iter().enumerate() {
        pusher
            .push_image(
                repo,
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(10 + i as u64),
            )
            .await;
    }
    let tags = vec![
        "1.0.0",
        "1.2.0",
        "2.0.0-rc.1",
        "docker",
        "index",
        "list",
        "oci",
    ];
    (tags, oci.config_digest, oci.layer_digests[0].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_and_crane_read_the_same_through_regcache_and_the_upstream_sees_no_request() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let (pushed, _, _) = push_every_kind(&registry, "rapi/app").await;
    let proxy = registry.fault_proxy();
    let host = proxy.host();
    let memcached = support::Memcached::start();
    let regcache =
        support::standalone::Standalone::start(&format!("{host}/rapi/app"), &memcached).await;
    regcache
        .wait_warmed(&format!("{host}/rapi/app"), pushed.len())
        .await;
    let api = &regcache.api;

    let upstream_repo = format!("{}/rapi/app", registry.host());
    let upstream = skopeo_tags(&upstream_repo);
    assert_eq!(upstream, pushed);
    assert_eq!(crane_tags(&upstream_repo), upstream);
    let upstream_views: Vec<_> = pushed
        .iter()
        .map(|tag| client_views(&format!("{upstream_repo}:{tag}")))
        .collect();
    proxy.reset_counts();
    // Standalone watches live in namespace `default`.
    // The upstream host's port is written `_PORT`: a colon cannot appear in a path.
    let upstream_name = format!("{}/rapi/app", host.replace(':', "_"));
    for name in ["default/app".to_string(), upstream_name] {
        assert_eq!(
            skopeo_tags(&format!("{api}/{name}")),
            upstream,
            "skopeo {name}"
        );
        assert_eq!(
            crane_tags(&format!("{api}/{name}")),
            upstream,
            "crane {name}"
        );
        for (tag, expected) in pushed.iter().zip(&upstream_views) {
            let got = client_views(&format!("{api}/{name}:{tag}"));
            for ((what, want), (_, have)) in expected.iter().zip(&got) {
                assert_eq!(
                    String::from_utf8_lossy(have),
                    String::from_utf8_lossy(want),
                    "{what} {name}:{tag}"
                );
            }
        }
    }
    assert_eq!(
        proxy.total(),
        0,
        "reads through regcache reached the upstream: {:?}",
        proxy.seen()
    );
}

/// One answer, as compared: status, error code, content type, digest and body.
async fn answer(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    accept: &[&str],
) -> (u16, String, String, String, Vec<u8>) {
    let mut request = http.request(method, url);
    for a in accept {
        request = request.header("accept", *a);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let status = response.status().as_u16();
    let (content_type, digest, length) = (
        header("content-type"),
        header("docker-content-digest"),
        header("content-length"),
    );
    let body = response.bytes().await.unwrap().to_vec();
    if status >= 400 {
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        return (status, code, String::new(), String::new(), Vec::new());
    }
    (status, content_type, digest, length, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_and_blobs_answer_every_accept_header_as_the_distribution_registry_does() {
    use support::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
    let registry = Registry::start(RegistryAuth::Anonymous);
    let (tags, config, layer) = push_every_kind(&registry, "rapi/neg").await;
    let memcached = support::Memcached::start();
    let upstream_repo = format!("{}/rapi/neg", registry.host());
    let regcache = support::standalone::Standalone::start(&upstream_repo, &memcached).await;
    regcache.wait_warmed(&upstream_repo, tags.len()).await;
    let http = support::http_client(None);
    let ours = format!("http://{}/v2/default/app", regcache.api);
    let theirs = format!("{}/v2/rapi/neg", registry.base_url());

    let all = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
    let accepts: Vec<Vec<&str>> = vec![
        all.to_vec(),
        vec![OCI_MANIFEST],
        vec![OCI_INDEX],
        vec![DOCKER_MANIFEST],
        vec![DOCKER_LIST, DOCKER_MANIFEST],
        vec![OCI_MANIFEST, DOCKER_MANIFEST],
        // One header with every type, with parameters, as some clients send it.
        vec![
            "application/vnd.oci.image.index.v1+json; q=0.9, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ],
    ];
    let mut digests = Vec::new();
    let mut compared = 0;
    let mut schema1_seen = Vec::new();
    for tag in ["oci", "docker", "index", "list"] {
        for accept in &accepts {
            // Where the distribution registry would rewrite a Docker manifest as schema1
            // (by tag, without the Docker type in Accept) regcache answers MANIFEST_UNKNOWN:
            // it cannot sign schema1. docs/api.md (Registry API) says so.
            let schema1 = !accept.iter().any(|a| a.contains(DOCKER_MANIFEST))
                && (tag == "docker"
                    || (tag == "list" && !accept.iter().any(|a| a.contains(DOCKER_LIST))));
            for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                let want = answer(
                    &http,
                    method.clone(),
                    &format!("{theirs}/manifests/{tag}"),
                    accept,
                )
                .await;
                let have = answer(
                    &http,
                    method.clone(),
                    &format!("{ours}/manifests/{tag}"),
                    accept,
                )
                .await;
                if schema1 {
                    let code = if method == reqwest::Method::GET {
                        "MANIFEST_UNKNOWN"
                    } else {
                        ""
                    };
                    assert_eq!(
                        (have.0, have.1.as_str()),
                        (404, code),
                        "{method} {tag} {accept:?} (the registry: {} {})",
                        want.0,
                        want.1
                    );
                    schema1_seen.push((tag, want.0, want.1));
                    continue;
                }
                assert_eq!(have, want, "{method} {tag} accept {accept:?}");
                compared += 1;
                if want.0 == 200 {
                    digests.push(want.2.clone());
                }
            }
        }
    }
    assert!(compared >= 40, "{compared} answers compared");
    eprintln!("where the registry rewrites to schema1: {schema1_seen:?}");
    // By digest: every manifest reached by tag, and the children of the index and list.
    digests.sort();
    digests.dedup();
    assert!(digests.len() >= 5, "{digests:?}");
    for digest in &digests {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let url = |base: &str| format!("{base}/manifests/{digest}");
            let want = answer(&http, method.clone(), &url(&theirs), &all).await;
            let have = answer(&http, method.clone(), &url(&ours), &all).await;
            assert_eq!(have, want, "{method} {digest}");
        }
    }
    // Config blobs byte for byte; layers are not served; unknown and invalid digests.
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let url = |base: &str, d: &str| format!("{base}/blobs/{d}");
        let want = answer(&http, method.clone(), &url(&theirs, &config), &[]).await;
        let have = answer(&http, method.clone(), &url(&ours, &config), &[]).await;
        assert_eq!(want.0, 200);
        assert_eq!(have, want, "{method} config blob");
        let layer_answer = answer(&http, method.clone(), &url(&ours, &layer), &[]).await;
        assert_eq!(
            (layer_answer.0, layer_answer.1.as_str()),
            (
                404,
                if method == reqwest::Method::GET {
                    "BLOB_UNKNOWN"
                } else {
                    ""
                }
            )
        );
        let unknown = format!("sha256:{}", "0".repeat(64));
        let m = answer(
            &http,
            method.clone(),
            &format!("{ours}/manifests/{unknown}"),
            &all,
        )
        .await;
        assert_eq!(m.0, 404, "{method} unknown manifest");
        let bad = answer(
            &http,
            method.clone(),
            &format!("{ours}/manifests/sha256:nothex"),
            &all,
        )
        .await;
        assert_eq!(bad.0, 400, "{method} invalid digest");
    }
    let body: Value = http
        .get(format!("{ours}/blobs/{layer}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("metadata only"), "{message}");
    // Writes are refused as a read-only registry refuses them.
    let put = http
        .put(format!("{ours}/manifests/new"))
        .header("content-type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    let body: Value = serde_json::from_slice(&put.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
}

/// A test CA and a leaf for 127.0.0.1 under `dir/name`: the leaf's PEM cert and key, and
/// the CA's PEM, which a client trusts.
fn leaf_and_ca(dir: &std::path::Path, name: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let certs = support::certs::generate_tls(&sub);
    (certs.leaf.cert_pem, certs.leaf.key_pem, certs.ca.cert_pem)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_api_serves_https_and_reloads_a_renewed_certificate() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let (pushed, _, _) = push_every_kind(&registry, "rapi/tls").await;
    let memcached = support::Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (leaf, leaf_key, first) = leaf_and_ca(dir.path(), "first");
    std::fs::write(&cert, leaf).unwrap();
    std::fs::write(&key, leaf_key).unwrap();
    let image = format!("{}/rapi/tls", registry.host());
    let regcache = support::standalone::Standalone::start_with(
        &image,
        &memcached,
        &[
            "--api-tls-cert-file",
            cert.to_str().unwrap(),
            "--api-tls-key-file",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let url = format!("https://{}/v2/default/app/tags/list", regcache.api);
    let trusting = |pem: &[u8]| support::http_client(Some(pem));
    // Warmed, read over HTTPS by a client trusting the first certificate only.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = trusting(&first).get(&url).send().await.unwrap();
        if answer.status() == 200 {
            let body: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
            assert_eq!(body["tags"].as_array().unwrap().len(), pushed.len());
            break;
        }
        assert!(Instant::now() < deadline, "not warmed over HTTPS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Plain HTTP is not served on that port.
    let plain = support::http_client(None)
        .get(format!("http://{}/v2/", regcache.api))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    // Renewed in place (as a Secret's files are): the new certificate is served without a
    // restart, within the 10 s check.
    let (leaf, leaf_key, second) = leaf_and_ca(dir.path(), "second");
    std::fs::write(dir.path().join("new.key"), leaf_key).unwrap();
    std::fs::write(dir.path().join("new.crt"), leaf).unwrap();
    std::fs::rename(dir.path().join("new.key"), &key).unwrap();
    std::fs::rename(dir.path().join("new.crt"), &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = trusting(&second).get(&url).send().await {
            assert_eq!(answer.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served:\n{}",
            std::fs::read_to_string(&regcache.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        trusting(&first).get(&url).send().await.is_err(),
        "the old certificate is still served"
    );
}
