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


# The label that names a workload of each kind.
NAME_LABEL = {"pod": "pod", "container": "container", "service": "unit", "vm": "vm", "user": "user_id", "job": "job_id"}


def rollup_group(kind: str, labels: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """(namespace, parent_kind) of a workload, from its labels by name: which rollup of its kind it folds into (the
    series budget). Pods and containers keep their namespace ("" where unknown), containers their parent_kind;
    other kinds have one rollup each."""
    if kind == "pod":
        return labels[0][1], ""  # LABELS order: namespace first
    if kind == "container":
        return labels[0][1], labels[6][1]  # namespace, parent_kind
    return "", ""


FOLDED = "(folded)"  # the name of a rollup: no pod, container, unit, VM, user or job can be named so


def rollup_labels(kind: str, namespace: str, parent_kind: str) -> tuple[tuple[str, str], ...]:
    """Labels by name of a rollup series (the series budget's), in LABELS[kind] order: the kind's name label is
    FOLDED, its other identity labels empty; a pod rollup keeps the namespace of the pods it holds, a container
    rollup their namespace and parent_kind. The name marks the series (a Grafana legend shows "shop/(folded)"),
    and it keeps rollups of different kinds apart once PromQL drops the metric name (rate(), `or`): with every
    identity label empty, a pod rollup and a service rollup would both be {node, zone, source}."""
    keep = {"namespace": namespace, "parent_kind": parent_kind, NAME_LABEL[kind]: FOLDED}
    return tuple((name, keep.get(name, "")) for name in LABELS[kind])


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
