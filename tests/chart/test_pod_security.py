"""Every pod the chart renders passes the restricted Pod Security Standard (tests/chart/pss.py
evaluates every control of the baseline and restricted profiles), in every configuration;
and each control does catch the violation it is about, so a pass means something."""
from __future__ import annotations

import copy

import pytest

import pss
from conftest import render
from test_chart import NAMESPACE, SCENARIOS


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_chart_pod_passes_the_restricted_profile(scenario):
    templates = list(pss.pod_templates(render(SCENARIOS[scenario], namespace=NAMESPACE)))
    assert {name.split("/")[0] for name, _, _ in templates} >= {"Deployment"}
    for name, spec, meta in templates:
        assert pss.violations(spec, meta) == [], name


def compliant() -> dict:
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "app",
            "image": "example/app",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def change(path: str, value) -> dict:
    """A compliant pod with one field set (`a.b.0.c`; a trailing key is created)."""
    spec = compliant()
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def test_the_compliant_pod_passes():
    assert pss.violations(compliant()) == []


@pytest.mark.parametrize("path, value, control", [
    ("hostNetwork", True, "Host Namespaces"),
    ("hostPID", True, "Host Namespaces"),
    ("hostIPC", True, "Host Namespaces"),
    ("containers.0.securityContext.privileged", True, "Privileged Containers"),
    ("containers.0.securityContext.windowsOptions", {"hostProcess": True}, "HostProcess"),
    ("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "Capabilities"),
    ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "Capabilities"),
    ("volumes", [{"name": "root", "hostPath": {"path": "/"}}], "HostPath Volumes"),
    ("volumes", [{"name": "data", "nfs": {"server": "nfs", "path": "/"}}], "Volume Types"),
    ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "Host Ports"),
    ("containers.0.securityContext.appArmorProfile", {"type": "Unconfined"}, "AppArmor"),
    ("securityContext.seLinuxOptions", {"type": "spc_t"}, "SELinux"),
    ("securityContext.seLinuxOptions", {"user": "system_u"}, "SELinux"),
    ("containers.0.securityContext.procMount", "Unmasked", "/proc Mount Type"),
    ("securityContext.seccompProfile", {"type": "Unconfined"}, "Seccomp"),
    ("securityContext.seccompProfile", None, "Seccomp"),
    ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "Sysctls"),
    ("containers.0.securityContext.allowPrivilegeEscalation", True, "Privilege Escalation"),
    ("containers.0.securityContext.allowPrivilegeEscalation", None, "Privilege Escalation"),
    ("securityContext.runAsNonRoot", False, "Running as Non-root"),
    ("containers.0.securityContext.runAsNonRoot", False, "Running as Non-root"),
    ("containers.0.securityContext.runAsUser", 0, "Running as Non-root user"),
])
def test_each_control_catches_its_violation(path, value, control):
    spec = change(path, value)
    if value is None:  # unset the field instead
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node.pop(last)
    found = pss.violations(spec)
    assert any(v.startswith(control + ":") for v in found), found


def test_apparmor_annotations_are_checked():
    meta = {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}}
    assert pss.violations(compliant(), meta) == [
        "AppArmor: annotation container.apparmor.security.beta.kubernetes.io/app is unconfined"
    ]


def test_a_chart_pod_with_one_setting_loosened_fails():
    objects = render(SCENARIOS["default"], namespace=NAMESPACE)
    name, spec, meta = next(pss.pod_templates(objects))
    loosened = copy.deepcopy(spec)
    loosened["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")
    assert pss.violations(loosened, meta) == [
        f"Privilege Escalation: containers[{spec['containers'][0]['name']}].securityContext"
        ".allowPrivilegeEscalation is not false"
    ]
