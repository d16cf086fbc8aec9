"""The intensity API wired into the tick (exporter/carbon/source.py) against a fake API on loopback: the values are
followed, an outage keeps the last value with its age exported and the source down, retries back off, and no tick
waits for the API (in the engine, and in the real daemon)."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import pytest
from fake_intensity import FakeIntensityServer, Reply
from helpers import CgroupFixture, Daemon, ProcTree, RaplTree, make_config
from test_carbon_intensity import wait_until
from test_once_json import compare

from exporter.config import ConfigError, load_config
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.snapshot import Snapshot
from exporter.snapshot_json import snapshot_document

EM_PATH = "/v3/carbon-intensity/latest"
POD = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_0000_4000_8000_000000000001.slice"


def em(grams: float) -> Reply:
    return Reply.json({"zone": "DE", "carbonIntensity": grams, "datetime": "2026-11-27T08:00:00.000Z",
                       "emissionFactorType": "lifecycle", "isEstimated": False})


class Node:
    """A RAPL node with one pod whose energy the engine splits, ticked by hand."""

    def __init__(self, tmp_path: Path, **carbon: object) -> None:
        self.rapl = RaplTree.copy("intel-2socket-server", tmp_path)
        self.proc = ProcTree(tmp_path / "proc")
        self.cgroups = CgroupFixture(tmp_path / "cgroup")
        self.cgroups.add(POD)
        config = make_config(sys_path=self.rapl.root, proc_path=self.proc.root, cgroup_root=self.cgroups.root,
                             meters="rapl", kubelet_log_path=tmp_path / "nolog", gpus="false",
                             **{f"carbon.{k}": v for k, v in carbon.items()})
        self.engine = Engine.start(config)
        self.now = 0.0

    def tick(self) -> tuple[Snapshot, float]:
        """One tick 5 s after the last, the pod busy half of it; returns the snapshot and the tick's wall time."""
        if self.now:
            self.cgroups.burn(POD, 2_500_000)
            self.proc.advance_usec(5_000_000, 5_000_000)
            for zone in ("intel-rapl:0", "intel-rapl:1"):
                self.rapl.advance(zone, 200_000_000)
        began = time.perf_counter()
        snapshot = self.engine.tick(self.now)
        took = time.perf_counter() - began
        self.now += 5.0
        return snapshot, took

    def intensity(self) -> float | None:
        reading = self.engine.carbon.read()
        return None if reading is None else reading.grams_per_kwh


def carbon_up(snapshot: Snapshot) -> bool:
    return next(s.up for s in snapshot.sources if s.source == "carbon")


def operational_ng(snapshot: Snapshot) -> int:
    return sum(d.idle_ng + d.unattributed_ng + d.workloads_ng for d in snapshot.carbon.operational)


def test_values_followed_outage_keeps_the_last_value_with_its_age_and_backs_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with FakeIntensityServer(lifetime_s=60) as server:
        server.route(EM_PATH, em(300))
        node = Node(tmp_path, provider="electricity_maps", url=server.url(""), region="DE", token_file=token,
                    poll_interval="1", max_backoff="2", timeout="1")
        try:
            node.tick()
            wait_until(lambda: node.intensity() == 300)
            first, _ = node.tick()
            assert first.carbon_intensity == 300 and carbon_up(first)
            assert (first.carbon.source, first.carbon.kind) == ("electricitymaps:DE", "average")
            assert first.carbon.age_s is not None and first.carbon.age_s < 5
            request = server.requests(EM_PATH)[0]
            assert request.headers["auth-token"] == "s3cret" and "zone=DE" in request.query
            # 400 J of package energy at 300 g/kWh: 33.33 mg, split exactly (the property test checks the split).
            assert operational_ng(first) == 400 * 300 * 10**9 // 3_600_000
            pod = next(w for w in first.workloads if w.kind == "pod")
            assert 0 < pod.operational_ng < operational_ng(first) and pod.embodied_ng > 0

            server.route(EM_PATH, em(500))  # the value changes: followed at the next poll
            wait_until(lambda: node.intensity() == 500)
            second, _ = node.tick()
            assert second.carbon_intensity == 500
            assert operational_ng(second) - operational_ng(first) in (400 * 500 * 10**9 // 3_600_000 + d
                                                                      for d in (0, 1))

            with caplog.at_level(logging.INFO, logger="exporter.carbon.intensity"):
                server.route(EM_PATH, Reply(503, b"down for maintenance"))  # an outage
                outage_began = time.monotonic()
                wait_until(lambda: not node.engine.carbon.read().up)  # type: ignore[union-attr]
                during, _ = node.tick()
                assert during.carbon_intensity == 500 and not carbon_up(during)  # the last value stays in force
                assert operational_ng(during) - operational_ng(second) >= 400 * 500 * 10**9 // 3_600_000
                time.sleep(3.5)
                later, _ = node.tick()
                assert later.carbon.age_s is not None and during.carbon.age_s is not None
                assert later.carbon.age_s >= during.carbon.age_s + 3.0  # its age grows through the outage
                errors = next(e.count for e in later.errors if e.source == "carbon")
                # Retries back off: at most 0.25 s, 0.5 s, 1 s, 2 s, 2 s... apart, jittered to [½, 1] of that,
                # never the poll interval (1 s) or faster than the first step.
                times = [r.at for r in server.requests(EM_PATH) if r.at >= outage_began]
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert len(times) <= 7 and errors >= len(times) - 1, gaps
                bounds = [min(2.0, 0.25 * 2**k) for k in range(len(gaps))]
                assert all(gap >= 0.5 * bound - 0.02 for gap, bound in zip(gaps, bounds, strict=False)), gaps
                assert gaps[-1] > gaps[0], gaps

                server.route(EM_PATH, em(420))
                wait_until(lambda: node.intensity() == 420, timeout=5)
                back, _ = node.tick()
                assert back.carbon_intensity == 420 and carbon_up(back)
            lines = [r.getMessage() for r in caplog.records]
            assert sum("unusable" in line for line in lines) == 1, lines  # logged once, not per retry
            assert sum("recovered" in line for line in lines) == 1, lines
            text = Renderer().render(back).text.decode()
            assert "wattlens_grid_carbon_intensity_age_seconds" in compare(text, snapshot_document(back))
        finally:
            node.engine.close()


def test_a_hanging_api_delays_no_tick(tmp_path: Path) -> None:
    with FakeIntensityServer(lifetime_s=60) as server:
        server.route("/intensity", Reply(hang=True))
        node = Node(tmp_path, provider="json", url=server.url("/intensity"), value_path="v", timeout="30")
        try:
            wait_until(lambda: len(server.requests("/intensity")) == 1)  # a request is hanging for up to 30 s
            durations = [node.tick()[1] for _ in range(4)]
            snapshot = node.tick()[0]
            assert max(durations) < 1.0, durations  # each tick is reading files, never waiting on the API
            assert snapshot.carbon_intensity is None and not carbon_up(snapshot)  # down until a first value
            assert snapshot.carbon.operational == () and snapshot.carbon.embodied  # embodied needs no intensity
        finally:
            began = time.monotonic()
            node.engine.close()  # aborts the request in flight
            assert time.monotonic() - began < 5
            server.release()


def test_the_daemon_keeps_its_cadence_while_the_api_hangs(tmp_path: Path) -> None:
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    with FakeIntensityServer(lifetime_s=60) as server:
        server.route("/intensity", Reply(hang=True))
        with Daemon("--sys", str(rapl.root), "--meters", "rapl", "--interval", "0.5", "--carbon.provider", "json",
                    "--carbon.url", server.url("/intensity"), "--carbon.value-path", "v",
                    "--carbon.timeout", "30") as d:
            d.wait_ready()
            samples = d.wait_ticks(6, timeout=15)
            assert samples['wattlens_ticks_skipped_total{node="' + samples_node(samples) + '"}'] == 0
            key = next(k for k in samples if k.startswith("wattlens_source_up{") and 'source="carbon"' in k)
            assert samples[key] == 0.0 and 'device="json:127.0.0.1"' in key
            server.release()
            code, _ = d.stop()
            assert code == 0


def samples_node(samples: dict[str, float]) -> str:
    key = next(k for k in samples if k.startswith("wattlens_ticks_total{"))
    return key.split('node="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(("settings", "says"), [
    ({"carbon.provider": "electricity_maps", "carbon.token_file": "/t"}, "carbon.region"),
    ({"carbon.provider": "electricity_maps", "carbon.region": "DE"}, "carbon.token_file"),
    ({"carbon.provider": "watttime", "carbon.region": "CAISO_NORTH"}, "carbon.password_file"),
    ({"carbon.provider": "json", "carbon.value_path": "v"}, "carbon.url"),
    ({"carbon.provider": "json", "carbon.url": "http://x/"}, "carbon.value_path"),
    ({"carbon.url": "ftp://x"}, "carbon.url"),
    ({"carbon.units": "furlongs"}, "carbon.units"),
    ({"carbon.region": "18", "carbon.provider": "uk_carbon_intensity"}, "carbon.region"),
    ({"carbon.gpu_embodied_kg": "H100"}, "carbon.gpu_embodied_kg"),
    ({"carbon.gpu_embodied_kg": "H100=-5"}, "carbon.gpu_embodied_kg"),
    ({"carbon.lifetime": "2h"}, "carbon.lifetime"),
    ({"carbon.host_embodied_kg": "lots"}, "carbon.host_embodied_kg"),
])
def test_bad_carbon_settings_are_one_line_naming_the_setting(settings: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(settings, None, environ={})
    message = str(caught.value)
    assert "\n" not in message and f"invalid setting {says}=" in message and "Fix: set " in message, message


def test_an_unreadable_credential_is_a_config_error_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "exporter", "once", "--carbon.provider", "electricity_maps",
                             "--carbon.region", "DE", "--carbon.token-file", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("wattlens: invalid setting carbon.token_file=") and "Fix:" in result.stderr
