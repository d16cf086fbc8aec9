"""Carbon per workload (exporter/carbon/ledger.py through exporter/accounting.py): operational and embodied grams
conserve exactly per domain and tick (idle + unattributed + Σ top-level workloads = the domain's grams), a change of
intensity is integrated tick by tick, and embodied carbon follows the hardware's share of the tick."""

from __future__ import annotations

from fractions import Fraction

import pytest
from helpers import make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_accounting import Node, owner_among, runs

from exporter.accounting import Accounting, Weights
from exporter.attribution import Usage
from exporter.carbon.embodied import GPU_EMBODIED_KG, gpu_embodied_kg
from exporter.carbon.ledger import UJ_MG_PER_NG, CarbonParts, Rate, intensity_mg
from exporter.ledger import WorkloadLedger
from exporter.meters.base import AcceleratorSample, AcceleratorUser, CounterSample, ZoneId
from exporter.zones import Place, top_level

DT = 5.0
DT_US = 5_000_000


def _parts(parts: dict[str, CarbonParts]) -> dict[str, tuple[int, int, int]]:
    return {k: (p.idle_ng, p.unattributed_ng, p.workloads_ng) for k, p in parts.items()}


def _gained(after: dict[str, tuple[int, int, int]], before: dict[str, tuple[int, int, int]]) -> dict[str, list[int]]:
    return {k: [a - b for a, b in zip(v, before.get(k, (0, 0, 0)), strict=True)] for k, v in after.items()}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.booleans(), st.integers(0, 1500), st.integers(0, 1500), st.integers(1, 5), st.floats(0, 5000))
def test_carbon_is_conserved_per_domain_and_tick_and_a_step_in_intensity_is_integrated(
        run: tuple[Node, list[dict[str, object]]], spread: bool, before_g: int, after_g: int, step_at: int,
        host_kg: float) -> None:
    node, ticks = run
    config = make_config(idle_attribution="cpu" if spread else "none", gpu_idle_watts=20.0 if spread else None,
                         **{"carbon.host_embodied_kg": host_kg, "carbon.lifetime": "3d"})
    ledger: WorkloadLedger[str] = WorkloadLedger(600.0)
    accounting = Accounting(config, ledger, lambda: {})
    carbon = accounting.carbon
    raw = dict.fromkeys(node.zones, 10**9)
    gpu_raw = {g.uuid: 5 * 10**8 for g in node.gpus}
    cpu_places = [Place(z.zone, z.socket) for z in node.zones if z.zone not in ("module", "platform")]
    counted = {p.zone for p in top_level(cpu_places)}

    def samples(deltas: dict[ZoneId, int | None]) -> list[CounterSample]:
        for z, d in deltas.items():
            raw[z] += d or 0
        return [CounterSample(z, raw[z] if deltas.get(z, 0) is not None else None, 0, "down") for z in node.zones]

    def gpus(deltas: dict[str, int | None], users: dict[str, list[tuple[int, int]]]) -> list[AcceleratorSample]:
        for u, d in deltas.items():
            gpu_raw[u] += d or 0
        return [AcceleratorSample(g, gpu_raw[g.uuid] if deltas.get(g.uuid, 0) is not None else None,
                                  "energy_counter",
                                  tuple(AcceleratorUser(pid, weight) for pid, weight in users.get(g.uuid, ())),
                                  "sm_util") for g in node.gpus]

    accounting.tick(0.0, None, node=samples({}), cpu=Weights(0, []), accelerators=gpus({}, {}),
                    owner=owner_among([]), intensity=before_g)
    expected_numerator: dict[str, int] = {}  # Σ over ticks of ΔE × mg/kWh in force, per domain
    host_ticks = 0
    for i, tick in enumerate(ticks, start=1):
        grams = before_g if i < step_at else after_g  # the step change, mid-run
        tops: list[Usage[str]] = tick["tops"]  # type: ignore[assignment]
        for usage in tops:
            ledger.seen(i * DT, usage.key, usage.key, "")
            for child in usage.children:
                ledger.seen(i * DT, child.key, child.key, usage.key)
        energy_before = {d.zone: d.idle_uj + d.active_uj for d in accounting.domains()}
        energy_before |= {f"gpu:{a.device.uuid}": a.idle_uj + a.active_uj for a in accounting.accelerator_states()}
        operational_before, embodied_before = _parts(carbon.operational), _parts(carbon.embodied)
        records_before = {k: (r.operational_ng, r.embodied_ng) for k, r in ledger.records()}
        idle_ticks = int(tick["idle"])  # type: ignore[call-overload]
        accounting.tick(i * DT, DT, node=samples(tick["deltas"]),  # type: ignore[arg-type]
                        cpu=Weights(int(tick["busy"]), tops, (idle_ticks, idle_ticks + 500)),  # type: ignore[call-overload]
                        accelerators=gpus(tick["gpu"], tick["users"]),  # type: ignore[arg-type]
                        owner=owner_among(tops), intensity=grams)
        host_ticks += 1
        energy = {d.zone: d.idle_uj + d.active_uj for d in accounting.domains()}
        energy |= {f"gpu:{a.device.uuid}": a.idle_uj + a.active_uj for a in accounting.accelerator_states()}
        gained = {k: e - energy_before.get(k, 0) for k, e in energy.items()}
        # Per tick: every domain's grams are its energy at the intensity in force, split exactly into its parts.
        for which, before, ledger_parts in (("operational", operational_before, carbon.operational),
                                            ("embodied", embodied_before, carbon.embodied)):
            for domain, (idle, unattributed, workloads) in _gained(_parts(ledger_parts), before).items():
                parts = ledger_parts[domain]
                assert min(idle, unattributed, workloads) >= 0
                if which == "operational":
                    numerator = expected_numerator.get(domain, 0) + gained[domain] * intensity_mg(grams)
                    expected_numerator[domain] = numerator
                    assert (parts.total_ng, parts.carry) == divmod(numerator, UJ_MG_PER_NG), domain
                if spread and which == "operational":
                    assert idle == 0  # idle is spread over the workloads, as their energy is
            # and the workloads' part is exactly what the top-level workloads gained, their children inside it
            top_gain = sum(getattr(r, f"{which}_ng") - records_before.get(k, (0, 0))[which == "embodied"]
                           for k, r in ledger.records() if r.parent == "")
            assert top_gain == sum(p[2] for p in _gained(_parts(ledger_parts), before).values())
            for usage in tops:
                record = dict(ledger.records())[usage.key]
                own = getattr(record, f"{which}_ng") - records_before.get(usage.key, (0, 0))[which == "embodied"]
                children = sum(getattr(dict(ledger.records())[c.key], f"{which}_ng")
                               - records_before.get(c.key, (0, 0))[which == "embodied"] for c in usage.children)
                assert own >= 0 and children == 0  # a pod's containers are in their pod's grams
        # Operational grams count once: only CPU zones no other CPU zone contains, and the GPUs.
        assert {d for d in carbon.operational if not d.startswith("gpu:")} <= counted
    # In total, each domain's grams are Σ ΔE_i × I_i (never ΣΔE × mean I), to the nanogram.
    for domain, numerator in expected_numerator.items():
        assert carbon.operational[domain].total_ng == numerator // UJ_MG_PER_NG
    rate = Rate.of(host_kg, 3 * 86400)
    assert carbon.embodied["host"].total_ng == rate.total_ng * DT_US * host_ticks // rate.lifetime_us
    for g in node.gpus:
        gpu_rate = Rate.of(gpu_embodied_kg(g.model, GPU_EMBODIED_KG, 575.1), 3 * 86400)
        gpu_ng = gpu_rate.total_ng * DT_US * host_ticks // gpu_rate.lifetime_us
        assert carbon.embodied[f"gpu:{g.uuid}"].total_ng == gpu_ng


PACKAGE = ZoneId("package", "0", "", "rapl", "intel-rapl:0")


def _one_pod_node(**config: object) -> tuple[Accounting, WorkloadLedger[str], list[int]]:
    ledger: WorkloadLedger[str] = WorkloadLedger(600.0)
    accounting = Accounting(make_config(idle_watts="package=0", **config), ledger, lambda: {})
    return accounting, ledger, [10**9]


def test_a_step_in_intensity_is_integrated_tick_by_tick_not_averaged() -> None:
    """10 W for five ticks at 100 g/kWh, then 40 W for five at 500 g/kWh: 1,000 J and 1,400 J... per phase."""
    accounting, ledger, raw = _one_pod_node()
    pod = [Usage("pod:a", 1_000_000)]

    def tick(now: float, watts: float, grams: float) -> None:
        raw[0] += int(watts * DT * 1e6)
        ledger.seen(now, "pod:a", "pod:a", "")
        accounting.tick(now, None if now == 0 else DT, node=[CounterSample(PACKAGE, raw[0], 0)],
                        cpu=Weights(1_000_000, pod, (0, 100)), intensity=grams)

    tick(0.0, 0, 100)
    for i in range(1, 6):
        tick(i * DT, 10, 100)
    for i in range(6, 11):
        tick(i * DT, 40, 500)
    exact = Fraction(250, 3_600_000) * 100 + Fraction(1000, 3_600_000) * 500  # grams: J / 3.6e6 × g/kWh per phase
    grams = dict(ledger.records())["pod:a"].operational_ng / 1e9
    assert grams == pytest.approx(float(exact), abs=1e-9)  # 0.14583 g
    averaged = float(Fraction(1250, 3_600_000) * 300)  # what joules × the mean intensity would say: 0.10417 g
    assert abs(grams - averaged) > 0.04
    assert accounting.carbon.operational["package"].workloads_ng == dict(ledger.records())["pod:a"].operational_ng


def test_unknown_intensity_counts_no_operational_grams_and_embodied_follows_cpu_share() -> None:
    accounting, ledger, raw = _one_pod_node(**{"carbon.host_embodied_kg": 1262.304, "carbon.lifetime": "1461d"})
    usage = [Usage("pod:a", 1_000_000), Usage("pod:b", 3_000_000)]
    for i in range(3):
        raw[0] += 50_000_000
        for u in usage:
            ledger.seen(i * DT, u.key, u.key, "")
        # 8 CPUs over 5 s = 40 CPU-seconds: 4 busy (1 pod:a, 3 pod:b), 36 idle
        accounting.tick(i * DT, None if i == 0 else DT, node=[CounterSample(PACKAGE, raw[0], 0)],
                        cpu=Weights(4_000_000, usage, (36, 40)), intensity=None)
    assert accounting.carbon.operational == {}
    records = dict(ledger.records())
    assert records["pod:a"].operational_ng == 0
    # 1262.304 kg over 4 years = 10 mg/s exactly (126,230,400 s): 100 mg in two ticks, 90 % of it idle.
    host = accounting.carbon.embodied["host"]
    assert (host.total_ng, host.idle_ng, host.unattributed_ng, host.workloads_ng) == (10**8, 9 * 10**7, 0, 10**7)
    assert (records["pod:a"].embodied_ng, records["pod:b"].embodied_ng) == (2_500_000, 7_500_000)


def test_embodied_off_and_gpu_models() -> None:
    accounting, _, raw = _one_pod_node(**{"carbon.embodied": "false"})
    raw[0] += 1
    accounting.tick(0.0, None, node=[CounterSample(PACKAGE, raw[0], 0)], cpu=Weights(0, []))
    accounting.tick(5.0, DT, node=[CounterSample(PACKAGE, raw[0] + 5, 0)], cpu=Weights(0, []))
    assert accounting.carbon.embodied == {}
    table = {**GPU_EMBODIED_KG, "H100 PCIe": 350.0}
    assert gpu_embodied_kg("NVIDIA L40S", table, 1.0) == 277.1  # the longest key found, not L4
    assert gpu_embodied_kg("NVIDIA L4", table, 1.0) == 123.5
    assert gpu_embodied_kg("NVIDIA H100 PCIe", table, 1.0) == 350.0  # an operator's key wins by length
    assert gpu_embodied_kg("NVIDIA H100 80GB HBM3", table, 1.0) == 575.1
    assert gpu_embodied_kg("Tesla T4", table, 42.0) == 42.0
