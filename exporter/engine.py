"""One tick, in order: read the meters, CPU time, workloads and accelerators; account every domain; snapshot.

The engine keeps no accounts of its own: meters read (exporter/meters/), `Workloads` says who used the machine,
`Accounting` turns every domain's counter into idle, unattributed and workload energy, and the `Snapshot`
(exporter/snapshot.py) is what the outputs read. One thread drives it at a time (the daemon's tick worker, or the
CLI), with `now` from the caller's monotonic clock so that tests drive it deterministically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from exporter.accounting import Accounting, Weights
from exporter.carbon.source import STATIC, GridIntensity, carbon_state
from exporter.meters.base import AcceleratorMeter
from exporter.meters.select import MeterReport, NodeMeters, open_accelerators, select_meter
from exporter.nodeinfo import NodeInfo, read_node_info
from exporter.snapshot import (
    AcceleratorState,
    PodWatchStats,
    Snapshot,
    SourceErrors,
    SourceUp,
    TickStats,
    ZoneState,
)
from exporter.sysfs import FdBudget
from exporter.workloads.pod_watch import PodWatch
from exporter.workloads.process_view import ProcessView
from exporter.workloads.procfs import NodeCpu
from exporter.workloads.tracker import Workloads

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        config: Config,
        meter: NodeMeters | None,
        reports: list[MeterReport],
        info: NodeInfo,
        *,
        cpu: NodeCpu,
        workloads: Workloads,
        accelerators: list[AcceleratorMeter],
        accelerator_reports: list[MeterReport],
        fd_budget: FdBudget | None = None,
        carbon: GridIntensity | None = None,
    ) -> None:
        self.config = config
        self.meter = meter
        self.reports = reports
        self.info = info
        self.cpu = cpu
        self.workloads = workloads
        self.accelerators = accelerators
        self.accelerator_reports = accelerator_reports
        self.fd_budget = fd_budget or FdBudget(1 << 20)
        self.processes = ProcessView(config, self.fd_budget) if config.exports_processes else None
        self.carbon = carbon or GridIntensity(config)
        self.accounting = Accounting(config, workloads.ledger, meter.idle_watts if meter else dict)
        self._last_now: float | None = None
        self._dt = 0.0
        self._ready = False
        self._stats = TickStats()
        self._missing: tuple[str, list[SourceUp]] | None = None  # (meter in use, preferred meters unavailable)

    @classmethod
    def start(cls, config: Config) -> Engine:
        """Discover every source (once) and log what was chosen and why."""
        carbon = GridIntensity(config)  # first: an unreadable credential is a config error before anything runs
        cpu = NodeCpu(config.proc_path)
        info = read_node_info(config.node_name, config.proc_path, config.cgroup_root)
        meter, reports = select_meter(config, info.cpus)
        accelerators, accelerator_reports = open_accelerators(config)
        needed = _needed(config, meter)
        for report in [*reports, *accelerator_reports]:
            if report.available:
                serves = f" ({', '.join(report.roles)})" if report.roles else ""
                log.info("meter %s: available%s%s", report.name, serves, "".join(f"; {n}" for n in report.notes))
            else:  # a warning when a better meter than the one in use is missing, else for information
                fix = f". Fix: {report.fix}" if report.fix else ""
                level = logging.WARNING if report.name in needed else logging.INFO
                log.log(level, "meter %s: unavailable: %s%s", report.name, report.reason, fix)
        if meter is None:
            log.error("no meter of %s is usable: node energy is not measured", ",".join(config.meters))
        else:
            log.info("measuring node energy with the %s meter", meter.name)
        for accelerator in accelerators:
            log.info("measuring %d %s (driver %s)", len(accelerator.devices), accelerator.kind, accelerator.driver)
        budget = FdBudget.from_process_limit()
        workloads = Workloads.open(config, budget)
        return cls(
            config,
            meter,
            reports,
            info,
            cpu=cpu,
            workloads=workloads,
            accelerators=accelerators,
            accelerator_reports=accelerator_reports,
            fd_budget=budget,
            carbon=carbon,
        )

    @property
    def pod_watch(self) -> PodWatch | None:
        return self.workloads.pod_watch

    @pod_watch.setter
    def pod_watch(self, watch: PodWatch | None) -> None:
        self.workloads.pod_watch = watch

    def close(self) -> None:
        self.carbon.close()
        for accelerator in self.accelerators:
            accelerator.close()
        if self.processes is not None:
            self.processes.close()
        self.workloads.close()
        if self.meter is not None:
            self.meter.close()
        self.cpu.close()

    # --- the tick --------------------------------------------------------------------------------------------

    def tick(self, now: float) -> Snapshot:
        started, cpu_started = time.perf_counter(), time.thread_time()
        cpu = self.cpu.read()
        dt = None if self._last_now is None else now - self._last_now
        samples = self.meter.read(now, cpu) if self.meter is not None else []
        intensity = self.carbon.read()
        tree = self.workloads.read(now)
        busy_us = self.cpu.busy_us(cpu)
        processes = self.processes.weights(busy_us) if self.processes is not None else None
        by_process = self.accounting.tick(
            now,
            dt,
            node=samples,
            cpu=Weights(busy_us, tree.top, self.cpu.idle_share(cpu)),
            accelerators=[sample for meter in self.accelerators for sample in meter.read(now)],
            owner=self.workloads.owner_of_user,
            processes=processes,
            intensity=intensity.grams_per_kwh if intensity is not None else None,
        )
        if dt is not None and dt > 0:
            self._ready, self._dt = True, dt
            if self.processes is not None:
                self.processes.add(now, by_process)
        self.workloads.expire(now)
        self.workloads.export()
        self.fd_budget.say_degradation()
        self._last_now, self.cpu.last = now, cpu
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

    # --- what gets exported ------------------------------------------------------------------------------------

    def _sources(
        self, zones: tuple[ZoneState, ...], accelerators: tuple[AcceleratorState, ...]
    ) -> tuple[list[SourceUp], list[SourceErrors]]:
        """Every source's health: the meters preferred to the one measuring CPU energy that are unavailable
        (device ""), each zone and accelerator, /proc/stat, the pod watch and the carbon file."""
        serving = self.meter.name if self.meter is not None else ""
        if self._missing is None or self._missing[0] != serving:  # again only when the meter changes
            needed = _needed(self.config, self.meter)
            self._missing = (
                serving,
                [SourceUp(r.name, "", False) for r in self.reports if not r.available and r.name in needed],
            )
        up = self._missing[1].copy()
        up += [SourceUp(z.zone.source, z.zone.device, z.up) for z in zones]
        up += [SourceUp(a.source, a.device.uuid, a.up) for a in accelerators]
        errors = [SourceErrors(source, device, count) for (source, device), count in self.accounting.errors.items()]
        if self.cpu.present:
            up.append(SourceUp("procfs", "stat", self.cpu.up))
            if self.cpu.errors:
                errors.append(SourceErrors("procfs", "stat", self.cpu.errors))
        if self.pod_watch is not None:
            up.append(SourceUp("kubernetes-api", "", self.pod_watch.up))
        reading = self.carbon.reading
        if reading is not None and reading.source != STATIC:  # the file or the API (a value cannot fail)
            up.append(SourceUp("carbon", reading.source, reading.up))
            if reading.errors:
                errors.append(SourceErrors("carbon", reading.source, reading.errors))
        return up, errors

    def snapshot(self) -> Snapshot:
        accounting, watch = self.accounting, self.pod_watch
        zones, accelerators = accounting.zones(), accounting.accelerator_states()
        up, errors = self._sources(zones, accelerators)
        processes, other = self.processes.states() if self.processes is not None else ((), ())
        cgroups = self.workloads.cgroups
        return Snapshot(
            info=self.info,
            meter=self.meter.name if self.meter is not None else "none",
            zones=zones,
            domains=accounting.domains(),
            sources=tuple(up),
            errors=tuple(errors),
            ticks=self._stats,
            ready=self._ready,
            zone_info=accounting.zone_info(),
            node=accounting.node_energy(),
            workloads=self.workloads.exported,
            tick_seconds=self._dt,
            cgroup_read_errors=cgroups.malformed_reads if cgroups else 0,
            cgroup_walks_truncated=cgroups.truncated_walks if cgroups else 0,
            cgroup_full_walks=cgroups.full_walks if cgroups else 0,
            fd_budget=self.fd_budget.budget,
            fds_held=self.fd_budget.held,
            fd_degraded=tuple(sorted(self.fd_budget.degraded)),
            accelerators=accelerators,
            accelerator_driver=", ".join(m.driver for m in self.accelerators),
            carbon_intensity=self.carbon.reading.grams_per_kwh if self.carbon.reading else None,
            carbon=carbon_state(self.carbon.reading, self.accounting.carbon),
            pod_label_keys=self.config.pod_labels if watch else (),
            pod_labels=self.workloads.pod_labels(),
            pod_watch=PodWatchStats(watch.lists, watch.watches, watch.errors, watch.synced) if watch else None,
            processes=processes,
            processes_other=other,
            meter_switches=self.meter.switches if self.meter is not None else 0,
            budget=self.workloads.budget_stats,
        )


def _needed(config: Config, meter: NodeMeters | None) -> tuple[str, ...]:
    """The meters preferred to the one measuring CPU energy: missing, they are worth a warning and a source_up 0."""
    order = tuple(config.meters)
    serving = meter.name if meter is not None else ""
    return order[: order.index(serving)] if serving in order else order
