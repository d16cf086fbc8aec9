"""The Prometheus scrape configuration the Prometheus Operator generates for a ServiceMonitor, for a test to run
in a real Prometheus where no Kubernetes API (and so no kubernetes_sd) exists.

Translated from the Operator's own generator, prometheus-operator/prometheus-operator at 6adcebc5,
pkg/prometheus/promcfg.go: `generateServiceMonitorConfig` (endpoints role), `initRelabelings`,
`generateRunningFilter`, `generateRelabelConfig` and `appendShardingRelabelingWithLabel` for one shard, with
`$(SHARD)` as the config reloader substitutes it. Only the ServiceMonitor fields the wattlens manifests use
are translated; any other field fails loudly rather than being ignored.

Kubernetes service discovery would give each target `__meta_kubernetes_*` labels. `target_group()` gives a
static target the same labels, taken from the rendered Service and DaemonSet, so the Operator's relabelings
act on them exactly as they would in a cluster (labels beginning with `__` are dropped after relabeling,
as discovered meta labels are).
"""

from __future__ import annotations

import re
from typing import Any

TRANSLATED = {"port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings",
              "scheme"}


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(config: dict[str, Any]) -> dict[str, Any]:
    """generateRelabelConfig: camelCase fields to Prometheus' snake_case; the action lowercased."""
    names = {"sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
             "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}
    unknown = set(config) - set(names)
    assert not unknown, f"relabel fields not translated: {unknown}"
    out = {names[key]: value for key, value in config.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def scrape_config(monitor: dict[str, Any], index: int = 0) -> dict[str, Any]:
    spec, meta = monitor["spec"], monitor["metadata"]
    endpoint = spec["endpoints"][index]
    untranslated = (set(endpoint) - TRANSLATED) | (set(spec) - {"selector", "endpoints", "jobLabel"})
    assert not untranslated, f"ServiceMonitor fields this translation does not cover: {untranslated}"
    assert set(spec["selector"]) <= {"matchLabels"}, spec["selector"]
    relabelings: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    for key in sorted(spec["selector"].get("matchLabels", {})):
        value = spec["selector"]["matchLabels"][key]
        relabelings.append({"action": "keep", "source_labels": [f"__meta_kubernetes_service_label_{_sanitize(key)}",
                                                               f"__meta_kubernetes_service_labelpresent_{_sanitize(key)}"],
                            "regex": f"({value});true"})
    relabelings.append({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                        "regex": endpoint["port"]})
    target = ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]
    relabelings += [
        {"source_labels": target, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}",
         "target_label": "node"},
        {"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}",
         "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
    ]
    if "jobLabel" in spec:
        relabelings.append({"source_labels": [f"__meta_kubernetes_service_label_{_sanitize(spec['jobLabel'])}"],
                            "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
    relabelings.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    relabelings += [_relabel(r) for r in endpoint.get("relabelings", [])]
    relabelings += [{"source_labels": ["__address__"], "target_label": "__tmp_hash", "modulus": 1, "action": "hashmod"},
                    {"source_labels": ["__tmp_hash"], "regex": "0", "action": "keep"}]
    config: dict[str, Any] = {"job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}",
                              "honor_labels": bool(endpoint.get("honorLabels", False))}
    for field, key in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"),
                       ("path", "metrics_path"), ("scheme", "scheme")):
        if field in endpoint:
            config[key] = endpoint[field]
    config["relabel_configs"] = relabelings
    if endpoint.get("metricRelabelings"):
        config["metric_relabel_configs"] = [_relabel(r) for r in endpoint["metricRelabelings"]]
    return config


def target_group(address: str, service: dict[str, Any], daemonset: dict[str, Any], pod_name: str,
                 node_name: str) -> dict[str, Any]:
    """A static_configs entry with the meta labels the endpoints role gives the endpoint of one exporter pod."""
    labels = {
        "__meta_kubernetes_namespace": service["metadata"]["namespace"],
        "__meta_kubernetes_service_name": service["metadata"]["name"],
        "__meta_kubernetes_endpoint_port_name": service["spec"]["ports"][0]["name"],
        "__meta_kubernetes_endpoint_port_protocol": "TCP",
        "__meta_kubernetes_endpoint_ready": "true",
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": pod_name,
        "__meta_kubernetes_endpoint_node_name": node_name,
        "__meta_kubernetes_pod_name": pod_name,
        "__meta_kubernetes_pod_node_name": node_name,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_container_name": daemonset["spec"]["template"]["spec"]["containers"][0]["name"],
        "__meta_kubernetes_pod_container_port_name": "metrics",
    }
    for key, value in service["metadata"].get("labels", {}).items():
        labels[f"__meta_kubernetes_service_label_{_sanitize(key)}"] = value
        labels[f"__meta_kubernetes_service_labelpresent_{_sanitize(key)}"] = "true"
    for key, value in daemonset["spec"]["template"]["metadata"].get("labels", {}).items():
        labels[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
        labels[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    return {"targets": [address], "labels": labels}
