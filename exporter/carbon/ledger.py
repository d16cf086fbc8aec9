"""Carbon per workload, conserved exactly (pure: integers in, integers out, nothing lost).

Grams are kept as integer nanograms (ng). Per domain and tick, exactly like energy:

    domain grams = idle + unattributed + Σ top-level workloads

- **Operational**: a domain's tick energy at the grid intensity in force during that tick,
  `ng = µJ × mg/kWh / 3.6e6` (1 kWh = 3.6e12 µJ), the remainder of the division carried to the domain's next
  tick so no fraction of a nanogram is lost over time. The tick's grams are then split in the proportions of the
  tick's energy split (idle, unattributed, every workload), by largest remainder. Every part of a tick is
  multiplied by the same intensity, so a change of intensity is integrated tick by tick.
- **Embodied**: a piece of hardware's embodied carbon over its lifetime, `ng = TE × Δt / EL` per tick (again with
  the remainder carried), split by its users' share of it: the host by CPU time over the node's capacity (the
  unused capacity is idle, like idle energy), an accelerator like its energy in that tick.

Grams go to top-level workloads (pods, top-level containers, services, VMs, users, jobs): a pod's containers are
inside their pod's grams, as its children are inside its joules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exporter.attribution import Usage, ZoneShares, apportion, attribute, split_by_ratio
from exporter.ledger import WorkloadLedger

NG_PER_GRAM = 10**9
# ng = µJ × (mg/kWh) / 3.6e6: 1 kWh = 3.6e12 µJ and 1 g = 1e3 mg = 1e9 ng.
UJ_MG_PER_NG = 3_600_000
US_PER_S = 10**6


def intensity_mg(grams_per_kwh: float) -> int:
    """An intensity in whole mg/kWh (the integer every tick's operational grams are computed with)."""
    return max(0, round(grams_per_kwh * 1000))


@dataclass(frozen=True, slots=True)
class Rate:
    """Embodied carbon of one piece of hardware, amortised: `total_ng` over `lifetime_us`."""

    total_ng: int
    lifetime_us: int

    @classmethod
    def of(cls, kg: float, lifetime_s: float) -> Rate:
        return cls(round(kg * 1000 * NG_PER_GRAM), max(1, round(lifetime_s * US_PER_S)))


@dataclass(slots=True)
class CarbonParts:
    """One domain's grams since start (ng), by part; `carry` is the numerator left over from the last tick."""

    idle_ng: int = 0
    unattributed_ng: int = 0
    workloads_ng: int = 0
    carry: int = 0

    @property
    def total_ng(self) -> int:
        return self.idle_ng + self.unattributed_ng + self.workloads_ng


def operational_ng(delta_uj: int, mg_per_kwh: int, carry: int) -> tuple[int, int]:
    """(whole ng of `delta_uj` at `mg_per_kwh`, the remainder to carry)."""
    return divmod(delta_uj * mg_per_kwh + carry, UJ_MG_PER_NG)


def embodied_ng(rate: Rate, dt_us: int, carry: int) -> tuple[int, int]:
    """(whole ng of `rate` over `dt_us`, the remainder to carry)."""
    return divmod(rate.total_ng * dt_us + carry, rate.lifetime_us)


# The splits reuse attribution's `ZoneShares` record: its `idle_uj`, `unattributed_uj`, … hold nanograms here.


def split_like(total: int, shares: ZoneShares[str], top: Sequence[Usage[str]]) -> ZoneShares[str]:
    """`total` split in the proportions of an energy split: idle, unattributed and each top-level workload by their
    µJ (all of it idle when the split had no energy). Only top-level workloads get carbon: a pod's containers are
    in their pod's grams (one series per top-level workload, not per child)."""
    weights = [shares.idle_uj, shares.unattributed_uj, *(shares.workloads[u.key] for u in top)]
    if sum(weights) == 0:
        return ZoneShares(total, 0, dict.fromkeys((u.key for u in top), 0), {})
    idle, unattributed, *parts = apportion(total, weights)
    return ZoneShares(idle, unattributed, {u.key: part for u, part in zip(top, parts, strict=True)}, {})


class CarbonLedger:
    """Operational and embodied grams per domain (node level, by part) and per workload (in the workload
    ledger's records, so they share its TTL)."""

    def __init__(self, workloads: WorkloadLedger[Any]) -> None:
        self.workloads = workloads
        self.operational: dict[str, CarbonParts] = {}
        self.embodied: dict[str, CarbonParts] = {}

    def add_operational(
        self, domain: str, delta_uj: int, mg_per_kwh: int, shares: ZoneShares[str], top: Sequence[Usage[str]]
    ) -> ZoneShares[str]:
        """A domain's tick energy `delta_uj`, split as `shares` over the `top` tree, at `mg_per_kwh`."""
        parts = self.operational.setdefault(domain, CarbonParts())
        grams, parts.carry = operational_ng(delta_uj, mg_per_kwh, parts.carry)
        return self._book(parts, "operational", split_like(grams, shares, top), top)

    def add_embodied_like(
        self, domain: str, rate: Rate, dt_us: int, shares: ZoneShares[str] | None, top: Sequence[Usage[str]]
    ) -> ZoneShares[str]:
        """An accelerator's embodied carbon over the tick, split like its energy (`shares`; None: all idle)."""
        parts = self.embodied.setdefault(domain, CarbonParts())
        grams, parts.carry = embodied_ng(rate, dt_us, parts.carry)
        if shares is None:
            return self._book(parts, "embodied", ZoneShares(grams, 0, {}, {}), ())
        return self._book(parts, "embodied", split_like(grams, shares, top), top)

    def add_embodied_by_cpu(
        self,
        domain: str,
        rate: Rate,
        dt_us: int,
        *,
        busy_us: int,
        top: Sequence[Usage[str]],
        idle_share: tuple[int, int] | None,
        spread_idle: bool,
    ) -> ZoneShares[str]:
        """The host's embodied carbon over the tick: the node's unused CPU capacity (`idle_share`: idle and all
        CPU time from /proc/stat) is idle, the rest is split by the workloads' CPU time like active energy."""
        parts = self.embodied.setdefault(domain, CarbonParts())
        grams, parts.carry = embodied_ng(rate, dt_us, parts.carry)
        idle = split_by_ratio(grams, *(idle_share or (0, 0))).idle_uj
        tops = [Usage(u.key, u.cpu_us) for u in top]  # top-level only, as for operational grams
        return self._book(parts, "embodied", attribute(grams, idle, busy_us, tops, spread_idle=spread_idle), tops)

    def _book(
        self, parts: CarbonParts, which: str, split: ZoneShares[str], top: Sequence[Usage[str]]
    ) -> ZoneShares[str]:
        parts.idle_ng += split.idle_uj
        parts.unattributed_ng += split.unattributed_uj
        parts.workloads_ng += sum(split.workloads[u.key] for u in top)
        self.workloads.add_carbon(which == "operational", split.workloads)
        return split
