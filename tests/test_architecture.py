"""The shape the code keeps (docs/architecture.md): the engine only orders a tick, nothing imports it for data
types, and a meter is one file plus one registration line."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, ProcTree, make_config

from exporter.engine import Engine
from exporter.meters.registry import NODE_METERS

ENGINE_LINES = 250


def test_the_engine_only_orders_a_tick() -> None:
    lines = (REPO / "exporter" / "engine.py").read_text().splitlines()
    assert len(lines) <= ENGINE_LINES, f"engine.py has {len(lines)} lines: move the work to its own module"


def test_no_module_imports_the_engine_for_data_types() -> None:
    """Records live in exporter/snapshot.py and meter types in exporter/meters/base.py: only `Engine` itself is
    ever imported from exporter.engine."""
    for directory in ("exporter", "tests", "benchmarks"):
        for path in (REPO / directory).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "exporter.engine":
                    names = {alias.name for alias in node.names}
                    assert names == {"Engine"}, f"{path.relative_to(REPO)} imports {names} from exporter.engine"


def test_adding_a_meter_is_one_file_and_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one file: a meter that measures a socket's package at a steady 2 W.
    (tmp_path / "steady_meter.py").write_text(textwrap.dedent('''
        from exporter.meters.base import CounterSample, ZoneId

        ZONE = ZoneId("package", "0", "", "steady", "steady0")


        class SteadyMeter:
            name = "steady"

            def __init__(self) -> None:
                self.microjoules = 0

            def zones(self) -> list[ZoneId]:
                return [ZONE]

            def read(self, now: float, cpu: object) -> list[CounterSample]:
                self.microjoules = int(now * 2_000_000)
                return [CounterSample(ZONE, self.microjoules, 0)]

            def idle_watts(self) -> dict[str, float]:
                return {}

            def close(self) -> None:
                pass


        def open_meter(config: object, cpus: int) -> SteadyMeter:
            return SteadyMeter()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    # The one line.
    monkeypatch.setitem(NODE_METERS, "steady", "steady_meter")

    proc = ProcTree(tmp_path / "proc")
    engine = Engine.start(make_config(meters="rapl,steady,model", sys_path=tmp_path / "no-sys", proc_path=proc.root,
                                      workloads="false", gpus="false"))
    engine.tick(10.0)
    proc.advance(10, 90)
    snap = engine.tick(15.0)
    engine.close()
    assert snap.meter == "steady"
    [zone] = snap.zones
    assert (zone.zone.source, zone.joules_uj, zone.watts) == ("steady", 10_000_000, 2.0)
    assert [(d.zone, d.source, d.idle_uj + d.active_uj) for d in snap.domains] == [("package", "steady", 10_000_000)]
    assert snap.node.total_uj == 10_000_000
    reports = {r.name: r for r in engine.reports}
    assert reports["steady"].roles == ("cpu",) and not reports["rapl"].available
