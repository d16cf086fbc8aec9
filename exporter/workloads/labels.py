"""Label values of a workload's series, from its cgroup identity and the names the node knows (pure)."""

from __future__ import annotations

from exporter.workloads.classify import Classified
from exporter.workloads.kubernetes import ContainerName, PodName

LABELS: dict[str, tuple[str, ...]] = {
    "pod": ("namespace", "pod", "uid"),
    "container": ("namespace", "pod", "container", "container_id", "runtime"),
    "service": ("unit",),
    "vm": ("vm", "vm_id", "hypervisor"),
    "user": ("user_id",),  # a Unix user id; not `uid`, which is a pod UID on pod series
}


def label_values(workload: Classified, pod: PodName | None, container: ContainerName | None) -> tuple[str, ...]:
    """Values in LABELS[kind] order. Names the node does not know are empty, never guessed."""
    if workload.kind == "pod":
        return (pod.namespace if pod else "", pod.pod if pod else "", workload.uid)
    if workload.kind == "container":
        namespace = container.namespace if container else (pod.namespace if pod else "")
        pod_name = container.pod if container else (pod.pod if pod else "")
        return (namespace, pod_name, container.container if container else "", workload.container_id, workload.runtime)
    if workload.kind == "service":
        return (workload.unit,)
    if workload.kind == "vm":
        return (workload.vm, workload.vm_id, workload.hypervisor)
    return (workload.uid,)
