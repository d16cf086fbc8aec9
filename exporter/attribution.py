"""Splitting energy (pure functions: integer µJ in, integer µJ out, nothing lost).

Per zone and tick: ΔE = idle + active, then ΔE = idle + unattributed + Σ top-level workloads, and each
top-level workload = Σ its children + its residual. Every split keeps the parts summing exactly to the whole.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from exporter.counters import MICRO

K = TypeVar("K", bound=Hashable)


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


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` µJ in proportion to `weights`, in whole µJ, summing exactly to `total`.

    Largest remainder (Hamilton): everyone gets the floor of their quota, and the µJ left over go one each
    to the largest remainders (ties to the earlier weight). The weights must not all be zero.
    """
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("apportion takes a non-negative total and weights")
    whole = sum(weights)
    if whole == 0:
        raise ValueError("apportion needs at least one positive weight")
    # Largest remainder first; a stable sort in reverse keeps equal remainders in index order.
    return _hamilton(total, weights, whole)


@dataclass(slots=True)  # not frozen: hundreds are made per tick, and a frozen dataclass is 3x slower to make
class Usage(Generic[K]):
    """A workload's CPU time over one tick (µs) and its direct children's.

    For a top-level workload `cpu_us` is exclusive of other top-level workloads nested in its cgroup.
    A workload's CPU beyond its children's (pause containers, exited children) is its residual.
    """

    key: K
    cpu_us: int
    children: tuple[Usage[K], ...] = ()


@dataclass(frozen=True, slots=True)
class ZoneShares(Generic[K]):
    """One zone's energy for one tick, split so that
    delta = idle + unattributed + Σ top-level, and top-level = Σ children + residual."""

    idle_uj: int
    unattributed_uj: int
    workloads: dict[K, int]  # every workload, top-level and children alike
    residual_uj: dict[K, int]  # per top-level workload with children: the part no child took


def attribute(
    delta_uj: int, idle_uj: int, node_busy_us: int, top: Sequence[Usage[K]], spread_idle: bool = False
) -> ZoneShares[K]:
    """Split a zone's tick energy among workloads by CPU time.

    Active energy (and idle energy too with `spread_idle`) goes to the top-level workloads by their CPU time,
    and to `unattributed` by the node's busy time nobody accounts for (kernel threads, irq, skew). When the
    workloads together report more CPU than the node (reads are not atomic), they are normalised by their own
    sum and nothing is unattributed. Each top-level share is split again among its children and its residual.
    """
    if not 0 <= idle_uj <= delta_uj:
        raise ValueError("idle must lie between 0 and the zone's delta")
    spread = delta_uj if spread_idle else delta_uj - idle_uj
    node_idle = 0 if spread_idle else idle_uj
    weights = [w.cpu_us if w.cpu_us > 0 else 0 for w in top]
    weights.append(max(0, node_busy_us - sum(weights)))
    *top_shares, unattributed = _split(spread, weights)
    workloads: dict[K, int] = {}
    residuals: dict[K, int] = {}
    # Runs for every workload of every CPU zone each tick: apportion's checks hold by construction here.
    for usage, share in zip(top, top_shares, strict=True):
        workloads[usage.key] = share
        children = usage.children
        if not children:
            continue
        child_weights = [c.cpu_us if c.cpu_us > 0 else 0 for c in children]
        taken, own = sum(child_weights), max(0, usage.cpu_us)
        residual = own - taken if own > taken else 0
        child_weights.append(residual)
        if share == 0 or taken + residual == 0:  # nothing to split, or nobody to split it by: all residual
            child_shares = [0] * len(children)
            residuals[usage.key] = share
        else:
            *child_shares, residuals[usage.key] = _hamilton(share, child_weights, taken + residual)
        for child, child_share in zip(children, child_shares, strict=True):
            workloads[child.key] = child_share
    return ZoneShares(node_idle, unattributed, workloads, residuals)


def _split(total: int, weights: list[int]) -> list[int]:
    """apportion of non-negative weights, except that with no weight at all everything goes to the last
    (catch-all) slot."""
    whole = sum(weights)
    if whole == 0:
        return [0] * (len(weights) - 1) + [total]
    return _hamilton(total, weights, whole)


def _hamilton(total: int, weights: Sequence[int], whole: int) -> list[int]:
    """apportion of non-negative `weights` summing to `whole` > 0, without its checks."""
    shares = [total * w // whole for w in weights]
    left = total - sum(shares)
    if left:
        remainders = [total * w % whole for w in weights]
        for i in sorted(range(len(weights)), key=remainders.__getitem__, reverse=True)[:left]:
            shares[i] += 1
    return shares
