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


@dataclass(frozen=True, slots=True)
class AcceleratorSample:
    """One accelerator at one tick: cumulative µJ (None if the read failed), how they were obtained, and the
    PIDs that used it with their weights (and how those weights were made)."""

    device: Accelerator
    energy_uj: int | None
    method: str
    users: tuple[tuple[int, int], ...] = ()
    split: str = "none"  # how users were weighted: sm_util | equal | mig_memory | none (vendor-specific names)
    partitioned: bool = False  # MIG and the like: the split among users is an estimate
    error: str = ""


class AcceleratorMeter(Protocol):
    """Every accelerator of one vendor on the node. `read` waits at most the meter's own time limit."""

    name: str  # the source label: nvml, amdsmi, …
    kind: str  # what it measures, for people: "NVIDIA GPU(s) through NVML"
    driver: str

    @property
    def devices(self) -> Sequence[Accelerator]: ...

    def read(self, now: float) -> list[AcceleratorSample]: ...

    def close(self) -> None: ...
