"""What a tick produces: one immutable snapshot, with named fields, that every output reads.

The Prometheus exposition, `wattlens once --json`, `wattlens check` and the tests all read these records and
nothing else; no module imports the engine for them. Energies are integer µJ (exported as joules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from exporter.meters.base import Accelerator, ScopePower, ZoneId
from exporter.nodeinfo import NodeInfo
from exporter.workloads.processes import ProcessKey

# A workload's identity labels, by name, in its metric family's order (exporter/workloads/labels.py).
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ZoneState:
    """One physical counter: its joules since start, last tick's power, health and how it counts."""

    zone: ZoneId
    joules_uj: int
    watts: float | None
    up: bool
    wraps: int
    resets: int
    method: str = "energy_counter"
    reading_age_s: float | None = None  # how old the value was when the tick used it (a BMC polled in the background)


@dataclass(frozen=True, slots=True)
class ZoneInfo:
    """Where a measured zone sits in the containment of exporter/zones.py, per zone name (every socket of a
    node is built alike): the zone directly around it (`parent`, "" for none) and whether it is top-level (added
    into the node's total without double counting)."""

    zone: str
    source: str
    role: str
    parent: str
    top_level: bool


@dataclass(frozen=True, slots=True)
class DomainState:
    """A CPU domain (a zone name, all sockets) split exactly: idle + unattributed + Σ workloads = its energy."""

    zone: str
    role: str
    source: str
    idle_uj: int
    active_uj: int
    unattributed_uj: int
    idle_watts: float | None
    idle_method: str  # configured | model | learned | ratio


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One partition of an accelerator (a MIG GPU instance) and its share of the board's active energy since
    start (Σ instances = the board's active energy over the ticks it was partitioned)."""

    instance: str
    profile: str
    uuid: str
    active_uj: int


@dataclass(frozen=True, slots=True)
class AcceleratorState:
    """One accelerator: its counter, its exact split (idle + active, active = unattributed + Σ workloads)."""

    device: Accelerator
    source: str
    method: str
    joules_uj: int
    idle_uj: int
    active_uj: int
    unattributed_uj: int
    watts: float | None
    idle_watts: float | None
    idle_method: str
    up: bool
    resets: int
    partitioned: bool
    splits: tuple[tuple[str, int], ...]
    scopes: tuple[ScopePower, ...] = ()  # other power scopes: memory (part of it), module (around it)
    instances: tuple[InstanceState, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeEnergy:
    """The node's total (the platform where measured, else the top-level domains) and the rest of the node
    (platform − top-level domains, never negative; None without a platform meter)."""

    total_uj: int
    rest_uj: int | None


@dataclass(frozen=True, slots=True)
class SourceUp:
    source: str
    device: str
    up: bool


@dataclass(frozen=True, slots=True)
class SourceErrors:
    source: str
    device: str
    count: int


class WorkloadState(NamedTuple):
    """A workload's series: its labels by name, joules and last tick's µJ per domain (zone name or gpu:<uuid>).

    A named tuple, not a frozen dataclass: hundreds are made per tick, at a third of a frozen dataclass' cost."""

    kind: str
    labels: Labels
    energy_uj: tuple[tuple[str, int], ...]
    last_uj: tuple[tuple[str, int], ...]  # empty once the workload has ended
    operational_ng: int = 0  # grams CO2e (ng) of its energy at the grid intensity of each tick
    embodied_ng: int = 0  # its share of the host's and GPUs' embodied carbon (ng)

    def label(self, name: str) -> str:
        return next(value for key, value in self.labels if key == name)

    @property
    def top_level(self) -> bool:
        """Top-level (it has carbon series); a container inside a pod, user or service is part of that one."""
        return self.kind != "container" or not self.label("parent_kind")


@dataclass(frozen=True, slots=True)
class CarbonDomain:
    """One domain's carbon since start in ng (a CPU zone, gpu:<uuid>, or host for embodied), split exactly:
    idle + unattributed + workloads (Σ top-level workloads) = the domain's grams."""

    domain: str
    idle_ng: int
    unattributed_ng: int
    workloads_ng: int


@dataclass(frozen=True, slots=True)
class CarbonState:
    """The grid intensity in force (its source, average or marginal, age) and the node's carbon by domain."""

    source: str = ""
    kind: str = "average"
    age_s: float | None = None  # seconds since the value was last confirmed (None: a value that cannot age)
    operational: tuple[CarbonDomain, ...] = ()
    embodied: tuple[CarbonDomain, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessState:
    key: ProcessKey
    energy_uj: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class PodLabels:
    """A pod's owner and allow-listed labels (values in the order of Snapshot.pod_label_keys)."""

    namespace: str
    pod: str
    uid: str
    owner_kind: str
    owner_name: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PodWatchStats:
    lists: int
    watches: int
    errors: int
    synced: bool


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """What the budget did, for the self-metrics. Counts by kind are (kind, count) pairs in kind order."""

    max_series: int  # 0: no budget
    series: int  # workload series exported in this tick (frozen ones included)
    folded: tuple[tuple[str, int], ...] = ()  # workloads folded into rollups now
    folds: tuple[tuple[str, int], ...] = ()  # times a workload's series folded, since start
    unfolds: tuple[tuple[str, int], ...] = ()  # times a folded workload got a series, since start
    dropped: int = 0  # series removed at once (without lingering) to stay within the budget, since start


@dataclass(frozen=True, slots=True)
class TickStats:
    ticks: int = 0
    skipped: int = 0
    duration_s: float = 0.0
    cpu_s_total: float = 0.0
    last_unix_time: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    info: NodeInfo
    meter: str  # the meter of the node's CPU energy
    zones: tuple[ZoneState, ...]
    domains: tuple[DomainState, ...]
    sources: tuple[SourceUp, ...]
    errors: tuple[SourceErrors, ...]
    ticks: TickStats
    ready: bool
    zone_info: tuple[ZoneInfo, ...] = ()
    node: NodeEnergy = NodeEnergy(0, None)
    workloads: tuple[WorkloadState, ...] = ()
    tick_seconds: float = 0.0  # length of the last tick, for watts
    cgroup_read_errors: int = 0
    cgroup_walks_truncated: int = 0
    cgroup_full_walks: int = 0
    fd_budget: int = 0
    fds_held: int = 0
    fd_degraded: tuple[str, ...] = ()  # readers refused held fds
    accelerators: tuple[AcceleratorState, ...] = ()
    accelerator_driver: str = ""
    carbon_intensity: float | None = None  # gCO2e per kWh
    carbon: CarbonState = CarbonState()
    pod_label_keys: tuple[str, ...] = ()
    pod_labels: tuple[PodLabels, ...] = ()
    pod_watch: PodWatchStats | None = None
    processes: tuple[ProcessState, ...] = ()
    processes_other: tuple[tuple[str, int], ...] = ()
    meter_switches: int = 0  # times the CPU meter was handed over at runtime (failover or back)
    budget: BudgetStats | None = None  # what the series budget folded (None: no workload series at all)
