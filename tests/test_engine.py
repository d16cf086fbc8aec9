"""The tick: node joules advance by exactly the µJ the hardware counted; idle + active = total, always."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ProcTree, RaplTree, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.engine import Engine
from exporter.snapshot import Snapshot

INTEL = 262_143_328_850


def engine_for(tree: RaplTree, proc: Path | None = None, **overrides: object) -> Engine:
    config = make_config(sys_path=tree.root, meters="rapl", **({"proc_path": proc} if proc else {}), **overrides)
    engine = Engine.start(config)
    assert engine.meter is not None and engine.meter.name == "rapl"
    return engine


def joules_by_device(snap: Snapshot) -> dict[str, int]:
    return {z.zone.device: z.joules_uj for z in snap.zones}


def domain(snap: Snapshot, zone: str) -> tuple[int, int]:
    d = next(d for d in snap.domains if d.zone == zone)
    return d.idle_uj, d.active_uj


def test_each_zone_advances_by_exactly_what_was_written(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    engine = engine_for(tree)
    assert all(v == 0 for v in joules_by_device(engine.tick(0.0)).values())
    written = {"intel-rapl:0": 400_000_001, "intel-rapl:0:0": 31_000_007, "intel-rapl:1": 388_123_456,
               "intel-rapl:1:0": 29_999_999}
    for zone_id, delta in written.items():
        tree.advance(zone_id, delta)
    snap = engine.tick(5.0)
    assert joules_by_device(snap) == written
    # Domains sum sockets per zone name, and split each exactly into idle + active.
    assert sum(domain(snap, "package")) == written["intel-rapl:0"] + written["intel-rapl:1"]
    assert sum(domain(snap, "dram")) == written["intel-rapl:0:0"] + written["intel-rapl:1:0"]
    assert snap.ready


def test_wrap_is_counted_exactly_once(tmp_path: Path) -> None:
    tree = RaplTree.copy("near-wrap", tmp_path)
    engine = engine_for(tree)
    engine.tick(0.0)
    start = tree.energy("intel-rapl:0")
    to_max = tree.max_range("intel-rapl:0") - start
    tree.set("intel-rapl:0", 400_000)  # passes max_energy_range_uj and starts again
    snap = engine.tick(5.0)
    package = next(z for z in snap.zones if z.zone.device == "intel-rapl:0")
    assert package.joules_uj == to_max + 400_000 == 1_000_000
    assert (package.wraps, package.resets) == (1, 0)
    tree.advance("intel-rapl:0", 250_000)
    assert joules_by_device(engine.tick(10.0))["intel-rapl:0"] == 1_250_000


def test_reset_adds_nothing_and_counting_resumes(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    engine = engine_for(tree)
    engine.tick(0.0)
    tree.advance("intel-rapl:0", 300_000)
    engine.tick(5.0)
    tree.set("intel-rapl:0", 12_345)  # driver reload: far below, no plausible wrap
    snap = engine.tick(10.0)
    package = next(z for z in snap.zones if z.zone.device == "intel-rapl:0")
    assert (package.joules_uj, package.resets, package.wraps) == (300_000, 1, 0)
    tree.advance("intel-rapl:0", 70_000)
    assert joules_by_device(engine.tick(15.0))["intel-rapl:0"] == 370_000


def test_psys_and_mmio_are_never_double_counted(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-laptop", tmp_path)
    engine = engine_for(tree)
    engine.tick(0.0)
    tree.advance("intel-rapl:0", 50_000_000)  # package
    tree.advance("intel-rapl-mmio:0", 50_000_000)  # the same counter seen through MMIO
    tree.advance("intel-rapl:0:0", 30_000_000)  # core, inside package
    tree.advance("intel-rapl:1", 90_000_000)  # psys, contains package
    snap = engine.tick(5.0)
    assert sum(domain(snap, "package")) == 50_000_000
    assert sum(domain(snap, "core")) == 30_000_000
    assert sum(domain(snap, "psys")) == 90_000_000
    assert "intel-rapl-mmio:0" not in joules_by_device(snap)


def test_mirrored_amd_dies_count_once_per_socket(tmp_path: Path) -> None:
    tree = RaplTree.copy("amd-epyc-2socket", tmp_path)
    engine = engine_for(tree)
    engine.tick(0.0)
    for die in range(8):  # the hardware advances every mirror of a socket together
        tree.advance(f"intel-rapl:{die:x}", 70_000_000)
        tree.advance(f"intel-rapl:{die + 8:x}", 65_000_000)
    snap = engine.tick(5.0)
    assert joules_by_device(snap) == {"intel-rapl:0": 70_000_000, "intel-rapl:8": 65_000_000}
    assert sum(domain(snap, "package")) == 135_000_000


def test_configured_baseline_idle(tmp_path: Path) -> None:
    tree = RaplTree.copy("unreadable", tmp_path)
    engine = engine_for(tree, idle_watts="package=10")
    engine.tick(0.0)
    tree.advance("intel-rapl:0", 80_000_000)  # 16 W for 5 s; idle is 10 W x 5 s = 50 J
    snap = engine.tick(5.0)
    assert domain(snap, "package") == (50_000_000, 30_000_000)
    tree.advance("intel-rapl:0", 20_000_000)  # 4 W: below the idle baseline, so all of it is idle
    assert domain(engine.tick(10.0), "package") == (70_000_000, 30_000_000)
    d = next(d for d in engine.snapshot().domains if d.zone == "package")
    assert (d.idle_watts, d.idle_method) == (10.0, "configured")


def test_ratio_policy_uses_the_idle_share_of_cpu_time(tmp_path: Path) -> None:
    tree = RaplTree.copy("unreadable", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    engine = engine_for(tree, proc=proc.root, idle_policy="ratio")
    engine.tick(0.0)
    tree.advance("intel-rapl:0", 100_000_001)
    proc.advance(busy=250, idle=750)
    snap = engine.tick(5.0)
    assert domain(snap, "package") == (75_000_000, 25_000_001)


def test_learned_baseline_takes_a_low_quantile(tmp_path: Path) -> None:
    tree = RaplTree.copy("unreadable", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    engine = engine_for(tree, proc=proc.root)
    engine.tick(0.0)
    # Before enough history the split falls back to the CPU ratio.
    powers = [30, 12, 31, 40, 10, 55, 33, 35, 38, 41, 60, 29, 11]
    for i, watts in enumerate(powers, start=1):
        tree.advance("intel-rapl:0", watts * 5_000_000)
        proc.advance(busy=100, idle=900)
        snap = engine.tick(i * 5.0)  # 5 s apart: each tick has its own bucket (3.5 s wide for 1 h)
        d = next(d for d in snap.domains if d.zone == "package")
        assert d.idle_method == ("learned" if i > 12 else "ratio")
    assert d.idle_watts == 10.0  # the 5 % quantile of these 12 observations is the minimum


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["advance", "reset"]),
                                st.integers(min_value=0, max_value=12_000_000_000)), min_size=1, max_size=12))
def test_any_counter_history_is_conserved_and_monotonic(tmp_path_factory: pytest.TempPathFactory,
                                                          steps: list[tuple[str, int]]) -> None:
    """Advances (wrapping past the range when they cross it) count exactly; resets add nothing."""
    tree = RaplTree.copy("near-wrap", tmp_path_factory.mktemp("tree"))
    engine = engine_for(tree, idle_watts="package=150")
    engine.tick(0.0)
    expected, previous_total = 0, 0
    for i, (kind, amount) in enumerate(steps, start=1):
        cur = tree.energy("intel-rapl:0")
        if kind == "advance":
            tree.set("intel-rapl:0", (cur + amount) % INTEL)  # the hardware wraps at the range
            expected += amount
        else:
            tree.set("intel-rapl:0", cur // 2)  # back by at least half the range: never a plausible wrap
        snap = engine.tick(i * 5.0)
        package = next(z for z in snap.zones if z.zone.device == "intel-rapl:0")
        idle, active = domain(snap, "package")
        assert package.joules_uj >= previous_total
        assert idle + active == package.joules_uj
        previous_total = package.joules_uj
    assert previous_total == expected


@given(observations=st.lists(st.tuples(st.floats(min_value=0.1, max_value=30), st.floats(min_value=0, max_value=500)),
                             min_size=1, max_size=200))
def test_idle_baseline_matches_a_full_sort(observations: list[tuple[float, float]]) -> None:
    """The incrementally sorted index gives the same quantile as sorting every bucket from scratch."""
    from exporter.idle import IdleBaseline

    baseline = IdleBaseline(window_s=600, quantile=0.05, min_samples=1)
    now = 0.0
    for gap, watts in observations:
        now += gap
        baseline.observe(now, watts * gap, gap)
    buckets = list(baseline._buckets)
    assert all(now - b.start <= 600 for b in buckets)
    expected = sorted(b.energy_j / b.seconds for b in buckets)
    assert baseline.watts() == pytest.approx(expected[int(0.05 * (len(expected) - 1))])
