//! The Helm chart grants exactly the Kubernetes API access the controller uses, proven on a
//! real API server.
//!
//! The chart is installed by the real helm; the real binary runs as the chart's
//! ServiceAccount (a TokenRequest token) through every code path that talks to the API
//! server (watch sync, reading pull secrets and ServiceAccounts, status patches, Events
//! created and then patched as a series, token and access reviews for the read API, the
//! leader-election Lease). The API server's audit log records each request as its RBAC
//! authorizer saw it (user, verb, API group, resource, namespace, name, answer). Then:
//! - nothing the controller asked for was refused (no 403 on record, no Forbidden logged);
//! - the installed Roles and ClusterRoles, followed through their bindings to the chart's
//!   ServiceAccount, grant nothing that no request used, and nothing cluster-wide that one
//!   namespace would do;
//! - each rule is needed: with that one rule removed from the live Role, the real
//!   authorizer (a SubjectAccessReview as the ServiceAccount) refuses a request the
//!   controller made, which only that rule allowed.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{Cluster, RELEASE_NS};
use support::kube::{ControllerProcess, pull_secret, ready_is};
use support::{CANARY_PASSWORD, ImageSpec, ManifestKind, Registry, RegistryAuth};

const NS: &str = "team";
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
    /// Parses "verb group/resource[/sub] namespace|* [name]".
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

    /// The check an audit Event records.
    fn from_audit(event: &Value) -> Access {
        let object = &event["objectRef"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        let mut resource = text(&object["resource"]).unwrap_or_default();
        if let Some(sub) = text(&object["subresource"]) {
            resource = format!("{resource}/{sub}");
        }
        Access {
            verb: text(&event["verb"]).unwrap_or_default(),
            group: text(&object["apiGroup"]).unwrap_or_default(),
            resource,
            namespace: text(&object["namespace"]),
            // A create names no object to the authorizer (the name is in the body).
            name: text(&object["name"]).filter(|_| event["verb"] != "create"),
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

/// Installs the chart with `values` and runs the controller as its ServiceAccount through
/// every API-touching path; returns the cluster and what the controller asked for.
async fn record_access(values: &[&str]) -> (Cluster, BTreeSet<Access>) {
    let webhooks = values.iter().any(|v| v.starts_with("webhookToken."));
    let registry = Registry::start(RegistryAuth::Basic);
    registry
        .pusher()
        .push_image("e2e/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let host = registry.host();
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&[NS, "web"], values).await;
    let leader_elect = cluster.flags.iter().any(|f| f == "--leader-elect");
    cluster
        .create(SECRETS, pull_secret(NS, "regcred", &host, CANARY_PASSWORD))
        .await;
    cluster
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
        cluster
            .create(
                WATCHES,
                json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                       "metadata": {"name": name, "namespace": NS}, "spec": spec}),
            )
            .await;
    }
    // A reader of the read API: a ServiceAccount in another namespace allowed to get the
    // watches in `team`.
    let reader = cluster.service_account_token("web", "reader").await;
    cluster.grant_watch_reading(NS, ("web", "reader")).await;

    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--memcached".to_string(),
        memcached.addr(),
        "--lease-retry".to_string(),
        "1s".to_string(),
        // Each reconcile and why it ran, for the log a failing run prints.
        "--log-level".to_string(),
        "info,regcache=debug,kube_runtime=debug".to_string(),
    ];
    if webhooks {
        args.extend(["--webhook-token".to_string(), HOOK_TOKEN.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = cluster.controller(&args, dir.path().join("controller.log"));

    let within = Duration::from_secs(60);
    let paths = [
        format!("{WATCHES}/direct"),
        format!("{WATCHES}/via-account"),
    ];
    for path in &paths {
        cluster
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
        cluster
            .merge_patch(
                &secret,
                json!({"data": pull_secret(NS, "regcred", &host, password)["data"]}),
            )
            .await;
        for path in &paths {
            cluster
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
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap_or_default())
    };
    assert_eq!(status, 200, "{body}");
    // Leader election renews the Lease every second: wait for a renewal to be on record.
    if leader_elect {
        let deadline = std::time::Instant::now() + within;
        while !accesses(&cluster)
            .iter()
            .any(|a| a.verb == "update" && a.resource == "leases")
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
    if webhooks && leader_elect {
        let replica = cluster.controller(&args, dir.path().join("follower.log"));
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
            cluster
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
    let logs = controller.logs()
        + &follower
            .as_ref()
            .map(ControllerProcess::logs)
            .unwrap_or_default();
    assert!(
        !logs.contains("Forbidden"),
        "the chart's RBAC refused the controller:\n{logs}"
    );
    cluster.assert_nothing_forbidden();
    let observed = accesses(&cluster);
    (cluster, observed)
}

/// What the chart's ServiceAccount asked the API server for, from its audit log.
fn accesses(cluster: &Cluster) -> BTreeSet<Access> {
    cluster
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == cluster.user.as_str())
        // Requests for non-resource URLs (discovery, /version) have no object; every
        // authenticated user may make them, the chart grants none.
        .filter(|e| e.get("objectRef").is_some())
        .map(Access::from_audit)
        .collect()
}

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

/// The chart's objects as the API server holds them (its release's label), each with its
/// `kind` (a list's items carry none).
async fn installed(cluster: &Cluster) -> Vec<Value> {
    let selector = "labelSelector=app.kubernetes.io/instance%3Dregcache";
    let mut objects = Vec::new();
    for (kind, path) in [
        ("Deployment", "/apis/apps/v1/deployments".to_string()),
        ("ServiceAccount", "/api/v1/serviceaccounts".to_string()),
        ("Role", format!("{RBAC}/roles")),
        ("RoleBinding", format!("{RBAC}/rolebindings")),
        ("ClusterRole", format!("{RBAC}/clusterroles")),
        ("ClusterRoleBinding", format!("{RBAC}/clusterrolebindings")),
    ] {
        let list = cluster
            .get(&format!("{path}?{selector}"))
            .await
            .unwrap_or_else(|| panic!("list {kind}"));
        for mut item in list["items"].as_array().cloned().unwrap_or_default() {
            item["kind"] = json!(kind);
            objects.push(item);
        }
    }
    objects
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

/// Asks the real authorizer whether the chart's ServiceAccount may make `access`.
async fn allowed(cluster: &Cluster, access: &Access) -> bool {
    let (resource, subresource) = access
        .resource
        .split_once('/')
        .unwrap_or((access.resource.as_str(), ""));
    let namespace = cluster.user.split(':').nth(2).unwrap();
    let review = cluster
        .create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                   "spec": {"user": cluster.user,
                            "groups": ["system:serviceaccounts",
                                       format!("system:serviceaccounts:{namespace}"),
                                       "system:authenticated"],
                            "resourceAttributes": {
                                "verb": access.verb, "group": access.group,
                                "resource": resource, "subresource": subresource,
                                "namespace": access.namespace.clone().unwrap_or_default(),
                                "name": access.name.clone().unwrap_or_default()}}}),
        )
        .await;
    review["status"]["allowed"] == true
}

/// Polls the authorizer (RBAC follows role changes through its informers) until it
/// answers `want` for `access`.
async fn await_decision(cluster: &Cluster, access: &Access, want: bool, context: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while allowed(cluster, access).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: the authorizer still says {} for {access:?}",
            !want
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each rule of the chart's Roles and ClusterRoles in turn is removed from the live object:
/// some request the controller made, which only that rule allowed, is then refused by the
/// real authorizer. The rule is put back (and allowed again) before the next.
async fn each_rule_is_needed(cluster: &Cluster, observed: &BTreeSet<Access>) {
    let objects = installed(cluster).await;
    let mut checked = 0;
    for (at, role) in objects.iter().enumerate() {
        let kind = role["kind"].as_str().unwrap();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        let name = role["metadata"]["name"].as_str().unwrap();
        let path = match role["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{RBAC}/namespaces/{ns}/roles/{name}"),
            None => format!("{RBAC}/clusterroles/{name}"),
        };
        let rules = role["rules"].as_array().unwrap().clone();
        for i in 0..rules.len() {
            let mut without = rules.clone();
            let rule = without.remove(i);
            let mut reduced = objects.clone();
            reduced[at]["rules"] = Value::Array(without.clone());
            let reduced = chart_grants(&reduced);
            let lost: Vec<&Access> = observed
                .iter()
                .filter(|a| !reduced.iter().any(|g| allows(g, a)))
                .collect();
            let context = format!("{kind} {name} without rule {rule}");
            let access = lost
                .first()
                .unwrap_or_else(|| panic!("{context}: no request needs the rule"));
            assert!(
                allowed(cluster, access).await,
                "{context}: {access:?} refused with it"
            );
            cluster.merge_patch(&path, json!({"rules": without})).await;
            await_decision(cluster, access, false, &context).await;
            cluster.merge_patch(&path, json!({"rules": rules})).await;
            await_decision(cluster, access, true, &format!("{kind} {name} restored")).await;
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} rules checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_rbac_equals_the_api_calls_of_an_ha_controller_watching_all_namespaces() {
    let (cluster, observed) =
        record_access(&["replicas=3", "webhookToken.existingSecret=hook"]).await;
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
    compare(&observed, &chart_grants(&installed(&cluster).await), true);
    each_rule_is_needed(&cluster, &observed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_rbac_equals_the_api_calls_of_a_controller_watching_one_namespace() {
    let (cluster, observed) = record_access(&[&format!("watchNamespace={NS}")]).await;
    assert!(
        observed.iter().all(|a| a.namespace.is_some()
            || a.group.starts_with("authentication.")
            || a.group.starts_with("authorization.")),
        "only the reviews are cluster-wide: {observed:#?}"
    );
    compare(&observed, &chart_grants(&installed(&cluster).await), false);
    each_rule_is_needed(&cluster, &observed).await;
}
