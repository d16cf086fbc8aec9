"""The hwmon meter against the fixture trees of real machines (fixtures/sysfs/hwmon-*, ground truth in each
expected.yaml): which zones it finds, exact joules across ticks through the real engine, and what it refuses."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FIXTURES, REPO, ProcTree, make_config
from hwmon_tree import HWMON_FIXTURES, HwmonTree, channels

from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.meters.base import MeterUnavailable
from exporter.meters.hwmon import ACPI_NO_READING_UW, HwmonMeter, discover
from exporter.snapshot import Snapshot, SourceUp

WITH_CHANNELS = [n for n in HWMON_FIXTURES if channels(n)]
DT = 5.0


def zone_of_channel(name: str) -> dict[str, tuple[str, str]]:
    """expected.yaml's zone and socket of every channel, as the meter labels them."""
    return {c.id: (c.zone, "" if c.socket is None else str(c.socket)) for c in channels(name)}


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_every_expected_channel_lands_in_its_zone(name: str) -> None:
    wanted = zone_of_channel(name)
    if not wanted:
        with pytest.raises(MeterUnavailable) as caught:
            HwmonMeter.open(FIXTURES / name)
        assert "no hwmon power or energy sensor" in caught.value.reason
        return
    zones, notes, denied = discover(FIXTURES / name)
    assert not denied
    found = {c.id: (z.zone.zone, z.zone.socket) for z in zones for c in z.channels}
    assert found == wanted, notes
    for zone in zones:
        assert zone.zone.source == "hwmon"
        kinds = {c.kind for c in zone.channels}
        assert zone.method == ("energy_counter" if kinds == {"energy"} else "power_integration")
    # One zone per (zone, socket): the exported series never collide.
    assert len({(z.zone.zone, z.zone.socket) for z in zones}) == len(zones)


def test_amd_energy_cores_are_summed_per_socket() -> None:
    zones, _, _ = discover(FIXTURES / "hwmon-amd-energy-epyc")
    cores = {z.zone.socket: [c.label for c in z.channels] for z in zones if z.zone.zone == "core"}
    assert cores == {"0": [f"Ecore{i:03d}" for i in range(16)], "1": [f"Ecore{i:03d}" for i in range(16, 32)]}


def engine_on(root: Path, proc: ProcTree, meters: str = "hwmon", **overrides: object) -> Engine:
    config = make_config(sys_path=root, proc_path=proc.root, meters=meters, workloads=False, gpus=False, **overrides)
    return Engine.start(config)


def joules(snap: Snapshot) -> dict[str, int]:
    return {z.zone.device: z.joules_uj for z in snap.zones}


@pytest.mark.parametrize("name", WITH_CHANNELS)
def test_exact_joules_across_ticks(name: str, tmp_path: Path) -> None:
    """Counters: exactly the µJ written. Power: exactly the integral of the written power (an `average` reading
    held over the tick it ends; an instantaneous `input` by the trapezoid rule)."""
    tree = HwmonTree.copy(name, tmp_path)
    proc = ProcTree(tmp_path / "proc")
    engine = engine_on(tree.root, proc)
    zones, _, _ = discover(tree.root)
    device_of = {c.id: z.zone.device for z in zones for c in z.channels}
    attribute = {c.id: c.attribute for z in zones for c in z.channels}
    rng = random.Random(name)
    want: dict[str, int] = dict.fromkeys(device_of.values(), 0)
    power = {cid: tree.read(cid) for cid, c in tree.channels.items() if c.kind == "power"}
    engine.tick(0.0)
    for tick in range(1, 6):
        for cid, channel in tree.channels.items():
            if channel.kind == "energy":
                delta = rng.randrange(1, 150 * 1_000_000 * int(DT))  # up to 150 W over the tick
                tree.advance(cid, delta)
                want[device_of[cid]] += delta
            else:
                new = rng.randrange(1, 700_000) * 1000  # mW resolution, as ACPI and xgene report
                held = new if attribute[cid] == "average" else (power[cid] + new) // 2
                want[device_of[cid]] += int(held * DT)
                tree.set(cid, new)
                power[cid] = new
        proc.advance(10, 90)
        snap = engine.tick(tick * DT)
        assert joules(snap) == want, f"tick {tick}"
        assert all(z.up for z in snap.zones)
    engine.close()


def test_power_average_interval_readings_are_held_and_input_readings_averaged(tmp_path: Path) -> None:
    # The same power step, once as an ACPI average (held over its tick) and once as an xgene input (trapezoid).
    acpi = HwmonTree.copy("hwmon-acpi-power-meter", tmp_path)
    altra = HwmonTree.copy("hwmon-ampere-altra", tmp_path)
    results = {}
    for tree, cid in ((acpi, "hwmon1/power1"), (altra, "hwmon1/power1")):
        tree.set(cid, 100_000_000)
        meter = HwmonMeter.open(tree.root)
        [first] = [s for s in meter.read(0.0, None) if s.zone.device == cid]
        tree.set(cid, 300_000_000)
        [second] = [s for s in meter.read(2.0, None) if s.zone.device == cid]
        results[tree.name] = (first.energy_uj, second.energy_uj, second.method)
        meter.close()
    assert results["hwmon-acpi-power-meter"] == (0, 600_000_000, "power_integration")  # 300 W x 2 s
    assert results["hwmon-ampere-altra"] == (0, 400_000_000, "power_integration")  # (100 + 300) / 2 W x 2 s


def test_acpi_no_reading_is_a_failed_read_not_megawatts(tmp_path: Path) -> None:
    tree = HwmonTree.copy("hwmon-acpi-power-meter", tmp_path)
    cid = "hwmon1/power1"
    proc = ProcTree(tmp_path / "proc")
    engine = engine_on(tree.root, proc)
    engine.tick(0.0)
    tree.set(cid, 200_000_000)
    engine.tick(5.0)
    tree.set(cid, ACPI_NO_READING_UW)  # firmware 0xFFFFFFFF mW on kernels without the UNKNOWN_POWER check
    snap = engine.tick(10.0)
    platform = next(z for z in snap.zones if z.zone.zone == "platform")
    assert not platform.up and platform.joules_uj == 1_000_000_000
    assert SourceUp("hwmon", "hwmon1/power1", False) in snap.sources
    tree.set(cid, 250_000_000)
    snap = engine.tick(10.5)  # before the retry (1 s backoff): still down, nothing added
    assert not next(z for z in snap.zones if z.zone.zone == "platform").up
    snap = engine.tick(11.0)  # read again: a new baseline, the gap's energy is not guessed
    platform = next(z for z in snap.zones if z.zone.zone == "platform")
    assert platform.up and platform.joules_uj == 1_000_000_000
    snap = engine.tick(15.0)
    platform = next(z for z in snap.zones if z.zone.zone == "platform")
    assert platform.joules_uj == 1_000_000_000 + 250 * 4 * 1_000_000
    engine.close()


def test_unparsable_and_negative_readings_are_failures(tmp_path: Path) -> None:
    tree = HwmonTree.copy("hwmon-ampere-altra", tmp_path)
    meter = HwmonMeter.open(tree.root)
    meter.read(0.0, None)
    tree.path("hwmon1/power1").write_text("garbage\n")
    tree.set("hwmon1/power2", -5)
    samples = {s.zone.zone: s for s in meter.read(5.0, None)}
    assert samples["cpu"].energy_uj is None and samples["cpu"].error == "unparsable reading"
    assert samples["io"].energy_uj is None and "negative" in samples["io"].error
    meter.close()


def test_a_core_channel_that_restarts_adds_nothing_for_that_core(tmp_path: Path) -> None:
    tree = HwmonTree.copy("hwmon-amd-energy-epyc", tmp_path)
    meter = HwmonMeter.open(tree.root)
    core0 = "hwmon2/core-socket0"
    assert next(s for s in meter.read(0.0, None) if s.zone.device == core0).energy_uj == 0
    tree.advance("hwmon2/energy1", 7_000_000)
    tree.advance("hwmon2/energy2", 5_000_000)
    assert next(s for s in meter.read(5.0, None) if s.zone.device == core0).energy_uj == 12_000_000
    tree.set("hwmon2/energy1", 1_000)  # out-of-tree amd_energy wraps at 2^32 x 10^6 / 2^ESU: a decrease
    tree.advance("hwmon2/energy2", 3_000_000)
    assert next(s for s in meter.read(10.0, None) if s.zone.device == core0).energy_uj == 15_000_000
    tree.advance("hwmon2/energy1", 2_000_000)
    assert next(s for s in meter.read(15.0, None) if s.zone.device == core0).energy_uj == 17_000_000
    meter.close()


# --- synthetic trees for what no fixture has --------------------------------------------------------------


def chip(root: Path, n: int, name: str, files: dict[str, str], parent: str = "", legacy: bool = False) -> Path:
    """A hwmon chip as the kernel lays it out: class/hwmon/hwmonN -> devices/<parent>/hwmon/hwmonN."""
    parent = parent or f"platform/{name}.{n}"
    device = root / "devices" / parent
    hwmon = device / "hwmon" / f"hwmon{n}"
    hwmon.mkdir(parents=True)
    (hwmon / "device").symlink_to(os.path.relpath(device, hwmon))
    attrs = device if legacy else hwmon
    (attrs / "name").write_text(name + "\n")
    for file, value in files.items():
        (attrs / file).write_text(value + "\n")
    links = root / "class" / "hwmon"
    links.mkdir(parents=True, exist_ok=True)
    (links / f"hwmon{n}").symlink_to(os.path.relpath(hwmon, links))
    return attrs


def test_accelerator_and_unknown_chips_are_reported_not_summed(tmp_path: Path) -> None:
    chip(tmp_path, 0, "amdgpu", {"power1_average": "45000000", "power1_label": "PPT"}, parent="pci0000:00/0000:03:00.0")
    chip(tmp_path, 1, "xe", {"energy1_input": "123456789", "energy1_label": "pkg"}, parent="pci0000:00/0000:04:00.0")
    chip(tmp_path, 2, "ina3221", {"power1_input": "5000000", "power1_label": "VDD_IN"})
    chip(tmp_path, 3, "power_meter", {"power1_average": "90000000", "power1_oem_info": "GPU Power Socket 0"},
         parent="LNXSYSTM:00/ACPI000D:00", legacy=True)
    chip(tmp_path, 4, "power_meter", {"power1_average": "300000000", "power1_oem_info": ""},
         parent="LNXSYSTM:00/ACPI000D:01", legacy=True)
    zones, notes, _ = discover(tmp_path)
    assert [(z.zone.zone, z.zone.device) for z in zones] == [("platform", "hwmon4/power1")]
    text = "\n".join(notes)
    assert "hwmon0 amdgpu: an accelerator's sensor" in text and "hwmon1 xe: an accelerator's sensor" in text
    assert "hwmon2/power1 (ina3221 'VDD_IN'): found, not used" in text
    assert "hwmon3/power1 (power_meter 'GPU Power Socket 0'): found, not used" in text


def test_a_second_platform_meter_is_named_and_not_added(tmp_path: Path) -> None:
    for n in (1, 2):
        chip(tmp_path, n, "power_meter", {"power1_average": f"{n}00000000", "power1_oem_info": ""},
             parent=f"LNXSYSTM:00/ACPI000D:0{n}", legacy=True)
    zones, notes, _ = discover(tmp_path)
    assert [z.zone.device for z in zones] == ["hwmon1/power1"]
    assert any("hwmon2/power1 also measure platform; reading hwmon1/power1 only" in n for n in notes)


def test_a_zone_with_a_counter_is_read_from_the_counter(tmp_path: Path) -> None:
    chip(tmp_path, 1, "apm_xgene", {"power1_input": "1000000", "power1_label": "CPU power",
                                    "energy1_input": "5", "energy1_label": "CPU power"}, parent="platform/APMC0D29:01")
    zones, notes, _ = discover(tmp_path)
    assert [(z.zone.zone, z.zone.socket, z.zone.device, z.method) for z in zones] == [
        ("cpu", "1", "hwmon1/energy1", "energy_counter")]
    assert any("hwmon1/power1: power of a zone that has an energy counter" in n for n in notes)


@pytest.mark.parametrize("topology", [True, False])
def test_nps2_esocket_mirrors_are_read_once(tmp_path: Path, topology: bool) -> None:
    # NPS2 on 2 sockets: 4 NUMA nodes, each Esocket channel reading its socket's package MSR.
    values = [5_000_000_000, 5_000_000_300, 9_000_000_000, 9_000_000_100]
    files = {}
    for i, value in enumerate(values):
        files[f"energy{i + 1}_input"] = str(value)
        files[f"energy{i + 1}_label"] = f"Esocket{i}"
    chip(tmp_path, 2, "amd_energy", files, parent="platform/amd_energy.0")
    if topology:
        for node, cpus in enumerate(("0-7", "8-15", "16-23", "24-31")):
            (tmp_path / f"devices/system/node/node{node}").mkdir(parents=True)
            (tmp_path / f"devices/system/node/node{node}/cpulist").write_text(cpus + "\n")
        for cpu in range(32):
            (tmp_path / f"devices/system/cpu/cpu{cpu}/topology").mkdir(parents=True)
            (tmp_path / f"devices/system/cpu/cpu{cpu}/topology/physical_package_id").write_text(f"{cpu // 16}\n")
    zones, notes, _ = discover(tmp_path)
    assert [(z.zone.zone, z.zone.socket, z.zone.device) for z in zones] == [
        ("package", "0", "hwmon2/energy1"), ("package", "1", "hwmon2/energy3")]
    assert sum("mirrors" in n for n in notes) == 2


def test_no_hwmon_class_at_all(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable) as caught:
        HwmonMeter.open(tmp_path)
    assert "no hwmon power or energy sensor" in caught.value.reason and caught.value.fix


# --- root-only sensors ---------------------------------------------------------------------------------------


@pytest.fixture
def kernel_mode_trees() -> Iterator[Path]:
    """Copies of amd_energy (0440 counters and labels) and an Ampere LTS kernel's Altra (0400 power files),
    root-owned, in a directory an unprivileged user can traverse."""
    base = Path(tempfile.mkdtemp(prefix="wattlens-hwmon-perm-"))
    base.chmod(0o755)
    amd = HwmonTree.copy("hwmon-amd-energy-epyc", base)
    amd.apply_kernel_modes()
    altra = HwmonTree.copy("hwmon-ampere-altra", base)
    altra.apply_kernel_modes()
    for cid in ("hwmon1/power1", "hwmon1/power2"):
        altra.path(cid).chmod(0o400)
    yield base
    shutil.rmtree(base)


def test_root_only_sensors_say_why_and_how(kernel_mode_trees: Path) -> None:
    from test_permissions import _unprivileged_user

    if os.geteuid() != 0:
        pytest.skip("needs root to hand the tree to an unprivileged user (CI runs as root)")
    user = _unprivileged_user()
    script = (
        "import sys\nfrom pathlib import Path\nfrom exporter.meters.hwmon import HwmonMeter\n"
        "from exporter.meters.base import MeterUnavailable\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n        HwmonMeter.open(Path(name))\n        print('opened', name)\n"
        "    except MeterUnavailable as exc:\n        print('unavailable', exc.reason, '|', exc.fix)\n"
    )
    trees = [str(kernel_mode_trees / n) for n in ("hwmon-amd-energy-epyc", "hwmon-ampere-altra")]
    result = subprocess.run([sys.executable, "-c", script, *trees], capture_output=True, text=True, user=user,
                            group=pwd.getpwnam(user).pw_gid, extra_groups=[], cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) == 2 and all(line.startswith("unavailable") for line in lines), lines
    assert all("readable by root only" in line and "UID 0" in line for line in lines)
    assert "hwmon2/energy" in lines[0] and "hwmon1/power1" in lines[1]


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_default_order_on_every_fixture_labels_each_zone_with_its_meter(name: str, tmp_path: Path) -> None:
    """RAPL missing → hwmon measures what it has; hwmon missing (or only a platform) → the model measures the
    CPU. Every series says which meter it came from."""
    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(sys_path=FIXTURES / name, proc_path=proc.root, workloads=False, gpus=False))
    engine.tick(0.0)
    proc.advance(20, 80)
    snap = engine.tick(5.0)
    engine.close()
    zones = {c.zone for c in channels(name)}
    cpu_zones = zones - {"platform", "module"}
    assert snap.meter == ("hwmon" if cpu_zones else "model")
    assert {z.zone.zone: z.zone.source for z in snap.zones} == {
        **dict.fromkeys(zones, "hwmon"), **({} if cpu_zones else {"package": "model"})}
    assert {d.zone: d.source for d in snap.domains} == (
        dict.fromkeys(cpu_zones, "hwmon") if cpu_zones else {"package": "model"})
    text = Renderer().render(snap).text.decode()
    for z in snap.zones:
        assert f'source="{z.zone.source}"' in text and z.up
    unavailable = {s.source for s in snap.sources if s.device == "" and not s.up}
    assert unavailable == ({"rapl"} if zones else {"rapl", "hwmon"})  # hwmon found a platform or more: up
