"""The hwmon fixture trees say what the kernel says, and their expected.yaml agrees with the trees.

No meter is involved: an independent reference scan, written from Documentation/hwmon/sysfs-interface.rst and
the way libsensors finds attributes (hwmonN/, or hwmonN/device/ for drivers registered without a name), must find
exactly the channels each expected.yaml lists, with the values, labels and intervals it states. Sources for every
tree are in fixtures/README.md; zone semantics in docs/research/hwmon.md.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hwmon_tree import FIXTURES, HWMON_FIXTURES, HwmonTree, expected

README = FIXTURES.parent / "README.md"
VALUE = re.compile(r"(power|energy)(\d+)_(input|average)")
INT = re.compile(r"-?\d+\n")


def attribute_dir(hwmon: Path) -> Path:
    """Where a chip's attributes live: hwmonN itself, or its device/ for a legacy (nameless) registration."""
    return hwmon if (hwmon / "name").exists() else hwmon / "device"


def scan(root: Path) -> dict[str, Path]:
    """Every power/energy value file of every chip, keyed hwmonN/<type><index> (power: average before input)."""
    found: dict[str, Path] = {}
    for hwmon in sorted((root / "class" / "hwmon").iterdir()):
        directory = attribute_dir(hwmon)
        for entry in sorted(os.listdir(directory), key=lambda f: (not f.endswith("_average"), f)):
            match = VALUE.fullmatch(entry)
            if match:
                found.setdefault(f"{hwmon.name}/{match.group(1)}{match.group(2)}", directory / entry)
    return found


def chip_name(hwmon: Path) -> str:
    return (attribute_dir(hwmon) / "name").read_text().strip()


def test_there_are_fixtures() -> None:
    assert len(HWMON_FIXTURES) >= 8


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_scan_finds_exactly_the_expected_channels(name: str) -> None:
    root = FIXTURES / name
    found = scan(root)
    wanted = {c["id"]: c for c in expected(name)["channels"]}
    assert set(found) == set(wanted)
    for cid, c in wanted.items():
        path = root / c["file"]
        assert path.exists(), c["file"]
        assert path.resolve() == found[cid].resolve(), f"{cid}: expected.yaml names {c['file']}"


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_values_parse_as_the_abi_says(name: str) -> None:
    root = FIXTURES / name
    for c in expected(name)["channels"]:
        text = (root / c["file"]).read_text()
        assert INT.fullmatch(text), f"{c['file']}: {text!r} is not one decimal integer and a newline"
        value = int(text)
        assert value == c["value"]
        assert c["unit"] == {"power": "uW", "energy": "uJ"}[c["kind"]]
        assert c["attribute"] in {"power": {"input", "average"}, "energy": {"input"}}[c["kind"]]
        if c["kind"] == "power":
            assert 0 < value < 5_000_000_000, f"{c['id']}: {value} µW is not a plausible reading"
            assert value % c.get("resolution_uw", 1) == 0, "ACPI and xgene report mW, scaled to µW"
        else:
            assert 0 < value < 2**63, "energy counters are unsigned µJ that fit a long"


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_labels_and_intervals(name: str) -> None:
    root = FIXTURES / name
    for c in expected(name)["channels"]:
        assert (root / c["label_file"]).read_text() == c["label"] + "\n"
        if c.get("interval_file"):
            text = (root / c["interval_file"]).read_text()
            assert INT.fullmatch(text)
            assert int(text) == c["interval_ms"], "powerN_average_interval is in milliseconds"
            low = int((root / c["interval_file"]).with_name("power1_average_interval_min").read_text())
            high = int((root / c["interval_file"]).with_name("power1_average_interval_max").read_text())
            assert low <= c["interval_ms"] <= high


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_power_meter_labels_follow_the_grace_pattern(name: str) -> None:
    for c in expected(name)["channels"]:
        if c["chip"] == "power_meter" and c["label"]:
            match = re.fullmatch(r"(Module|Grace|CPU|SysIO) Power Socket (\d+)", c["label"])
            assert match, c["label"]
            assert c["zone"] == match.group(1).lower()
            assert c["socket"] == int(match.group(2))


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_containment_and_additivity_are_consistent(name: str) -> None:
    data = expected(name)
    by_id = {c["id"]: c for c in data["channels"]}
    for c in data["channels"]:
        for inner in c["contains"]:
            assert c["id"] in by_id[inner]["contained_in"], f"{inner} must name {c['id']} as contained_in"
        for outer in c["contained_in"]:
            assert c["id"] in by_id[outer]["contains"]
        for other in c["add_with"]:
            assert c["id"] in by_id[other]["add_with"], "add_with is symmetric"
            assert other not in c["contains"] and other not in c["contained_in"], "nested zones are never added"
            assert by_id[other]["kind"] == c["kind"]
        # A zone holds at least its direct children (those not inside another contained zone), which are disjoint.
        direct = [i for i in c["contains"] if not set(by_id[i]["contained_in"]) & set(c["contains"])]
        assert c["value"] >= sum(by_id[i]["value"] for i in direct), f"{c['id']} is smaller than what it contains"


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_node_total_and_forbidden_sums(name: str) -> None:
    data = expected(name)
    by_id = {c["id"]: c for c in data["channels"]}
    total = data["node_total"]
    if total is None:
        assert not by_id
        return
    terms = [by_id[t] for t in total["channels"]]
    key = "value_uj" if any(t["kind"] == "energy" for t in terms) else "value_uw"
    if terms:
        assert total[key] == sum(t["value"] for t in terms)
        for a in terms:
            for b in terms:
                assert a is b or b["id"] in a["add_with"], "the node total only adds additive channels"
    for forbidden in data["forbidden_sums"]:
        assert forbidden["why"]
        listed = [t for t in forbidden["terms"] if t in by_id]
        for a in listed:
            for b in listed:
                assert a == b or b not in by_id[a]["add_with"]


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_every_chip_is_a_meter_or_a_listed_distractor(name: str) -> None:
    root = FIXTURES / name
    data = expected(name)
    meters = {c["id"].split("/")[0] for c in data["channels"]}
    distractors = {d["hwmon"]: d["name"] for d in data["distractors"]}
    for hwmon in (root / "class" / "hwmon").iterdir():
        assert hwmon.is_symlink(), "class/hwmon entries are links into devices/"
        target = hwmon.resolve()
        assert target.is_relative_to(root / "devices"), f"{hwmon.name} points outside the tree"
        # device -> the parent device (<parent>/hwmon/hwmonN, or <thermal zone>/hwmonN)
        assert (hwmon / "device").resolve() in (target.parent.parent, target.parent)
        assert hwmon.name in meters or distractors.get(hwmon.name) == chip_name(hwmon)
        assert not (hwmon.name in meters and hwmon.name in distractors)


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_kernel_modes_name_real_files(name: str) -> None:
    root = FIXTURES / name
    data = expected(name)
    modes = data["kernel_modes"] or {}
    for rel, mode in modes.items():
        assert (root / rel).is_file() and not (root / rel).is_symlink(), rel
        assert mode in {"0400", "0440", "0644"}, "everything else the kernel makes 0444"
    for c in data["channels"]:
        real = (root / c["file"]).resolve().relative_to(root.resolve()).as_posix()
        assert modes.get(real, "0444") == c["mode"]


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_tree_walk_terminates_without_following_links(name: str) -> None:
    # Grace firmware makes measures/ACPI000D:NN link to the meter itself: walkers must not follow links.
    count = sum(len(files) for _, _, files in os.walk(FIXTURES / name, followlinks=False))
    assert 0 < count < 1000


@pytest.mark.parametrize("name", HWMON_FIXTURES)
def test_readme_documents_the_fixture(name: str) -> None:
    assert f"### `{name}/`" in README.read_text()


def test_copy_rewrites_in_place_and_applies_kernel_modes(tmp_path: Path) -> None:
    tree = HwmonTree.copy("hwmon-amd-energy-epyc", tmp_path)
    assert not (tree.root / "expected.yaml").exists()
    cid = "hwmon2/energy33"
    inode = tree.path(cid).stat().st_ino
    before = tree.read(cid)
    tree.advance(cid, 1_500_000)
    assert tree.read(cid) == before + 1_500_000
    assert tree.path(cid).stat().st_ino == inode
    tree.set(cid, 12)  # shorter than before: padded, still parses
    assert int(tree.path(cid).read_text()) == 12
    with pytest.raises(AssertionError):
        HwmonTree.copy("hwmon-grace", tmp_path / "g").advance("hwmon1/power1", 5)
    tree.apply_kernel_modes()
    assert stat.S_IMODE(tree.path(cid).stat().st_mode) == 0o440
    assert stat.S_IMODE((tree.root / "class/hwmon/hwmon2/name").stat().st_mode) == 0o444
