"""Zone containment: which domains contain which, what adds up, and what the node's total is (exporter/zones.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FIXTURES
from hwmon_tree import expected
from hypothesis import given
from hypothesis import strategies as st

from exporter.meters.hwmon import discover
from exporter.meters.rapl import discover as discover_rapl
from exporter.zones import ZONES, Place, contains, parent_of, rest_of_node, role_of, top_level

ZONE_NAMES = sorted(z for z in ZONES if z != "gpu")
places = st.builds(
    Place,
    zone=st.sampled_from([*ZONE_NAMES, "gpu"]),
    socket=st.sampled_from(["", "0", "1"]),
    within=st.sampled_from(["", "", "module"]),
).filter(lambda p: p.within == "" or p.zone == "gpu")


@given(st.lists(places, max_size=12))
def test_containment_is_a_strict_partial_order(measured: list[Place]) -> None:
    for a in measured:
        assert not contains(a, a)
        for b in measured:
            if contains(a, b):
                assert not contains(b, a), (a, b)
                for c in measured:
                    if contains(b, c):
                        assert contains(a, c), (a, b, c)


@given(st.lists(places, max_size=12))
def test_top_level_places_add_up_and_cover_everything(measured: list[Place]) -> None:
    top = top_level(measured)
    for a in top:
        assert role_of(a.zone) != "platform"
        for b in top:
            assert not contains(a, b), "top-level places never overlap"
    for p in measured:
        if role_of(p.zone) != "platform" and p not in top:
            assert any(contains(t, p) for t in top), f"{p} is neither top-level nor inside one"
        parent = parent_of(p, measured)
        if parent is not None:
            assert contains(parent, p)
            assert not any(contains(parent, o) and contains(o, p) for o in measured), "parent is the innermost"


@given(st.integers(0, 10**12), st.lists(st.integers(0, 10**11), max_size=8))
def test_rest_of_node_is_never_negative(platform: int, parts: list[int]) -> None:
    rest = rest_of_node(platform, parts)
    assert rest >= 0
    assert rest == platform - sum(parts) or (rest == 0 and sum(parts) > platform)


def hwmon_places(name: str) -> dict[Place, str]:
    zones, _, _ = discover(FIXTURES / name)
    return {Place(z.zone.zone, z.zone.socket): z.channels[0].id for z in zones if len(z.channels) == 1}


@pytest.mark.parametrize(("name", "top"), [
    ("hwmon-grace", {("grace", "0"), ("grace", "1")}),
    ("hwmon-ampere-altra", {("cpu", "0"), ("io", "0")}),
    ("hwmon-amd-energy-epyc", {("package", "0"), ("package", "1")}),
    ("hwmon-gh200", {("module", "0")}),
    ("hwmon-gh200-fw2024", {("grace", "0")}),
])
def test_hwmon_fixtures_top_level_is_expected_node_total(name: str, top: set[tuple[str, str]]) -> None:
    zones, _, _ = discover(FIXTURES / name)
    measured = [Place(z.zone.zone, z.zone.socket) for z in zones]
    assert {(p.zone, p.socket) for p in top_level(measured)} == top
    total = expected(name)["node_total"]
    by_channel = {c["id"]: c for c in expected(name)["channels"]}
    if total["channels"]:
        ids = {by_channel[c]["id"] for c in total["channels"]}
        assert {(by_channel[i]["zone"], str(by_channel[i]["socket"])) for i in ids} == top


def test_gh200_module_total_is_counted_once() -> None:
    """The GH200 trap: NVML's energy counter is the module (CPU + GPU + memory). With the hwmon Module channel,
    the dashboard's node total is that channel alone; without it (firmware from Oct 2024), the GPU counter."""
    gpu = Place("gpu", "0", within="module")
    for name, shown in (("hwmon-gh200", ["hwmon1/power1"]), ("hwmon-gh200-fw2024", ["nvml gpu0 energy"])):
        channel_of = hwmon_places(name)
        top = top_level([*channel_of, gpu])
        terms = [channel_of.get(p, "nvml gpu0 energy") for p in top]
        assert terms == shown == expected(name)["dashboard_sum"]["terms"]
        for forbidden in expected(name)["forbidden_sums"]:
            assert not set(forbidden["terms"]) <= set(terms), forbidden["why"]
        grace = next(p for p in channel_of if p.zone == "grace")
        # The GPU's counter is the module: inside the hwmon Module channel (the one preferred), around Grace.
        assert parent_of(grace, [*channel_of, gpu]) == gpu
        if name == "hwmon-gh200":
            assert parent_of(gpu, [*channel_of, gpu]) == Place("module", "0")
    value = expected("hwmon-gh200")["dashboard_sum"]["value_uw"]
    assert value == next(c["value"] for c in expected("hwmon-gh200")["channels"] if c["zone"] == "module")


def test_a_board_scope_gpu_is_beside_the_cpu_not_around_it() -> None:
    gpu, package = Place("gpu", "0"), Place("package", "0")
    assert top_level([gpu, package]) == [gpu, package]


@pytest.mark.parametrize(("tree", "top"), [
    ("intel-laptop", {("psys", "")}),
    ("intel-2socket-server", {("package", "0"), ("dram", "0"), ("package", "1"), ("dram", "1")}),
])
def test_rapl_psys_contains_package_and_dram(tree: str, top: set[tuple[str, str]]) -> None:
    zones, _ = discover_rapl(FIXTURES / tree)
    measured = [Place(z.zone.zone, z.zone.socket) for z in zones]
    assert {(p.zone, p.socket) for p in top_level(measured)} == top


def test_platform_contains_everything_and_is_never_top_level() -> None:
    platform = Place("platform")
    for zone in ZONE_NAMES:
        if zone != "platform":
            assert contains(platform, Place(zone, "0")) and contains(platform, Place(zone))
    assert top_level([platform]) == []


def test_docs_describe_every_zone() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "domains.md").read_text()
    for zone in ZONES:
        assert f"`{zone}`" in text, f"docs/domains.md does not describe {zone}"


def test_docs_zone_table_is_generated_from_the_code() -> None:
    from exporter.zones import table_markdown

    text = (Path(__file__).resolve().parent.parent / "docs" / "domains.md").read_text()
    assert table_markdown() in text, "docs/domains.md's zone table is stale: paste exporter.zones.table_markdown()"


def test_docs_hwmon_table_names_every_rule() -> None:
    from exporter.meters.hwmon import ACCELERATOR_CHIPS, ZONE_TABLE

    text = (Path(__file__).resolve().parent.parent / "docs" / "domains.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `power_meter`") or line.startswith(
        ("| `amd_energy`", "| `apm_xgene`"))]
    assert len(rows) == len(ZONE_TABLE)
    for rule, row in zip(ZONE_TABLE, rows, strict=True):
        assert row.startswith(f"| `{rule.chip}` |") and f"| `{rule.zone}` |" in row, (rule, row)
    for chip in ACCELERATOR_CHIPS:
        assert f"`{chip}`" in text
