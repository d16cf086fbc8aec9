"""One tick: read the meter, turn counters into deltas, split idle/active, accumulate, snapshot.

The engine owns all per-tick state and is driven by one thread at a time (the daemon's tick worker, or the
CLI). It takes `now` from the caller (a monotonic clock) so tests can drive it deterministically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from exporter.attribution import IdleSplit, Usage, attribute, split_by_baseline, split_by_ratio
from exporter.budget import BudgetStats, SeriesBudget
from exporter.config import Config
from exporter.counters import MICRO, CounterTrack, StepKind
from exporter.files import SMALL_VALUE_LIMIT, read_operator_text
from exporter.idle import IdleBaseline
from exporter.ledger import Ledger, TopProcesses, WorkloadLedger
from exporter.meters.base import CounterSample, Meter, MeterUnavailable, ZoneId
from exporter.meters.nvml_loader import open_nvml
from exporter.meters.select import MeterReport, select_meter
from exporter.nodeinfo import NodeInfo, read_node_info
from exporter.sysfs import FdBudget
from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.classify import Classified
from exporter.workloads.kubernetes import ContainerName, KubeletLogs, PodName
from exporter.workloads.labels import label_values
from exporter.workloads.pod_watch import PodWatch
from exporter.workloads.processes import ProcessKey, ProcessTable, cgroup_path
from exporter.workloads.procfs import CpuTimes, ProcStat, clock_ticks_per_second
from exporter.workloads.tree import TreeBuilder, UsageTracker, WorkloadTree, owner_of

if TYPE_CHECKING:
    from exporter.gpus import GpuAccounting, GpuState

log = logging.getLogger(__name__)

PROCFS_SOURCE = ("procfs", "stat")
EMPTY_TREE = WorkloadTree((), {}, {})


@dataclass(frozen=True, slots=True)
class ZoneState:
    zone: ZoneId
    joules_uj: int
    watts: float | None
    up: bool
    wraps: int
    resets: int


@dataclass(frozen=True, slots=True)
class DomainState:
    """One energy domain (a zone name, summed over sockets) split into idle and active energy."""

    zone: str
    source: str
    idle_uj: int
    active_uj: int
    idle_watts: float | None
    idle_method: str  # configured | model | learned | ratio


@dataclass(frozen=True, slots=True)
class WorkloadState:
    """A workload's exported series: label values in LABELS[kind] order, joules and last-tick µJ per zone."""

    kind: str
    labels: tuple[str, ...]
    energy_uj: tuple[tuple[str, int], ...]
    last_uj: tuple[tuple[str, int], ...]  # empty once the workload has ended


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
    meter: str
    zones: tuple[ZoneState, ...]
    domains: tuple[DomainState, ...]
    sources: tuple[tuple[str, str, bool], ...]  # (source, device, up)
    errors: tuple[tuple[str, str, int], ...]  # (source, device, count)
    ticks: TickStats
    ready: bool
    workloads: tuple[WorkloadState, ...] = ()
    unattributed: tuple[tuple[str, int], ...] = ()  # (zone, µJ)
    tick_seconds: float = 0.0  # length of the last tick, for watts
    cgroup_read_errors: int = 0
    cgroup_walks_truncated: int = 0
    cgroup_full_walks: int = 0
    fd_budget: int = 0
    fds_held: int = 0
    fd_degraded: tuple[str, ...] = ()  # readers refused held fds
    gpus: tuple[GpuState, ...] = ()
    gpu_driver: str = ""
    carbon_intensity: float | None = None  # gCO2e per kWh
    pod_label_keys: tuple[str, ...] = ()
    pod_labels: tuple[tuple[str, ...], ...] = ()  # namespace, pod, uid, owner_kind, owner_name, *label values
    pod_watch: tuple[int, int, int, bool] | None = None  # lists, watches, errors, synced
    processes: tuple[tuple[ProcessKey, tuple[tuple[str, int], ...]], ...] = ()
    processes_other: tuple[tuple[str, int], ...] = ()
    budget: BudgetStats | None = None  # what the series budget folded (None: no workload series at all)


@dataclass(frozen=True, slots=True)
class _Labels:
    """A workload's label values: made again only when the names the node knows change."""

    workload: Classified
    parent: str  # its top-level workload's key ("" if it is one): a label of some kinds
    names: tuple[object, ...]  # which name sources they were made from
    values: tuple[str, ...]


@dataclass(slots=True)
class _DomainTick:
    delta_uj: int = 0
    complete: bool = True


@dataclass
class Engine:
    config: Config
    meter: Meter | None
    reports: list[MeterReport]
    proc_stat: ProcStat | None
    info: NodeInfo
    cgroups: CgroupTree | None = None
    kubelet: KubeletLogs | None = None
    processes: ProcessTable | None = None
    gpus: GpuAccounting | None = None
    pod_watch: PodWatch | None = None
    gpu_report: MeterReport | None = None
    fd_budget: FdBudget = field(default_factory=lambda: FdBudget(1 << 20))
    _fd_warned: set[str] = field(default_factory=set)
    _labels: dict[str, _Labels] = field(default_factory=dict)
    _name_sources: tuple[object, ...] = (None, None, None)
    _named_records: object = None
    _top_processes: TopProcesses[ProcessKey] = field(default_factory=lambda: TopProcesses(20, 600.0))
    _process_us: dict[ProcessKey, int] = field(default_factory=dict)
    _process_shares: dict[ProcessKey, dict[str, int]] = field(default_factory=dict)
    _usage: UsageTracker = field(default_factory=UsageTracker)
    _trees: TreeBuilder = field(default_factory=TreeBuilder)
    _tree: WorkloadTree = EMPTY_TREE
    _workloads: WorkloadLedger[Classified] = field(default_factory=lambda: WorkloadLedger(600.0))
    _unattributed: Ledger[str] = field(default_factory=Ledger)
    _busy_us: int = 0
    _dt: float = 0.0
    _zones: dict[ZoneId, CounterTrack] = field(default_factory=dict)
    _zone_energy: Ledger[ZoneId] = field(default_factory=Ledger)
    _idle: Ledger[str] = field(default_factory=Ledger)
    _active: Ledger[str] = field(default_factory=Ledger)
    _baselines: dict[str, IdleBaseline] = field(default_factory=dict)
    _idle_in_use: dict[str, tuple[float | None, str]] = field(default_factory=dict)
    _errors: Ledger[tuple[str, str]] = field(default_factory=Ledger)
    _procfs_up: bool = True
    _last_now: float | None = None
    _last_cpu: CpuTimes | None = None
    _deltas_seen: bool = False
    _carbon: float | None = None
    _carbon_up: bool = True
    _stats: TickStats = field(default_factory=TickStats)
    _budget: SeriesBudget[WorkloadState] | None = None
    _exported: tuple[WorkloadState, ...] = ()  # this tick's workload series, after the series budget
    _keyed_records: object = None
    _keys: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    @classmethod
    def start(cls, config: Config) -> Engine:
        """Discover sources (once) and log what was chosen and why."""
        try:
            proc_stat: ProcStat | None = ProcStat(config.proc_path)
        except OSError as exc:
            log.warning("cannot open %s/stat (%s): CPU utilisation unavailable", config.proc_path, exc.strerror)
            proc_stat = None
        info = read_node_info(config.node_name, config.proc_path, config.cgroup_root)
        meter, reports = select_meter(config, info.cpus)
        for report in reports:
            if report.available:
                log.info("meter %s: available%s", report.name, "".join(f"; {n}" for n in report.notes))
            else:
                log.warning(
                    "meter %s: unavailable: %s%s",
                    report.name,
                    report.reason,
                    f". Fix: {report.fix}" if report.fix else "",
                )
        if meter is None:
            log.error("no meter of %s is usable: node energy is not measured", ",".join(config.meters))
        else:
            log.info("measuring node energy with the %s meter", meter.name)
        engine = cls(config=config, meter=meter, reports=reports, proc_stat=proc_stat, info=info)
        engine._workloads = WorkloadLedger(config.workload_ttl)
        engine.fd_budget = FdBudget.from_process_limit()
        if config.gpus:
            engine._open_gpus()
        if config.exports_processes:
            engine.processes = ProcessTable(config.proc_path, engine.fd_budget)
            engine._top_processes = TopProcesses(config.process_top_n, config.workload_ttl)
        if config.walks_workloads:
            # The series budget and level (exporter/budget.py) decide which workload series are exported.
            extra = 1 if config.kubernetes_api else 0  # a pod's wattlens_pod_labels series
            engine._budget = SeriesBudget(
                config.max_series, WorkloadState, config.workload_ttl, config.series_level, pod_extra=extra
            )
            engine.cgroups = CgroupTree(config.cgroup_root, engine.fd_budget, hold_s=config.workload_ttl)
            engine.kubelet = KubeletLogs(config.kubelet_log_path)
            log.info(
                "attributing to workloads from the %s cgroup hierarchy at %s",
                engine.cgroups.layout.version,
                engine.cgroups.layout.root,
            )
        return engine

    def _open_gpus(self) -> None:
        try:
            meter = open_nvml(self.config.nvml_timeout)
        except MeterUnavailable as exc:
            self.gpu_report = MeterReport("nvml", False, exc.reason, exc.fix)
            log.info("%s: GPU energy is not measured", exc.reason)
            return
        from exporter.gpus import GpuAccounting  # noqa: PLC0415 - with pynvml: only where there are GPUs

        self.gpus = GpuAccounting(meter, self.config)
        self.gpu_report = MeterReport(
            "nvml", True, notes=tuple(f"GPU {g.index}: {g.model} {g.uuid}" for g in meter.gpus)
        )
        log.info("measuring %d NVIDIA GPU(s) through NVML (driver %s)", len(meter.gpus), meter.driver)

    def close(self) -> None:
        if self.gpus is not None:
            self.gpus.close()
        if self.processes is not None:
            self.processes.close()
        if self.cgroups is not None:
            self.cgroups.close()
        if self.meter is not None:
            self.meter.close()
        if self.proc_stat is not None:
            self.proc_stat.close()

    # --- the tick --------------------------------------------------------------------------------

    def tick(self, now: float) -> Snapshot:
        started, cpu_started = time.perf_counter(), time.thread_time()
        cpu = self._read_cpu()
        dt = None if self._last_now is None else now - self._last_now
        samples = self.meter.read(now, cpu) if self.meter is not None else []
        self._read_carbon()
        self._tree = self._read_workloads(now)
        self._busy_us = self._node_busy_us(cpu)
        self._process_us = self._read_processes()
        domains: dict[str, _DomainTick] = {}
        for sample in samples:
            delta = self._account(sample, dt)
            domain = domains.setdefault(sample.zone.zone, _DomainTick())
            domain.delta_uj += delta if delta is not None else 0
            domain.complete = domain.complete and delta is not None
        if dt is not None and dt > 0:
            for zone, domain in domains.items():
                self._split(zone, domain, now, dt, cpu)
            self._deltas_seen = True
            self._dt = dt
            if self.processes is not None:
                self._top_processes.add_tick(now, self._process_shares)
                self._process_shares = {}
        if self.gpus is not None:
            for key, per_gpu in self.gpus.tick(now, dt, self._owner_of_pid).items():
                for gpu_domain, microjoules in per_gpu.items():
                    self._workloads.add(key, gpu_domain, microjoules)
        self._workloads.expire(now)
        self._say_fd_degradation()
        self._last_now, self._last_cpu = now, cpu
        self._exported = self._export_workloads(now)
        stats = self._stats
        self._stats = TickStats(
            ticks=stats.ticks + 1,
            skipped=stats.skipped,
            duration_s=time.perf_counter() - started,
            cpu_s_total=stats.cpu_s_total + time.thread_time() - cpu_started,
            last_unix_time=time.time(),
        )
        return self.snapshot()

    def _say_fd_degradation(self) -> None:
        budget = self.fd_budget
        for reader in sorted(budget.degraded - self._fd_warned):
            self._fd_warned.add(reader)
            effect = (
                "cgroup CPU files beyond it are opened, read and closed each tick"
                if reader == "cgroups"
                else "processes beyond it get no series"
            )
            log.warning(
                "the fd budget (%d of the %d open files allowed; %d held) is spent: %s. Fix: raise the open-files "
                "limit (LimitNOFILE= in the unit, ulimit -n)",
                budget.budget,
                budget.limit,
                budget.held,
                effect,
            )

    def note_skipped(self, count: int) -> None:
        """The daemon skipped `count` tick slots because a tick overran its interval."""
        self._stats = replace(self._stats, skipped=self._stats.skipped + count)

    def _read_cpu(self) -> CpuTimes | None:
        if self.proc_stat is None:
            return None
        try:
            cpu = self.proc_stat.read()
        except (OSError, ValueError) as exc:
            self._errors.add(PROCFS_SOURCE, 1)
            if self._procfs_up:
                log.warning("reading %s failed: %s", self.proc_stat.path, exc)
            self._procfs_up = False
            return None
        if not self._procfs_up:
            log.info("reading %s works again", self.proc_stat.path)
        self._procfs_up = True
        return cpu

    def _account(self, sample: CounterSample, dt: float | None) -> int | None:
        """Fold one counter reading into its zone's total; the delta, or None if the zone is down."""
        track = self._zones.setdefault(sample.zone, CounterTrack())
        zone = sample.zone
        if sample.energy_uj is None:
            self._errors.add((zone.source, zone.device), 1)
            if track.failed(sample.error):
                log.warning(
                    "%s %s (%s) is down: %s; retrying with backoff", zone.source, zone.device, zone.zone, sample.error
                )
            return None
        step, came_back = track.observe(sample.energy_uj, sample.max_range_uj, dt, self.config.max_zone_watts)
        if came_back:
            log.info("%s %s (%s) is back", zone.source, zone.device, zone.zone)
        if step.kind is StepKind.RESET:
            log.warning(
                "%s %s (%s) counter reset (no plausible wrap); adding nothing for this tick",
                zone.source,
                zone.device,
                zone.zone,
            )
        self._zone_energy.add(zone, step.delta_uj)
        if step.kind is StepKind.FIRST:
            return 0 if dt is None else None  # a re-baselined zone has no delta this tick
        return step.delta_uj

    def _split(self, zone: str, domain: _DomainTick, now: float, dt: float, cpu: CpuTimes | None) -> None:
        watts, method = self._idle_watts(zone)
        if self.config.idle_policy == "baseline" and watts is not None:
            split = split_by_baseline(domain.delta_uj, dt, watts)
        else:
            split = self._ratio_split(domain.delta_uj, cpu)
            watts, method = (split.idle_uj / MICRO / dt if dt else None), "ratio"
        self._idle.add(zone, split.idle_uj)
        self._active.add(zone, split.active_uj)
        self._idle_in_use[zone] = (watts, method)
        shares = attribute(
            domain.delta_uj,
            split.idle_uj,
            self._busy_us,
            self._tree.top,
            spread_idle=self.config.idle_attribution == "cpu",
        )
        self._unattributed.add(zone, shares.unattributed_uj)
        self._workloads.add_all(zone, shares.workloads)
        if self.processes is not None:
            # The same split, over processes instead of workloads: a separate view of the same energy.
            by_process = attribute(
                domain.delta_uj,
                split.idle_uj,
                self._busy_us,
                [Usage(k, us) for k, us in self._process_us.items()],
                spread_idle=self.config.idle_attribution == "cpu",
            )
            for process, microjoules in by_process.workloads.items():
                self._process_shares.setdefault(process, {})[zone] = microjoules
        if domain.complete:
            self._baseline(zone).observe(now, domain.delta_uj / MICRO, dt)

    def _read_workloads(self, now: float) -> WorkloadTree:
        """Walk the cgroups, turn CPU readings into this tick's tree and mark its workloads as seen."""
        if self.cgroups is None:
            return EMPTY_TREE
        usages = self.cgroups.read(now)
        tree = self._trees.build(usages, self._usage.deltas(usages, self.cgroups.ended, now))
        self._workloads.seen_all(now, tree.members)
        return tree

    def _read_carbon(self) -> None:
        """Grid carbon intensity: the configured value, or the operator's file (re-read every tick; on a bad
        read the last good value stays and the source is down)."""
        path = self.config.carbon_intensity_file
        if path is None:
            self._carbon = self.config.carbon_intensity
            return
        try:
            value = float(read_operator_text(path, SMALL_VALUE_LIMIT).split()[0])
            if not 0 <= value <= 5000:
                raise ValueError(f"{value} is outside 0..5000 gCO2e/kWh")
        except (OSError, ValueError, IndexError) as exc:
            self._errors.add(("carbon", str(path)), 1)
            if self._carbon_up:
                log.warning("carbon intensity file %s unusable (%s); keeping the last value", path, exc)
            self._carbon_up = False
            return
        self._carbon, self._carbon_up = value, True

    def _owner_of_pid(self, pid: int) -> tuple[str, str | None] | None:
        """The workload of a host PID (GPU users), through /proc/<pid>/cgroup and this tick's tree."""
        try:
            with open(self.config.proc_path / str(pid) / "cgroup", "rb") as handle:
                data = handle.read(65536)
        except OSError:
            return None  # gone, or not visible (the exporter needs the host's PID namespace)
        # Hybrid hosts name a process's cgroup in both hierarchies; either may be the one walked.
        return owner_of(cgroup_path(data), self._tree) or owner_of(cgroup_path(data, v1=True), self._tree)

    def _read_processes(self) -> dict[ProcessKey, int]:
        if self.processes is None:
            return {}
        usec_per_tick = 1_000_000 // clock_ticks_per_second()
        return {key: ticks * usec_per_tick for key, ticks in self.processes.read().items()}

    def _node_busy_us(self, cpu: CpuTimes | None) -> int:
        before = self._last_cpu
        if cpu is None or before is None:
            return 0
        return max(0, cpu.busy - before.busy) * 1_000_000 // clock_ticks_per_second()

    def _ratio_split(self, delta_uj: int, cpu: CpuTimes | None) -> IdleSplit:
        before = self._last_cpu
        if cpu is None or before is None:
            return split_by_ratio(delta_uj, 0, 0)
        idle = cpu.idle - before.idle
        return split_by_ratio(delta_uj, idle, (cpu.busy - before.busy) + idle)

    def _idle_watts(self, zone: str) -> tuple[float | None, str]:
        if zone in self.config.idle_watts:
            return self.config.idle_watts[zone], "configured"
        known = self.meter.idle_watts() if self.meter is not None else {}
        if zone in known:
            return known[zone], "model"
        return self._baseline(zone).watts(), "learned"

    def _baseline(self, zone: str) -> IdleBaseline:
        if zone not in self._baselines:
            self._baselines[zone] = IdleBaseline(self.config.idle_window, self.config.idle_quantile)
        return self._baselines[zone]

    # --- what gets exported ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        source = self.meter.name if self.meter is not None else "none"
        zones = tuple(
            ZoneState(zone, self._zone_energy.get(zone), acc.watts, acc.up, acc.wraps, acc.resets)
            for zone, acc in sorted(self._zones.items())
        )
        domains = tuple(
            DomainState(zone, source, self._idle.get(zone), self._active.get(zone), *self._idle_in_use[zone])
            for zone in sorted(self._idle_in_use)
        )
        sources: list[tuple[str, str, bool]] = [(r.name, "", False) for r in self.reports if not r.available]
        sources.extend((z.source, z.device, acc.up) for z, acc in sorted(self._zones.items()))
        if self.proc_stat is not None:
            sources.append((*PROCFS_SOURCE, self._procfs_up))
        errors = [(src, dev, count) for (src, dev), count in self._errors.items()]
        if self.pod_watch is not None:
            sources.append(("kubernetes-api", "", self.pod_watch.up))
        if self.config.carbon_intensity_file is not None:
            sources.append(("carbon", str(self.config.carbon_intensity_file), self._carbon_up))
        if self.gpus is not None:
            sources.extend(("nvml", g.gpu.uuid, g.up) for g in self.gpus.states())
            errors.extend(("nvml", uuid, count) for uuid, count in self.gpus.errors.items())
        return Snapshot(
            info=self.info,
            meter=source,
            zones=zones,
            domains=domains,
            sources=tuple(sources),
            errors=tuple(errors),
            ticks=self._stats,
            ready=self._deltas_seen,
            workloads=self._exported,
            unattributed=tuple(self._unattributed.items()),
            tick_seconds=self._dt,
            cgroup_read_errors=self.cgroups.malformed_reads if self.cgroups else 0,
            cgroup_walks_truncated=self.cgroups.truncated_walks if self.cgroups else 0,
            cgroup_full_walks=self.cgroups.full_walks if self.cgroups else 0,
            fd_budget=self.fd_budget.budget,
            fds_held=self.fd_budget.held,
            fd_degraded=tuple(sorted(self.fd_budget.degraded)),
            carbon_intensity=self._carbon,
            pod_label_keys=self.config.pod_labels if self.pod_watch else (),
            pod_labels=self._pod_label_rows(),
            pod_watch=(
                (self.pod_watch.lists, self.pod_watch.watches, self.pod_watch.errors, self.pod_watch.synced)
                if self.pod_watch
                else None
            ),
            gpus=self.gpus.states() if self.gpus else (),
            gpu_driver=self.gpus.meter.driver if self.gpus else "",
            processes=tuple((k, tuple(sorted(e.items()))) for k, e in self._top_processes.exported()),
            processes_other=tuple(sorted(self._top_processes.other_uj.items())),
            budget=self._budget.stats if self._budget is not None else None,
        )

    def _export_workloads(self, now: float) -> tuple[WorkloadState, ...]:
        """This tick's workload series: every workload's state through the series budget (once per tick)."""
        if self._budget is None:
            return ()
        states = self._workload_states()
        records = self._workloads.records()
        if records is not self._keyed_records:
            self._keyed_records = records
            self._keys = (tuple(key for key, _ in records), tuple(r.parent for _, r in records))
        return self._budget.apply(now, states, *self._keys)

    def _names(self, pod_uid: str, container_id: str) -> tuple[PodName | None, ContainerName | None]:
        """Names from the kubelet's log directories, else from the API watch when it runs."""
        pod = self.kubelet.pod(pod_uid) if self.kubelet and pod_uid else None
        container = self.kubelet.container(container_id) if self.kubelet and container_id else None
        meta = self.pod_watch.pods.get(pod_uid) if self.pod_watch and pod_uid else None
        if meta is not None:
            pod = pod or PodName(meta.namespace, meta.name)
            name = dict(meta.containers).get(container_id) if container_id else None
            if container is None and name:
                container = ContainerName(meta.namespace, meta.name, name)
        return pod, container

    def _pod_label_rows(self) -> tuple[tuple[str, ...], ...]:
        if self.pod_watch is None:
            return ()
        pods = self.pod_watch.pods
        keys = self.config.pod_labels
        rows = []
        exported = {w.labels[2] for w in self._exported if w.kind == "pod"}  # folded pods have no row
        for _, record in self._workloads.records():
            meta = pods.get(record.workload.uid) if record.workload.kind == "pod" else None
            if meta is not None and meta.uid not in exported:
                continue
            if meta is not None:
                labels = dict(meta.labels)
                rows.append(
                    (
                        meta.namespace,
                        meta.name,
                        meta.uid,
                        meta.owner_kind,
                        meta.owner_name,
                        *(labels.get(k, "") for k in keys),
                    )
                )
        return tuple(rows)

    def _workload_states(self) -> tuple[WorkloadState, ...]:
        records = self._workloads.records()
        kubelet = self.kubelet
        now = self._last_now or 0.0
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
        states = []
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
                known = memo[key] = _Labels(workload, record.parent, names, values)
            # Zones in the order the ledger first saw them: the same every tick, no sorting needed. Only a
            # workload seen in this tick has a share in it (the budget and pod watts rely on that).
            energy = tuple(record.energy_uj.items())
            last = tuple(record.last_uj.items()) if record.last_seen == now else ()
            states.append(WorkloadState(workload.kind, known.values, energy, last))
        return tuple(states)
