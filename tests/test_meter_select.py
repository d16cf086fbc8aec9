"""Meter selection by order, per role, with fallback at start and at runtime (default order rapl, hwmon, model)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from helpers import FIXTURES, ProcTree, RaplTree, make_config
from hwmon_tree import HwmonTree
from test_once_json import compare

from exporter.config import ConfigError, load_config
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.meters.hwmon import ACPI_NO_READING_UW
from exporter.meters.registry import DEFAULT_ORDER, NODE_METERS
from exporter.meters.select import NodeMeters, select_meter
from exporter.snapshot_json import snapshot_document


def merged(tmp_path: Path, *names: str) -> Path:
    """One sysfs root holding several fixture trees (RAPL's class/powercap beside hwmon's class/hwmon)."""
    root = tmp_path / "sys"
    for name in names:
        shutil.copytree(FIXTURES / name, root, symlinks=True, dirs_exist_ok=True)
    (root / "expected.yaml").unlink(missing_ok=True)
    return root


def opened(root: Path, tmp_path: Path, **overrides: object) -> NodeMeters:
    proc = ProcTree(tmp_path / "proc")
    meters, reports = select_meter(make_config(sys_path=root, proc_path=proc.root, **overrides), 4)
    assert meters is not None, reports
    return meters


def sources(meters: NodeMeters) -> set[tuple[str, str]]:
    return {(z.zone, z.source) for z in meters.zones()}


def test_default_order_and_registry() -> None:
    assert DEFAULT_ORDER == ("rapl", "hwmon", "model")
    assert set(DEFAULT_ORDER) <= set(NODE_METERS)
    with pytest.raises(ConfigError, match=r"invalid setting meters=.*unknown meter 'nvml'.*Fix: set meters to .*rapl, "
                                          r"hwmon, model"):
        load_config({"meters": "rapl,nvml"}, None, environ={})


def test_rapl_missing_grace_is_measured_by_hwmon(tmp_path: Path) -> None:
    meters = opened(FIXTURES / "hwmon-grace", tmp_path)
    assert meters.name == "hwmon"
    assert sources(meters) == {("grace", "hwmon"), ("cpu", "hwmon"), ("sysio", "hwmon")}
    reports = {r.name: r for r in meters.reports}
    assert not reports["rapl"].available and "no RAPL zones" in reports["rapl"].reason
    assert reports["hwmon"].roles == ("cpu",)
    meters.close()


def test_rapl_and_hwmon_missing_fall_back_to_the_model(tmp_path: Path) -> None:
    meters = opened(FIXTURES / "hwmon-rpi5", tmp_path)
    assert meters.name == "model" and sources(meters) == {("package", "model")}
    hwmon = next(r for r in meters.reports if r.name == "hwmon")
    assert not hwmon.available and "no hwmon power or energy sensor" in hwmon.reason
    meters.close()


def test_acpi_only_server_platform_from_hwmon_cpu_from_the_model(tmp_path: Path) -> None:
    meters = opened(FIXTURES / "hwmon-acpi-power-meter", tmp_path)
    assert meters.name == "model"
    assert sources(meters) == {("platform", "hwmon"), ("package", "model")}
    meters.close()


def test_rapl_with_an_acpi_power_meter_reads_both(tmp_path: Path) -> None:
    root = merged(tmp_path, "intel-2socket-server", "hwmon-acpi-power-meter-info")
    meters = opened(root, tmp_path)
    assert meters.name == "rapl"
    assert sources(meters) == {("package", "rapl"), ("dram", "rapl"), ("platform", "hwmon")}
    assert [r.roles for r in meters.reports if r.available] == [("cpu",), ("platform",), ()]
    meters.close()


def test_amd_energy_beside_rapl_is_not_read(tmp_path: Path) -> None:
    root = merged(tmp_path, "amd-epyc-2socket", "hwmon-amd-energy-epyc")
    meters = opened(root, tmp_path)
    assert sources(meters) == {("package", "rapl")}
    hwmon = next(r for r in meters.reports if r.name == "hwmon")
    assert hwmon.available and not hwmon.roles
    assert "not read: its zones (core, package) are measured by rapl (cpu)" in hwmon.notes
    meters.close()


def test_explicit_order_is_respected(tmp_path: Path) -> None:
    root = merged(tmp_path, "amd-epyc-2socket", "hwmon-amd-energy-epyc")
    meters = opened(root, tmp_path, meters="hwmon,rapl")
    assert meters.name == "hwmon" and ("package", "rapl") not in sources(meters)
    meters.close()


def tick_all(engine: Engine, start: float, end: float, step: float = 5.0) -> float:
    now = start
    while now <= end:
        engine.tick(now)
        now += step
    return now


def test_rapl_lost_at_runtime_hands_over_to_hwmon_and_takes_back(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    root = merged(tmp_path, "amd-epyc-2socket", "hwmon-amd-energy-epyc")
    rapl, amd = RaplTree(root), HwmonTree(root, "hwmon-amd-energy-epyc")
    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(sys_path=root, proc_path=proc.root, workloads=False, gpus=False,
                                      meter_failover_after=20))
    assert engine.meter is not None and engine.meter.name == "rapl"
    engine.tick(0.0)
    keep = {z: rapl.energy(z) for z in ("intel-rapl:0", "intel-rapl:8")}
    for zone in keep:
        rapl.set(zone, "garbage")  # every RAPL zone fails from now on
    tick_all(engine, 5.0, 25.0)
    assert engine.meter.name == "hwmon"
    assert "meter rapl: every CPU zone down for 20 s; node CPU energy now from hwmon" in caplog.text
    amd.advance("hwmon2/energy33", 40_000_000)
    amd.advance("hwmon2/energy34", 60_000_000)
    snap = engine.tick(30.0)
    by_source = {(z.zone.zone, z.zone.socket, z.zone.source): z for z in snap.zones}
    assert by_source[("package", "0", "hwmon")].joules_uj == 40_000_000
    assert by_source[("package", "1", "hwmon")].joules_uj == 60_000_000
    assert snap.meter == "hwmon" and {d.source for d in snap.domains} == {"hwmon"}
    for zone, value in keep.items():
        rapl.set(zone, value)  # RAPL reads again: the probe (60 s after the failover) gives it back the role
    tick_all(engine, 35.0, 90.0)
    assert engine.meter.name == "rapl"
    assert "meter rapl reads again; node CPU energy from rapl" in caplog.text
    assert engine.meter.switches == 2  # type: ignore[attr-defined]
    snap = engine.tick(95.0)
    engine.close()
    text = Renderer().render(snap).text.decode()
    assert 'wattlens_meter_switches_total{node="test-node"} 2.0' in text
    assert "wattlens_meter_switches_total" in compare(text, snapshot_document(snap))


def test_hwmon_lost_at_runtime_hands_over_to_the_model(tmp_path: Path) -> None:
    tree = HwmonTree.copy("hwmon-grace", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(sys_path=tree.root, proc_path=proc.root, workloads=False, gpus=False,
                                      meter_failover_after=10))
    assert engine.meter is not None and engine.meter.name == "hwmon"
    engine.tick(0.0)
    for cid in tree.channels:
        tree.set(cid, ACPI_NO_READING_UW)
    now = tick_all(engine, 5.0, 15.0)
    proc.advance(50, 50)
    snap = engine.tick(now)
    assert snap.meter == "model"
    model = [z for z in snap.zones if z.zone.source == "model"]
    assert [z.zone.zone for z in model] == ["package"] and model[0].up
    assert all(not z.up for z in snap.zones if z.zone.source == "hwmon")
    engine.close()


def test_no_failover_while_some_cpu_zone_still_reads(tmp_path: Path) -> None:
    tree = HwmonTree.copy("hwmon-grace", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(sys_path=tree.root, proc_path=proc.root, workloads=False, gpus=False,
                                      meter_failover_after=10))
    engine.tick(0.0)
    tree.set("hwmon2/power1", ACPI_NO_READING_UW)  # one rail down: the rest still measures
    tick_all(engine, 5.0, 60.0)
    assert engine.meter is not None and engine.meter.name == "hwmon"
    engine.close()
