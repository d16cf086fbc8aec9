"""Monotonic energy accumulators in integer µJ (no I/O).

Exported joule counters are these sums, never raw hardware values: a hardware counter wraps and resets,
a ledger entry only ever grows.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
W = TypeVar("W")


class Ledger(Generic[K]):
    def __init__(self) -> None:
        self._totals: dict[K, int] = {}

    def add(self, key: K, microjoules: int) -> None:
        if microjoules < 0:
            raise ValueError(f"negative energy {microjoules} µJ for {key!r}")
        self._totals[key] = self._totals.get(key, 0) + microjoules

    def get(self, key: K) -> int:
        return self._totals.get(key, 0)

    def items(self) -> Iterator[tuple[K, int]]:
        return iter(sorted(self._totals.items(), key=lambda item: repr(item[0])))

    def __len__(self) -> int:
        return len(self._totals)


@dataclass(slots=True)
class WorkloadRecord(Generic[W]):
    """A workload's energy per zone since wattlens first saw it, kept for a TTL after it ends."""

    workload: W
    parent: str  # key of its top-level workload, "" if it is one
    energy_uj: dict[str, int] = field(default_factory=dict)
    last_uj: dict[str, int] = field(default_factory=dict)  # this tick's share, for watts
    last_seen: float = 0.0
    operational_ng: int = 0  # grams CO2e (ng) of its energy at the grid intensity (exporter/carbon/ledger.py)
    embodied_ng: int = 0  # its share of the hardware's embodied carbon (ng)
    last_operational_ng: int = 0  # this tick's shares of those (the series budget folds them like energy)
    last_embodied_ng: int = 0
    # Set when energy_uj may have changed (a non-zero share, a new domain); the reader that copies the record
    # clears it, and copies it again only when it is set or last_uj differs: most ticks, for an idle workload.
    changed: bool = True


class WorkloadLedger(Generic[W]):
    """Monotonic µJ per workload and zone. A workload that ends keeps its series until `ttl_s` has passed
    since it was last seen, so every Prometheus replica scrapes its final value; then it is dropped, which
    bounds memory under churn."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._records: dict[str, WorkloadRecord[W]] = {}
        self._sorted: list[tuple[str, WorkloadRecord[W]]] | None = []  # records() until membership changes

    def seen(self, now: float, key: str, workload: W, parent: str) -> None:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = WorkloadRecord(workload, parent)
            self._sorted = None
        record.workload, record.parent, record.last_seen = workload, parent, now
        record.last_uj = {}
        record.last_operational_ng = record.last_embodied_ng = 0

    def add(self, key: str, zone: str, microjoules: int) -> None:
        if microjoules < 0:
            raise ValueError(f"negative energy {microjoules} µJ for {key}")
        record = self._records[key]
        record.energy_uj[zone] = record.energy_uj.get(zone, 0) + microjoules
        record.last_uj[zone] = record.last_uj.get(zone, 0) + microjoules
        record.changed = True

    def seen_all(self, now: float, members: Iterable[tuple[str, W, str]]) -> None:
        """`seen` for every (key, workload, parent) of a tick."""
        records = self._records
        for key, workload, parent in members:
            record = records.get(key)
            if record is None:
                record = records[key] = WorkloadRecord(workload, parent)
                self._sorted = None
            record.workload, record.parent, record.last_seen = workload, parent, now
            record.last_uj = {}  # a new dict, so that a reader can compare it with the one it copied
            record.last_operational_ng = record.last_embodied_ng = 0

    def add_all(self, zone: str, shares: dict[str, int]) -> None:
        """`add` for every workload of one zone's split (one call per zone and tick, not per workload)."""
        records = self._records
        for key, microjoules in shares.items():
            if microjoules < 0:
                raise ValueError(f"negative energy {microjoules} µJ for {key}")
            record = records[key]
            energy, last = record.energy_uj, record.last_uj
            if microjoules or zone not in energy:
                energy[zone] = energy.get(zone, 0) + microjoules
                record.changed = True
            last[zone] = last.get(zone, 0) + microjoules

    def add_carbon(self, operational: bool, shares: dict[str, int]) -> None:
        """Operational (else embodied) carbon in ng of one domain's tick, per workload."""
        records = self._records
        for key, nanograms in shares.items():
            record = records[key]
            if operational:
                record.operational_ng += nanograms
                record.last_operational_ng += nanograms
            else:
                record.embodied_ng += nanograms
                record.last_embodied_ng += nanograms
            record.changed = record.changed or nanograms > 0

    def expire(self, now: float) -> int:
        """Drop workloads unseen for longer than the TTL; returns how many went."""
        gone = [k for k, r in self._records.items() if now - r.last_seen > self.ttl_s]
        for key in gone:
            del self._records[key]
        if gone:
            self._sorted = None
        return len(gone)

    def records(self) -> list[tuple[str, WorkloadRecord[W]]]:
        """Every record, by key (sorted again only when a workload came or went)."""
        if self._sorted is None:
            self._sorted = sorted(self._records.items())
        return self._sorted

    def __len__(self) -> int:
        return len(self._records)


@dataclass(slots=True)
class _Exported:
    energy_uj: dict[str, int]
    last_seen: float


class TopProcesses(Generic[K]):
    """Opt-in process series, bounded: at most `top_n` processes get a series of their own; every other
    process's energy goes to one `other` series per zone.

    Membership is sticky so that every series only grows: a process keeps its series until `ttl_s` after it
    ends; free slots go each tick to the processes that drew the most energy in that tick, whose series then
    start from that tick (what they used before was counted in `other`).
    """

    def __init__(self, top_n: int, ttl_s: float) -> None:
        self.top_n = top_n
        self.ttl_s = ttl_s
        self._exported: dict[K, _Exported] = {}
        self.other_uj: dict[str, int] = {}

    def add_tick(self, now: float, shares: dict[K, dict[str, int]]) -> None:
        drew = {k: sum(v.values()) for k, v in shares.items() if k not in self._exported}
        newcomers = sorted((k for k, total in drew.items() if total > 0), key=lambda k: -drew[k])
        free = max(0, self.top_n - len(self._exported))
        for key in newcomers[:free]:
            self._exported[key] = _Exported({}, now)
        for key in newcomers[free:]:
            for zone, microjoules in shares[key].items():
                self.other_uj[zone] = self.other_uj.get(zone, 0) + microjoules
        for key, per_zone in shares.items():
            exported = self._exported.get(key)
            if exported is None:
                continue
            exported.last_seen = now
            for zone, microjoules in per_zone.items():
                exported.energy_uj[zone] = exported.energy_uj.get(zone, 0) + microjoules
        for key in [k for k, e in self._exported.items() if now - e.last_seen > self.ttl_s]:
            del self._exported[key]

    def exported(self) -> list[tuple[K, dict[str, int]]]:
        return [(k, dict(e.energy_uj)) for k, e in self._exported.items()]
