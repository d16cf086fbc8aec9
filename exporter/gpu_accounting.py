"""What an accelerator domain adds to the common accounting path (pure, no I/O): its idle estimate, its tail,
its users as weights of their workloads, and its partitions' shares.

- **Idle.** Configured watts win. Else the median power of the intervals nobody used the GPU (a robust centre:
  the 5 % quantile the CPU uses read 65.3 W on an H100 idling at 72.2 W, calling 7 W of idle active). A GPU
  that always has a user (a model server) never has such intervals: its idle is then the intercept at 0 %
  utilisation of a Theil–Sen line through the median (utilisation, power) of each 5 % utilisation band over the
  used intervals
  (`method="regression"`), which needs a spread of loads to exist. Until either exists, nothing is idle
  (`method="none"`).
- **Tail.** After work stops a GPU stays at 100–140 W for ~2 s. Ticks with no users that start within
  `gpu_tail` seconds of the last used tick give the part of their active energy inside that window to the
  users of the last used tick, so a job's energy includes its ramp-down; those ticks never teach idle.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from exporter.attribution import Usage, apportion
from exporter.idle import IdleBaseline
from exporter.meters.base import AcceleratorSample, AcceleratorUser, InstanceUse

# (top-level workload key, child key or None) of a GPU user, or None when it belongs to no workload.
Owner = Callable[[AcceleratorUser], "tuple[str, str | None] | None"]

BAND = 5.0  # % utilisation per band of the regression
BAND_SAMPLES = 64  # intervals kept per band
MIN_BANDS = 3
MIN_SPAN = 20.0  # % utilisation between the lowest and highest band
TAIL_SCALE = 1000  # the tail's fraction of a tick, in thousandths


@dataclass(slots=True)
class GpuWeights:
    """A GPU's users as weights of their workloads (same meaning as accounting.Weights)."""

    total: int
    workloads: list[Usage[str]]
    used: bool


@dataclass(slots=True)
class AcceleratorIdle:
    """The idle estimate of one accelerator (see the module's docstring)."""

    window_s: float
    unused: IdleBaseline = field(init=False)
    bands: dict[int, deque[tuple[float, float, float]]] = field(default_factory=dict)  # → (time, util, watts)

    def __post_init__(self) -> None:
        self.unused = IdleBaseline(self.window_s, 0.5)

    def observe(self, now: float, joules: float, seconds: float, used: bool, utilization: float | None) -> None:
        if seconds <= 0:
            return
        if not used:
            self.unused.observe(now, joules, seconds)
        elif utilization is not None:
            load = min(100.0, max(0.0, utilization))
            band = self.bands.setdefault(int(load // BAND), deque(maxlen=BAND_SAMPLES))
            band.append((now, load, joules / seconds))
            while band and now - band[0][0] > self.window_s:
                band.popleft()

    def estimate(self) -> tuple[float | None, str]:
        learned = self.unused.watts()
        if learned is not None:
            return learned, "unused"
        fitted = self._regression()
        return (fitted, "regression") if fitted is not None else (None, "none")

    def _regression(self) -> float | None:
        points = [
            (statistics.median(u for _, u, _ in v), statistics.median(w for _, _, w in v))
            for _, v in sorted(self.bands.items())
            if v
        ]
        if len(points) < MIN_BANDS or points[-1][0] - points[0][0] < MIN_SPAN:
            return None
        slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :]]
        slope = statistics.median(slopes)
        intercept = statistics.median(y - slope * x for x, y in points)
        return max(0.0, min(intercept, *(y for _, y in points)))


@dataclass(slots=True)
class Tail:
    """The users of the last tick that had any, and until when a tick without users still goes to them."""

    weights: GpuWeights | None = None
    until: float = 0.0

    def weights_for(self, weights: GpuWeights, now: float, dt: float, tail_s: float) -> GpuWeights:
        """This tick's weights: its own when it has users (remembered for the tail), else the last users' for
        the part of the tick inside the tail window (the rest unattributed), else nobody's."""
        if weights.used:
            self.weights, self.until = weights, now + tail_s
            return weights
        start = now - dt
        if self.weights is None or tail_s <= 0 or start >= self.until:
            self.weights = None
            return weights
        fraction = round(min(1.0, (self.until - start) / dt) * TAIL_SCALE)
        last = self.weights
        scaled = [_scale(u, fraction) for u in last.workloads]
        return GpuWeights(last.total * TAIL_SCALE, scaled, used=True)


def _scale(usage: Usage[str], factor: int) -> Usage[str]:
    return Usage(usage.key, usage.cpu_us * factor, tuple(_scale(c, factor) for c in usage.children))


def by_owner(accel: AcceleratorSample, owner: Owner) -> GpuWeights:
    """The accelerator's users as weights of their workloads (a process outside every workload, or use no known
    process accounts for, is unattributed)."""
    tops: dict[str, tuple[int, dict[str, int]]] = {}
    total = 0
    for user in accel.users:
        total += user.weight
        found = owner(user) if user.pid > 0 else None
        if found is None:
            continue
        top, child = found
        weight_sum, children = tops.get(top, (0, {}))
        if child is not None:
            children[child] = children.get(child, 0) + user.weight
        tops[top] = (weight_sum + user.weight, children)
    usages = [Usage(top, w, tuple(Usage(c, cw) for c, cw in kids.items())) for top, (w, kids) in tops.items()]
    return GpuWeights(total, usages, used=bool(accel.users))


def instance_shares(active_uj: int, instances: Sequence[InstanceUse]) -> list[int]:
    """The active energy of a partitioned GPU per partition, by their weights (exact: the shares sum to it)."""
    if not instances:
        return []
    weights = [i.weight for i in instances]
    if not any(weights):
        return [0] * len(instances)
    return apportion(active_uj, weights)
