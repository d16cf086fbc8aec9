"""Counter arithmetic: wraps are corrected, resets add nothing, nothing is ever negative."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exporter.counters import MICRO, StepKind, counter_step

INTEL_MAX = 262_143_328_850


def test_first_reading_is_a_baseline() -> None:
    step = counter_step(None, 123, INTEL_MAX, 5.0, 2500)
    assert (step.delta_uj, step.kind) == (0, StepKind.FIRST)


def test_forward_step_is_the_difference() -> None:
    assert counter_step(1_000, 51_000, INTEL_MAX, 5.0, 2500).delta_uj == 50_000


def test_wrap_uses_the_counter_range() -> None:
    prev = INTEL_MAX - 600_000
    step = counter_step(prev, 400_000, INTEL_MAX, 5.0, 2500)
    assert step.kind is StepKind.WRAP
    assert step.delta_uj == 1_000_000


def test_implausible_decrease_is_a_reset() -> None:
    # From 100 kJ back to 1 kJ: wrapping would mean 163 kJ in 5 s (32 kW) — a reload, not a wrap.
    step = counter_step(100_000 * MICRO, 1_000 * MICRO, INTEL_MAX, 5.0, 2500)
    assert (step.delta_uj, step.kind) == (0, StepKind.RESET)


def test_decrease_without_known_range_is_a_reset() -> None:
    assert counter_step(5_000, 10, 0, 5.0, 2500).kind is StepKind.RESET


def test_implausible_jump_forward_is_a_reset() -> None:
    step = counter_step(0, 50_000 * MICRO, INTEL_MAX, 5.0, 2500)  # 10 kW for 5 s
    assert (step.delta_uj, step.kind) == (0, StepKind.RESET)


@given(
    readings=st.lists(st.integers(min_value=0, max_value=INTEL_MAX), min_size=1, max_size=50),
    dt=st.floats(min_value=0.1, max_value=60),
)
def test_any_sequence_gives_bounded_non_negative_deltas(readings: list[int], dt: float) -> None:
    prev: int | None = None
    limit = 2500 * max(dt, 1.0) * MICRO
    for cur in readings:
        step = counter_step(prev, cur, INTEL_MAX, dt, 2500)
        assert 0 <= step.delta_uj <= limit
        if prev is not None and cur >= prev and cur - prev <= limit:
            assert step.delta_uj == cur - prev
        prev = cur
