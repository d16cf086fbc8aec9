"""Who used the machine this tick: the cgroup tree, the ledger of every workload's energy, and their names.

Each tick walks the cgroup tree (cgroups.py), turns cumulative CPU time into this tick's top-level workloads and
children (tree.py), and marks them seen in the ledger; GPU users' PIDs are resolved against the same tree.
Names come from the kubelet's log directories, else from the optional API watch; a workload's labels, by name,
are exported as long as it has a series (exporter/snapshot.py). Once per tick the series budget
(exporter/budget.py) turns every workload's state into the series exported: the strongest workloads' own, the
rest folded into rollups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.budget import CARBON_PREFIX, SeriesBudget
from exporter.ledger import WorkloadLedger
from exporter.meters.base import AcceleratorUser
from exporter.snapshot import BudgetStats, Labels, PodLabels, WorkloadState
from exporter.sysfs import UNLIMITED, FdBudget
from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.classify import Classified
from exporter.workloads.kubernetes import ContainerName, KubeletLogs, PodName
from exporter.workloads.labels import LABELS, label_values
from exporter.workloads.pod_watch import PodWatch
from exporter.workloads.processes import cgroup_path
from exporter.workloads.tree import TreeBuilder, UsageTracker, WorkloadTree, owner_of

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

EMPTY_TREE = WorkloadTree((), {}, {})
_NO_SHARE: dict[str, int] = {}  # the last_uj of a workload not seen in this tick (never changed)


@dataclass(slots=True)
class _Labels:
    """A workload's labels by name: made again only when the names the node knows change. The same tuple is
    handed out every tick meanwhile, so the renderer keeps its label text by the tuple's identity. With them,
    the workload's last state and the last_uj it was made from: handed out again while neither changed."""

    workload: Classified
    parent: str  # its top-level workload's key ("" if it is one): a label of some kinds
    names: tuple[object, ...]  # which name sources they were made from
    labels: Labels
    # (state, rendered): its last state as the series budget takes it, and as rendered (the carbon domains back
    # in the carbon fields)
    made: tuple[WorkloadState, WorkloadState] | None = None
    last_uj: dict[str, int] = field(default_factory=dict)
    carbon: tuple[int, int] = (0, 0)  # the last (operational, embodied) ng shares it was made from


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
        self._trees = TreeBuilder()
        self._now = 0.0
        self._labels: dict[str, _Labels] = {}
        self._name_sources: tuple[object, ...] = (None, None, None)
        self._named_records: object = None
        self.budget: SeriesBudget[WorkloadState] | None = None  # with a cgroup tree: its series go through it
        if cgroups is not None:
            extra = 1 if config.kubernetes_api else 0  # a pod's wattlens_pod_labels series
            self.budget = SeriesBudget(
                config.max_series, WorkloadState, config.workload_ttl, config.series_level, pod_extra=extra
            )
        self.exported: tuple[WorkloadState, ...] = ()  # this tick's workload series, after the series budget
        self._unwrapped: dict[int, tuple[WorkloadState, WorkloadState]] = {}  # budget state → its carbon fields
        self._keyed_records: object = None
        self._keys: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    @classmethod
    def open(cls, config: Config, budget: FdBudget = UNLIMITED) -> Workloads:
        if not config.walks_workloads:  # series_level "node": no workload series, no walk
            return cls(config)
        cgroups = CgroupTree(config.cgroup_root, budget, hold_s=config.workload_ttl)
        log.info(
            "attributing to workloads from the %s cgroup hierarchy at %s", cgroups.layout.version, cgroups.layout.root
        )
        return cls(config, cgroups, KubeletLogs(config.kubelet_log_path))

    def read(self, now: float) -> WorkloadTree:
        """Walk the cgroups, turn CPU readings into this tick's tree and mark its workloads as seen."""
        self._now = now
        if self.cgroups is None:
            return self.tree
        usages = self.cgroups.read(now)
        tree = self.tree = self._trees.build(usages, self._usage.deltas(usages, self.cgroups.ended, now))
        self.ledger.seen_all(now, tree.members)
        return tree

    def owner_of_pid(self, pid: int) -> tuple[str, str | None] | None:
        """The workload of a host PID, through /proc/<pid>/cgroup and this tick's tree."""
        try:
            with open(self.config.proc_path / str(pid) / "cgroup", "rb") as handle:
                data = handle.read(65536)
        except OSError:
            return None  # gone, or not visible (the exporter needs the host's PID namespace)
        return self.owner_of_cgroup(data)

    def owner_of_cgroup(self, data: bytes) -> tuple[str, str | None] | None:
        """The workload a /proc/<pid>/cgroup names, in this tick's tree (the deepest workload cgroup at or above
        it, so a container removed since still finds its pod)."""
        # Hybrid hosts name a process's cgroup in both hierarchies; either may be the one walked.
        return owner_of(cgroup_path(data), self.tree) or owner_of(cgroup_path(data, v1=True), self.tree)

    def owner_of_user(self, user: AcceleratorUser) -> tuple[str, str | None] | None:
        """The workload of an accelerator user: from the cgroup recorded when the meter first saw the process
        (it may have exited since), else from its PID now."""
        return self.owner_of_cgroup(user.cgroup) if user.cgroup else self.owner_of_pid(user.pid)

    def expire(self, now: float) -> None:
        self.ledger.expire(now)

    def export(self) -> None:
        """This tick's workload series: every workload's state through the series budget (once per tick, after
        expire)."""
        if self.budget is None:
            return
        records = self.ledger.records()
        if records is not self._keyed_records:  # the same list while no workload comes or goes
            self._keyed_records = records
            self._keys = (tuple(key for key, _ in records), tuple(r.parent for _, r in records))
        # A workload's own state comes out of the budget as it went in: its rendered form was made with it. The
        # budget's own (rollups, frozen series) are unwrapped here, and the same output object is kept for the
        # same budget state (an idle rollup's), so the renderer keeps its lines.
        states, made = self.states()
        known, kept, exported = self._unwrapped, {}, []
        for state in self.budget.apply(self._now, states, *self._keys):
            entry = made.get(id(state)) or known.get(id(state))
            if entry is None or entry[0] is not state:
                entry = (state, _carbon_fields(state))
            kept[id(state)] = entry
            exported.append(entry[1])
        self._unwrapped, self.exported = kept, tuple(exported)

    @property
    def budget_stats(self) -> BudgetStats | None:
        return self.budget.stats if self.budget is not None else None

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

    def states(self) -> tuple[tuple[WorkloadState, ...], dict[int, tuple[WorkloadState, WorkloadState]]]:
        """Every workload with a series: its labels by name, and its energy per domain (carbon as domains, as the
        series budget takes it); and, by the id of each of those states, (state, the state as rendered)."""
        records = self.ledger.records()
        kubelet, now = self.kubelet, self._now
        # The same records (the list is kept while none comes or goes): only a due rescan can change names.
        if kubelet is not None and (records is not self._named_records or kubelet.rescan_due(now)):
            pods = [r.workload.uid for _, r in records if r.workload.kind == "pod"]
            containers = [r.workload.container_id for _, r in records if r.workload.kind == "container"]
            kubelet.refresh(now, pods, containers)
            self._named_records = records
        memo = self._labels
        if len(memo) > len(records):  # workloads expired: forget their labels
            self._labels = memo = {key: memo[key] for key, _ in records if key in memo}
        # Names change only when the kubelet's index is rebuilt or the pod watch replaces its mapping.
        sources = (
            kubelet.pods_index if kubelet is not None else None,
            kubelet.containers_index if kubelet is not None else None,
            self.pod_watch.pods if self.pod_watch is not None else None,
        )
        if any(source is not was for source, was in zip(sources, self._name_sources, strict=True)):
            self._name_sources = sources  # a new tuple: every workload's labels are made again
        names = self._name_sources
        states, made = [], {}
        for key, record in records:
            workload = record.workload
            known = memo.get(key)
            if (
                known is None
                or known.names is not names
                or known.workload is not workload
                or known.parent != record.parent
            ):
                pod_uid = workload.uid if workload.kind == "pod" else ""
                if record.parent.startswith("pod:"):
                    pod_uid = record.parent[4:]
                pod, container = self._names(pod_uid, workload.container_id)
                values = label_values(workload, pod, container, record.parent)
                labels = tuple(zip(LABELS[workload.kind], values, strict=True))
                known = memo[key] = _Labels(workload, record.parent, names, labels)
            # Only a workload seen in this tick has a share in it (the budget and pod watts rely on that).
            seen = record.last_seen == now
            last = record.last_uj if seen else _NO_SHARE
            carbon = (record.last_operational_ng, record.last_embodied_ng) if seen else (0, 0)
            previous = known.made
            if previous is not None and not record.changed and last == known.last_uj and carbon == known.carbon:
                states.append(previous[0])  # an idle workload: the same state as last tick
                made[id(previous[0])] = previous
                continue
            # Domains in the order the ledger first saw them: the same every tick, no sorting needed.
            energy, shares = tuple(record.energy_uj.items()), tuple(last.items())
            operational, embodied = record.operational_ng, record.embodied_ng
            if operational or embodied:  # top-level workloads only (carbon/ledger.py)
                rendered = WorkloadState(workload.kind, known.labels, energy, shares, operational, embodied)
                energy += _carbon_domains(operational, embodied)
                shares += _carbon_domains(*carbon)
                state = WorkloadState(workload.kind, known.labels, energy, shares)
            else:
                state = rendered = WorkloadState(workload.kind, known.labels, energy, shares)
            known.made = made[id(state)] = (state, rendered)
            # The ledger gives a seen record a new last_uj dict each tick and fills it before this: kept as is.
            known.last_uj, known.carbon, record.changed = last, carbon, False
            states.append(state)
        return tuple(states), made

    def pod_labels(self) -> tuple[PodLabels, ...]:
        """Owners and allow-listed labels of the pods with series of their own (with the API watch only)."""
        if self.pod_watch is None:
            return ()
        pods, keys = self.pod_watch.pods, self.config.pod_labels
        exported = {w.label("uid") for w in self.exported if w.kind == "pod"}  # folded pods have no row
        rows = []
        for _, record in self.ledger.records():
            meta = pods.get(record.workload.uid) if record.workload.kind == "pod" else None
            if meta is not None and meta.uid in exported:
                labels = dict(meta.labels)
                values = tuple(labels.get(k, "") for k in keys)
                rows.append(PodLabels(meta.namespace, meta.name, meta.uid, meta.owner_kind, meta.owner_name, values))
        return tuple(rows)

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()


# A workload's carbon goes through the series budget as two more domains: each is one series, and folding,
# freezing and rollups then keep its grams exact the way they keep its joules (exporter/budget.py). They are
# taken out again before anything renders the states.
OPERATIONAL_DOMAIN, EMBODIED_DOMAIN = CARBON_PREFIX + "operational", CARBON_PREFIX + "embodied"


def _carbon_domains(operational_ng: int, embodied_ng: int) -> tuple[tuple[str, int], ...]:
    if operational_ng and embodied_ng:
        return ((OPERATIONAL_DOMAIN, operational_ng), (EMBODIED_DOMAIN, embodied_ng))
    if operational_ng:
        return ((OPERATIONAL_DOMAIN, operational_ng),)
    return ((EMBODIED_DOMAIN, embodied_ng),) if embodied_ng else ()


def _carbon_fields(state: WorkloadState) -> WorkloadState:
    """A budget's output state with its carbon domains back in the carbon fields."""
    if not any(domain.startswith(CARBON_PREFIX) for domain, _ in state.energy_uj):
        return state
    carbon = dict(d for d in state.energy_uj if d[0].startswith(CARBON_PREFIX))
    return WorkloadState(
        state.kind,
        state.labels,
        tuple(d for d in state.energy_uj if not d[0].startswith(CARBON_PREFIX)),
        tuple(d for d in state.last_uj if not d[0].startswith(CARBON_PREFIX)),
        carbon.get(OPERATIONAL_DOMAIN, 0),
        carbon.get(EMBODIED_DOMAIN, 0),
    )
