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


def test_counter_track_baselines_fails_and_comes_back() -> None:
    from exporter.counters import CounterTrack

    track = CounterTrack()
    assert track.observe(1_000, INTEL_MAX, None, 2500) == (counter_step(None, 1_000, INTEL_MAX, 0, 2500), False)
    step, back = track.observe(6_000_000, INTEL_MAX, 5.0, 2500)
    assert (step.delta_uj, back, track.watts) == (5_999_000, False, 5_999_000 / 1e6 / 5.0)
    assert track.failed("EIO") is True
    assert track.failed("EIO") is False  # already down: the caller logs once
    assert (track.up, track.prev_raw, track.watts) == (False, None, None)
    step, back = track.observe(10, INTEL_MAX, 5.0, 2500)
    assert (step.kind, back, track.up) == (StepKind.FIRST, True, True)  # re-baselined, nothing guessed
    step, _ = track.observe(5, INTEL_MAX, 5.0, 2500)
    assert (step.kind, track.resets) == (StepKind.RESET, 1)
