"""Choosing the node's meters: for each role, the first meter in the configured order that measures it.

Roles come from exporter/zones.py. CPU energy (the zones split among workloads) comes from the first meter of
`meters` that has CPU zones: RAPL, else hwmon (Grace, amd_energy, Altra), else the model, which always works. The
module (GH200) and the platform come from the first meter that has them (hwmon's ACPI meters), and the platform
from the BMC instead when `redfish.url` is set. A meter whose CPU zones duplicate an earlier meter's (amd_energy
beside RAPL) is not read.

At runtime, when every CPU zone of the meter in use has been down for `meter_failover_after` seconds, the next
meter in order takes over (its series carry its own `source`); the better meter is probed again with backoff and
takes back over once it reads. A meter that opens but never reads is handled the same way.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.meters.base import AcceleratorMeter, CounterSample, MeterUnavailable, NodeMeter, ZoneId
from exporter.meters.registry import ACCELERATOR_METERS, NODE_METERS
from exporter.workloads.procfs import CpuTimes
from exporter.zones import Role, role_of

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

NODE_ROLES: tuple[Role, ...] = ("cpu", "module", "platform")
PROBE_FIRST_S = 60.0
PROBE_MAX_S = 3600.0


@dataclass(frozen=True, slots=True)
class MeterReport:
    """What one meter's discovery found; shown by `wattlens check` and logged at start."""

    name: str
    available: bool
    reason: str = ""
    fix: str = ""
    notes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()  # the roles it serves on this node (empty: available but not needed)


def open_meter(name: str, config: Config, cpus: int) -> NodeMeter:
    """Open a registered meter by name (its module is imported only now)."""
    module_name = NODE_METERS.get(name)
    if module_name is None:
        raise MeterUnavailable(f"unknown meter {name}")
    opener: Callable[[Config, int], NodeMeter] = importlib.import_module(module_name).open_meter
    return opener(config, cpus)


def open_platform(config: Config) -> NodeMeter:
    from exporter.meters import redfish  # noqa: PLC0415 - only nodes with a BMC configured load the client

    return redfish.open_platform(config)


def _roles(meter: NodeMeter) -> set[Role]:
    return {role_of(z.zone) for z in meter.zones()}


@dataclass(slots=True)
class _InUse:
    name: str
    meter: NodeMeter
    roles: set[Role] = field(default_factory=set)
    cpu: frozenset[ZoneId] = frozenset()  # its zones read for the CPU role
    read: frozenset[ZoneId] = frozenset()  # every zone of it that is read (its roles')
    only_cpu: bool = False  # every zone it has is read, for the CPU role: nothing to filter

    def serve(self) -> _InUse:
        """Note which of its zones the roles it serves take (again after a role came or went)."""
        zones = self.meter.zones()
        self.read = frozenset(z for z in zones if role_of(z.zone) in self.roles)
        self.cpu = frozenset(z for z in self.read if role_of(z.zone) == "cpu")
        self.only_cpu = len(self.cpu) == len(zones)
        return self


class NodeMeters:
    """The meters in use, as one NodeMeter: `read` returns the zones of each role from the meter serving it."""

    def __init__(self, config: Config, cpus: int, opener: Callable[[str, Config, int], NodeMeter] = open_meter):
        self.config = config
        self.cpus = cpus
        self.opener = opener
        self.order: tuple[str, ...] = tuple(config.meters)
        self.reports: list[MeterReport] = []
        self.switches = 0
        self._in_use: list[_InUse] = []
        self._cpu: _InUse | None = None  # the meter serving the CPU role
        self._cpu_down_since: float | None = None
        self._probe_at: float | None = None
        self._probe_backoff = PROBE_FIRST_S

    # --- start ---------------------------------------------------------------------------------------------

    def open(self, try_all: bool = False, platform: Callable[[Config], NodeMeter] = open_platform) -> None:
        """Open meters in order until every role is served (all of them with `try_all`, for check)."""
        wanted: set[Role] = set(NODE_ROLES)
        if self.config.redfish.url:
            wanted.discard("platform")
            try:
                bmc = platform(self.config)
            except MeterUnavailable as exc:
                self.reports.append(MeterReport("redfish", False, exc.reason, exc.fix))
            else:
                self._in_use.append(_InUse("redfish", bmc, {"platform"}).serve())
                self.reports.append(MeterReport("redfish", True, notes=_notes(bmc), roles=("platform",)))
        for name in self.order:
            if not wanted and not try_all:
                break
            try:
                meter = self.opener(name, self.config, self.cpus)
            except MeterUnavailable as exc:
                self.reports.append(MeterReport(name, False, exc.reason, exc.fix))
                continue
            serves = _roles(meter) & wanted
            notes = _notes(meter)
            if not serves:
                meter.close()
                self.reports.append(MeterReport(name, True, notes=(*notes, _unused(meter, self._in_use))))
                continue
            wanted -= serves
            self._in_use.append(_InUse(name, meter, serves).serve())
            self._roles_changed()
            self.reports.append(MeterReport(name, True, notes=notes, roles=tuple(r for r in NODE_ROLES if r in serves)))

    @property
    def name(self) -> str:
        """The meter of the node's CPU energy (the `source` of workload series and `wattlens_node_info`)."""
        serving = self._cpu
        return serving.name if serving is not None else "none"

    @property
    def measures(self) -> bool:
        return bool(self._in_use)

    def get(self, name: str) -> NodeMeter | None:
        """The named meter if it is in use."""
        return next((u.meter for u in self._in_use if u.name == name), None)

    def _serving(self, role: Role) -> _InUse | None:
        if role == "cpu":
            return self._cpu  # asked every tick: kept rather than searched
        return next((u for u in self._in_use if role in u.roles), None)

    def _roles_changed(self) -> None:
        self._cpu = next((u for u in self._in_use if "cpu" in u.roles), None)

    # --- per tick ------------------------------------------------------------------------------------------

    def zones(self) -> Sequence[ZoneId]:
        return [z for u in self._in_use for z in u.meter.zones() if z in u.read]

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]:
        samples: list[CounterSample] = []
        cpu_read = False
        for use in self._in_use:
            got = use.meter.read(now, cpu)
            if use.only_cpu:
                samples += got
                if not cpu_read:
                    for sample in got:
                        if sample.energy_uj is not None:
                            cpu_read = True
                            break
                continue
            read, cpu_zones = use.read, use.cpu
            for sample in got:
                if sample.zone in read:
                    samples.append(sample)
                    cpu_read = cpu_read or (sample.energy_uj is not None and sample.zone in cpu_zones)
        before = self._cpu
        if before is None or (cpu_read and self._cpu_down_since is None and self._probe_at is None):
            return samples  # nothing to watch: the usual tick
        self._watch_cpu(now, before, cpu_read)
        after = self._cpu
        if after is not None and after is not before:
            # The new meter's first reading is this tick's baseline, so the next tick has a delta.
            samples.extend(s for s in after.meter.read(now, cpu) if s.zone in after.cpu)
        return samples

    def _watch_cpu(self, now: float, serving: _InUse, cpu_read: bool) -> None:
        if cpu_read:
            self._cpu_down_since = None
            self._probe_better(now, serving)
            return
        if self._cpu_down_since is None:
            self._cpu_down_since = now
        elif now - self._cpu_down_since >= self.config.meter_failover_after:
            self._fail_over(now, serving)

    def _fail_over(self, now: float, failed: _InUse) -> None:
        after = self.order[self.order.index(failed.name) + 1 :] if failed.name in self.order else ()
        for name in after:
            taker = self._take_cpu(name)
            if taker is not None:
                self._release_cpu(failed)
                self.switches += 1
                self._cpu_down_since = None
                self._probe_at, self._probe_backoff = now + PROBE_FIRST_S, PROBE_FIRST_S
                log.warning(
                    "meter %s: every CPU zone down for %.0f s; node CPU energy now from %s (source=%s)",
                    failed.name,
                    self.config.meter_failover_after,
                    name,
                    name,
                )
                return
        self._cpu_down_since = now  # nothing to hand over to: keep retrying the failed zones

    def _take_cpu(self, name: str) -> _InUse | None:
        """The named meter serving the CPU role from now on, if it opens and has CPU zones."""
        existing = next((u for u in self._in_use if u.name == name), None)
        if existing is not None:
            if "cpu" in _roles(existing.meter):
                existing.roles.add("cpu")
                existing.serve()
                self._roles_changed()
                return existing
            return None
        try:
            meter = self.opener(name, self.config, self.cpus)
        except MeterUnavailable:
            return None
        if "cpu" not in _roles(meter):
            meter.close()
            return None
        use = _InUse(name, meter, {"cpu"}).serve()
        self._in_use.append(use)
        self._roles_changed()
        return use

    def _release_cpu(self, use: _InUse) -> None:
        use.roles.discard("cpu")
        use.serve()
        if not use.roles:
            use.meter.close()
            self._in_use.remove(use)
        self._roles_changed()

    def _probe_better(self, now: float, serving: _InUse) -> None:
        """After a failover, try the meters before the one in use again (with backoff); the first that reads
        takes the CPU role back."""
        if self._probe_at is None or now < self._probe_at or serving.name not in self.order:
            return
        for name in self.order[: self.order.index(serving.name)]:
            try:
                meter = self.opener(name, self.config, self.cpus)
            except MeterUnavailable:
                continue
            readable = "cpu" in _roles(meter) and any(
                s.energy_uj is not None for s in meter.read(now, None) if role_of(s.zone.zone) == "cpu"
            )
            if not readable:
                meter.close()
                continue
            self._release_cpu(serving)
            self._in_use.insert(0, _InUse(name, meter, {"cpu"}).serve())
            self._roles_changed()
            self.switches += 1
            self._probe_at = None
            log.warning("meter %s reads again; node CPU energy from %s (source=%s)", name, name, name)
            return
        self._probe_backoff = min(self._probe_backoff * 2, PROBE_MAX_S)
        self._probe_at = now + self._probe_backoff

    def idle_watts(self) -> dict[str, float]:
        serving = self._serving("cpu")
        return serving.meter.idle_watts() if serving is not None else {}

    def close(self) -> None:
        for use in self._in_use:
            use.meter.close()
        self._in_use = []
        self._roles_changed()


def _notes(meter: NodeMeter) -> tuple[str, ...]:
    return tuple(getattr(meter, "notes", ()))


def _unused(meter: NodeMeter, in_use: list[_InUse]) -> str:
    zones = sorted({z.zone for z in meter.zones()})
    served = ", ".join(f"{u.name} ({', '.join(sorted(u.roles))})" for u in in_use) or "nothing"
    return f"not read: its zones ({', '.join(zones)}) are measured by {served}"


def open_accelerators(config: Config) -> tuple[list[AcceleratorMeter], list[MeterReport]]:
    """Every accelerator meter that finds devices (none with `gpus: false`)."""
    meters: list[AcceleratorMeter] = []
    reports: list[MeterReport] = []
    if not config.gpus:
        return meters, reports
    for name, module_name in ACCELERATOR_METERS.items():
        opener: Callable[[Config], AcceleratorMeter] = importlib.import_module(module_name).open_accelerator
        try:
            meter = opener(config)
        except MeterUnavailable as exc:
            reports.append(MeterReport(name, False, exc.reason, exc.fix))
            continue
        meters.append(meter)
        notes = tuple(f"GPU {d.index}: {d.model} {d.uuid}{' (module scope)' if d.scope else ''}" for d in meter.devices)
        reports.append(MeterReport(name, True, notes=notes, roles=("accelerator",)))
    return meters, reports


def select_meter(config: Config, cpus: int, try_all: bool = False) -> tuple[NodeMeters | None, list[MeterReport]]:
    """Open the node's meters in order; None when no meter works. `try_all` also probes the rest (for check)."""
    meters = NodeMeters(config, cpus)
    meters.open(try_all)
    if not meters.measures:
        return None, meters.reports
    return meters, meters.reports
