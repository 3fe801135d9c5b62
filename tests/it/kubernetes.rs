//! What the real API server (kube-apiserver on etcd, `tests/support/apiserver.rs`) says of
//! regcache's CRD, examples and chart, through the real kubectl and helm: the schema's
//! checks as a user meets them, printer columns, `kubectl explain`, and the chart installed
//! and uninstalled.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::apiserver::ApiServer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The namespaces the objects in `examples/*.yaml` live in.
fn example_namespaces() -> BTreeSet<String> {
    let mut namespaces = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                // `metadata.namespace`, two spaces in.
                if let Some(ns) = line.strip_prefix("  namespace: ") {
                    namespaces.insert(ns.trim().to_string());
                }
            }
        }
    }
    namespaces
}

/// `kubectl apply -f` of one watch with `spec`, as a user would write it.
fn apply_watch(server: &ApiServer, dir: &Path, name: &str, spec: &Value) -> (bool, String) {
    let file = dir.join(format!("{name}.json"));
    let watch = json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                       "metadata": {"name": name, "namespace": "default"}, "spec": spec});
    std::fs::write(&file, watch.to_string()).unwrap();
    let (ok, out, err) = server.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    (ok, out + &err)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_enforces_the_crd_schema_and_takes_every_example() {
    let server = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
    server.install_crd().await;

    // Every example applies as it is (after its namespaces exist).
    let namespaces = example_namespaces();
    assert!(!namespaces.is_empty(), "examples/ name their namespaces");
    for ns in &namespaces {
        server.namespace(ns).await;
    }
    let applied = server.kubectl_ok(&["apply", "-f", root().join("examples").to_str().unwrap()]);
    let examples = server.kubectl_ok(&["get", "irw", "-A", "-o", "name"]);
    assert!(
        examples.lines().count() >= 4,
        "the examples' watches are there:\n{applied}\n{examples}"
    );

    // Each invalid spec is refused by the API server with the message a user reads.
    let dir = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "a".repeat(64));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "tag-in-image",
            json!({"image": "registry.example.com/team/app:1.25"}),
            "spec.image: Invalid value: \"registry.example.com/team/app:1.25\": image must name a repository without a tag (remove the :tag)",
        ),
        (
            "digest-in-image",
            json!({"image": format!("nginx@{digest}")}),
            "spec.image: Invalid value: \"nginx@sha256:",
        ),
        (
            "empty-image",
            json!({"image": ""}),
            "spec.image: Invalid value: \"\": spec.image in body should be at least 1 chars long",
        ),
        (
            "no-image",
            json!({"interval": "5m"}),
            "spec.image: Required value",
        ),
        (
            "interval-in-words",
            json!({"image": "nginx", "interval": "5 minutes"}),
            "spec.interval in body should match '^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$'",
        ),
        (
            "interval-too-short",
            json!({"image": "nginx", "interval": "5s"}),
            "spec.interval: Invalid value: \"5s\": interval must be at least 10s",
        ),
        (
            "bad-platform",
            json!({"image": "nginx", "platforms": ["linux"]}),
            "spec.platforms[0] in body should match '^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$'",
        ),
        (
            "max-tags-zero",
            json!({"image": "nginx", "tags": {"maxTags": 0}}),
            "spec.tags.maxTags in body should be greater than or equal to 1",
        ),
        (
            "max-tags-too-many",
            json!({"image": "nginx", "tags": {"maxTags": 2_000_000}}),
            "spec.tags.maxTags in body should be less than or equal to 1000000",
        ),
        (
            "secret-without-name",
            json!({"image": "nginx", "pullSecrets": [{}]}),
            "spec.pullSecrets[0].name: Required value",
        ),
        (
            "misspelt-field",
            json!({"image": "nginx", "intervall": "5m"}),
            "unknown field \"spec.intervall\"",
        ),
        (
            "wrong-type",
            json!({"image": "nginx", "suspend": "yes"}),
            "spec.suspend: Invalid value: \"string\": spec.suspend in body must be of type boolean",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, spec, message) in &cases {
        let (ok, output) = apply_watch(&server, dir.path(), name, spec);
        if ok || !output.contains(message) {
            wrong.push(format!(
                "{name}: applied={ok}, wanted {message:?}, kubectl said:\n{output}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    // The same specs with the mistake fixed are taken (the refusals were about the mistake).
    for (name, spec) in [
        (
            "tag-fixed",
            json!({"image": "registry.example.com/team/app"}),
        ),
        (
            "port-not-tag",
            json!({"image": "registry.example.com:5000/team/app"}),
        ),
        (
            "interval-ok",
            json!({"image": "nginx", "interval": "1h30m"}),
        ),
        (
            "platform-ok",
            json!({"image": "nginx", "platforms": ["linux/arm/v7"]}),
        ),
        (
            "max-tags-ok",
            json!({"image": "nginx", "tags": {"maxTags": 1_000_000}}),
        ),
    ] {
        let (ok, output) = apply_watch(&server, dir.path(), name, &spec);
        assert!(ok, "{name} refused:\n{output}");
    }

    // `kubectl explain` reads the schema's descriptions.
    let explain = server.kubectl_ok(&["explain", "imagerepositorywatch.spec"]);
    for expected in [
        "GROUP:      regcache.io",
        "KIND:       ImageRepositoryWatch",
        "VERSION:    v1alpha1",
        "Keeps the metadata of one image repository warm in regcache's cache.",
        "image\t<string> -required-",
        "The image repository to keep warm, without a tag or digest",
        "interval\t<string>",
        "pullSecrets\t<[]Object>",
    ] {
        assert!(explain.contains(expected), "no {expected:?} in:\n{explain}");
    }
    // The printer columns, before any status: the headers and the image-less rows.
    let table = server.kubectl_ok(&["get", "irw", "-n", "default"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "IMAGE", "TAGS", "READY", "LAST", "UPDATE", "AGE"],
        "{table}"
    );
    let wide = server.kubectl_ok(&["get", "irw", "-n", "default", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("LAST ERROR"),
        "{wide}"
    );
}

/// The chart's own objects, as `helm get manifest` lists them: (kind, namespace, name).
fn release_objects(
    server: &ApiServer,
    release: &str,
    namespace: &str,
) -> Vec<(String, String, String)> {
    let (ok, out, err) = server.helm(&["get", "manifest", release, "-n", namespace]);
    assert!(ok, "helm get manifest: {err}");
    let mut objects = Vec::new();
    for document in out.split("\n---") {
        let field = |indent: &str, key: &str| {
            document
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{indent}{key}: ")))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        if let (Some(kind), Some(name)) = (field("", "kind"), field("  ", "name")) {
            objects.push((kind, field("  ", "namespace").unwrap_or_default(), name));
        }
    }
    objects
}

/// The API path of a chart object.
fn object_path(kind: &str, namespace: &str, name: &str) -> String {
    let (prefix, plural, namespaced) = match kind {
        "ServiceAccount" => ("/api/v1", "serviceaccounts", true),
        "Service" => ("/api/v1", "services", true),
        "Secret" => ("/api/v1", "secrets", true),
        "ConfigMap" => ("/api/v1", "configmaps", true),
        "Deployment" => ("/apis/apps/v1", "deployments", true),
        "StatefulSet" => ("/apis/apps/v1", "statefulsets", true),
        "PodDisruptionBudget" => ("/apis/policy/v1", "poddisruptionbudgets", true),
        "NetworkPolicy" => ("/apis/networking.k8s.io/v1", "networkpolicies", true),
        "Role" => ("/apis/rbac.authorization.k8s.io/v1", "roles", true),
        "RoleBinding" => ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", true),
        "ClusterRole" => ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", false),
        "ClusterRoleBinding" => (
            "/apis/rbac.authorization.k8s.io/v1",
            "clusterrolebindings",
            false,
        ),
        other => panic!("the chart made a {other}, which this test does not know"),
    };
    if namespaced {
        format!("{prefix}/namespaces/{namespace}/{plural}/{name}")
    } else {
        format!("{prefix}/{plural}/{name}")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_lints_templates_installs_and_uninstalls_the_chart() {
    let server = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
    let chart = root().join("charts/regcache");
    let chart = chart.to_str().unwrap();

    let (ok, out, err) = server.helm(&["lint", "--strict", chart]);
    assert!(
        ok && out.contains("0 chart(s) failed"),
        "helm lint:\n{out}\n{err}"
    );
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "helm lint:\n{out}"
    );
    let (ok, out, err) = server.helm(&["template", "regcache", chart, "-n", "regcache-system"]);
    assert!(ok && err.trim().is_empty(), "helm template:\n{err}");
    assert!(out.contains("kind: Deployment"), "{out}");

    // No controller-manager runs, so nothing the chart creates starts a Pod: `--wait` would
    // wait forever, and the test checks the objects instead.
    let cases: [(&str, &[&str]); 4] = [
        (
            "one",
            &[
                "--set",
                "replicas=1",
                "--set",
                "tls.secretName=api-tls",
                "--set",
                "registryApi.upstreams[0].name=ghcr-io",
                "--set",
                "registryApi.upstreams[0].upstream=ghcr.io",
            ],
        ),
        ("three", &["--set", "replicas=3"]),
        (
            "one-ns",
            &["--set", "replicas=1", "--set", "watchNamespace=team"],
        ),
        (
            "three-ns",
            &["--set", "replicas=3", "--set", "watchNamespace=team"],
        ),
    ];
    server.namespace("team").await;
    for (release, values) in cases {
        let namespace = format!("rc-{release}");
        let mut args = vec![
            "install",
            release,
            chart,
            "-n",
            &namespace,
            "--create-namespace",
        ];
        args.extend(values);
        let (ok, out, err) = server.helm(&args);
        assert!(ok, "helm install {release}:\n{out}\n{err}");
        let objects = release_objects(&server, release, &namespace);
        assert!(
            objects.iter().any(|(k, ..)| k == "Deployment")
                && objects.iter().any(|(k, ..)| k == "ServiceAccount"),
            "{objects:?}"
        );
        for (kind, ns, name) in &objects {
            let ns = if ns.is_empty() { &namespace } else { ns };
            let path = object_path(kind, ns, name);
            let object = server.get(&path).await;
            assert!(
                object.is_some(),
                "{release}: {kind} {name} was not created ({path})"
            );
            if kind == "Deployment" {
                let replicas = if release.starts_with("three") { 3 } else { 1 };
                assert_eq!(object.unwrap()["spec"]["replicas"], replicas, "{release}");
            }
        }
        // The registry API's signing key survives an upgrade (the chart looks up the Secret
        // it made), so tokens issued before it stay valid.
        let key_path = object_path(
            "Secret",
            &namespace,
            &format!("{release}-regcache-registry-token-key"),
        );
        let key = server.get(&key_path).await.expect("the token key Secret")["data"]["key"].clone();
        assert!(key.as_str().is_some_and(|k| k.len() >= 44), "{key}");
        let (ok, out, err) = server.helm(&[
            "upgrade",
            release,
            chart,
            "-n",
            &namespace,
            "--reuse-values",
            "--set",
            "logLevel=debug",
        ]);
        assert!(ok, "helm upgrade {release}:\n{out}\n{err}");
        let after = server.get(&key_path).await.unwrap()["data"]["key"].clone();
        assert_eq!(
            key, after,
            "{release}: helm upgrade replaced the token signing key"
        );
        if release == "one" {
            let service = server
                .get(&object_path("Service", &namespace, "ghcr-io"))
                .await;
            assert!(service.is_some(), "the upstream's Service");
        }
        if release.ends_with("-ns") {
            assert!(
                objects.iter().any(|(k, ns, _)| k == "Role" && ns == "team"),
                "{release}: watching one namespace grants its access there: {objects:?}"
            );
        }
        let (ok, out, err) = server.helm(&["uninstall", release, "-n", &namespace]);
        assert!(ok, "helm uninstall {release}:\n{out}\n{err}");
        for (kind, ns, name) in &objects {
            let ns = if ns.is_empty() { &namespace } else { ns };
            let path = object_path(kind, ns, name);
            assert!(
                server.get(&path).await.is_none(),
                "{release}: helm uninstall left {kind} {name}"
            );
        }
    }
    // Helm installs the CRD from the chart's crds/ and, as Helm does, keeps it on uninstall.
    assert!(server.get(support::apiserver::CRD_PATH).await.is_some());
}
