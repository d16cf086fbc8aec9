"""Who used the machine this tick: the cgroup tree, the ledger of every workload's energy, and their names.

Each tick walks the cgroup tree (cgroups.py), turns cumulative CPU time into this tick's top-level workloads and
children (tree.py), and marks them seen in the ledger; GPU users' PIDs are resolved against the same tree.
Names come from the kubelet's log directories, else from the optional API watch; a workload's labels, by name,
are exported as long as it has a series (exporter/snapshot.py).
"""

from __future__ import annotations

import logging

from exporter.config import Config
from exporter.ledger import WorkloadLedger
from exporter.snapshot import PodLabels, WorkloadState
from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.classify import Classified
from exporter.workloads.kubernetes import ContainerName, KubeletLogs, PodName
from exporter.workloads.labels import LABELS, label_values
from exporter.workloads.pod_watch import PodWatch
from exporter.workloads.processes import cgroup_path
from exporter.workloads.tree import UsageTracker, WorkloadTree, build_tree, owner_of

log = logging.getLogger(__name__)

EMPTY_TREE = WorkloadTree((), {}, {})


class Workloads:
    """The workload side of a tick. Without `workloads: true` there is no tree: GPU users stay unattributed."""

    def __init__(self, config: Config, cgroups: CgroupTree | None = None, kubelet: KubeletLogs | None = None):
        self.config = config
        self.cgroups = cgroups
        self.kubelet = kubelet
        self.pod_watch: PodWatch | None = None
        self.ledger: WorkloadLedger[Classified] = WorkloadLedger(config.workload_ttl)
        self.tree = EMPTY_TREE
        self._usage = UsageTracker()
        self._now = 0.0

    @classmethod
    def open(cls, config: Config) -> Workloads:
        if not config.workloads:
            return cls(config)
        cgroups = CgroupTree(config.cgroup_root)
        log.info(
            "attributing to workloads from the %s cgroup hierarchy at %s", cgroups.layout.version, cgroups.layout.root
        )
        return cls(config, cgroups, KubeletLogs(config.kubelet_log_path))

    def read(self, now: float) -> WorkloadTree:
        """Walk the cgroups, turn CPU readings into this tick's tree and mark its workloads as seen."""
        self._now = now
        if self.cgroups is None:
            return self.tree
        usages = self.cgroups.read()
        tree = self.tree = build_tree(usages, self._usage.deltas(usages))
        for top in tree.top:
            self.ledger.seen(now, top.key, tree.workloads[top.key], "")
            for child in top.children:
                self.ledger.seen(now, child.key, tree.workloads[child.key], top.key)
        return tree

    def owner_of_pid(self, pid: int) -> tuple[str, str | None] | None:
        """The workload of a host PID (GPU users), through /proc/<pid>/cgroup and this tick's tree."""
        try:
            with open(self.config.proc_path / str(pid) / "cgroup", "rb") as handle:
                data = handle.read(65536)
        except OSError:
            return None  # gone, or not visible (the exporter needs the host's PID namespace)
        # Hybrid hosts name a process's cgroup in both hierarchies; either may be the one walked.
        return owner_of(cgroup_path(data), self.tree) or owner_of(cgroup_path(data, v1=True), self.tree)

    def expire(self, now: float) -> None:
        self.ledger.expire(now)

    def _names(self, pod_uid: str, container_id: str) -> tuple[PodName | None, ContainerName | None]:
        """Names from the kubelet's log directories, else from the API watch when it runs."""
        kubelet, watch = self.kubelet, self.pod_watch
        pod = kubelet.pod(pod_uid) if kubelet and pod_uid else None
        container = kubelet.container(container_id) if kubelet and container_id else None
        meta = watch.pods.get(pod_uid) if watch and pod_uid else None
        if meta is not None:
            pod = pod or PodName(meta.namespace, meta.name)
            name = dict(meta.containers).get(container_id) if container_id else None
            if container is None and name:
                container = ContainerName(meta.namespace, meta.name, name)
        return pod, container

    def states(self) -> tuple[WorkloadState, ...]:
        """Every workload with a series: its labels by name, and its energy per domain."""
        records = self.ledger.records()
        if self.kubelet is not None:
            pods = [r.workload.uid for _, r in records if r.workload.kind == "pod"]
            containers = [r.workload.container_id for _, r in records if r.workload.kind == "container"]
            self.kubelet.refresh(self._now, pods, containers)
        states = []
        for _, record in records:
            workload = record.workload
            pod_uid = workload.uid if workload.kind == "pod" else ""
            if record.parent.startswith("pod:"):
                pod_uid = record.parent.removeprefix("pod:")
            pod, container = self._names(pod_uid, workload.container_id)
            values = label_values(workload, pod, container, record.parent)
            states.append(
                WorkloadState(
                    kind=workload.kind,
                    labels=tuple(zip(LABELS[workload.kind], values, strict=True)),
                    energy_uj=tuple(sorted(record.energy_uj.items())),
                    last_uj=tuple(sorted(record.last_uj.items())),
                )
            )
        return tuple(states)

    def pod_labels(self) -> tuple[PodLabels, ...]:
        """Owners and allow-listed labels of the pods with series (with the API watch only)."""
        if self.pod_watch is None:
            return ()
        pods, keys = self.pod_watch.pods, self.config.pod_labels
        rows = []
        for _, record in self.ledger.records():
            meta = pods.get(record.workload.uid) if record.workload.kind == "pod" else None
            if meta is not None:
                labels = dict(meta.labels)
                values = tuple(labels.get(k, "") for k in keys)
                rows.append(PodLabels(meta.namespace, meta.name, meta.uid, meta.owner_kind, meta.owner_name, values))
        return tuple(rows)

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()
