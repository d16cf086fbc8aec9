"""Label values of a workload's series, from its cgroup identity and the names the node knows (pure)."""

from __future__ import annotations

from exporter.workloads.classify import Classified
from exporter.workloads.kubernetes import ContainerName, PodName

# A container's `uid` is its pod's UID (kube-state-metrics' kube_pod_container_info has the same label), and
# `parent_kind` the kind of the top-level workload whose series already contain it ("" for a standalone
# container, one that is top-level itself). Both say whether a container is inside a pod even when the pod's
# name is not known yet, so "standalone containers" is `parent_kind=""`, never `pod=""`.
LABELS: dict[str, tuple[str, ...]] = {
    "pod": ("namespace", "pod", "uid"),
    "container": ("namespace", "pod", "uid", "container", "container_id", "runtime", "parent_kind"),
    "service": ("unit",),
    "vm": ("vm", "vm_id", "hypervisor"),
    "user": ("user_id",),  # a Unix user id; not `uid`, which is a pod UID on pod series
    "job": ("job_id", "user_id", "scheduler"),
}


def rollup_group(kind: str, labels: tuple[str, ...]) -> tuple[str, str]:
    """(namespace, parent_kind) of a workload: which rollup of its kind it folds into (the series budget). Pods
    and containers keep their namespace ("" where unknown), containers their parent_kind; other kinds have one
    rollup each."""
    if kind == "pod":
        return labels[0], ""
    if kind == "container":
        return labels[0], labels[6]
    return "", ""


def rollup_labels(kind: str, namespace: str, parent_kind: str) -> tuple[str, ...]:
    """Label values of a rollup series, in LABELS[kind] order: every identity label empty (a real workload always
    has one: a pod its uid, a container its id or name, a service its unit...), the namespace of the pods or
    containers it holds, and a container rollup's parent_kind, so PromQL that adds up top-level workloads
    (parent_kind="") or one namespace still adds up exactly."""
    if kind == "pod":
        return (namespace, "", "")
    if kind == "container":
        return (namespace, "", "", "", "", "", parent_kind)
    return ("",) * len(LABELS[kind])


def label_values(
    workload: Classified, pod: PodName | None, container: ContainerName | None, parent: str = ""
) -> tuple[str, ...]:
    """Values in LABELS[kind] order. Names the node does not know are empty, never guessed. `parent` is the key
    of the top-level workload a child belongs to; a container's `parent_kind` is that workload's kind, empty for
    a top-level container (so PromQL can add up top-level workloads without counting a child twice), and its
    `uid` the UID of the pod it belongs to (empty outside pods)."""
    if workload.kind == "pod":
        return (pod.namespace if pod else "", pod.pod if pod else "", workload.uid)
    if workload.kind == "container":
        namespace = container.namespace if container else (pod.namespace if pod else "")
        pod_name = container.pod if container else (pod.pod if pod else "")
        name = container.container if container else workload.container
        parent_kind, _, parent_id = parent.partition(":")
        pod_uid = parent_id if parent_kind == "pod" else ""
        return (namespace, pod_name, pod_uid, name, workload.container_id, workload.runtime, parent_kind)
    if workload.kind == "service":
        return (workload.unit,)
    if workload.kind == "vm":
        return (workload.vm, workload.vm_id, workload.hypervisor)
    if workload.kind == "job":
        return (workload.job_id, workload.uid, workload.scheduler)
    return (workload.uid,)
