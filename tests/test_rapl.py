"""RAPL discovery and reading against fixture trees modelled on real machines (fixtures/README.md)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from helpers import FIXTURES, RaplTree, build_tree

from exporter.meters.base import MeterUnavailable
from exporter.meters.rapl import RaplMeter, discover
from exporter.sysfs import HeldFile

INTEL = 262_143_328_850

# (zone, socket, die, sysfs id) for every zone a correct reader keeps.
EXPECTED = {
    "intel-2socket-server": {
        ("package", "0", "", "intel-rapl:0"), ("dram", "0", "", "intel-rapl:0:0"),
        ("package", "1", "", "intel-rapl:1"), ("dram", "1", "", "intel-rapl:1:0"),
    },
    "intel-laptop": {
        ("package", "0", "", "intel-rapl:0"), ("core", "0", "", "intel-rapl:0:0"),
        ("uncore", "0", "", "intel-rapl:0:1"), ("dram", "0", "", "intel-rapl:0:2"),
        ("psys", "", "", "intel-rapl:1"),
    },
    "amd-epyc-2socket": {("package", "0", "", "intel-rapl:0"), ("package", "1", "", "intel-rapl:8")},
    "near-wrap": {("package", "0", "", "intel-rapl:0"), ("dram", "0", "", "intel-rapl:0:0")},
    "unreadable": {("package", "0", "", "intel-rapl:0"), ("core", "0", "", "intel-rapl:0:0")},
    "empty": set(),
}


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_discovery_finds_exactly_the_real_counters(tree: str) -> None:
    zones, _ = discover(FIXTURES / tree)
    found = {(z.zone.zone, z.zone.socket, z.zone.die, z.sysfs_id) for z in zones}
    assert found == EXPECTED[tree]
    assert all(z.zone.source == "rapl" and z.zone.device == z.sysfs_id for z in zones)


def test_mmio_duplicate_is_dropped_in_favour_of_msr() -> None:
    zones, notes = discover(FIXTURES / "intel-laptop")
    assert not any(z.control_type == "intel-rapl-mmio" for z in zones)
    assert any("intel-rapl-mmio:0 duplicates intel-rapl:0" in n for n in notes)


def test_mmio_only_package_is_kept(tmp_path: Path) -> None:
    build_tree(tmp_path, {"intel-rapl-mmio:0": ("package-0", 5, INTEL)})
    zones, _ = discover(tmp_path)
    assert [(z.zone.zone, z.sysfs_id) for z in zones] == [("package", "intel-rapl-mmio:0")]


def test_distinct_dies_are_all_kept(tmp_path: Path) -> None:
    # Intel multi-die packages (CLX-AP) have a real counter per die: summing them is right.
    build_tree(tmp_path, {
        "intel-rapl:0": ("package-0-die-0", 10_000_000_000, INTEL),
        "intel-rapl:1": ("package-0-die-1", 20_000_000_000, INTEL),
    })
    zones, _ = discover(tmp_path)
    assert {(z.zone.socket, z.zone.die) for z in zones} == {("0", "0"), ("0", "1")}


def test_hex_zone_ids_and_nested_directories(tmp_path: Path) -> None:
    build_tree(tmp_path, {
        "intel-rapl:a": ("package-10", 1, INTEL),
        "intel-rapl:a:0": ("dram", 2, INTEL),
        "intel-rapl:b": ("weird-domain", 3, INTEL),  # unknown names are not guessed at
    })
    zones, _ = discover(tmp_path)
    assert {(z.zone.zone, z.zone.socket, z.sysfs_id) for z in zones} == {
        ("package", "10", "intel-rapl:a"), ("dram", "10", "intel-rapl:a:0")}


def test_no_zones_means_unavailable_with_a_fix() -> None:
    with pytest.raises(MeterUnavailable) as caught:
        RaplMeter.open(FIXTURES / "empty")
    assert "no RAPL zones" in caught.value.reason
    assert "--sys" in caught.value.fix


def test_reads_values_written(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    meter = RaplMeter.open(tree.root)
    tree.set("intel-rapl:1", 123_456)
    values = {s.zone.device: s.energy_uj for s in meter.read(0.0, None)}
    assert values["intel-rapl:1"] == 123_456
    assert values["intel-rapl:0"] == tree.energy("intel-rapl:0")
    meter.close()


@pytest.mark.parametrize("garbage", ["", "abc", "-5", "1e9", str(INTEL + 1), "12 34"])
def test_garbage_is_an_error_not_a_value(tmp_path: Path, garbage: str) -> None:
    tree = RaplTree.copy("near-wrap", tmp_path)
    meter = RaplMeter.open(tree.root)
    tree.set("intel-rapl:0", garbage)
    sample = next(s for s in meter.read(0.0, None) if s.zone.device == "intel-rapl:0")
    assert sample.energy_uj is None and sample.error
    tree.set("intel-rapl:0", 42)  # the fd stays usable: the next good value is read
    assert next(s for s in meter.read(1.0, None) if s.zone.device == "intel-rapl:0").energy_uj == 42


def test_failed_zone_is_reopened_with_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = RaplTree.copy("near-wrap", tmp_path)
    meter = RaplMeter.open(tree.root)
    real_read = HeldFile.read

    def failing_read(self: HeldFile) -> bytes:
        if "intel-rapl:0/energy_uj" in str(self.path) and "intel-rapl:0:0" not in str(self.path):
            raise OSError(errno.ENODEV, "No such device")
        return real_read(self)

    monkeypatch.setattr(HeldFile, "read", failing_read)
    package = tree.zone_dir("intel-rapl:0")
    hidden = package.with_name("gone")
    sample = meter.read(0.0, None)[-1]
    assert sample.zone.device == "intel-rapl:0" and sample.energy_uj is None
    assert "vanished" in sample.error
    monkeypatch.setattr(HeldFile, "read", real_read)
    package.rename(hidden)  # the module is unloaded: reopening fails until it returns
    assert meter.read(0.5, None)[-1].energy_uj is None  # inside the backoff: not even tried
    assert meter.read(1.5, None)[-1].energy_uj is None  # tried, still gone: backoff doubles to 2 s
    hidden.rename(package)
    assert meter.read(2.0, None)[-1].energy_uj is None  # still backing off
    assert meter.read(4.0, None)[-1].energy_uj == tree.energy("intel-rapl:0")
    meter.close()
