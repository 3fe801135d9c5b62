//! The Helm chart grants exactly the Kubernetes API access the controller uses.
//!
//! The real binary runs every code path that talks to the API server (watch sync, reading
//! pull secrets and ServiceAccounts, status patches, Events created and then patched as a
//! series, token and access reviews for the read API, the leader-election Lease) against the
//! emulator, which records each request as the authorization check an API server makes:
//! verb, API group, resource, namespace. The chart is rendered with the matching values and
//! its Roles and ClusterRoles, followed through their bindings to the chart's
//! ServiceAccount, must allow every recorded request and grant nothing that no request used.

use crate::support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::kube::{ControllerProcess, Emulator, pull_secret, ready_is};
use support::{CANARY_PASSWORD, ImageSpec, ManifestKind, Registry, RegistryAuth};

const NS: &str = "team";
const RELEASE_NS: &str = "regcache-system";
const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/team/imagerepositorywatches";
const SECRETS: &str = "/api/v1/namespaces/team/secrets";
const ACCOUNTS: &str = "/api/v1/namespaces/team/serviceaccounts";
/// The webhook token of the scenarios with webhooks on (the chart reads it from a Secret).
const HOOK_TOKEN: &str = "hook-token";

/// One authorization check: `namespace` is `None` for a cluster-wide request, `name` is
/// the object's name when the URL has one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Access {
    /// Parses the emulator's "verb group/resource[/sub] namespace [name]" key.
    fn parse(key: &str) -> Access {
        let mut parts = key.split(' ');
        let (verb, resource, ns) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let (group, resource) = resource.split_once('/').unwrap();
        Access {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: (ns != "*").then(|| ns.to_string()),
            name: parts.next().map(str::to_string),
        }
    }

    /// The same check without the object's name.
    fn unnamed(&self) -> Access {
        Access {
            name: None,
            ..self.clone()
        }
    }
}

/// What one rule allows for one (verb, group, resource): everywhere (a ClusterRole bound by
/// a ClusterRoleBinding, `namespace` `None`) or in one namespace (a RoleBinding); for any
/// object or, with `resourceNames`, only those.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    names: Option<BTreeSet<String>>,
}

fn allows(grant: &Grant, access: &Access) -> bool {
    grant.verb == access.verb
        && grant.group == access.group
        && grant.resource == access.resource
        && (grant.namespace.is_none() || grant.namespace == access.namespace)
        && grant
            .names
            .as_ref()
            .is_none_or(|names| access.name.as_ref().is_some_and(|n| names.contains(n)))
}

/// Runs the controller through every API-touching path and returns what it asked for.
async fn record_access(extra_args: &[String], webhooks: bool) -> BTreeSet<Access> {
    let registry = Registry::start(RegistryAuth::Basic);
    registry
        .pusher()
        .push_image("e2e/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let host = registry.host();
    let memcached = support::Memcached::start();
    let emulator = Emulator::start();
    emulator
        .create(SECRETS, pull_secret(NS, "regcred", &host, CANARY_PASSWORD))
        .await;
    emulator
        .create(
            ACCOUNTS,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "puller", "namespace": NS},
                   "imagePullSecrets": [{"name": "regcred"}]}),
        )
        .await;
    for (name, credentials) in [
        ("direct", json!({"pullSecrets": [{"name": "regcred"}]})),
        ("via-account", json!({"serviceAccountName": "puller"})),
    ] {
        let mut spec =
            json!({"image": format!("{host}/e2e/app"), "insecure": true, "interval": "1h"});
        spec.as_object_mut()
            .unwrap()
            .extend(credentials.as_object().unwrap().clone());
        emulator
            .create(
                WATCHES,
                json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                       "metadata": {"name": name, "namespace": NS}, "spec": spec}),
            )
            .await;
    }
    emulator
        .create(
            "/_emulator/tokens",
            json!({"token": "reader-token", "user": {"username": "system:serviceaccount:web:reader"}}),
        )
        .await;

    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--memcached",
        &memcached.addr(),
        "--leader-election-namespace",
        RELEASE_NS,
        "--lease-retry",
        "1s",
        // Each reconcile and why it ran, for the log a failing run prints.
        "--log-level",
        "info,regcache=debug,kube_runtime=debug",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra_args.iter().cloned());
    if webhooks {
        args.extend(["--webhook-token".to_string(), HOOK_TOKEN.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start(
        &emulator.kubeconfig,
        &args,
        dir.path().join("controller.log"),
    );

    let within = Duration::from_secs(60);
    let paths = [
        format!("{WATCHES}/direct"),
        format!("{WATCHES}/via-account"),
    ];
    for path in &paths {
        emulator
            .wait_for(path, within, ready_is("True", "Succeeded"))
            .await;
    }
    // A rotated secret re-warms both watches (Events created), and restoring it brings back
    // the first Ready reason, which the Event recorder sends as a patch of the same series.
    let secret = format!("{SECRETS}/regcred");
    for (password, status, reason) in [
        ("wrong-password", "False", "Unauthorized"),
        (CANARY_PASSWORD, "True", "Succeeded"),
    ] {
        emulator
            .merge_patch(
                &secret,
                json!({"data": pull_secret(NS, "regcred", &host, password)["data"]}),
            )
            .await;
        for path in &paths {
            emulator
                .wait_for(path, within, ready_is(status, reason))
                .await;
        }
    }
    // A read through the API: a TokenReview and a SubjectAccessReview.
    let (status, body) = {
        let response = support::http_client(None)
            .get(format!(
                "http://{}/api/v1/repositories/{host}/e2e/app",
                controller.address("read API").await
            ))
            .bearer_auth("reader-token")
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap_or_default())
    };
    assert_eq!(status, 200, "{body}");
    // Leader election renews the Lease every second: wait for a renewal to be on record.
    if extra_args.iter().any(|a| a == "--leader-elect") {
        let deadline = std::time::Instant::now() + within;
        while !emulator.counters().await["access"]["regcache"]
            .as_object()
            .is_some_and(|keys| {
                keys.keys()
                    .any(|k| k.starts_with("update coordination.k8s.io/leases"))
            })
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the leader never renewed its Lease"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // With leader election and webhooks, a push that reaches a replica that does not lead
    // is passed on through the API server: a second replica, as behind the chart's Service.
    let mut follower = None;
    if webhooks && extra_args.iter().any(|a| a == "--leader-elect") {
        let replica =
            ControllerProcess::start(&emulator.kubeconfig, &args, dir.path().join("follower.log"));
        let deadline = std::time::Instant::now() + within;
        while replica.metric("regcache_warmer_targets").await < 2.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the follower never planned"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, body) = support::webhook::send_push(
            &replica.address("read API").await,
            HOOK_TOKEN,
            &host,
            "e2e/app",
            "v1",
        )
        .await;
        assert_eq!(status, 202, "{body}");
        for path in &paths {
            emulator
                .wait_for(path, within, |w| {
                    w["metadata"]["annotations"]["regcache.io/requestedAt"]
                        .as_str()
                        .is_some_and(|a| {
                            a.starts_with("webhook ") && w["status"]["lastHandledRequestedAt"] == a
                        })
                })
                .await;
        }
        follower = Some(replica);
    }
    let logs = controller.logs() + &follower.as_ref().map(|f| f.logs()).unwrap_or_default();
    // "403" as a number of its own: timestamps and ports may hold those digits.
    let refused = logs.contains("Forbidden")
        || logs.match_indices("403").any(|(at, _)| {
            let joined = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
            !joined(logs[..at].chars().next_back()) && !joined(logs[at + 3..].chars().next())
        });
    assert!(
        !refused,
        "the emulator allows everything; a refusal means a broken scenario:\n{logs}"
    );
    let counters = emulator.counters().await;
    if std::env::var_os("SHOW").is_some() {
        panic!("show");
    }
    // The controller names itself regcache/<version>; the test's own requests are apart.
    counters["access"]["regcache"]
        .as_object()
        .unwrap_or_else(|| panic!("no requests from regcache on record: {counters:#}"))
        .keys()
        .map(|k| Access::parse(k))
        .collect()
}

/// Renders the chart (tests/chart/render.py, Helm's library from PyPI) in the release
/// namespace with `--set` values.
fn render_chart(values: &[&str]) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/emulator/setup.sh"))
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tests/emulator/setup.sh failed");
    let mut command = Command::new(root.join("tests/emulator/.venv/bin/python"));
    command
        .arg(root.join("tests/chart/render.py"))
        .args(["--namespace", RELEASE_NS]);
    for v in values {
        command.args(["--set", v]);
    }
    let output = command.current_dir(&root).output().unwrap();
    assert!(
        output.status.success(),
        "render.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("render.py prints a JSON list")
}

/// The flags of the chart's Deployment that decide which API calls regcache makes, so the
/// controller under test runs as the chart would run it.
fn access_flags(manifests: &[Value]) -> Vec<String> {
    const FLAGS: [&str; 4] = [
        "--leader-elect",
        "--leader-election-id",
        "--watch-namespace",
        "--api-auth",
    ];
    let deployment = manifests
        .iter()
        .find(|m| m["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("container args")
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| FLAGS.contains(&a.split('=').next().unwrap()))
        .map(str::to_string)
        .collect()
}

/// Every rule of the chart's Roles and ClusterRoles that its bindings give the
/// Deployment's ServiceAccount, one grant per (verb, group, resource).
fn chart_grants(manifests: &[Value]) -> BTreeSet<Grant> {
    fn of_kind<'a>(manifests: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
        manifests.iter().filter(move |m| m["kind"] == kind)
    }
    let of_kind = |kind: &'static str| of_kind(manifests, kind);
    let deployment = of_kind("Deployment").next().expect("a Deployment");
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the Deployment names its ServiceAccount");
    assert!(
        of_kind("ServiceAccount").any(|a| a["metadata"]["name"] == account),
        "the chart creates ServiceAccount {account}"
    );
    let rules_of = |kind: &'static str, name: &str, namespace: Option<&str>| -> Vec<Value> {
        let role = of_kind(kind)
            .find(|r| {
                r["metadata"]["name"] == name
                    && namespace.is_none_or(|ns| r["metadata"]["namespace"] == ns)
            })
            .unwrap_or_else(|| panic!("the chart binds {kind} {name}, which it does not create"));
        role["rules"].as_array().cloned().unwrap_or_default()
    };
    let mut grants = BTreeSet::new();
    for binding in of_kind("ClusterRoleBinding").chain(of_kind("RoleBinding")) {
        let to_account = binding["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == RELEASE_NS
        });
        if !to_account {
            continue;
        }
        let namespace = (binding["kind"] == "RoleBinding").then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .expect("a RoleBinding has a namespace")
                .to_string()
        });
        let role = &binding["roleRef"];
        let rules = match role["kind"].as_str().unwrap() {
            "ClusterRole" => rules_of("ClusterRole", role["name"].as_str().unwrap(), None),
            _ => rules_of("Role", role["name"].as_str().unwrap(), namespace.as_deref()),
        };
        for rule in rules {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "rules this test cannot compare: {rule}"
            );
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        assert!(
                            group != "*" && resource != "*" && verb != "*",
                            "wildcard rule: {rule}"
                        );
                        grants.insert(Grant {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            namespace: namespace.clone(),
                            names: rule
                                .get("resourceNames")
                                .map(|_| strings("resourceNames").into_iter().collect()),
                        });
                    }
                }
            }
        }
    }
    grants
}

/// The comparison: everything used is allowed, everything allowed is used, and a
/// cluster-wide grant exists only where the controller works across namespaces.
fn compare(observed: &BTreeSet<Access>, grants: &BTreeSet<Grant>, all_namespaces: bool) {
    let denied: Vec<_> = observed
        .iter()
        .filter(|a| !grants.iter().any(|g| allows(g, a)))
        .collect();
    let unused: Vec<_> = grants
        .iter()
        .filter(|g| !observed.iter().any(|a| allows(g, a)))
        .collect();
    let too_wide: Vec<_> = grants
        .iter()
        .filter(|g| g.namespace.is_none() && !all_namespaces)
        .filter(|g| {
            !observed
                .iter()
                .any(|a| a.namespace.is_none() && allows(g, a))
        })
        .collect();
    assert!(
        denied.is_empty() && unused.is_empty() && too_wide.is_empty(),
        "the chart's RBAC differs from the controller's API calls\n\
         used but not granted: {denied:#?}\n\
         granted but never used: {unused:#?}\n\
         cluster-wide where one namespace is enough: {too_wide:#?}\n\
         observed: {:#?}",
        observed
            .iter()
            .map(Access::unnamed)
            .collect::<BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_rbac_equals_the_api_calls_of_an_ha_controller_watching_all_namespaces() {
    let manifests = render_chart(&["replicas=3", "webhookToken.existingSecret=hook"]);
    let observed = record_access(&access_flags(&manifests), true).await;
    // The scenario reaches every kind of call, so the comparison below is not vacuous.
    let unnamed: BTreeSet<Access> = observed.iter().map(Access::unnamed).collect();
    for expected in [
        "watch regcache.io/imagerepositorywatches *",
        "patch regcache.io/imagerepositorywatches/status team",
        "patch regcache.io/imagerepositorywatches team",
        "get /secrets team",
        "get /serviceaccounts team",
        "create events.k8s.io/events team",
        "patch events.k8s.io/events team",
        "create authentication.k8s.io/tokenreviews *",
        "create authorization.k8s.io/subjectaccessreviews *",
        "create coordination.k8s.io/leases regcache-system",
        "update coordination.k8s.io/leases regcache-system",
    ] {
        assert!(
            unnamed.contains(&Access::parse(expected)),
            "the scenario did not make {expected}: {unnamed:#?}"
        );
    }
    compare(&observed, &chart_grants(&manifests), true);
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_rbac_equals_the_api_calls_of_a_controller_watching_one_namespace() {
    let manifests = render_chart(&[&format!("watchNamespace={NS}")]);
    let observed = record_access(&access_flags(&manifests), false).await;
    assert!(
        observed.iter().all(|a| a.namespace.is_some()
            || a.group.starts_with("authentication.")
            || a.group.starts_with("authorization.")),
        "only the reviews are cluster-wide: {observed:#?}"
    );
    compare(&observed, &chart_grants(&manifests), false);
}
