"""Workload attribution through the engine: exact conservation and monotonic counters across births,
deaths and CPU skew, over every zone; TTL retention of ended workloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CgroupFixture, ProcTree, RaplTree, make_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.snapshot import Snapshot

TOP_KINDS = ("pod", "service")  # what the random trees make at top level


def pod_path(i: int) -> str:
    return f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{i:08x}_0000_4000_8000_{i:012x}.slice"


def container_path(i: int, j: int) -> str:
    return f"{pod_path(i)}/cri-containerd-{(i * 16 + j):064x}.scope"


def service_path(i: int) -> str:
    return f"system.slice/svc{i}.service"


def series(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...], str], int]:
    out = {}
    for w in snap.workloads:
        for zone, uj in w.energy_uj:
            out[(w.kind, w.labels, zone)] = uj
    return out


def without_render_time(body: bytes) -> list[bytes]:
    """The lines of an exposition, but the last render's duration (which differs from renderer to renderer)."""
    return [line for line in body.splitlines() if not line.startswith(b"wattlens_render_duration_seconds")]


def zone_totals(snap: Snapshot) -> dict[str, int]:
    totals: dict[str, int] = {}
    for z in snap.zones:
        totals[z.zone.zone] = totals.get(z.zone.zone, 0) + z.joules_uj
    return totals


step = st.tuples(
    st.lists(st.tuples(st.sampled_from(["pod", "container", "service", "kill"]), st.integers(0, 5),
                       st.integers(0, 3)), max_size=6),
    st.lists(st.integers(0, 400_000), min_size=8, max_size=8),  # CPU µs per slot
    st.integers(-300_000, 2_000_000),  # node busy beyond the workloads' (negative: skewed reads)
    st.tuples(st.integers(0, 500_000_000), st.integers(0, 80_000_000)),  # package, dram µJ this tick
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=8), spread_idle=st.booleans())
def test_conservation_and_monotonicity_through_births_and_deaths(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple], spread_idle: bool) -> None:
    base = tmp_path_factory.mktemp("node")
    rapl = RaplTree.copy("intel-2socket-server", base)
    proc = ProcTree(base / "proc")
    cgroups = CgroupFixture(base / "cgroup")
    engine = Engine.start(make_config(
        sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root, kubelet_log_path=base / "log",
        meters="rapl", idle_watts="package=20,dram=2", idle_attribution="cpu" if spread_idle else "none"))
    previous = engine.tick(0.0)
    renderer = Renderer(standard=False)  # kept across ticks, as the daemon's: its cached lines must stay true
    for n, (changes, burns, extra_busy, (package_uj, dram_uj)) in enumerate(steps, start=1):
        for what, i, j in changes:
            if what == "pod":
                cgroups.add(pod_path(i))
            elif what == "container" and pod_path(i) in cgroups.usage:
                cgroups.add(container_path(i, j))
            elif what == "service":
                cgroups.add(service_path(i))
            elif what == "kill":
                for path in (container_path(i, j), service_path(i), pod_path(i)):
                    if path in cgroups.usage:
                        cgroups.remove(path)
                        break
        leaves = sorted(p for p in cgroups.usage if (p.endswith((".scope", ".service", ".slice")) and "pod" in p)
                        or p.endswith(".service"))
        for path, usec in zip(leaves, burns, strict=False):
            cgroups.burn(path, usec)
        busy = max(0, sum(burns[: len(leaves)]) + extra_busy)
        proc.advance_usec(busy, 1_000_000)
        rapl.advance("intel-rapl:0", package_uj // 2)
        rapl.advance("intel-rapl:1", package_uj - package_uj // 2)
        rapl.advance("intel-rapl:0:0", dram_uj)
        snap = engine.tick(n * 5.0)
        # States handed out again for idle workloads, and lines reused for them, equal what is made afresh.
        fresh = [(w.kind, w.labels, tuple(r.energy_uj.items()),
                  tuple(r.last_uj.items()) if r.last_seen == n * 5.0 else ())  # a share only if seen in the tick
                 for w, (_, r) in zip(snap.workloads, engine.workloads.ledger.records(), strict=True)]
        assert [(w.kind, w.labels, w.energy_uj, w.last_uj) for w in snap.workloads] == fresh
        for openmetrics in (False, True):
            kept, afresh = (r.render(snap).body(openmetrics, False) for r in (renderer, Renderer(standard=False)))
            assert without_render_time(kept) == without_render_time(afresh)

        before, after = series(previous), series(snap)
        for key, value in before.items():
            assert key in after, f"{key} vanished before its TTL"
            assert after[key] >= value, f"{key} went backwards"
        zone_delta = {z: v - zone_totals(previous).get(z, 0) for z, v in zone_totals(snap).items()}
        for zone, delta in zone_delta.items():
            # With idle_attribution=cpu the idle energy is inside the workloads' shares; the idle counter
            # still reports the idle estimate.
            idle = 0 if spread_idle else _domain(snap, zone, "idle") - _domain(previous, zone, "idle")
            unattributed = _domain(snap, zone, "unattributed") - _domain(previous, zone, "unattributed")
            top = sum(v - before.get(k, 0) for k, v in after.items() if k[0] in TOP_KINDS and k[2] == zone)
            assert idle + unattributed + top == delta, (zone, idle, unattributed, top, delta)
            pods = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == "pod" and k[2] == zone)
            containers = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == "container" and k[2] == zone)
            assert 0 <= containers <= pods  # every pod = its containers + a non-negative residual
        event(f"workload kinds present: {sorted({k[0] for k in after})}")
        previous = snap


def _domain(snap: Snapshot, zone: str, part: str) -> int:
    for d in snap.domains:
        if d.zone == zone:
            return {"idle": d.idle_uj, "active": d.active_uj, "unattributed": d.unattributed_uj}[part]
    return 0


def test_ended_workloads_keep_their_series_for_the_ttl(tmp_path: Path) -> None:
    rapl = RaplTree.copy("unreadable", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    cgroups.add(service_path(1))
    engine = Engine.start(make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root,
                                      meters="rapl", idle_watts="package=0", workload_ttl="60"))
    engine.tick(0.0)
    cgroups.burn(service_path(1), 500_000)
    proc.advance_usec(1_000_000, 0)
    rapl.advance("intel-rapl:0", 10_000_000)
    snap = engine.tick(5.0)
    final = series(snap)[("service", (("unit", "svc1.service"),), "package")]
    assert final == 5_000_000  # half the node's busy time → half of the 10 J
    cgroups.remove(service_path(1))
    for now in (10.0, 30.0, 65.0):
        snap = engine.tick(now)
        assert series(snap)[("service", (("unit", "svc1.service"),), "package")] == final
    snap = engine.tick(66.0)  # last seen at 5 s: 61 s > 60 s TTL
    assert ("service", (("unit", "svc1.service"),), "package") not in series(snap)


def test_the_same_share_tick_after_tick_still_counts_and_watts_follow_the_tick_length(tmp_path: Path) -> None:
    """An idle workload's state and lines are reused from tick to tick; a busy one with the same share every
    tick (same last_uj) must still grow, and its watts follow each tick's length."""
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    busy, idle = pod_path(1), pod_path(2)
    for path in (busy, idle):
        cgroups.add(path)
    cgroups.burn(idle, 1_000)  # it used CPU once: it has series
    engine = Engine.start(make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root,
                                      kubelet_log_path=tmp_path / "log", meters="rapl", idle_watts="package=0,dram=0"))
    renderer = Renderer(standard=False)
    engine.tick(0.0)
    engine.tick(200.0)  # past the kubelet-log rescans of the first 2 minutes (they name workloads again)
    idle_states, joules, watts = [], [], []
    for now in (205.0, 210.0, 212.0, 220.0, 221.0):
        cgroups.burn(busy, 100_000)
        proc.advance_usec(200_000, 1_000_000)
        for zone in ("intel-rapl:0", "intel-rapl:1", "intel-rapl:0:0"):
            rapl.advance(zone, 1_000_000)
        snap = engine.tick(now)
        body = renderer.render(snap).text
        assert without_render_time(body) == without_render_time(Renderer(standard=False).render(snap).text)
        pods = {w.label("uid")[-4:]: w for w in snap.workloads if w.kind == "pod"}
        idle_states.append(pods["0002"])
        joules.append(dict(pods["0001"].energy_uj)["package"])
        assert dict(pods["0001"].last_uj) == {"package": 1_000_000, "dram": 500_000}  # half the busy time
        watts.append([line for line in body.splitlines()
                      if b"pod_cpu_watts{" in line and b"0001" in line and b"package" in line])
    assert joules == [1_000_000 * n for n in range(1, 6)]
    assert all(state is idle_states[1] for state in idle_states[1:])  # handed out again while it is idle
    assert [w[0].rsplit(b" ", 1)[1] for w in watts] == [b"0.2", b"0.2", b"0.5", b"0.125", b"1.0"]
    cgroups.remove(busy)  # an ended pod keeps its state (and series) for the TTL, over ticks of other lengths
    for now in (226.0, 228.0, 231.0):
        snap = engine.tick(now)
        body = renderer.render(snap).text
        assert without_render_time(body) == without_render_time(Renderer(standard=False).render(snap).text)
