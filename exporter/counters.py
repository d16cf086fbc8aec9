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
