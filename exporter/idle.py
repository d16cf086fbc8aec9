"""Learning a zone's idle power from what the meter observed (no I/O).

The learned idle is a low quantile of interval power over a rolling window. Kepler takes the minimum ever
seen, which one quiet second (or a glitch) drags down for good; a quantile over a window ignores outliers
and follows hardware or firmware changes. Memory is bounded: the window is cut into at most BUCKETS spans
and each keeps the mean power of the intervals that fell in it.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

BUCKETS = 1024
MIN_SAMPLES = 12


@dataclass(slots=True)
class _Bucket:
    start: float
    energy_j: float
    seconds: float
    watts: float  # energy_j / seconds, kept so the sorted index can find this bucket's entry again


class IdleBaseline:
    def __init__(self, window_s: float, quantile: float, min_samples: int = MIN_SAMPLES) -> None:
        self.window_s = window_s
        self.quantile = quantile
        self.min_samples = min_samples
        self._span = window_s / BUCKETS
        self._buckets: deque[_Bucket] = deque()
        self._sorted: list[float] = []  # every bucket's watts, ascending: the quantile is an index

    def observe(self, now: float, joules: float, seconds: float) -> None:
        if seconds <= 0 or joules < 0:
            return
        last = self._buckets[-1] if self._buckets else None
        if last is not None and now - last.start < self._span:
            self._unindex(last.watts)
            last.energy_j += joules
            last.seconds += seconds
            last.watts = last.energy_j / last.seconds
            bisect.insort(self._sorted, last.watts)
        else:
            bucket = _Bucket(now, joules, seconds, joules / seconds)
            self._buckets.append(bucket)
            bisect.insort(self._sorted, bucket.watts)
        while self._buckets and now - self._buckets[0].start > self.window_s:
            self._unindex(self._buckets.popleft().watts)

    def _unindex(self, watts: float) -> None:
        del self._sorted[bisect.bisect_left(self._sorted, watts)]

    def watts(self) -> float | None:
        """The learned idle power, or None until enough intervals were seen."""
        if len(self._sorted) < self.min_samples:
            return None
        return self._sorted[int(self.quantile * (len(self._sorted) - 1))]
