"""What every meter produces: cumulative energy counters, one per physical zone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.workloads.procfs import CpuTimes


@dataclass(frozen=True, slots=True, order=True)
class ZoneId:
    """One physical energy counter.

    `zone` is the domain (package, core, uncore, dram, psys); `socket` and `die` are "" where they do not
    apply; `source` names the meter; `device` names the counter for `source_up` (e.g. intel-rapl:0).
    """

    zone: str
    socket: str
    die: str
    source: str
    device: str


@dataclass(frozen=True, slots=True)
class CounterSample:
    """A counter's raw value at one tick; `energy_uj` is None when the read failed (`error` says why)."""

    zone: ZoneId
    energy_uj: int | None
    max_range_uj: int  # 0 when the counter never wraps
    error: str = ""


class MeterUnavailable(Exception):
    """Discovery found nothing usable. `reason` and `fix` are shown to the user verbatim."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


class Meter(Protocol):
    """A source of node energy. Built by discovery once; `read` is called once per tick."""

    name: str

    def zones(self) -> Sequence[ZoneId]: ...

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]: ...

    def idle_watts(self) -> dict[str, float]:
        """Idle power per zone the meter knows for certain (the model does); empty otherwise."""
        ...

    def close(self) -> None: ...
