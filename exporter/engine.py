"""One tick: read the meter, turn counters into deltas, split idle/active, accumulate, snapshot.

The engine owns all per-tick state and is driven by one thread at a time (the daemon's tick worker, or the
CLI). It takes `now` from the caller (a monotonic clock) so tests can drive it deterministically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from exporter.attribution import IdleSplit, split_by_baseline, split_by_ratio
from exporter.config import Config
from exporter.counters import MICRO, StepKind, counter_step
from exporter.idle import IdleBaseline
from exporter.ledger import Ledger
from exporter.meters.base import CounterSample, Meter, ZoneId
from exporter.meters.select import MeterReport, select_meter
from exporter.nodeinfo import NodeInfo, read_node_info
from exporter.workloads.procfs import CpuTimes, ProcStat

log = logging.getLogger(__name__)

PROCFS_SOURCE = ("procfs", "stat")


@dataclass(slots=True)
class ZoneAccount:
    """Running state of one physical counter."""

    prev_raw: int | None = None
    up: bool = True
    error: str = ""
    watts: float | None = None
    wraps: int = 0
    resets: int = 0


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
    _zones: dict[ZoneId, ZoneAccount] = field(default_factory=dict)
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
    _stats: TickStats = field(default_factory=TickStats)

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
        return cls(config=config, meter=meter, reports=reports, proc_stat=proc_stat, info=info)

    def close(self) -> None:
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
        self._last_now, self._last_cpu = now, cpu
        stats = self._stats
        self._stats = TickStats(
            ticks=stats.ticks + 1,
            skipped=stats.skipped,
            duration_s=time.perf_counter() - started,
            cpu_s_total=stats.cpu_s_total + time.thread_time() - cpu_started,
            last_unix_time=time.time(),
        )
        return self.snapshot()

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
        account = self._zones.setdefault(sample.zone, ZoneAccount())
        zone = sample.zone
        if sample.energy_uj is None:
            self._errors.add((zone.source, zone.device), 1)
            if account.up:
                log.warning(
                    "%s %s (%s) is down: %s; retrying with backoff", zone.source, zone.device, zone.zone, sample.error
                )
            account.up, account.error, account.watts, account.prev_raw = False, sample.error, None, None
            return None
        if not account.up:
            log.info("%s %s (%s) is back", zone.source, zone.device, zone.zone)
        account.up, account.error = True, ""
        step = counter_step(
            account.prev_raw, sample.energy_uj, sample.max_range_uj, dt or 0.0, self.config.max_zone_watts
        )
        account.prev_raw = sample.energy_uj
        if step.kind is StepKind.WRAP:
            account.wraps += 1
        elif step.kind is StepKind.RESET:
            account.resets += 1
            log.warning(
                "%s %s (%s) counter reset (no plausible wrap); adding nothing for this tick",
                zone.source,
                zone.device,
                zone.zone,
            )
        self._zone_energy.add(zone, step.delta_uj)
        if step.kind is StepKind.FIRST:
            return 0 if dt is None else None  # a re-baselined zone has no delta this tick
        account.watts = step.delta_uj / MICRO / dt if dt else None
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
        if domain.complete:
            self._baseline(zone).observe(now, domain.delta_uj / MICRO, dt)

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
        errors = tuple((src, dev, count) for (src, dev), count in self._errors.items())
        return Snapshot(
            info=self.info,
            meter=source,
            zones=zones,
            domains=domains,
            sources=tuple(sources),
            errors=errors,
            ticks=self._stats,
            ready=self._deltas_seen,
        )
