"""The series budget (exporter/budget.py): with far fewer series allowed than workloads, totals per node and zone
stay exact, every exported counter only grows through folding and unfolding, no workload is counted twice, the
output stays within the budget, and membership settles (hysteresis)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.budget import FACTOR, MIN_SERIES, SeriesBudget
from exporter.snapshot import Labels, WorkloadState
from exporter.workloads.labels import LABELS

ZONES = ("package", "dram")
GPU = "gpu:GPU-0"
NAMESPACES = ("shop", "search", "ml", "batch", "")  # "": a pod whose names are not known yet
TTL_TICKS = 4
TICK_S = 5.0


@dataclass
class Workload:
    key: str
    kind: str
    labels: tuple[str, ...]
    parent: str = ""
    energy: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    ended_at: int | None = None  # tick it ended; its state is kept TTL_TICKS more, as the ledger does
    power: float = 1.0


class Node:
    """Workloads the way the engine hands them over: cumulative µJ per domain, `last` = this tick's share (empty
    once ended), children inside their pod's share, kept TTL_TICKS after they end."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.workloads: dict[str, Workload] = {}
        self.tick = 0
        self.serial = 0

    def add_pod(self) -> None:
        self.serial += 1
        n = self.serial
        uid = f"uid-{n}"
        namespace = self.rng.choice(NAMESPACES)
        pod = Workload(f"pod:{uid}", "pod", (namespace, f"p{n}" if namespace else "", uid))
        pod.power = self.rng.choice((0.0, 0.1, 1.0, 5.0, 50.0)) * self.rng.random()
        self.workloads[pod.key] = pod
        for c in range(self.rng.randint(0, 3)):
            cid = f"{n:04d}{c}"
            labels = (namespace, pod.labels[1], uid, f"c{c}", cid, "containerd", "pod")
            self.workloads[f"container:{cid}"] = Workload(f"container:{cid}", "container", labels, parent=pod.key)

    def add_other(self) -> None:
        self.serial += 1
        n = self.serial
        if self.rng.random() < 0.5:
            w = Workload(f"service:s{n}.service", "service", (f"s{n}.service",))
        else:
            w = Workload(f"container:d{n}", "container", ("", "", "", f"d{n}", f"d{n}", "docker", ""))
        w.power = self.rng.choice((0.01, 2.0, 20.0)) * self.rng.random()
        self.workloads[w.key] = w

    def step(self, events: list[int]) -> None:
        """One tick: workloads come and end, every live one draws a share of every zone."""
        self.tick += 1
        for event in events:
            if event == 0:
                self.add_pod()
            elif event == 1:
                self.add_other()
            elif event == 2:  # a top-level workload ends, with its children
                live = [w for w in self.workloads.values() if not w.parent and w.ended_at is None]
                if live:
                    top = self.rng.choice(live)
                    for w in self.workloads.values():
                        if w is top or w.parent == top.key:
                            w.ended_at = self.tick
            elif event == 3:  # powers change
                for w in self.workloads.values():
                    if not w.parent and self.rng.random() < 0.3:
                        w.power = self.rng.choice((0.0, 0.5, 10.0, 100.0)) * self.rng.random()
        gone = [k for k, w in self.workloads.items() if w.ended_at is not None and self.tick - w.ended_at > TTL_TICKS]
        for key in gone:
            del self.workloads[key]
        for w in self.workloads.values():
            w.last = {}
        for top in [w for w in self.workloads.values() if not w.parent]:
            if top.ended_at is not None:
                continue
            zones = ZONES + ((GPU,) if top.kind == "pod" and top.power > 40 else ())
            children = [w for w in self.workloads.values() if w.parent == top.key and w.ended_at is None]
            for zone in zones:
                share = int(top.power * TICK_S * 1e6 * self.rng.random())
                top.last[zone] = share
                for child in children:
                    part = self.rng.randint(0, share // (len(children) + 1))
                    child.last[zone] = part
                    share -= part
        for w in self.workloads.values():
            for zone, uj in w.last.items():
                w.energy[zone] = w.energy.get(zone, 0) + uj
            for zone in ZONES:  # a workload's zones, as the ledger has them once attributed
                w.energy.setdefault(zone, 0)

    def states(self) -> tuple[list[WorkloadState], list[str], list[str]]:
        ordered = sorted(self.workloads.values(), key=lambda w: w.key)
        states = [
            WorkloadState(w.kind, named(w.kind, w.labels), tuple(w.energy.items()), tuple(w.last.items()))
            for w in ordered
        ]
        return states, [w.key for w in ordered], [w.parent for w in ordered]


def named(kind: str, values: tuple[str, ...]) -> Labels:
    """Label values as the engine hands them over: by name, in LABELS[kind] order."""
    return tuple(zip(LABELS[kind], values, strict=True))


def top_level(kind: str, labels: Labels) -> bool:
    return kind != "container" or dict(labels)["parent_kind"] == ""


@dataclass
class Checker:
    """Follows the exported series the way Prometheus does: each series' increments, and resets."""

    last: dict[tuple[str, Labels, str], int] = field(default_factory=dict)  # its value when last seen

    def check(self, out: tuple[WorkloadState, ...], states: list[WorkloadState]) -> None:
        seen: set[tuple[str, Labels, str]] = set()
        grew: dict[tuple[bool, str, str], int] = {}
        for w in out:
            for domain, value in w.energy_uj:
                series = (w.kind, w.labels, domain)
                assert series not in seen, f"duplicate series {series}"
                seen.add(series)
                before = self.last.get(series, 0)
                assert value >= before, f"{series} went back from {before} to {value}"  # even after a gap
                key = (top_level(w.kind, w.labels), w.kind, domain)
                grew[key] = grew.get(key, 0) + value - before
                self.last[series] = value
        drew: dict[tuple[bool, str, str], int] = {}
        for s in states:
            for domain, uj in s.last_uj:
                key = (top_level(s.kind, s.labels), s.kind, domain)
                drew[key] = drew.get(key, 0) + uj
        # Exact, per kind (no energy moves between kinds) and so per zone at node level: no workload counted
        # twice, none lost.
        assert {k: v for k, v in grew.items() if v} == {k: v for k, v in drew.items() if v}


def run(seed: int, ticks: int, max_series: int, pods: int, churn: float) -> tuple[SeriesBudget[WorkloadState], int]:
    rng = random.Random(seed)
    node = Node(rng)
    for _ in range(pods):
        node.add_pod()
    for _ in range(pods // 5):
        node.add_other()
    linger_ticks = 3
    budget = SeriesBudget(max_series, WorkloadState, linger_s=linger_ticks * TICK_S)
    checker = Checker()
    most = 0
    for tick in range(1, ticks + 1):
        events = [e for e in (0, 1, 2, 3) if rng.random() < churn]
        node.step(events)
        states, keys, parents = node.states()
        out = budget.apply(tick * TICK_S, states, keys, parents)
        assert budget.stats.series == sum(budget.cost(s) for s in out)
        assert budget.stats.series <= max_series, (tick, budget.stats)
        most = max(most, sum(budget.cost(s) for s in states))
        checker.check(out, states)
        # A workload never folded exports exactly its energy, as without a budget.
        by_key = dict(zip(keys, states, strict=True))
        for key, member in budget._members.items():
            if member.open and member.own is None:
                assert by_key[key] in out
    return budget, most


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), churn=st.sampled_from((0.0, 0.2, 0.6)))
def test_totals_exact_and_counters_monotonic_far_below_the_budget(seed: int, churn: float) -> None:
    budget, most = run(seed, ticks=40, max_series=MIN_SERIES, pods=60, churn=churn)
    assert most > 3 * MIN_SERIES  # the budget really was far below the workloads' series
    folded = dict(budget.stats.folded)
    assert folded.get("pod", 0) > 0
    if churn == 0.0:  # nothing comes or goes: most ticks replay the last decision (the sums above hold for them)
        assert budget.decisions <= 40 // 3, budget.decisions


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_budget_near_the_series_count_folds_and_unfolds_exactly(seed: int) -> None:
    """A budget close to the node's series: workloads move in and out of rollups as they come, go and change
    power, which is where a counter would go back or be counted twice."""
    budget, _ = run(seed, ticks=60, max_series=180, pods=14, churn=0.6)
    assert budget.stats.series <= 180


def test_without_pressure_the_states_pass_through_untouched() -> None:
    node = Node(random.Random(7))
    for _ in range(5):
        node.add_pod()
    budget = SeriesBudget(1500, WorkloadState, linger_s=600)
    for tick in range(1, 4):
        node.step([])
        states, keys, parents = node.states()
        out = budget.apply(tick * TICK_S, states, keys, parents)
        assert all(a is b for a, b in zip(out, states, strict=True)) and len(out) == len(states)
    assert budget.stats.folded == ()


def test_membership_settles_and_no_folded_workload_outdraws_an_open_one_twice() -> None:
    """Steady powers: membership stops changing, and then no folded pod draws more than FACTOR times the power of
    the weakest open one (the hysteresis: closer than that, nobody swaps, so series do not flap)."""
    rng = random.Random(3)
    node = Node(rng)
    for _ in range(200):
        node.add_pod()
    pods = sorted((w for w in node.workloads.values() if w.kind == "pod"), key=lambda w: w.key)
    for i, w in enumerate(pods):
        w.power = float(i + 1)  # distinct and steady
    budget = SeriesBudget(400, WorkloadState, linger_s=30.0)
    changes = []
    for tick in range(1, 200):
        node.step([])
        states, keys, parents = node.states()
        out = budget.apply(tick * TICK_S, states, keys, parents)
        changes.append(sum(n for _, n in budget.stats.folds) + sum(n for _, n in budget.stats.unfolds))
    assert changes[-1] == changes[-60], "membership still changing after 140 ticks of steady power"
    opened = {w.label("uid") for w in out if w.kind == "pod" and w.label("uid")}
    assert 20 <= len(opened) < len(pods)
    weakest_open = min(w.power for w in pods if w.labels[2] in opened)
    strongest_folded = max(w.power for w in pods if w.labels[2] not in opened)
    assert strongest_folded <= FACTOR * weakest_open * 1.15  # 15 %: the recent-power average's own noise


def steady_node(seed: int, pods: int) -> tuple[Node, list[Workload]]:
    node = Node(random.Random(seed))
    for _ in range(pods):
        node.add_pod()
    ordered = sorted((w for w in node.workloads.values() if w.kind == "pod"), key=lambda w: w.key)
    for i, w in enumerate(ordered):
        w.power = float(i + 1)
    return node, ordered


def test_frozen_series_linger_their_time_while_decisions_are_replayed() -> None:
    """Steady powers, then reversed: the pods that fold keep their series, frozen, exported until exactly linger_s
    later (replayed ticks included), and gone from then on; a rollup nothing feeds goes after linger_s."""
    node, pods = steady_node(11, 120)
    linger = 30.0
    budget = SeriesBudget(600, WorkloadState, linger_s=linger)
    checker = Checker()
    watched: dict[int, tuple[WorkloadState, float, str]] = {}  # frozen state's id → (it, until, its key)
    expired = 0
    for tick in range(1, 160):
        if tick == 60:
            for i, w in enumerate(pods):
                w.power = float(len(pods) - i)
        node.step([])
        states, keys, parents = node.states()
        now, dropped = tick * TICK_S, budget.stats.dropped
        out = budget.apply(now, states, keys, parents)
        checker.check(out, states)
        exported = {id(s) for s in out}
        for key, frozen in budget._frozen.items():
            watched.setdefault(id(frozen.state), (frozen.state, frozen.until, key))  # type: ignore[arg-type]
        for ident, (_, until, key) in list(watched.items()):
            member = budget._members.get(key)
            if now >= until:
                assert ident not in exported, (tick, key, "lingered past its time")
                del watched[ident]
                expired += 1
            elif not (member and member.open) and budget.stats.dropped == dropped:
                assert ident in exported, (tick, key, "frozen series gone before its time")
    assert expired >= 10  # the reversal swapped pods, and their frozen series ran their time
    assert budget.decisions < 159 // 2  # most ticks replayed


def test_a_folded_workload_with_a_new_zone_is_decided_again_and_its_rollup_gets_the_zone() -> None:
    node, pods = steady_node(12, 60)
    budget = SeriesBudget(MIN_SERIES, WorkloadState, linger_s=15.0)
    checker = Checker()
    for tick in range(1, 30):
        if tick == 20:  # the weakest pod (folded) starts using the GPU
            assert not budget._members[pods[0].key].open
            pods[0].power = 45.0
        node.step([])
        states, keys, parents = node.states()
        decisions = budget.decisions
        out = budget.apply(tick * TICK_S, states, keys, parents)
        checker.check(out, states)
        assert budget.stats.series <= MIN_SERIES
        if tick == 20:
            assert budget.decisions == decisions + 1
            assert any(GPU in dict(w.energy_uj) for w in out if w.label("pod") == "(folded)")
        elif tick in (18, 19, 25):
            assert budget.decisions == decisions  # replayed


def test_level_pods_drops_children_and_level_node_everything() -> None:
    node = Node(random.Random(1))
    for _ in range(5):
        node.add_pod()
    node.step([])
    states, keys, parents = node.states()
    pods = SeriesBudget(1500, WorkloadState, linger_s=600, level="pods").apply(5.0, states, keys, parents)
    assert pods and all(not parent for w, parent in zip(states, parents, strict=True) if w in pods)
    assert {w.kind for w in pods} == {w.kind for w, p in zip(states, parents, strict=True) if not p}
    assert SeriesBudget(1500, WorkloadState, linger_s=600, level="node").apply(5.0, states, keys, parents) == ()


# --- through the engine ---------------------------------------------------------------------------------------


def test_engine_with_a_small_budget_conserves_every_zone_tick_by_tick(tmp_path) -> None:
    """The real engine on a 40-pod cgroup tree with max_series=100: node = idle + unattributed + the increments
    of the exported top-level series, per zone and tick, exactly, for joules and for carbon grams (operational
    and embodied, folded like joules); no series goes back; never more than 100."""
    from helpers import CgroupFixture, ProcTree, RaplTree, make_config
    from test_workload_engine import _domain, container_path, pod_path, service_path, zone_totals

    from exporter.engine import Engine

    rng = random.Random(5)
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    for i in range(40):
        cgroups.add(pod_path(i))
        for j in range(2):
            cgroups.add(container_path(i, j))
    for i in range(4):
        cgroups.add(service_path(i))
    engine = Engine.start(make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root,
                                      kubelet_log_path=tmp_path / "log", meters="rapl", max_series="100",
                                      idle_watts="package=20,dram=2", workload_ttl="20", carbon_intensity="300"))
    previous = engine.tick(0.0)
    seen: dict[tuple[str, Labels, str], int] = {}
    for n in range(1, 16):
        if n == 6:  # churn: a strong pod ends, new ones come
            cgroups.remove(container_path(3, 0))
            cgroups.remove(container_path(3, 1))
            cgroups.remove(pod_path(3))
            cgroups.add(pod_path(50))
            cgroups.add(container_path(50, 0))
        leaves = [p for p in cgroups.usage if p.endswith((".scope", ".service"))]
        busy = 0
        for path in leaves:
            strong = f"pod{7:08x}" in path or f"pod{50:08x}" in path  # one from the start, one that comes later
            usec = rng.randint(0, 200_000) * (10 if strong else 1)
            cgroups.burn(path, usec)
            busy += usec
        proc.advance_usec(busy + 100_000, 1_000_000)
        rapl.advance("intel-rapl:0", 150_000_000)
        rapl.advance("intel-rapl:1", 120_000_000)
        rapl.advance("intel-rapl:0:0", 30_000_000)
        snap = engine.tick(n * 5.0)
        assert snap.budget is not None and snap.budget.series <= 100
        grew: dict[str, int] = {}
        for w in snap.workloads:
            for zone, value in w.energy_uj:
                key = (w.kind, w.labels, zone)
                assert value >= seen.get(key, 0), f"{key} went back"
                if top_level(w.kind, w.labels):
                    grew[zone] = grew.get(zone, 0) + value - seen.get(key, 0)
                seen[key] = value
        for part in ("operational", "embodied"):
            grams = 0
            for w in snap.workloads:
                key = (w.kind, w.labels, part)
                value = w.operational_ng if part == "operational" else w.embodied_ng
                assert value >= seen.get(key, 0), f"{key} went back"
                grams += value - seen.get(key, 0)
                seen[key] = value
            node = [sum(d.workloads_ng for d in getattr(s.carbon, part)) for s in (previous, snap)]
            assert grams == node[1] - node[0] and grams > 0, (n, part)
        for zone, total in zone_totals(snap).items():
            delta = total - zone_totals(previous)[zone]
            idle = _domain(snap, zone, "idle") - _domain(previous, zone, "idle")
            unattributed = _domain(snap, zone, "unattributed") - _domain(previous, zone, "unattributed")
            assert idle + unattributed + grew.get(zone, 0) == delta, (n, zone)
        previous = snap
    folded = dict(snap.budget.folded)
    assert folded["pod"] >= 25 and folded["container"] >= 50
    pods = {w.labels for w in snap.workloads if w.kind == "pod"}
    assert named("pod", ("", "(folded)", "")) in pods  # pods without names: the kind's namespace="" rollup
    uids = {dict(labels)["uid"] for labels in pods}
    for strong in (7, 50):  # the two pods that draw ten times the others have series of their own
        assert f"{strong:08x}-0000-4000-8000-{strong:012x}" in uids
    engine.close()
    # The exposition carries the rollups and the budget's self-metrics, and once --json the same values.
    from test_once_json import FOLD_FAMILIES, compare

    from exporter.exposition import Renderer
    from exporter.snapshot_json import snapshot_document

    text = Renderer().render(snap).text.decode()
    assert 'wattlens_pod_cpu_joules_total{namespace="",node="test-node",pod="(folded)",source="rapl",uid=""' in text
    assert compare(text, snapshot_document(snap)) >= FOLD_FAMILIES
    rollups = [w for w in snapshot_document(snap)["workloads"] if w["rollup"]]
    assert {w["kind"] for w in rollups} >= {"pod", "container"}
