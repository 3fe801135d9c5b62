"""examples/: every ImageRepositoryWatch validates against the CRD's schema (check-jsonschema),
every other object against Kubernetes' own (kubernetes-validate --strict)."""
from __future__ import annotations

import base64
import copy
import json
import pathlib
import re
import subprocess

import pytest
import yaml

from conftest import BIN, CRD, EXAMPLES, kubernetes_validate

EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def crd_schema() -> dict:
    """The CRD's openAPIV3Schema as a JSON Schema that, like `kubectl apply` with strict
    field validation, rejects unknown fields (the API server would silently prune them, and
    a misspelt field is the mistake an example must not teach)."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def close(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema["properties"]["spec"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "maxLength": 253},
            "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        },
    }
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def cel_rules(node, path=()):
    """The x-kubernetes-validations rules of the schema, with the path they apply to."""
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule
        for key, value in node.get("properties", {}).items():
            yield from cel_rules(value, path + (key,))


GO_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def go_duration(text: str) -> float:
    """Seconds in a Go duration of the units the CRD's pattern allows (`1h30m`, `1.5h`)."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * GO_DURATION_UNITS[u] for n, u in parts)


def check_cel(watch: dict) -> list[str]:
    """JSON Schema cannot run CEL. The CRD's rules are of two kinds, `!self.matches('RE')` and
    `duration(self) >= duration('D')` on a string (checked below, so a new kind of rule fails
    here until it is handled); apply them."""
    errors = []
    crd = yaml.safe_load(CRD.read_text())
    for path, rule in cel_rules(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
        value = watch
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str):
            continue
        matches = re.fullmatch(r"!self\.matches\('(.*)'\)", rule["rule"])
        floor = re.fullmatch(r"duration\(self\) >= duration\('(.*)'\)", rule["rule"])
        assert matches or floor, f"unhandled CEL rule at {path}: {rule['rule']}"
        if matches and re.search(matches.group(1), value):
            errors.append(f"{'.'.join(path)}: {rule['message']}")
        # A value the pattern refuses is reported by the schema check already.
        valid = re.fullmatch(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+", value)
        if floor and valid and go_duration(value) < go_duration(floor.group(1)):
            errors.append(f"{'.'.join(path)}: {rule['message']}")
    return errors


def validate_watches(watches: list[dict], tmp: pathlib.Path) -> tuple[int, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    schema = tmp / "imagerepositorywatch.schema.json"
    schema.write_text(json.dumps(crd_schema()))
    files = []
    for i, watch in enumerate(watches):
        path = tmp / f"watch-{i}.yaml"
        path.write_text(yaml.safe_dump(watch))
        files.append(str(path))
    out = subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(schema), *files],
        capture_output=True,
        text=True,
    )
    cel = [e for w in watches for e in check_cel(w)]
    return (out.returncode or (1 if cel else 0)), out.stdout + out.stderr + "\n".join(cel)


def documents(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_examples_the_issue_asks_for_exist():
    names = {p.name for p in EXAMPLE_FILES}
    assert {"dockerhub.yaml", "ghcr.yaml", "ecr-private.yaml", "pull-secret.yaml", "watches.yaml"} <= names
    images = [d["spec"]["image"] for p in EXAMPLE_FILES for d in documents(p) if d["kind"] == "ImageRepositoryWatch"]
    assert any(i.startswith("ghcr.io/") for i in images)
    assert any(re.match(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/", i) for i in images)
    assert any("." not in i.split("/")[0] or i.startswith("docker.io/") for i in images)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates(path, tmp_path):
    docs = documents(path)
    assert docs, f"{path} holds no object"
    watches = [d for d in docs if d["kind"] == "ImageRepositoryWatch"]
    others = [d for d in docs if d["kind"] != "ImageRepositoryWatch"]
    assert watches, f"{path} holds no ImageRepositoryWatch"
    rc, out = validate_watches(watches, tmp_path / "watches")
    assert rc == 0, out
    if others:
        rc, out = kubernetes_validate(others, tmp_path)
        assert rc == 0 and "WARN" not in out, out
        assert out.count(" passed for resource ") == len(others), out


BAD_WATCHES = {
    "tag in image": {"image": "nginx:1.27"},
    "misspelt field": {"image": "nginx", "secretRef": {"name": "x"}},
    "bad interval": {"image": "nginx", "interval": "5 minutes"},
    "maxTags zero": {"image": "nginx", "tags": {"maxTags": 0}},
    "unknown tags field": {"image": "nginx", "tags": {"includes": ["v*"]}},
    "bad platform": {"image": "nginx", "platforms": ["amd64"]},
    "no image": {"interval": "5m"},
    "pullSecrets not a list": {"image": "nginx", "pullSecrets": "regcred"},
    "pullSecrets of plain names": {"image": "nginx", "pullSecrets": ["regcred"]},
    "interval in days": {"image": "nginx", "interval": "7d"},
    "negative interval": {"image": "nginx", "interval": "-5m"},
    "interval under the floor": {"image": "nginx", "interval": "5s"},
}


@pytest.mark.parametrize("spec", BAD_WATCHES.values(), ids=BAD_WATCHES.keys())
def test_a_bad_watch_fails_validation(spec, tmp_path):
    watch = {"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch", "metadata": {"name": "bad"}, "spec": spec}
    rc, out = validate_watches([watch], tmp_path)
    assert rc != 0, f"accepted: {spec}\n{out}"


def test_a_good_watch_passes_the_same_check(tmp_path):
    # The counterpart of the bad ones: the failures above come from their one defect.
    watch = {"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch", "metadata": {"name": "ok"},
             "spec": {"image": "registry.example.com:5000/team/app", "interval": "1h30m", "tags": {"maxTags": 1},
                      "platforms": ["linux/arm/v7"], "pullSecrets": [{"name": "regcred"}]}}
    rc, out = validate_watches([watch], tmp_path)
    assert rc == 0, out


def test_pull_secret_example_is_usable_and_fake():
    docs = documents(EXAMPLES / "pull-secret.yaml")
    secret = next(d for d in docs if d["kind"] == "Secret")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    watch = next(d for d in docs if d["kind"] == "ImageRepositoryWatch")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(secret["stringData"][".dockerconfigjson"])
    host = watch["spec"]["image"].split("/")[0]
    auth = config["auths"][host]
    assert base64.b64decode(auth["auth"]).decode() == f"{auth['username']}:{auth['password']}"
    assert "REPLACE-ME" in auth["password"]
    assert watch["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert {"name": secret["metadata"]["name"]} in account["imagePullSecrets"]
    assert secret["metadata"]["namespace"] == account["metadata"]["namespace"] == watch["metadata"]["namespace"]


def test_secrets_named_by_examples_are_documented():
    # Every watch naming credentials says in its file how to create them.
    for path in EXAMPLE_FILES:
        text = path.read_text()
        for doc in documents(path):
            if doc["kind"] == "ImageRepositoryWatch" and doc["spec"].get("pullSecrets"):
                assert "pull-secret.yaml" in text or "kind: Secret" in text, path
