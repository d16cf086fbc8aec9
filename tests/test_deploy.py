"""The Kubernetes manifests: every kustomization renders, validates strictly offline, and keeps the
least-privilege properties docs/kubernetes.md promises, so a later change cannot quietly add a privilege.

Rendering is `kubectl kustomize` (offline); validation is kubernetes-validate's bundled schemas (--strict:
unknown fields are errors). kubernetes-validate has no schema for the Prometheus Operator's ServiceMonitor and
PrometheusRule (it only warns): those are validated against the Operator's CRD schemas as the PyPI package
cloudcoil-models-prometheus-operator carries them (pydantic models generated from the CRDs: types, enums,
patterns), and a round trip through the model must give the document back unchanged, so an unknown or
misspelt field fails too. `security_violations()` is the gate: it lists every property the rendered DaemonSet
breaks, and the tests prove it catches deliberately privileged variants, both hand-mutated and rendered
through a kustomize overlay. tests/test_chart.py applies the same checks to the Helm chart.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import REPO, tool

import exporter
from exporter.config import load_config

DEPLOY = REPO / "deploy" / "daemonset"
TARGETS = ("", "overlays/default", "overlays/gpu", "overlays/api-watch", "overlays/nonroot")
OVERLAYS = tuple(t for t in TARGETS if t)
# recursiveReadOnly (VolumeMount) appeared in 1.30: the oldest version the manifests are for.
MIN_K8S = "1.30.0"
GPU_ENV = {
    "NVIDIA_VISIBLE_DEVICES": "all",
    "NVIDIA_DRIVER_CAPABILITIES": "utility",
    "NVIDIA_MIG_MONITOR_DEVICES": "all",
    "LD_LIBRARY_PATH": "/run/nvidia/driver/usr/lib64",
}
# host path -> where it is mounted. Anything else from the host is a new privilege and needs review.
HOST_PATHS = {
    "/sys": "/host/sys",
    "/var/log/pods": "/host/var/log/pods",
    "/var/log/containers": "/host/var/log/containers",
    "/run/nvidia/driver": "/run/nvidia/driver",
}
Docs = list[dict[str, Any]]


def _kubectl() -> str:
    return tool("kubectl", "with `kubectl kustomize`, to render the manifests")


def kustomize(path: Path) -> Docs:
    out = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _render(target: str) -> str:
    return yaml.safe_dump_all(kustomize(DEPLOY / target))


def render(target: str) -> Docs:
    """A fresh copy of the rendered documents (tests mutate them)."""
    return list(yaml.safe_load_all(_render(target)))


def one(docs: Docs, kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: Docs) -> dict[str, Any]:
    return one(docs, "DaemonSet")["spec"]["template"]["spec"]


def config_of(docs: Docs) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["wattlens.yaml"])


# --- the gate ------------------------------------------------------------------------------------------


def _all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]


def _probe_path(probe: dict[str, Any] | None) -> str | None:
    return (probe or {}).get("httpGet", {}).get("path")


def _rbac_violations(docs: Docs) -> list[str]:
    problems = []
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc.get("rules", []):
                if rule.get("apiGroups") != [""] or rule.get("resources") != ["pods"] \
                        or sorted(rule.get("verbs", [])) != ["get", "list", "watch"] \
                        or set(rule) - {"apiGroups", "resources", "verbs"}:
                    problems.append(f"{doc['kind']} {doc['metadata']['name']}: rule {rule} is more than "
                                    "pods get/list/watch")
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            role = doc["roleRef"]["name"]
            if not any(d["kind"] == doc["roleRef"]["kind"] and d["metadata"]["name"] == role for d in docs):
                problems.append(f"{doc['kind']} {doc['metadata']['name']} binds {role}, which is not ours")
        if doc["kind"] == "ServiceAccount" and doc.get("automountServiceAccountToken") is not False \
                and not any(d["kind"] in ("RoleBinding", "ClusterRoleBinding") for d in docs):
            problems.append("the ServiceAccount mounts a token but nothing needs one")
    return problems


def security_violations(docs: Docs) -> list[str]:
    """Every least-privilege property the rendered manifests break (empty: all hold)."""
    problems = _rbac_violations(docs)
    spec = pod_spec(docs)
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostIPC"):
        if spec.get(key):
            problems.append(f"pod: {key} is set")
    if spec.get("hostUsers") is False:
        problems.append("pod: hostUsers false (a user namespace: UID 0 would not be the host's root)")
    if pod_sc.get("sysctls"):
        problems.append("pod: sysctls are set")
    for where, context in [("pod", pod_sc)] + [(f"container {c['name']}", c.get("securityContext", {}))
                                               for c in _all_containers(spec)]:
        if context.get("appArmorProfile", {}).get("type") == "Unconfined":
            problems.append(f"{where}: AppArmor unconfined")
        if context.get("seLinuxOptions", {}).get("type") == "spc_t":
            problems.append(f"{where}: SELinux super-privileged container type spc_t")
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"{where}: a Windows host process")
    if pod_sc.get("runAsUser", 0) != 0 and pod_sc.get("runAsNonRoot") is not True:
        problems.append("pod: a non-zero runAsUser without runAsNonRoot")
    if spec.get("automountServiceAccountToken") is not False and not any(
            d["kind"] in ("RoleBinding", "ClusterRoleBinding") for d in docs):
        problems.append("pod: a service-account token is mounted but no API access is granted or needed")
    gpu = any(e.get("name") == "NVIDIA_VISIBLE_DEVICES" for c in _all_containers(spec) for e in c.get("env", []))
    configs = [yaml.safe_load(d["data"].get("wattlens.yaml") or "{}") for d in docs if d["kind"] == "ConfigMap"]
    processes = any(c.get("process_metrics") or c.get("series_level") == "processes" for c in configs)
    if spec.get("hostPID") and not (gpu or processes):
        problems.append("pod: hostPID without GPUs or process_metrics (nothing else needs the host's PIDs)")
    if {"operator": "Exists"} not in spec.get("tolerations", []):
        problems.append("pod: does not tolerate every taint ({operator: Exists})")
    grace = spec.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or not 1 <= grace <= 30:
        problems.append(f"pod: terminationGracePeriodSeconds {grace} is not 1..30")

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for name, volume in volumes.items():
        host = volume.get("hostPath")
        if host is not None and host["path"] not in HOST_PATHS:
            problems.append(f"volume {name}: hostPath {host['path']} is not one of {sorted(HOST_PATHS)}")

    for c in _all_containers(spec):
        where = f"container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if caps.get("add"):
            problems.append(f"{where}: capabilities add {caps['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount {sc['procMount']}")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{where}: seccomp profile {seccomp}, not RuntimeDefault")
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if user is None:
            problems.append(f"{where}: runAsUser unset (the image decides)")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in resources.get(kind, {}):
                    problems.append(f"{where}: no {res} {kind[:-1]}")
        for mount in c.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "hostPath" not in volume:
                continue
            path = volume["hostPath"]["path"]
            if mount.get("readOnly") is not True:
                problems.append(f"{where}: hostPath {path} is mounted writable")
            propagation = mount.get("mountPropagation", "None")
            if propagation == "Bidirectional":
                problems.append(f"{where}: hostPath {path} mounted with Bidirectional propagation")
            if propagation == "None" and mount.get("recursiveReadOnly") not in ("IfPossible", "Enabled"):
                problems.append(f"{where}: hostPath {path} sub-mounts may stay writable (recursiveReadOnly)")
            if HOST_PATHS.get(path) not in (None, mount["mountPath"]):
                problems.append(f"{where}: hostPath {path} mounted at {mount['mountPath']}")
        if c in spec.get("containers", []):
            probes = {k: _probe_path(c.get(k)) for k in ("readinessProbe", "livenessProbe", "startupProbe")}
            if probes["readinessProbe"] != "/readyz":
                problems.append(f"{where}: readiness probe is {probes['readinessProbe']}, not /readyz")
            if probes["livenessProbe"] != "/healthz":
                problems.append(f"{where}: liveness probe is {probes['livenessProbe']}, not /healthz")
            if "/metrics" in probes.values():
                problems.append(f"{where}: a probe renders /metrics")
    return problems


# --- render + validate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_strictly(target: str) -> None:
    docs = render(target)
    kinds = sorted(d["kind"] for d in docs)
    base = ["ConfigMap", "DaemonSet", "Namespace", "NetworkPolicy", "Service", "ServiceAccount", "ServiceMonitor"]
    rbac = ["ClusterRole", "ClusterRoleBinding"] if target.endswith("api-watch") else []
    assert kinds == sorted(base + rbac)
    validate_strictly(docs)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validation above is worth something: an unknown field fails, it is not ignored."""
    daemonset = one(render(""), "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"privileged": False}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContex"):
        kubernetes_validate.validate(daemonset, MIN_K8S, strict=True)


def validate_custom_resource(doc: dict[str, Any]) -> None:
    """A ServiceMonitor or PrometheusRule against the Prometheus Operator's CRD schema: the model rejects a
    wrong type, enum value or pattern, and drops what it does not know, which the round trip catches."""
    from cloudcoil.models.prometheus_operator import v1

    model = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}[doc["kind"]]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    back = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    if back != doc:
        raise ValueError(f"{doc['kind']} {doc['metadata']['name']}: fields the CRD does not have or types it "
                         f"does not allow:\n{_differences(doc, back)}")


def _differences(want: Any, got: Any, where: str = "") -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        return "".join(_differences(want.get(k), got.get(k), f"{where}.{k}") for k in sorted(set(want) | set(got))
                       if want.get(k) != got.get(k))
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return "".join(_differences(a, b, f"{where}[{i}]")
                       for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
    return f"  {where}: {want!r} became {got!r}\n"


CUSTOM_KINDS = ("ServiceMonitor", "PrometheusRule")


def validate_strictly(docs: Docs) -> None:
    """Every document: kubernetes-validate --strict (the command line, against the oldest version the
    manifests support; the library against the newest schema it bundles), custom resources against the CRDs.
    Nothing may be skipped for lack of a schema."""
    text = yaml.safe_dump_all(docs)
    command = Path(sys.executable).with_name("kubernetes-validate")
    out = subprocess.run([str(command) if command.exists() else "kubernetes-validate", "--strict", "-k", MIN_K8S,
                          "-"], input=text, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = set(re.findall(r"^INFO .*passed for resource (\S+) against", out.stdout, re.MULTILINE))
    known = {f"{d['kind'].lower()}/{d['metadata']['name']}" for d in docs if d["kind"] not in CUSTOM_KINDS}
    assert passed == known, out.stdout
    warnings = [line for line in out.stdout.splitlines() if not line.startswith("INFO")]
    assert all(any(kind in line for kind in CUSTOM_KINDS) for line in warnings), warnings
    latest = kubernetes_validate.utils.latest_version()
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            validate_custom_resource(doc)
        else:
            kubernetes_validate.validate(doc, latest, strict=True)


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", duration))


@pytest.mark.parametrize("target", TARGETS)
def test_servicemonitor_scrapes_the_metrics_port_with_honor_labels(target: str) -> None:
    docs = render(target)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == "wattlens"
    # It selects our Service, whose selector matches the DaemonSet's pods.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True  # wattlens' namespace/pod/container labels name the workload
    # ... and the exporter pod's own target labels are dropped, or they would fill wattlens' empty ones.
    assert {"action": "labeldrop", "regex": "(namespace|pod|container|service|endpoint)"} in endpoint["relabelings"]
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"  # job="wattlens", as the alerts expect
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "wattlens"
    assert endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    [port] = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "metrics"
    [container] = pod_spec(docs)["containers"]
    assert {"name": "metrics", "containerPort": port["port"], "protocol": "TCP"} in container["ports"]
    assert port["targetPort"] == "metrics"


@pytest.mark.parametrize(("where", "key", "value", "message"), [
    ("endpoint", "honourLabels", True, "honourLabels"),
    ("endpoint", "interval", "30 seconds", "interval"),
    ("relabeling", "action", "labledrop", "action"),
    ("relabeling", "targetLabell", "x", "targetLabell"),
])
def test_custom_resource_check_catches_mistakes(where: str, key: str, value: Any, message: str) -> None:
    monitor = one(render(""), "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    (endpoint if where == "endpoint" else endpoint["relabelings"][0])[key] = value
    with pytest.raises(ValueError, match=message):
        validate_custom_resource(monitor)


# --- least privilege -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_security_properties_hold(target: str) -> None:
    assert security_violations(render(target)) == []


def test_base_daemonset_is_exactly_as_documented() -> None:
    """The concrete values docs/kubernetes.md explains, in the base."""
    docs = render("")
    spec = pod_spec(docs)
    assert spec["hostPID"] is False and spec["hostUsers"] is True
    assert "priorityClassName" not in spec  # system-node-critical needs a ResourceQuota outside kube-system (GKE)
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["tolerations"] == [{"operator": "Exists"}]
    [c] = spec["containers"]
    assert c["image"] == f"ghcr.io/wattlens/wattlens:{exporter.__version__}"
    assert c["securityContext"] == {
        "privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_mounts = {volumes[m["name"]]["hostPath"]["path"]: m["mountPath"]
                   for m in c["volumeMounts"] if "hostPath" in volumes[m["name"]]}
    assert host_mounts == {k: v for k, v in HOST_PATHS.items() if not k.startswith("/run/nvidia")}
    assert one(docs, "Namespace")["metadata"]["name"] == "wattlens"


@pytest.mark.parametrize("target", TARGETS)
def test_config_is_valid_and_matches_the_mounts(target: str, tmp_path: Path) -> None:
    """The ConfigMap's wattlens.yaml is accepted by wattlens' own config model, and every path in it is
    inside a mount of the DaemonSet."""
    docs = render(target)
    spec = pod_spec(docs)
    [c] = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert Path(env["WATTLENS_CONFIG"]).parent == Path(config_mount["mountPath"])
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    config_file = tmp_path / "wattlens.yaml"
    config_file.write_text(one(docs, "ConfigMap")["data"]["wattlens.yaml"])
    config = load_config(None, config_file, environ={"NODE_NAME": "node-a"})
    assert config.node_name == "node-a"
    assert config.listen_address() == (None, 9875)
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert config.proc_path == Path("/proc")  # the container's own: /proc/stat is the host's in any PID namespace
    for path in (config.sys_path, config.cgroup_root,
                 config.kubelet_log_path / "pods", config.kubelet_log_path / "containers"):
        assert any(path == Path(m) or Path(m) in path.parents for m in mounts), path
    assert config.sys_path == Path("/host/sys") and config.cgroup_root == Path("/host/sys/fs/cgroup")
    assert not any(v.get("hostPath", {}).get("path") == "/proc" for v in spec["volumes"])


def _without(docs: Docs, kinds: tuple[str, ...] = ()) -> Docs:
    """The documents minus some kinds, with the generated ConfigMap's hash suffix made neutral."""
    out = []
    for doc in copy.deepcopy(docs):
        if doc["kind"] in kinds:
            continue
        if doc["kind"] == "ConfigMap":
            doc["metadata"]["name"] = "wattlens-config"
            doc["data"] = {}
        if doc["kind"] == "DaemonSet":
            for volume in doc["spec"]["template"]["spec"]["volumes"]:
                if "configMap" in volume:
                    volume["configMap"]["name"] = "wattlens-config"
        out.append(doc)
    return out


def test_default_overlay_is_the_base() -> None:
    assert render("overlays/default") == render("")


def test_gpu_overlay_adds_only_the_nvidia_environment_the_driver_mount_and_host_pids() -> None:
    base, gpu = render(""), render("overlays/gpu")
    assert pod_spec(gpu)["hostPID"] is True
    pod_spec(gpu)["hostPID"] = False
    [c] = pod_spec(gpu)["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {k: env[k] for k in GPU_ENV} == GPU_ENV
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == "/run/nvidia/driver"]
    assert mount["readOnly"] is True and mount.get("mountPropagation") == "HostToContainer"
    [volume] = [v for v in pod_spec(gpu)["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == "/run/nvidia/driver"
    # Take those away and nothing else is different.
    c["env"] = [e for e in c["env"] if e["name"] not in GPU_ENV]
    c["volumeMounts"].remove(mount)
    pod_spec(gpu)["volumes"].remove(volume)
    assert gpu == base


def test_api_watch_overlay_adds_only_a_token_pod_read_rbac_and_the_setting() -> None:
    base, watch = render(""), render("overlays/api-watch")
    role, binding = one(watch, "ClusterRole"), one(watch, "ClusterRoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    account = one(watch, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert pod_spec(watch)["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is True
    assert pod_spec(watch)["automountServiceAccountToken"] is True
    # The config is the base's plus the one setting (the component carries a copy of the whole file).
    assert config_of(watch) == {**config_of(base), "kubernetes_api": True}
    # Nothing else changes.
    account["automountServiceAccountToken"] = False
    pod_spec(watch)["automountServiceAccountToken"] = False
    assert _without(watch, ("ClusterRole", "ClusterRoleBinding")) == _without(base)


def test_nonroot_overlay_changes_only_the_identity() -> None:
    base, nonroot = render(""), render("overlays/nonroot")
    sc = pod_spec(nonroot)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["runAsGroup"] != 0
    assert len(sc["supplementalGroups"]) == 1  # the powercap group of the node rule
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    pod_spec(nonroot)["securityContext"] = pod_spec(base)["securityContext"]
    assert nonroot == base


# --- the gate catches privileged variants ---------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _container(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["containers"][0]


MUTATIONS: dict[str, Mutation] = {
    "privileged": lambda s: _container(s)["securityContext"].update(privileged=True),
    "escalation allowed": lambda s: _container(s)["securityContext"].update(allowPrivilegeEscalation=True),
    "escalation unset": lambda s: _container(s)["securityContext"].pop("allowPrivilegeEscalation"),
    "capability added": lambda s: _container(s)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "capabilities kept": lambda s: _container(s)["securityContext"].pop("capabilities"),
    "writable root": lambda s: _container(s)["securityContext"].update(readOnlyRootFilesystem=False),
    "seccomp unconfined": lambda s: _container(s)["securityContext"].update(
        seccompProfile={"type": "Unconfined"}),
    "no seccomp": lambda s: (_container(s)["securityContext"].pop("seccompProfile"),
                             s["securityContext"].pop("seccompProfile")),
    "host network": lambda s: s.update(hostNetwork=True),
    "host ipc": lambda s: s.update(hostIPC=True),
    "user namespace": lambda s: s.update(hostUsers=False),
    "writable hostPath": lambda s: _container(s)["volumeMounts"][0].update(readOnly=False),
    "sub-mounts writable": lambda s: _container(s)["volumeMounts"][0].pop("recursiveReadOnly"),
    "bidirectional": lambda s: _container(s)["volumeMounts"][0].update(mountPropagation="Bidirectional"),
    "new hostPath": lambda s: (s["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
                               _container(s)["volumeMounts"].append(
                                   {"name": "root", "mountPath": "/host", "readOnly": True,
                                    "recursiveReadOnly": "IfPossible"})),
    "liveness on /metrics": lambda s: _container(s)["livenessProbe"]["httpGet"].update(path="/metrics"),
    "no readiness": lambda s: _container(s).pop("readinessProbe"),
    "no limits": lambda s: _container(s)["resources"].pop("limits"),
    "no memory request": lambda s: _container(s)["resources"]["requests"].pop("memory"),
    "some taints only": lambda s: s.update(tolerations=[{"key": "node-role.kubernetes.io/control-plane",
                                                         "operator": "Exists"}]),
    "host pid without gpus": lambda s: s.update(hostPID=True),
    "token without need": lambda s: s.update(automountServiceAccountToken=True),
    "host port": lambda s: _container(s)["ports"][0].update(hostPort=9875),
    "apparmor unconfined": lambda s: _container(s)["securityContext"].update(
        appArmorProfile={"type": "Unconfined"}),
    "selinux spc_t": lambda s: s["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
    "unmasked proc": lambda s: _container(s)["securityContext"].update(procMount="Unmasked"),
    "privileged init container": lambda s: s.setdefault("initContainers", []).append(
        {**copy.deepcopy(_container(s)), "name": "init",
         "securityContext": {**_container(s)["securityContext"], "privileged": True}}),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_gate_fails_on_a_privileged_variant(name: str) -> None:
    docs = render("")
    MUTATIONS[name](pod_spec(docs))
    assert security_violations(docs), f"{name!r} went unnoticed"


def test_the_gate_fails_on_wider_rbac() -> None:
    docs = render("overlays/api-watch")
    one(docs, "ClusterRole")["rules"][0]["verbs"].append("delete")
    assert security_violations(docs)
    docs = render("overlays/api-watch")
    one(docs, "ClusterRole")["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    assert security_violations(docs)
    docs = render("overlays/api-watch")
    one(docs, "ClusterRoleBinding")["roleRef"]["name"] = "cluster-admin"
    assert security_violations(docs)


def test_the_gate_fails_on_a_privileged_overlay(tmp_path: Path) -> None:
    """End to end through kustomize: an overlay that makes the exporter privileged is caught."""
    overlay = tmp_path / "privileged"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
        "patches": [{
            "target": {"kind": "DaemonSet", "name": "wattlens"},
            "patch": yaml.safe_dump([
                {"op": "replace", "path": "/spec/template/spec/containers/0/securityContext/privileged",
                 "value": True},
                {"op": "add", "path": "/spec/template/spec/containers/0/securityContext/capabilities/add",
                 "value": ["SYS_ADMIN"]},
            ]),
        }],
    }))
    problems = security_violations(kustomize(overlay))
    assert "container wattlens: privileged" in problems
    assert "container wattlens: capabilities add ['SYS_ADMIN']" in problems


# --- network policy ------------------------------------------------------------------------------------


def test_network_policy_lets_only_the_monitoring_namespace_reach_the_metrics_port() -> None:
    docs = render("")
    policy = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
