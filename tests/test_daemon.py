"""The real daemon, end to end: HTTP, fixed-cadence ticks, model fallback, exact RAPL joules, SIGTERM."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FIXTURES, Daemon, RaplTree, make_config

from exporter.daemon import Daemon as DaemonService
from exporter.engine import Engine
from exporter.snapshot import Snapshot
from exporter.workloads.procfs import CpuTimes, ProcStat, utilisation

MODEL_JOULES = ('wattlens_node_cpu_joules_total{die="",method="power_integration",node="e2e",socket="",source="model",'
                'zone="package"}')


def zone_key(name: str, zone: str, socket: str, source: str = "rapl") -> str:
    method = 'method="energy_counter",' if name == "node_cpu_joules_total" else ""
    return f'wattlens_{name}{{die="",{method}node="e2e",socket="{socket}",source="{source}",zone="{zone}"}}'


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _utilisation_since(before: CpuTimes) -> tuple[float, CpuTimes]:
    now = ProcStat(Path("/proc"))
    try:
        cur = now.read()
    finally:
        now.close()
    return utilisation(before, cur), cur


def test_without_sensors_serves_model_joules_that_grow_with_cpu_load() -> None:
    with Daemon("--sys", str(FIXTURES / "empty"), "--interval", "0.5", "--node-name", "e2e") as daemon:
        daemon.wait_ready()
        assert "meter rapl: unavailable: no RAPL zones" in "".join(daemon.log)
        cpus = multiprocessing.cpu_count()

        def window(seconds: float) -> tuple[float, float]:
            """(model watts, measured utilisation) over a window aligned to tick boundaries."""
            first = daemon.wait_ticks(1)
            _, cpu = _utilisation_since(CpuTimes(0, 0, 0, 1))
            time.sleep(seconds)
            last = daemon.wait_ticks(1)
            util, _ = _utilisation_since(cpu)
            ticks = last['wattlens_ticks_total{node="e2e"}'] - first['wattlens_ticks_total{node="e2e"}']
            return (last[MODEL_JOULES] - first[MODEL_JOULES]) / (ticks * 0.5), util

        quiet_watts, quiet_util = window(2.0)
        workers = [multiprocessing.Process(target=_burn, args=(4.0,)) for _ in range(cpus)]
        for worker in workers:
            worker.start()
        busy_watts, busy_util = window(2.0)
        for worker in workers:
            worker.join()
        metrics = daemon.metrics()
        assert metrics['wattlens_source_up{device="",node="e2e",source="rapl"}'] == 0
        assert metrics[MODEL_JOULES] > 0
        # The model is P = cpus × (0.74 + 2.76 × util): check it against utilisation measured independently.
        for watts, util in ((quiet_watts, quiet_util), (busy_watts, busy_util)):
            expected = cpus * (0.74 + 2.76 * util)
            assert abs(watts - expected) < 0.15 * cpus * 3.5, (watts, expected)
        assert busy_util > quiet_util + 0.2, "the burners did not raise CPU use; is the machine saturated?"
        assert busy_watts > quiet_watts
        code, _ = daemon.stop()
        assert code == 0


def test_fixture_joules_advance_exactly_across_a_wrap(tmp_path: Path) -> None:
    tree = RaplTree.copy("near-wrap", tmp_path)
    with Daemon("--sys", str(tree.root), "--interval", "0.5", "--node-name", "e2e") as daemon:
        daemon.wait_ready()
        before = daemon.wait_ticks(1)
        to_max = tree.max_range("intel-rapl:0") - tree.energy("intel-rapl:0")
        tree.set("intel-rapl:0", 400_000)  # wraps
        tree.advance("intel-rapl:0:0", 7_654_321)
        after = daemon.wait_ticks(2)
        package = zone_key("node_cpu_joules_total", "package", "0")
        dram = zone_key("node_cpu_joules_total", "dram", "0")
        assert round((after[package] - before[package]) * 1e6) == to_max + 400_000
        assert round((after[dram] - before[dram]) * 1e6) == 7_654_321
        assert after[zone_key("node_cpu_energy_wraps_total", "package", "0")] == 1
        assert after[zone_key("node_cpu_energy_resets_total", "package", "0")] == 0
        idle = after['wattlens_node_cpu_idle_joules_total{node="e2e",source="rapl",zone="package"}']
        active = after['wattlens_node_cpu_active_joules_total{node="e2e",source="rapl",zone="package"}']
        assert round((idle + active) * 1e6) == round(after[package] * 1e6)
        assert daemon.stop()[0] == 0


def test_endpoints_and_formats(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-laptop", tmp_path)
    with Daemon("--sys", str(tree.root), "--interval", "0.5", "--node-name", "e2e") as daemon:
        daemon.wait_ready()
        assert daemon.get("/healthz")[0] == 200
        status, headers, body = daemon.get("/metrics", {
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert headers["content-type"].startswith("application/openmetrics-text")
        text = gzip.decompress(body).decode()
        assert text.endswith("# EOF\n")
        assert "# UNIT" not in text or "joules" in text
        assert ('wattlens_node_cpu_joules_total{die="",method="energy_counter",node="e2e",socket="",source="rapl",'
                'zone="psys"}') in text
        status, headers, body = daemon.get("/metrics")
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"intel-rapl-mmio" not in body
        code, log = daemon.stop()
        assert code == 0
        assert "stopped" in log


class _FlakyEngine:
    """Wraps a real engine: tick number `fail_at` raises, and every tick takes `tick_seconds`."""

    def __init__(self, engine: Engine, fail_at: int = 0, tick_seconds: float = 0.0) -> None:
        self.engine = engine
        self.fail_at = fail_at
        self.tick_seconds = tick_seconds
        self.calls = 0

    def tick(self, now: float) -> Snapshot:
        self.calls += 1
        time.sleep(self.tick_seconds)
        if self.calls >= self.fail_at > 0:
            raise RuntimeError("bug in a tick")
        return self.engine.tick(now)

    def note_skipped(self, count: int) -> None:
        self.engine.note_skipped(count)

    def close(self) -> None:
        self.engine.close()


def _run_daemon_for(daemon: DaemonService, seconds: float) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await daemon.run(stop)

    asyncio.run(main())


def test_a_failing_tick_keeps_the_last_metrics_and_turns_health_red(caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(meters="model", interval="0.5")
    flaky = _FlakyEngine(Engine.start(config), fail_at=3)
    daemon = DaemonService(config, flaky)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        _run_daemon_for(daemon, 2.6)
    assert flaky.calls >= 5
    assert daemon.exposition is not None
    assert b'wattlens_ticks_total{node="test-node"} 2.0' in daemon.exposition.text  # the last good tick
    assert [r.message for r in caplog.records].count("tick failed; serving the previous metrics") == 1
    daemon._last_tick_end -= 3 * config.interval + 10  # as if the failures had gone on for a while
    assert not daemon.healthy()


def test_an_overrunning_tick_skips_slots_instead_of_queueing() -> None:
    config = make_config(meters="model", interval="0.5")
    slow = _FlakyEngine(Engine.start(config), tick_seconds=1.1)
    daemon = DaemonService(config, slow)  # type: ignore[arg-type]
    _run_daemon_for(daemon, 3.0)
    # Each 1.1 s tick spans two 0.5 s slots and one more: about 3 ticks in 3 s, not 6 queued ones.
    assert 2 <= slow.calls <= 3
    assert slow.engine.snapshot().ticks.skipped >= 2 * (slow.calls - 1)


def test_once_json(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    result = subprocess.run([sys.executable, "-m", "exporter", "once", "--json", "--sys", str(tree.root),
                             "--wait", "0.2", "--node-name", "j"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["meter"] == "rapl"
    assert {(z["zone"], z["socket"], z["device"]) for z in data["zones"]} == {
        ("package", "0", "intel-rapl:0"), ("dram", "0", "intel-rapl:0:0"),
        ("package", "1", "intel-rapl:1"), ("dram", "1", "intel-rapl:1:0")}
    assert all(z["up"] and z["joules"] == 0 for z in data["zones"])  # the fixture's counters did not move
