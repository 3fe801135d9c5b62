"""The Helm chart: lint, render under the configurations users run, validate every object,
and check what each configuration must (and must not) contain."""
from __future__ import annotations

import json
import re
import pathlib
import shutil
import subprocess
import sys

import helm_python as helm
import pytest
import yaml

from conftest import (
    BIN,
    CHART,
    CHART_CRD,
    CRD,
    HERE,
    kinds,
    kubernetes_validate,
    one,
    render,
)

NAMESPACE = "regcache-system"

DEFAULT: dict = {}
HA = {"replicas": 3, "memcached": {"replicas": 3}}
WATCH_NAMESPACE = {"watchNamespace": "team-a"}
EXTERNAL = {
    "memcached": {"enabled": False},
    "externalMemcached": {"servers": ["cache-a.example:11211", "cache-b.example:11211"]},
}
EVERYTHING = {
    "replicas": 2,
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "networkPolicy": {
        "enabled": True,
        "apiFrom": [{"namespaceSelector": {"matchLabels": {"team": "gitops"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        "memcachedFrom": [{"podSelector": {"matchLabels": {"app": "reader"}}}],
    },
    "webhookToken": {"existingSecret": "regcache-webhook"},
    "defaultPlatforms": ["linux/amd64", "linux/arm64"],
    "imagePullSecrets": [{"name": "regcred"}],
    "extraArgs": ["--memcached-timeout=2s"],
    "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    "podAnnotations": {"example.com/a": "b"},
    "registry": {"hosts": [{"host": "*.azurecr.io", "qps": 50, "concurrency": 16}]},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}},
                    },
                }
            ]
        }
    },
    "serviceAccount": {"annotations": {"example.com/role": "regcache"}},
    "service": {"api": {"type": "NodePort", "annotations": {"example.com/x": "y"}}},
    "memcached": {
        "replicas": 3,
        "extraArgs": ["-c", "4096"],
        "restartable": {"enabled": True, "storageClassName": "fast"},
        "podAnnotations": {"example.com/m": "n"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "cache", "operator": "Exists"}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
        ],
    },
}
SCENARIOS = {
    "default": DEFAULT,
    "ha": HA,
    "watch-namespace": WATCH_NAMESPACE,
    "external-memcached": EXTERNAL,
    "everything": EVERYTHING,
    "api-auth-none": {"apiAuth": "none"},
    "grafana-dashboard": {"grafanaDashboard": {"enabled": True}},
    "discovery": {"discovery": {"enabled": True, "insecureRegistries": ["registry.local:5000"], "maxTags": 50}},
    "registry-api": {
        "registryApi": {
            "tokenRealm": "https://regcache.example.com/v2/token",
            "upstreams": [{"name": "ghcr-io", "upstream": "ghcr.io"}, {"name": "hub", "upstream": "docker.io"}],
        },
        "tls": {"secretName": "regcache-api-tls"},
    },
}

# The API calls regcache makes (src/controller, src/api/auth.rs, src/cli/controller.rs), as
# (apiGroup, resource, verb). The chart must grant exactly these.
WATCH_RULES = {
    ("regcache.io", "imagerepositorywatches", "list"),
    ("regcache.io", "imagerepositorywatches", "watch"),
    ("regcache.io", "imagerepositorywatches/status", "patch"),
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "serviceaccounts", "get"),
    ("", "serviceaccounts", "list"),
    ("", "serviceaccounts", "watch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
}
AUTH_RULES = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}
LEASE_RULES = {
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
}


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert len(rule["apiGroups"]) == 1, f"one apiGroup per rule: {rule}"
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                out.add((rule["apiGroups"][0], resource, verb))
    return out


def granted(objects: list[dict]) -> dict[tuple[str, str | None], set]:
    """Rules per (kind, namespace) of the roles actually bound to regcache's ServiceAccount."""
    deployment = one(objects, "Deployment")
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    out: dict = {}
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], ref["name"], ns if ref["kind"] == "Role" else None)]
        out.setdefault((ref["kind"], ns), set()).update(rules_of(role))
    # No role is left unbound (it would be dead weight, or a binding is missing).
    assert len(roles) == len([o for o in objects if o["kind"].endswith("Binding")])
    return out


def container(objects: list[dict], kind: str = "Deployment") -> dict:
    return one(objects, kind)["spec"]["template"]["spec"]["containers"][0]


def args_of(objects: list[dict]) -> list[str]:
    return container(objects)["args"]


# --- lint -----------------------------------------------------------------------------


def lint_findings(path: pathlib.Path, values: dict | None = None) -> list[str]:
    report = helm.lint(str(path), values, strict=True, namespace=NAMESPACE, kube_version="v1.34.0")
    problems = list(report["errors"])
    # Severity 1 is info ("icon is recommended"); 2 warning, 3 error.
    problems += [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return problems


@pytest.mark.parametrize("scenario", ["default", "ha", "everything"])
def test_chart_lints_clean(scenario):
    assert lint_findings(CHART, SCENARIOS[scenario]) == []


def test_lint_reports_a_broken_chart(tmp_path):
    broken = tmp_path / "regcache"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "pdb.yaml").write_text("{{ if }}\n")
    assert lint_findings(broken), "lint found nothing wrong in a template that cannot parse"


# --- CRD ------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd():
    # A symlink may not survive `helm package`, so the chart holds a copy.
    assert CHART_CRD.read_bytes() == CRD.read_bytes(), (
        "charts/regcache/crds/ differs from crds/: cp crds/imagerepositorywatches.regcache.io.yaml "
        "charts/regcache/crds/"
    )


def test_chart_ships_the_crd():
    crds = helm.Chart.load(str(CHART)).crds
    assert [c["filename"] for c in crds] == ["regcache/crds/imagerepositorywatches.regcache.io.yaml"]
    assert yaml.safe_load(crds[0]["data"]) == yaml.safe_load(CRD.read_text())


def test_crd_is_a_valid_custom_resource_definition(tmp_path):
    rc, out = kubernetes_validate([yaml.safe_load(CRD.read_text())], tmp_path)
    assert rc == 0 and "passed" in out, out


# --- every rendered object is valid Kubernetes -----------------------------------------

# kubernetes-validate knows only the built-in kinds; for others it prints a WARN and
# passes. ServiceMonitor (monitoring.coreos.com/v1) is such a kind, so it is checked
# against the schema below instead, with check-jsonschema: the fields this chart uses, with
# their types from the Prometheus Operator's CRD, and nothing else allowed.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        },
                    },
                },
            },
        },
    },
}


def check_jsonschema(schema: dict, instances: list[dict], tmp: pathlib.Path) -> tuple[int, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    schema_file = tmp / "schema.json"
    schema_file.write_text(json.dumps(schema))
    files = []
    for i, instance in enumerate(instances):
        path = tmp / f"instance-{i}.yaml"
        path.write_text(yaml.safe_dump(instance))
        files.append(str(path))
    out = subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(schema_file), *files],
        capture_output=True,
        text=True,
    )
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_validates(scenario, tmp_path):
    objects = render(SCENARIOS[scenario], namespace=NAMESPACE)
    builtin = [o for o in objects if o["kind"] != "ServiceMonitor"]
    rc, out = kubernetes_validate(builtin, tmp_path)
    assert rc == 0, out
    assert "WARN" not in out, out
    # One "passed" line per object: nothing was skipped.
    assert out.count(" passed for resource ") == len(builtin), out
    for monitor in kinds(objects, "ServiceMonitor"):
        rc, out = check_jsonschema(SERVICE_MONITOR_SCHEMA, [monitor], tmp_path / "sm")
        assert rc == 0, out


def test_validation_rejects_invalid_objects(tmp_path):
    objects = render(EVERYTHING, namespace=NAMESPACE)
    deployment = json.loads(json.dumps(one(objects, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    rc, out = kubernetes_validate([deployment], tmp_path)
    assert rc != 0 and "did not validate" in out, out

    service = json.loads(json.dumps(one(objects, "Service", "regcache-api")))
    service["spec"]["ports"][0]["port"] = "eighty"
    (tmp_path / "svc").mkdir()
    rc, out = kubernetes_validate([service], tmp_path / "svc")
    assert rc != 0, out

    monitor = json.loads(json.dumps(one(objects, "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    rc, out = check_jsonschema(SERVICE_MONITOR_SCHEMA, [monitor], tmp_path / "sm")
    assert rc != 0, out


# --- what each configuration renders ---------------------------------------------------


def test_default_install():
    objects = render(DEFAULT, namespace=NAMESPACE)
    args = args_of(objects)
    assert "--leader-elect" not in args
    assert not kinds(objects, "PodDisruptionBudget")
    assert not [o for o in kinds(objects, "Role") if "leases" in json.dumps(o)]
    assert not kinds(objects, "ServiceMonitor") and not kinds(objects, "NetworkPolicy")
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    assert "--log-format=json" in args and "--api-auth=kubernetes" in args
    assert container(objects)["image"] == "ghcr.io/regcache/regcache:" + helm.Chart.load(str(CHART)).metadata["appVersion"]
    assert granted(objects) == {("ClusterRole", None): WATCH_RULES | AUTH_RULES}


def test_in_chart_memcached_is_discovered_by_srv():
    objects = render(DEFAULT, namespace=NAMESPACE)
    sts = one(objects, "StatefulSet")
    svc = one(objects, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"] == [{"name": "memcache", "port": 11211, "targetPort": "memcache", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # The SRV name of a Service port: _<port name>._<protocol>.<service>.<namespace>.svc.<domain>
    srv = f"_memcache._tcp.{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    args = args_of(objects)
    assert f"--memcached-service={srv}" in args
    assert not [a for a in args if a.startswith("--memcached=")]
    mc = container(objects, "StatefulSet")
    assert mc["args"][:4] == ["-m", "256", "-I", "1m"]
    assert mc["readinessProbe"]["tcpSocket"]["port"] == "memcache"
    assert mc["ports"][0]["containerPort"] == 11211
    # The regcache pods must not match the memcached Service, nor memcached the regcache ones.
    deploy_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= deploy_labels.items()


def test_ha_install():
    objects = render(HA, namespace=NAMESPACE)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    args = args_of(objects)
    assert "--leader-elect" in args
    lease = next(a.split("=", 1)[1] for a in args if a.startswith("--leader-election-id="))
    assert granted(objects) == {
        ("ClusterRole", None): WATCH_RULES | AUTH_RULES,
        ("Role", NAMESPACE): LEASE_RULES,
    }
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    # get/update only the Lease regcache uses; create cannot be limited by name.
    for rule in role["rules"]:
        if set(rule["verbs"]) & {"get", "update"}:
            assert rule["resourceNames"] == [lease]
    env = {e["name"]: e for e in container(objects)["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert one(objects, "StatefulSet")["spec"]["replicas"] == 3


def test_leader_election_can_be_forced_on_one_replica():
    objects = render({"leaderElection": {"enabled": True, "id": "my-lease"}}, namespace=NAMESPACE)
    assert "--leader-elect" in args_of(objects) and "--leader-election-id=my-lease" in args_of(objects)
    assert ("Role", NAMESPACE) in granted(objects)
    assert not kinds(objects, "PodDisruptionBudget")  # one replica: a PDB would block drains


def test_watch_namespace_uses_a_role_there():
    objects = render(WATCH_NAMESPACE, namespace=NAMESPACE)
    assert "--watch-namespace=team-a" in args_of(objects)
    assert granted(objects) == {("Role", "team-a"): WATCH_RULES, ("ClusterRole", None): AUTH_RULES}
    assert [o["metadata"]["name"] for o in kinds(objects, "ClusterRole")] == ["regcache-api-auth"]


DISCOVERY_RULES = {
    ("regcache.io", "imagerepositorywatches", "create"),
    ("regcache.io", "imagerepositorywatches", "patch"),
    ("regcache.io", "imagerepositorywatches", "delete"),
    ("apps", "deployments", "list"),
    ("apps", "deployments", "watch"),
    ("apps", "statefulsets", "list"),
    ("apps", "statefulsets", "watch"),
    ("apps", "daemonsets", "list"),
    ("apps", "daemonsets", "watch"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "cronjobs", "list"),
    ("batch", "cronjobs", "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
}
NAMESPACE_RULES = {("", "namespaces", "list"), ("", "namespaces", "watch")}


def test_discovery_adds_its_flags_and_read_only_rights_on_workloads():
    objects = render(SCENARIOS["discovery"], namespace=NAMESPACE)
    args = args_of(objects)
    assert flag(args, "--discovery") == "labelled"
    assert flag(args, "--discovery-grace-period") == "1h"
    assert flag(args, "--discovery-insecure-registry") == "registry.local:5000"
    assert flag(args, "--discovery-max-tags") == "50"
    assert granted(objects) == {("ClusterRole", None): WATCH_RULES | AUTH_RULES | DISCOVERY_RULES | NAMESPACE_RULES}
    # Off (the default): no flag, no right on workloads.
    assert flag(args_of(render(DEFAULT)), "--discovery") is None
    # Every namespace, or a Role in the watched one (no Namespace reads then).
    objects = render({"discovery": {"enabled": True, "allNamespaces": True}})
    assert flag(args_of(objects), "--discovery") == "all"
    assert flag(args_of(objects), "--discovery-max-tags") is None
    objects = render({"discovery": {"enabled": True, "allNamespaces": True}, **WATCH_NAMESPACE}, namespace=NAMESPACE)
    assert granted(objects)[("Role", "team-a")] == WATCH_RULES | DISCOVERY_RULES
    with pytest.raises(helm.HelmError, match="discovery.allNamespaces must be true with watchNamespace"):
        render({"discovery": {"enabled": True}, **WATCH_NAMESPACE})


def test_grafana_dashboard_is_a_labelled_config_map_of_the_repo_json():
    assert not [o for o in kinds(render(DEFAULT), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    objects = render(
        {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "regcache"}, "namespace": "monitoring"}},
        namespace=NAMESPACE,
    )
    config = one(objects, "ConfigMap", "regcache-dashboard")
    assert config["metadata"]["namespace"] == "monitoring"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "regcache"}
    shipped = json.loads((CHART / "dashboards" / "regcache.json").read_text())
    assert json.loads(config["data"]["regcache.json"]) == shipped
    assert shipped["panels"], "the dashboard has panels"


def test_api_auth_none_needs_no_review_rights():
    objects = render({"apiAuth": "none"}, namespace=NAMESPACE)
    assert "--api-auth=none" in args_of(objects)
    assert granted(objects) == {("ClusterRole", None): WATCH_RULES}


def test_rbac_can_be_left_to_the_user():
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
    assert not [o for o in objects if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount")]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_external_memcached():
    objects = render(EXTERNAL | {"networkPolicy": {"enabled": True}}, namespace=NAMESPACE)
    assert not kinds(objects, "StatefulSet")
    assert not [o for o in kinds(objects, "Service") if "memcached" in o["metadata"]["name"]]
    assert [o["metadata"]["name"] for o in kinds(objects, "NetworkPolicy")] == ["regcache"]
    args = args_of(objects)
    assert "--memcached=cache-a.example:11211,cache-b.example:11211" in args
    assert not [a for a in args if a.startswith("--memcached-service")]


def test_no_memcached_at_all_is_refused():
    with pytest.raises(helm.HelmError, match="externalMemcached.servers"):
        render({"memcached": {"enabled": False}})


def test_bad_enum_values_are_refused():
    with pytest.raises(helm.HelmError, match="apiAuth"):
        render({"apiAuth": "token"})
    with pytest.raises(helm.HelmError, match="logFormat"):
        render({"logFormat": "xml"})


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_runs_restricted(scenario):
    objects = render(SCENARIOS[scenario], namespace=NAMESPACE)
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert pods
    for pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID")
        # Only Secret and ConfigMap volumes (the token signing key, the TLS certificate, the
        # registry limits): no host paths.
        assert all(
            set(v) in ({"name", "secret"}, {"name", "configMap"}) for v in pod.get("volumes", [])
        ), pod["volumes"]
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
            assert "memory" in c["resources"]["limits"]
    # The Dockerfile's USER.
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532


def test_memcached_memory_limit_leaves_room_above_its_item_memory():
    objects = render(DEFAULT)
    limit = container(objects, "StatefulSet")["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) > 256


def test_probes_and_services():
    objects = render(DEFAULT, namespace=NAMESPACE)
    c = container(objects)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"api": 8080, "metrics": 8081, "health": 8082}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    args = args_of(objects)
    for flag, port in [("--api-bind-address", 8080), ("--metrics-bind-address", 8081), ("--health-probe-bind-address", 8082)]:
        assert f"{flag}=0.0.0.0:{port}" in args
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    for name, port in [("regcache-api", 8080), ("regcache-metrics", 8081)]:
        svc = one(objects, "Service", name)
        assert svc["spec"]["selector"] == selector
        (svc_port,) = svc["spec"]["ports"]
        assert svc_port["port"] == port and ports[svc_port["targetPort"]] == port


def test_service_monitor_scrapes_the_metrics_service():
    objects = render(EVERYTHING, namespace=NAMESPACE)
    sm = one(objects, "ServiceMonitor")
    metrics = one(objects, "Service", "regcache-metrics")
    api = one(objects, "Service", "regcache-api")
    selector = sm["spec"]["selector"]["matchLabels"].items()
    assert selector <= metrics["metadata"]["labels"].items()
    assert not selector <= api["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_network_policies():
    objects = render(EVERYTHING, namespace=NAMESPACE)
    regcache = one(objects, "NetworkPolicy", "regcache")
    deployment = one(objects, "Deployment")
    assert regcache["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    by_port = {r["ports"][0]["port"]: r.get("from") for r in regcache["spec"]["ingress"]}
    assert by_port == {
        "api": EVERYTHING["networkPolicy"]["apiFrom"],
        "metrics": EVERYTHING["networkPolicy"]["metricsFrom"],
        "health": None,
    }
    memcached = one(objects, "NetworkPolicy", "regcache-memcached")
    assert memcached["spec"]["podSelector"]["matchLabels"] == one(objects, "StatefulSet")["spec"]["selector"]["matchLabels"]
    (rule,) = memcached["spec"]["ingress"]
    assert rule["ports"] == [{"port": "memcache", "protocol": "TCP"}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}},
        *EVERYTHING["networkPolicy"]["memcachedFrom"],
    ]


def test_optional_pod_settings_reach_the_pods():
    objects = render(EVERYTHING, namespace=NAMESPACE)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "--memcached-timeout=2s" in c["args"] and "--default-platforms=linux/amd64,linux/arm64" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RUST_BACKTRACE"]["value"] == "1"
    # The webhook token comes from the named Secret, never from values.
    assert env["REGCACHE_WEBHOOK_TOKEN"] == {
        "name": "REGCACHE_WEBHOOK_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "regcache-webhook", "key": "token"}},
    }
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    mpod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    (mspread,) = mpod["topologySpreadConstraints"]
    assert mspread["labelSelector"]["matchLabels"] == one(objects, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert mpod["automountServiceAccountToken"] is False
    assert mpod["containers"][0]["args"][-2:] == ["-c", "4096"]
    assert "REGCACHE_WEBHOOK_TOKEN" not in json.dumps(render(DEFAULT))


def mounts(objects: list[dict]) -> dict[str, tuple[dict, dict]]:
    """The regcache pod's volumes by name, each with its mount in the container."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    by_name = {m["name"]: m for m in container(objects).get("volumeMounts", [])}
    return {v["name"]: (v, by_name[v["name"]]) for v in pod.get("volumes", [])}


def flag(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(values) <= 1, values
    return values[0] if values else None


def test_registry_token_key_comes_from_a_secret_every_replica_mounts():
    import base64

    objects = render(HA, namespace=NAMESPACE)
    secret = one(objects, "Secret", "regcache-registry-token-key")
    key = base64.b64decode(secret["data"]["key"])
    assert len(key) >= 32, "regcache refuses keys under 32 bytes"
    volume, mount = mounts(objects)["registry-token-key"]
    assert volume["secret"] == {"secretName": "regcache-registry-token-key", "items": [{"key": "key", "path": "key"}]}
    assert mount["readOnly"] is True
    assert flag(args_of(objects), "--registry-token-key-file") == mount["mountPath"] + "/key"
    # The key is never in the pod spec or the arguments.
    assert secret["data"]["key"] not in json.dumps(one(objects, "Deployment"))

    # A Secret of the user's: the chart makes none and mounts that one's key.
    objects = render({"registryApi": {"tokenKey": {"existingSecret": "my-key", "key": "signing"}}})
    assert not kinds(objects, "Secret")
    volume, mount = mounts(objects)["registry-token-key"]
    assert volume["secret"] == {"secretName": "my-key", "items": [{"key": "signing", "path": "key"}]}
    assert flag(args_of(objects), "--registry-token-key-file") == mount["mountPath"] + "/key"

    # Without Kubernetes auth nothing signs tokens.
    objects = render({"apiAuth": "none"})
    assert not kinds(objects, "Secret") and not mounts(objects)
    assert flag(args_of(objects), "--registry-token-key-file") is None


def test_tls_secret_makes_the_read_api_serve_https():
    assert flag(args_of(render(DEFAULT)), "--api-tls-cert-file") is None
    objects = render(SCENARIOS["registry-api"], namespace=NAMESPACE)
    volume, mount = mounts(objects)["tls"]
    assert volume["secret"] == {"secretName": "regcache-api-tls"}
    args = args_of(objects)
    assert flag(args, "--api-tls-cert-file") == mount["mountPath"] + "/tls.crt"
    assert flag(args, "--api-tls-key-file") == mount["mountPath"] + "/tls.key"
    assert flag(args, "--registry-token-realm") == "https://regcache.example.com/v2/token"


def test_each_upstream_gets_a_service_and_a_host_mapping():
    objects = render(SCENARIOS["registry-api"], namespace=NAMESPACE)
    args = args_of(objects)
    assert [a for a in args if a.startswith("--registry-upstream=")] == [
        "--registry-upstream=ghcr-io=ghcr.io",
        "--registry-upstream=hub=docker.io",
    ]
    api = one(objects, "Service", "regcache-api")
    for name in ("ghcr-io", "hub"):
        service = one(objects, "Service", name)
        assert service["metadata"]["namespace"] == NAMESPACE
        assert service["spec"]["selector"] == api["spec"]["selector"]
        assert service["spec"]["ports"] == api["spec"]["ports"]


@pytest.mark.parametrize(
    "upstreams, message",
    [
        ([{"name": "GHCR", "upstream": "ghcr.io"}], 'name "GHCR" must be a DNS label'),
        ([{"name": "ghcr.io", "upstream": "ghcr.io"}], 'name "ghcr.io" must be a DNS label'),
        ([{"name": "ghcr-io"}], "each entry needs name and upstream"),
        (["ghcr-io=ghcr.io"], "each entry needs name and upstream"),
    ],
)
def test_bad_upstreams_are_refused(upstreams, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render({"registryApi": {"upstreams": upstreams}})


def test_image_digest_pins_the_image():
    objects = render({"image": {"digest": "sha256:" + "a" * 64}})
    assert container(objects)["image"] == "ghcr.io/regcache/regcache@sha256:" + "a" * 64


# --- tests/chart/render.py, the helper other tests run --------------------------------


def run_render(*args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, str(HERE / "render.py"), *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_render_cli_set_and_values_file(tmp_path):
    objects = run_render("--set", "replicas=3")
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert ("Role", NAMESPACE) in granted(objects)
    values = tmp_path / "values.yaml"
    values.write_text("watchNamespace: team-a\nreplicas: 2\n")
    objects = run_render("-f", str(values), "--set", "replicas=1", "--set", "apiAuth=none")
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    assert granted(objects) == {("Role", "team-a"): WATCH_RULES}


def test_render_cli_fails_loudly():
    out = subprocess.run(
        [sys.executable, str(HERE / "render.py"), "--set", "memcached.enabled=false"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "externalMemcached.servers" in out.stderr and out.stdout == ""


# --- the chart agrees with the binary and its image -------------------------------------

ROOT = HERE.parents[1]
def config_flags_and_envs() -> tuple[set[str], set[str]]:
    source = (ROOT / "src" / "cli" / "flags.rs").read_text()
    fields = {f.replace("_", "-") for f in re.findall(r"pub (\w+):", source)}
    longs = set(re.findall(r'long\s*=\s*"([\w-]+)"', source))
    envs = set(re.findall(r'env\s*=\s*"(\w+)"', source))
    return fields | longs, envs


def test_every_rendered_flag_and_env_var_exists_in_the_binary():
    flags, envs = config_flags_and_envs()
    assert {"leader-elect", "memcached-service", "api-auth"} <= flags  # the parser works
    for scenario in SCENARIOS.values():
        c = container(render(scenario))
        assert c["args"][0] == "controller"
        for arg in c["args"][1:]:
            name = arg.removeprefix("--").split("=", 1)[0]
            if arg in EVERYTHING["extraArgs"]:
                continue
            assert name in flags, f"regcache controller has no flag --{name}"
        for env in c["env"]:
            if env not in EVERYTHING["extraEnv"]:
                assert env["name"] in envs, f"regcache reads no {env['name']}"


def test_chart_matches_the_image_and_the_crate():
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)", dockerfile, re.M).group(1)
    objects = render(DEFAULT)
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.M)
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert helm.Chart.load(str(CHART)).metadata["appVersion"] == version


def test_a_chart_upgrade_alone_does_not_restart_memcached():
    # memcached's pod template must not carry anything that changes with the chart's
    # version: a new template restarts every server, and a restarted server is empty.
    template = json.dumps(one(render(DEFAULT), "StatefulSet")["spec"]["template"])
    chart = helm.Chart.load(str(CHART)).metadata
    assert chart["version"] not in template and chart["appVersion"] not in template
    assert "helm.sh/chart" not in template


def test_cloud_service_account_identities_grant_token_requests():
    token = ("", "serviceaccounts/token", "create")
    objects = render(DEFAULT)
    assert token not in granted(objects)[("ClusterRole", None)]
    assert "--cloud-service-account-identity=false" in args_of(objects)
    assert "--cloud-controller-identity=true" in args_of(objects)
    objects = render({"cloud": {"serviceAccountIdentities": True, "controllerIdentity": False}})
    assert granted(objects) == {("ClusterRole", None): WATCH_RULES | AUTH_RULES | {token}}
    assert "--cloud-service-account-identity=true" in args_of(objects)
    assert "--cloud-controller-identity=false" in args_of(objects)
    # Watching one namespace: the grant is a Role there, as for the watches.
    objects = render({"cloud": {"serviceAccountIdentities": True}, **WATCH_NAMESPACE})
    assert token in granted(objects)[("Role", "team-a")]


def test_gcp_workload_identity_provider_reaches_the_flags():
    assert not [a for a in args_of(render(DEFAULT)) if a.startswith("--gcp-")]
    provider = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
    args = args_of(render({"cloud": {"gcp": {"workloadIdentityProvider": provider, "tokenAudience": "p.svc.id.goog"}}}))
    assert f"--gcp-workload-identity-provider={provider}" in args
    assert "--gcp-token-audience=p.svc.id.goog" in args


def test_azure_tenant_reaches_the_flags():
    assert not [a for a in args_of(render(DEFAULT)) if a.startswith("--azure-")]
    args = args_of(render({"cloud": {"azure": {"tenantId": "72f988bf-0000-0000-0000-000000000000"}}}))
    assert "--azure-tenant-id=72f988bf-0000-0000-0000-000000000000" in args


def test_registry_host_limits_reach_a_mounted_limits_file():
    objects = render(DEFAULT)
    assert flag(args_of(objects), "--registry-concurrency") == "8"
    assert flag(args_of(objects), "--registry-limits-file") is None
    assert not kinds(objects, "ConfigMap")
    hosts = [
        {"host": "*.azurecr.io", "qps": 50, "burst": 100, "concurrency": 16},
        {"host": "registry.internal:5000", "concurrency": 32, "countsPulls": False},
    ]
    objects = render({"registry": {"hosts": hosts, "concurrency": 12}}, namespace=NAMESPACE)
    config = one(objects, "ConfigMap", "regcache-registry-limits")
    assert yaml.safe_load(config["data"]["limits.yaml"]) == {"hosts": hosts}
    volume, mount = mounts(objects)["registry-limits"]
    assert volume["configMap"] == {"name": "regcache-registry-limits"}
    args = args_of(objects)
    assert flag(args, "--registry-limits-file") == mount["mountPath"] + "/limits.yaml"
    assert flag(args, "--registry-concurrency") == "12"
    # Changing the limits rolls the Pods (regcache reads the file at start).
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    other = render({"registry": {"hosts": hosts[:1]}}, namespace=NAMESPACE)
    assert annotations["checksum/registry-limits"] != (
        one(other, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/registry-limits"]
    )


@pytest.mark.parametrize(
    "hosts, message",
    [
        ([{"qps": 5}], "registry.hosts[0] needs a host"),
        (["docker.io"], "registry.hosts[0] must be a map"),
        ([{"host": "a"}, {"host": "b", "rate": 3}], 'registry.hosts[1] (b): unknown key "rate"'),
        ([{"host": "a", "countsPulls": "no"}], "registry.hosts[0] (a): countsPulls must be true or false"),
    ],
)
def test_bad_registry_host_limits_are_refused(hosts, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render({"registry": {"hosts": hosts}})


@pytest.mark.parametrize("volume", ["persistentVolume", "memory"])
def test_restartable_memcached_keeps_its_items_in_a_file_saved_on_stop(volume):
    plain = one(render(DEFAULT), "StatefulSet")
    assert "-e" not in container(render(DEFAULT), "StatefulSet")["args"]
    assert "volumeClaimTemplates" not in plain["spec"]
    objects = render({"memcached": {"restartable": {"enabled": True, "volume": volume}}})
    statefulset = one(objects, "StatefulSet")
    c = container(objects, "StatefulSet")
    args = c["args"]
    assert args[args.index("-e") + 1] == "/cache/memory"
    assert c["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]
    assert "kill -USR1 1" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    pod = statefulset["spec"]["template"]["spec"]
    if volume == "memory":
        assert pod["volumes"] == [{"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "272Mi"}}]
        assert "volumeClaimTemplates" not in statefulset["spec"]
    else:
        assert "volumes" not in pod
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "cache"
        assert claim["spec"]["resources"]["requests"]["storage"] == "320Mi"
    with pytest.raises(helm.HelmError, match=re.escape('memcached.restartable.volume must be persistentVolume or memory, not "disk"')):
        render({"memcached": {"restartable": {"enabled": True, "volume": "disk"}}})
