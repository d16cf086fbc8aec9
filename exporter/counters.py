"""Turning raw hardware counter readings into energy deltas (pure: no I/O, no clocks)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

MICRO = 1_000_000


class StepKind(Enum):
    FIRST = "first"  # no previous reading: this one is the baseline
    OK = "ok"
    WRAP = "wrap"  # the counter passed max_energy_range_uj and restarted
    RESET = "reset"  # a decrease (or jump) no wrap explains: driver reload, hotplug, garbage


@dataclass(frozen=True, slots=True)
class Step:
    delta_uj: int
    kind: StepKind


def counter_step(prev: int | None, cur: int, max_range_uj: int, dt: float, max_watts: float) -> Step:
    """The energy between two readings of a cumulative µJ counter.

    A decrease is a wrap when the counter has a known range and the wrapped delta is physically plausible
    (at most `max_watts` over the interval, floored at one second); otherwise it is a reset and adds
    nothing. A forward step beyond that bound is also a reset: no zone draws that much.
    """
    if prev is None:
        return Step(0, StepKind.FIRST)
    limit = max_watts * max(dt, 1.0) * MICRO
    if cur >= prev:
        delta = cur - prev
        return Step(delta, StepKind.OK) if delta <= limit else Step(0, StepKind.RESET)
    if max_range_uj > prev:
        wrapped = cur + (max_range_uj - prev)
        if wrapped <= limit:
            return Step(wrapped, StepKind.WRAP)
    return Step(0, StepKind.RESET)


@dataclass(slots=True)
class CounterTrack:
    """The running state of one cumulative hardware counter (a RAPL zone, a GPU): baseline, wraps, resets,
    up/down, and the power of the last tick. Pure: the caller reads the hardware and does the logging."""

    prev_raw: int | None = None
    up: bool = True
    error: str = ""
    watts: float | None = None
    wraps: int = 0
    resets: int = 0

    def failed(self, error: str) -> bool:
        """The read failed: the counter must be re-baselined. True if it was up until now."""
        was_up = self.up
        self.up, self.error, self.watts, self.prev_raw = False, error, None, None
        return was_up

    def observe(self, raw: int, max_range_uj: int, dt: float | None, max_watts: float) -> tuple[Step, bool]:
        """Fold a reading in: (its step, whether the counter has just come back after failing)."""
        came_back = not self.up
        self.up, self.error = True, ""
        step = counter_step(self.prev_raw, raw, max_range_uj, dt or 0.0, max_watts)
        self.prev_raw = raw
        if step.kind is StepKind.WRAP:
            self.wraps += 1
        elif step.kind is StepKind.RESET:
            self.resets += 1
        self.watts = step.delta_uj / MICRO / dt if dt and step.kind is not StepKind.FIRST else self.watts
        return step, came_back
