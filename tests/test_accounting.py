"""The one accounting path: for random mixes of domains (RAPL zones, hwmon channels, the platform, GPUs) and
workloads, per domain and tick idle + unattributed + Σ top-level workloads = ΔE exactly, and the rest of the
node is the platform less the top-level domains, never negative."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from helpers import make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.accounting import Accounting, Weights
from exporter.attribution import Usage
from exporter.ledger import WorkloadLedger
from exporter.meters.base import Accelerator, AcceleratorSample, AcceleratorUser, CounterSample, ZoneId
from exporter.zones import Place, contains, top_level

# Zones a node can have, by meter: (zone, socket, source, device).
PALETTE = [
    ("package", "0", "rapl", "intel-rapl:0"), ("package", "1", "rapl", "intel-rapl:1"),
    ("dram", "0", "rapl", "intel-rapl:0:0"), ("core", "0", "rapl", "intel-rapl:0:1"),
    ("psys", "", "rapl", "intel-rapl:2"),
    ("grace", "0", "hwmon", "hwmon1/power1"), ("cpu", "0", "hwmon", "hwmon2/power1"),
    ("sysio", "0", "hwmon", "hwmon3/power1"), ("module", "0", "hwmon", "hwmon4/power1"),
    ("platform", "", "redfish", "bmc:443"),
]
WORKLOADS = [f"pod:{i}" for i in range(4)] + ["service:a.service", "vm:v"]


@dataclass
class Node:
    zones: list[ZoneId]
    gpus: list[Accelerator]


nodes = st.builds(
    Node,
    zones=st.lists(st.sampled_from(PALETTE), min_size=1, unique=True).map(
        lambda picked: [ZoneId(z, s, "", src, dev) for z, s, src, dev in picked]),
    gpus=st.lists(st.sampled_from(["", "module"]), max_size=2).map(
        lambda scopes: [Accelerator(i, f"GPU-{i}", "test", scope=scope) for i, scope in enumerate(scopes)]),
)


def usages(draw: st.DrawFn) -> tuple[int, list[Usage[str]]]:
    tops = draw(st.lists(st.sampled_from(WORKLOADS), unique=True))
    out = []
    for key in tops:
        cpu = draw(st.integers(0, 500_000))
        kids = tuple(Usage(f"container:{key}-{i}", draw(st.integers(0, cpu))) for i in range(draw(st.integers(0, 2))))
        out.append(Usage(key, cpu, kids))
    busy = draw(st.integers(0, 1_200_000))
    return busy, out


@st.composite
def runs(draw: st.DrawFn) -> tuple[Node, list[dict[str, object]]]:
    node = draw(nodes)
    ticks = []
    for _ in range(draw(st.integers(2, 6))):
        deltas = {z: draw(st.one_of(st.none(), st.integers(0, 400_000_000))) for z in node.zones}
        gpu = {g.uuid: draw(st.one_of(st.none(), st.integers(0, 300_000_000))) for g in node.gpus}
        users = {g.uuid: draw(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 100)), max_size=3))
                 for g in node.gpus}
        busy, tops = usages(draw)
        ticks.append({"deltas": deltas, "gpu": gpu, "users": users, "busy": busy, "tops": tops,
                      "idle": draw(st.integers(0, 1000))})
    return node, ticks


def owner_among(tops: list[Usage[str]]) -> Callable[[AcceleratorUser], tuple[str, str | None] | None]:
    """PIDs 1-6 belong to the tick's workloads in turn (a child when it has one); 7-9 to no workload."""
    def owner(user: AcceleratorUser) -> tuple[str, str | None] | None:
        pid = user.pid
        if pid > 6 or not tops:
            return None
        top = tops[pid % len(tops)]
        return top.key, (top.children[0].key if top.children and pid % 2 else None)
    return owner


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.sampled_from(["baseline", "ratio"]), st.booleans())
def test_every_domain_is_conserved_exactly_and_the_rest_is_never_negative(
        run: tuple[Node, list[dict[str, object]]], policy: str, spread: bool) -> None:
    node, ticks = run
    config = make_config(idle_policy=policy, idle_attribution="cpu" if spread else "none",
                         gpu_idle_watts=20.0 if spread else None)
    ledger: WorkloadLedger[str] = WorkloadLedger(600.0)
    accounting = Accounting(config, ledger, lambda: {})
    raw = dict.fromkeys(node.zones, 10 ** 9)
    gpu_raw = {g.uuid: 5 * 10**8 for g in node.gpus}
    places = [Place(z.zone, z.socket) for z in node.zones] + [Place("gpu", str(g.index), g.scope) for g in node.gpus]
    top = top_level(places)
    platform_common = parts_common = prefix_max = 0

    def sample_node(deltas: dict[ZoneId, int | None] | None) -> list[CounterSample]:
        out = []
        for z in node.zones:
            delta = None if deltas is None else deltas[z]
            if delta is not None:
                raw[z] += delta
            out.append(CounterSample(z, raw[z] if deltas is None or delta is not None else None, 0, "down"))
        return out

    def sample_gpus(deltas: dict[str, int | None] | None, users: dict[str, list[tuple[int, int]]]) -> list:
        out = []
        for g in node.gpus:
            delta = None if deltas is None else deltas[g.uuid]
            if delta is not None:
                gpu_raw[g.uuid] += delta
            energy = gpu_raw[g.uuid] if deltas is None or delta is not None else None
            gpu_users = tuple(AcceleratorUser(pid, weight) for pid, weight in users.get(g.uuid, ()))
            out.append(AcceleratorSample(g, energy, "energy_counter", gpu_users, "sm_util"))
        return out

    accounting.tick(0.0, None, node=sample_node(None), cpu=Weights(0, []), accelerators=sample_gpus(None, {}),
                    owner=owner_among([]))
    previously_up = dict.fromkeys(node.zones, True) | {g.uuid: True for g in node.gpus}
    for i, tick in enumerate(ticks, start=1):
        before = {d.zone: (d.idle_uj, d.unattributed_uj) for d in accounting.domains()}
        gpus_before = {a.device.uuid: (a.idle_uj, a.unattributed_uj) for a in accounting.accelerator_states()}
        rest_before = accounting.node_energy().rest_uj or 0
        energy_before = {key: dict(r.energy_uj) for key, r in ledger.records() if r.parent == ""}
        tops: list[Usage[str]] = tick["tops"]  # type: ignore[assignment]
        for usage in tops:
            ledger.seen(i * 5.0, usage.key, usage.key, "")
            for child in usage.children:
                ledger.seen(i * 5.0, child.key, child.key, usage.key)
        deltas: dict[ZoneId, int | None] = tick["deltas"]  # type: ignore[assignment]
        gpu_deltas: dict[str, int | None] = tick["gpu"]  # type: ignore[assignment]
        idle_ticks = int(tick["idle"])  # type: ignore[call-overload]
        accounting.tick(i * 5.0, 5.0, node=sample_node(deltas),
                        cpu=Weights(int(tick["busy"]), tops, (idle_ticks, idle_ticks + 500)),  # type: ignore[call-overload]
                        accelerators=sample_gpus(gpu_deltas, tick["users"]),  # type: ignore[arg-type]
                        owner=owner_among(tops))
        # Counters back after a failure have no delta this tick (a new baseline).
        counted = {z: d if previously_up[z] else None for z, d in deltas.items()}
        gpu_counted = {u: d if previously_up[u] else None for u, d in gpu_deltas.items()}
        previously_up = {z: d is not None for z, d in deltas.items()}
        previously_up.update({u: d is not None for u, d in gpu_deltas.items()})
        by_place = dict.fromkeys(places, 0)
        for z, d in counted.items():
            p = Place(z.zone, z.socket)
            by_place[p] = None if d is None or by_place[p] is None else by_place[p] + d
        for g in node.gpus:
            by_place[Place("gpu", str(g.index), g.scope)] = gpu_counted[g.uuid]
        workload_uj: dict[str, int] = {}  # this tick's energy of the top-level workloads, per domain
        for key, record in ledger.records():
            if record.parent == "":
                for domain, uj in record.energy_uj.items():
                    gained = uj - energy_before.get(key, {}).get(domain, 0)
                    workload_uj[domain] = workload_uj.get(domain, 0) + gained
        for d in accounting.domains():
            delta = sum(v or 0 for z, v in counted.items() if z.zone == d.zone)
            idle = d.idle_uj - before.get(d.zone, (0, 0))[0]
            unattributed = d.unattributed_uj - before.get(d.zone, (0, 0))[1]
            if spread:
                idle = 0  # idle is spread over workloads: it is in their shares
            assert idle + unattributed + workload_uj.get(d.zone, 0) == delta, d.zone
        for a in accounting.accelerator_states():
            delta = gpu_counted[a.device.uuid]
            if delta is None:
                continue
            place = Place("gpu", str(a.device.index), a.device.scope)
            inner = [p for p in places if p.zone not in ("gpu", "module", "platform") and contains(place, p)]
            outer = [p for p in inner if not any(contains(o, p) for o in inner)]
            attributable = delta - min(sum(by_place[p] or 0 for p in outer), delta)
            idle = 0 if spread else a.idle_uj - gpus_before.get(a.device.uuid, (0, 0))[0]
            unattributed = a.unattributed_uj - gpus_before.get(a.device.uuid, (0, 0))[1]
            assert idle + unattributed + workload_uj.get(f"gpu:{a.device.uuid}", 0) == attributable
        rest = accounting.node_energy().rest_uj
        platform = by_place.get(Place("platform"))
        if platform is not None and top and all(by_place[p] is not None for p in top):
            platform_common += platform
            parts_common += sum(by_place[p] or 0 for p in top)
            prefix_max = max(prefix_max, platform_common - parts_common)
        assert (rest or 0) >= rest_before >= 0, "the rest of the node never goes back and is never negative"
        assert (rest or 0) == max(0, prefix_max)


def test_rest_of_node_is_platform_minus_the_top_level_domains() -> None:
    """A server with RAPL and a BMC: rest = platform − (packages + DRAM), tick by tick."""
    config = make_config()
    accounting = Accounting(config, WorkloadLedger(600.0), lambda: {})
    zones = [ZoneId("package", "0", "", "rapl", "a"), ZoneId("dram", "0", "", "rapl", "b"),
             ZoneId("core", "0", "", "rapl", "c"), ZoneId("platform", "", "", "redfish", "bmc")]
    values = dict.fromkeys(zones, 0)

    def tick(now: float, **deltas: int) -> None:
        for z in zones:
            values[z] += deltas.get(z.zone, 0)
        samples = [CounterSample(z, values[z], 0) for z in zones]
        accounting.tick(now, None if now == 0 else 5.0, node=samples, cpu=Weights(0, []))

    tick(0.0)
    tick(5.0, package=500_000_000, dram=50_000_000, core=300_000_000, platform=1_500_000_000)
    energy = accounting.node_energy()
    assert (energy.total_uj, energy.rest_uj) == (1_500_000_000, 950_000_000)  # core is inside package
    tick(10.0, package=900_000_000, dram=100_000_000, platform=800_000_000)  # sensors disagree this tick
    assert accounting.node_energy().rest_uj == 950_000_000, "never negative, never backwards"
    tick(15.0, package=100_000_000, dram=10_000_000, platform=1_310_000_000)
    assert accounting.node_energy().rest_uj == 950_000_000 - 200_000_000 + 1_200_000_000
    info = {i.zone: (i.parent, i.top_level) for i in accounting.zone_info()}
    assert info == {"package": ("platform", True), "dram": ("platform", True), "core": ("package", False),
                    "platform": ("", False)}
