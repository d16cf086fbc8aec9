"""The two meter interfaces: node meters (cumulative energy per zone) and accelerator meters (per device).

A node meter (RAPL, hwmon, the model, the BMC) discovers its zones once and returns one `CounterSample` per
zone each tick; an accelerator meter (NVIDIA through NVML; AMD next) returns one `AcceleratorSample` per device,
with the processes that used it. Meters do I/O and nothing else: counters become energy in the accounting.
Meters are registered in `exporter/meters/registry.py` and chosen by `exporter/meters/select.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.workloads.procfs import CpuTimes

ENERGY_COUNTER = "energy_counter"  # the hardware keeps the joules
POWER_INTEGRATION = "power_integration"  # power readings integrated over time by wattlens


@dataclass(frozen=True, slots=True, order=True)
class ZoneId:
    """One physical energy counter.

    `zone` is the zone name (exporter/zones.py: package, core, dram, psys, grace, platform, …); `socket` and `die`
    are "" where they do not apply; `source` names the meter; `device` names the counter for `source_up`
    (e.g. intel-rapl:0, hwmon3/power1).
    """

    zone: str
    socket: str
    die: str
    source: str
    device: str


@dataclass(frozen=True, slots=True)
class CounterSample:
    """A counter's raw value at one tick; `energy_uj` is None when the read failed (`error` says why).

    `method` says whether the hardware counts the energy or wattlens integrates power readings. `read_at` is
    the monotonic time the value was measured when that is not the tick's own time (a BMC polled in the
    background); None means "now". `watts` is the sensor's own power reading, where it has one (otherwise the
    power is the counter's delta over the tick)."""

    zone: ZoneId
    energy_uj: int | None
    max_range_uj: int  # 0 when the counter never wraps (or its range is unknown: a decrease is a reset)
    error: str = ""
    method: str = ENERGY_COUNTER
    read_at: float | None = None
    watts: float | None = None  # the power the sensor reported with this reading, where it reports one


class MeterUnavailable(Exception):
    """Discovery found nothing usable. `reason` and `fix` are shown to the user verbatim."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


class NodeMeter(Protocol):
    """A source of node energy. Built by discovery once; `read` is called once per tick."""

    @property
    def name(self) -> str:
        """The meter's name: the `source` label of its zones."""
        ...

    def zones(self) -> Sequence[ZoneId]: ...

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]: ...

    def idle_watts(self) -> dict[str, float]:
        """Idle power per zone the meter knows for certain (the model does); empty otherwise."""
        ...

    def close(self) -> None: ...


Meter = NodeMeter  # the name the engine has always used


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One accelerator (a GPU, or a GPU instance). `scope` is "" when its energy is the board's own, or the
    zone its counter really covers: "module" on GH200, where NVML counts Grace, GPU and memory together."""

    index: int
    uuid: str
    model: str
    source: str = "nvml"  # the meter that reads it: the `source` label
    scope: str = ""
    partition: str = ""  # how the device is partitioned, e.g. "CPX/NPS4" (AMD); "" when it is not


@dataclass(frozen=True, slots=True)
class AcceleratorUser:
    """A process that used an accelerator during the tick, with its weight in the split. `cgroup` is its
    /proc/<pid>/cgroup as read when the meter first saw it (so a process that has exited keeps its owner); b""
    means "look it up now". PID 0 stands for use no known process accounts for (unattributed)."""

    pid: int
    weight: int
    cgroup: bytes = b""


@dataclass(frozen=True, slots=True)
class ScopePower:
    """A power scope the driver reports beside the device's own reading: `memory` (part of the board's power,
    never to be added to it) or `module` (around it: GH200/GB200, Grace included). Joules are the readings
    integrated since start (trapezoid), µJ."""

    scope: str
    watts: float
    joules_uj: int


@dataclass(frozen=True, slots=True)
class InstanceUse:
    """One partition of a device (a MIG GPU instance): its id, profile and UUID, and its weight this tick (its
    measured activity, or its memory when `split` says so)."""

    instance: str
    profile: str
    uuid: str
    weight: int


@dataclass(frozen=True, slots=True)
class AcceleratorSample:
    """One accelerator at one tick: cumulative µJ (None if the read failed), how they were obtained, and the
    processes that used it with their weights (and how those weights were made). `utilization` is the device's
    mean busy percentage over the tick where the driver says it (the idle estimate of a GPU that is never
    unused needs it); `scopes` are its other power scopes; `instances` its partitions' shares (MIG)."""

    device: Accelerator
    energy_uj: int | None
    method: str
    users: tuple[AcceleratorUser, ...] = ()
    split: str = "none"  # how users were weighted: sm_util | equal | mig_gpm | mig_memory | none (vendor names)
    partitioned: bool = False  # MIG and the like: the split among users is an estimate
    error: str = ""
    utilization: float | None = None
    scopes: tuple[ScopePower, ...] = ()
    instances: tuple[InstanceUse, ...] = ()


class AcceleratorMeter(Protocol):
    """Every accelerator of one vendor on the node. `read` waits at most the meter's own time limit."""

    name: str  # the source label: nvml, amdsmi, …
    kind: str  # what it measures, for people: "NVIDIA GPU(s) through NVML"
    driver: str

    @property
    def devices(self) -> Sequence[Accelerator]: ...

    def read(self, now: float) -> list[AcceleratorSample]: ...

    def poll(self, now: float, wait: bool = False) -> None:
        """Look at the devices' processes between ticks (the meter's own thread does it every
        `gpu_poll_interval`); `wait` until done. Meters without per-process data do nothing."""
        ...

    def close(self) -> None: ...
