"""Splitting energy (pure functions: integer µJ in, integer µJ out, nothing lost).

Node level, per zone and tick: ΔE = idle + active. Workload attribution of the active part builds on this
in later stages; every split here keeps the parts summing exactly to the whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.counters import MICRO


@dataclass(frozen=True, slots=True)
class IdleSplit:
    idle_uj: int
    active_uj: int


def split_by_baseline(delta_uj: int, dt: float, idle_watts: float) -> IdleSplit:
    """idle = min(ΔE, P_idle × Δt), floored to whole µJ; the rest is active."""
    idle = min(delta_uj, max(0, int(idle_watts * dt * MICRO)))
    return IdleSplit(idle, delta_uj - idle)


def split_by_ratio(delta_uj: int, idle_ticks: int, total_ticks: int) -> IdleSplit:
    """Kepler's split: ΔE × the idle share of CPU time. Without CPU time to go by, nothing is idle."""
    if total_ticks <= 0 or idle_ticks <= 0:
        return IdleSplit(0, delta_uj)
    idle = delta_uj * min(idle_ticks, total_ticks) // total_ticks
    return IdleSplit(idle, delta_uj - idle)
