"""The Pod Security Standards (Kubernetes 1.34, "latest"), baseline and restricted profiles,
evaluated on a pod spec the way the PodSecurity admission controller does.

Each control of https://kubernetes.io/docs/concepts/security/pod-security-standards/ is one
function that returns the violations it finds, as "control: where: what". `violations(spec,
metadata)` runs every control of a profile; restricted includes baseline. Windows-only and
Linux-only distinctions follow the page: the chart's pods are Linux pods (no `spec.os` or
`os.name: linux`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

Spec = dict[str, Any]

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}


def containers(spec: Spec) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


def security_contexts(spec: Spec) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod's securityContext, then each container's (missing ones as empty)."""
    yield "spec.securityContext", spec.get("securityContext") or {}
    for where, c in containers(spec):
        yield f"{where}.securityContext", c.get("securityContext") or {}


# ----- baseline ---------------------------------------------------------------------------------


def host_process(spec: Spec, meta: dict) -> list[str]:
    return [f"HostProcess: {w}.windowsOptions.hostProcess is true"
            for w, sc in security_contexts(spec) if (sc.get("windowsOptions") or {}).get("hostProcess")]


def host_namespaces(spec: Spec, meta: dict) -> list[str]:
    return [f"Host Namespaces: spec.{f} is true" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]


def privileged(spec: Spec, meta: dict) -> list[str]:
    return [f"Privileged Containers: {w}.privileged is true"
            for w, sc in security_contexts(spec) if sc.get("privileged")]


def baseline_capabilities(spec: Spec, meta: dict) -> list[str]:
    return [f"Capabilities: {w}.capabilities.add has {cap}"
            for w, sc in security_contexts(spec)
            for cap in (sc.get("capabilities") or {}).get("add") or [] if cap not in BASELINE_CAPABILITIES]


def host_path_volumes(spec: Spec, meta: dict) -> list[str]:
    return [f"HostPath Volumes: volume {v.get('name')} is a hostPath"
            for v in spec.get("volumes") or [] if "hostPath" in v]


def host_ports(spec: Spec, meta: dict) -> list[str]:
    return [f"Host Ports: {w}.ports has hostPort {p['hostPort']}"
            for w, c in containers(spec) for p in c.get("ports") or [] if p.get("hostPort")]


def app_armor(spec: Spec, meta: dict) -> list[str]:
    found = [f"AppArmor: {w}.appArmorProfile.type is {sc['appArmorProfile'].get('type')}"
             for w, sc in security_contexts(spec)
             if "appArmorProfile" in sc and sc["appArmorProfile"].get("type") not in ("RuntimeDefault", "Localhost")]
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: annotation {key} is {value}")
    return found


def se_linux(spec: Spec, meta: dict) -> list[str]:
    found = []
    for w, sc in security_contexts(spec):
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            found.append(f"SELinux: {w}.seLinuxOptions.type is {options['type']}")
        for field in ("user", "role"):
            if options.get(field):
                found.append(f"SELinux: {w}.seLinuxOptions.{field} is set")
    return found


def proc_mount(spec: Spec, meta: dict) -> list[str]:
    return [f"/proc Mount Type: {w}.procMount is {sc['procMount']}"
            for w, sc in security_contexts(spec) if sc.get("procMount", "Default") != "Default"]


def baseline_seccomp(spec: Spec, meta: dict) -> list[str]:
    return [f"Seccomp: {w}.seccompProfile.type is Unconfined"
            for w, sc in security_contexts(spec) if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"]


def sysctls(spec: Spec, meta: dict) -> list[str]:
    return [f"Sysctls: {s.get('name')} is not a safe sysctl"
            for s in (spec.get("securityContext") or {}).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]


# ----- restricted -------------------------------------------------------------------------------


def volume_types(spec: Spec, meta: dict) -> list[str]:
    found = []
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"Volume Types: volume {v.get('name')} is {', '.join(sorted(kinds - RESTRICTED_VOLUMES))}")
    return found


def privilege_escalation(spec: Spec, meta: dict) -> list[str]:
    return [f"Privilege Escalation: {w}.securityContext.allowPrivilegeEscalation is not false"
            for w, c in containers(spec) if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]


def non_root(spec: Spec, meta: dict) -> list[str]:
    pod = (spec.get("securityContext") or {}).get("runAsNonRoot")
    found = []
    for w, c in containers(spec):
        own = (c.get("securityContext") or {}).get("runAsNonRoot")
        if own is False or (own is None and pod is not True):
            found.append(f"Running as Non-root: {w} may run as root (runAsNonRoot is not true)")
    if pod is False:
        found.append("Running as Non-root: spec.securityContext.runAsNonRoot is false")
    return found


def non_root_user(spec: Spec, meta: dict) -> list[str]:
    return [f"Running as Non-root user: {w}.runAsUser is 0"
            for w, sc in security_contexts(spec) if sc.get("runAsUser") == 0]


def restricted_seccomp(spec: Spec, meta: dict) -> list[str]:
    allowed = ("RuntimeDefault", "Localhost")
    pod = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    found = []
    if pod is not None and pod not in allowed:
        found.append(f"Seccomp: spec.securityContext.seccompProfile.type is {pod}")
    for w, c in containers(spec):
        own = ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if own is not None and own not in allowed:
            found.append(f"Seccomp: {w}.seccompProfile.type is {own}")
        elif own is None and pod is None:
            found.append(f"Seccomp: {w} has no seccompProfile and neither has the pod")
    return found


def restricted_capabilities(spec: Spec, meta: dict) -> list[str]:
    found = []
    for w, c in containers(spec):
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"Capabilities: {w} does not drop ALL")
        found += [f"Capabilities: {w} adds {cap}" for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
    return found


Control = Callable[[Spec, dict], list[str]]
BASELINE: list[Control] = [
    host_process, host_namespaces, privileged, baseline_capabilities, host_path_volumes, host_ports,
    app_armor, se_linux, proc_mount, baseline_seccomp, sysctls,
]
RESTRICTED: list[Control] = BASELINE + [
    volume_types, privilege_escalation, non_root, non_root_user, restricted_seccomp, restricted_capabilities,
]


def violations(spec: Spec, metadata: dict | None = None, profile: str = "restricted") -> list[str]:
    controls = {"baseline": BASELINE, "restricted": RESTRICTED}[profile]
    return [v for control in controls for v in control(spec, metadata or {})]


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, Spec, dict]]:
    """(kind/name, pod spec, pod metadata) of every workload object."""
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = o["spec"]["template"]
            yield f"{o['kind']}/{o['metadata']['name']}", template["spec"], template.get("metadata") or {}
        elif o["kind"] == "Pod":
            yield f"Pod/{o['metadata']['name']}", o["spec"], o["metadata"]
