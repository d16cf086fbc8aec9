"""The lazy renderer: byte-identical to prometheus-client's rendering of the same snapshot, series by series, in
both formats; rendered at most once per tick and variant, nothing for an unscraped tick; label text kept while a
series lives. A real Prometheus scrapes it in both formats (text through a loopback pass-through that asks
for text/plain, as Prometheus 2.42 always asks for OpenMetrics)."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Daemon, RaplTree, tool
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics
from prometheus_client.utils import floatToGoString
from reference_exposition import reference_registry

from exporter import exposition as ex
from exporter.meters.base import Accelerator, ScopePower, ZoneId
from exporter.nodeinfo import NodeInfo
from exporter.otlp.push import PushStats
from exporter.snapshot import (
    AcceleratorState,
    BudgetStats,
    CarbonDomain,
    CarbonState,
    DomainState,
    InstanceState,
    NodeEnergy,
    PodLabels,
    PodWatchStats,
    ProcessState,
    Snapshot,
    SourceErrors,
    SourceUp,
    TickStats,
    WorkloadState,
    ZoneInfo,
    ZoneState,
)
from exporter.workloads.labels import LABELS
from exporter.workloads.processes import ProcessKey

NASTY = 'q"uo\\te\nnl ü \ufffd {x="y"} # EOF'


def rich_snapshot(name: str = NASTY, pods: int = 3, value: float = 1.5) -> Snapshot:
    """A snapshot with every family of the catalogue, and label values that need escaping."""
    gpu = Accelerator(0, "GPU-1234", "NVIDIA H100 80GB HBM3")
    workloads = []

    def work(kind: str, values: tuple[str, ...], energy: tuple[tuple[str, int], ...],
             last: tuple[tuple[str, int], ...]) -> WorkloadState:
        grams = sum(uj for _, uj in energy)  # ng of carbon: any values, some not whole grams
        return WorkloadState(kind, tuple(zip(LABELS[kind], values, strict=True)), energy, last, grams, 3 * grams + 1)

    for i in range(pods):
        labels = (f"ns-{i}", f"{name}-{i}", f"uid-{i}")
        energy = (("dram", 10**6 * i + 7), ("gpu:GPU-1234", 3), ("package", 2**40))
        workloads.append(work("pod", labels, energy, (("dram", 5), ("package", 123456789))))
        container = (f"ns-{i}", f"{name}-{i}", f"uid-{i}", "app", f"{i:064x}", "containerd", "pod")
        workloads.append(work("container", container, (("package", 1),), ()))
    workloads += [
        work("service", (f"{name}.service",), (("package", 99),), (("package", 1),)),
        work("vm", ("vm1", "1", "qemu"), (("package", 0),), ()),
        work("user", ("1000",), (("package", 12345678901234),), ()),
        work("job", ("42", "1000", "slurm"), (("package", 5),), ()),
    ]
    zones = (ZoneState(ZoneId("package", "0", "", "rapl", "intel-rapl:0"), 123456789012, 55.25, True, 2, 1),
             ZoneState(ZoneId("dram", "0", "", "rapl", "intel-rapl:0:0"), 0, None, False, 0, 0),
             ZoneState(ZoneId("module", "0", "", "hwmon", "hwmon3/power1"), 5 * 10**8, 400.5, True, 0, 0,
                       "power_integration"),
             ZoneState(ZoneId("platform", "", "", "redfish", "Chassis/1"), 9 * 10**9, 700.0, True, 0, 1,
                       "energy_counter", 2.5))
    zone_info = (ZoneInfo("package", "rapl", "cpu", "", True), ZoneInfo("dram", "rapl", "cpu", "", True),
                 ZoneInfo("module", "hwmon", "module", "platform", False),
                 ZoneInfo("platform", "redfish", "platform", "", False))
    return Snapshot(
        info=NodeInfo(name, "Xeon \\ \"8\"", 64, 2, "6.1.0", "v2"),
        meter="rapl",
        zones=zones,
        domains=(DomainState("package", "cpu", "rapl", 10**7, 3 * 10**7, 2, 40.0, "learned"),
                 DomainState("dram", "cpu", "rapl", 0, 0, 1, None, "ratio"),
                 DomainState("module", "module", "hwmon", 10**8, 4 * 10**8, 4 * 10**8, 300.0, "learned")),
        sources=(SourceUp("rapl", "intel-rapl:0", True), SourceUp("model", "", False)),
        errors=(SourceErrors("rapl", "intel-rapl:0:0", 3),),
        ticks=TickStats(7, 1, 0.0123, 0.5, 1.7e9),
        ready=True,
        zone_info=zone_info,
        node=NodeEnergy(9 * 10**9, 10**9),
        workloads=tuple(workloads),
        tick_seconds=5.0,
        cgroup_read_errors=2,
        cgroup_walks_truncated=1,
        cgroup_full_walks=3,
        fd_budget=900,
        fds_held=12,
        fd_degraded=("kubelet",),
        accelerators=(AcceleratorState(gpu, "nvml", "energy_counter", 10**9, 10**8, 9 * 10**8, 5, 300.5, 60.0,
                                       "unused", True, 0, True, (("mig_gpm", 3),),
                                       scopes=(ScopePower("memory", 48.7, 10**8),),
                                       instances=(InstanceState("7", "1g.10gb", f"MIG-{name}", 5 * 10**8),)),),
        accelerator_driver="550.54",
        carbon_intensity=value,
        carbon=CarbonState(name, "marginal", 12.5,
                           (CarbonDomain("package", 10**9, 7, 123456789), CarbonDomain("gpu:GPU-1234", 0, 1, 2)),
                           (CarbonDomain("host", 5, 6, 10**12 + 1),)),
        pod_label_keys=("app.kubernetes.io/name", "team"),
        pod_labels=(PodLabels("ns-0", f"{name}-0", "uid-0", "ReplicaSet", "web-1", (name, "")),),
        pod_watch=PodWatchStats(1, 5, 0, True),
        processes=(ProcessState(ProcessKey(42, 1, "(sd-pam) x", "", "cron.service"), (("package", 77),)),),
        processes_other=(("package", 5),),
        meter_switches=1,
        budget=BudgetStats(1500, 321, (("container", 7), ("pod", 3)), (("pod", 2),), (("pod", 1),), 4),
    )


def split_series(body: bytes) -> dict[str, str]:
    """Sample lines by series (name + label text), and header lines by position: the unit of comparison."""
    out: dict[str, str] = {}
    for n, line in enumerate(body.decode().splitlines()):
        if line.startswith("#"):
            out[f"header {n}"] = line
        else:
            series, _, value = line.rpartition(" ")
            out[series] = value
    return out


SCRAPES = ex.EndpointStats(
    scrapes={("text", "gzip"): 4, ("openmetrics", "identity"): 2}, rejections={"evicted_idle": 3}, tls_not_after=2e9,
    otlp=PushStats(pushes_ok=5, pushes_failed=2, dropped=1, points=900, queued=1, last_success_unix=1.7e9,
                   last_duration_s=0.02))


def ours(snap: Snapshot) -> ex.Exposition:
    return ex.Renderer(standard=False).render(snap, SCRAPES)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_equals_prometheus_client_series_by_series(openmetrics: bool) -> None:
    snap = rich_snapshot()
    reference = reference_registry(snap, SCRAPES, 0.0)
    want: bytes = render_openmetrics(reference) if openmetrics else render_text(reference)
    got = ours(snap).body(openmetrics, False)
    assert split_series(got) == split_series(want)
    assert got == want  # and in the same order, byte for byte
    assert b"wattlens_pod_labels{label_app_kubernetes_io_name=" in got
    assert got.count(b"# HELP ") == len(ex.m.CATALOGUE)  # every family of the catalogue is in this snapshot


@pytest.mark.parametrize("openmetrics", [False, True])
def test_the_standard_process_families_are_prometheus_clients(openmetrics: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """process_* and python_info as prometheus-client's own collectors render them at the same moment: the same
    lines, and values that agree (CPU time and memory move between the two reads)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    render = render_openmetrics if openmetrics else render_text
    monkeypatch.setattr(ex._open_fds, "_at", -1e9)  # counted afresh (it is counted at most every 30 s)
    before = split_series(render(registry))
    got = ex.Renderer().render(rich_snapshot(), SCRAPES).body(openmetrics, False)
    after = split_series(render(registry))
    mine = split_series(got[got.index(b"# HELP process_virtual_memory_bytes"):])
    assert mine.keys() == before.keys() == after.keys()
    assert [v for k, v in mine.items() if k.startswith("header")] == [
        v for k, v in after.items() if k.startswith("header")]
    for series in ("process_start_time_seconds", "process_max_fds", 'python_info{implementation="CPython"'):
        key = next(k for k in mine if k.startswith(series))
        assert mine[key] == after[key]
    for series, slack in (("process_cpu_seconds_total", 0.0), ("process_open_fds", 2.0),
                          ("process_resident_memory_bytes", 4e6), ("process_virtual_memory_bytes", 64e6)):
        low, high = sorted((float(before[series]), float(after[series])))
        assert low - slack <= float(mine[series]) <= high + slack, (series, before[series], mine[series], after[series])
    assert got.index(b"wattlens_fd_degraded{") < got.index(b"process_cpu_seconds_total ")
    assert got.endswith(b"# EOF\n") == openmetrics
    assert got.count(b"\n# EOF\n") == openmetrics  # the nasty node name has "# EOF" inside quotes


def test_the_daemon_does_not_import_prometheus_client() -> None:
    code = "import sys, exporter.cli, exporter.runtime; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_daemon_imports_only_what_its_configuration_uses() -> None:
    """Resident memory: YAML only with a config file, bcrypt with basic auth, the rest on demand."""
    lazy = ("prometheus_client", "yaml", "bcrypt", "difflib", "exporter.snapshot_json", "pynvml", "isal")
    code = f"import sys, exporter.cli, exporter.runtime; print([m for m in {lazy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


@given(
    label=st.text(max_size=30),
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**62).map(float)),
)
@settings(max_examples=100, deadline=None)
def test_any_label_text_and_value_render_as_prometheus_client_does(label: str, value: float) -> None:
    snap = rich_snapshot(name=label, pods=1, value=value)
    reference = reference_registry(snap, SCRAPES, 0.0)
    exposition = ours(snap)
    assert exposition.body(False, False) == render_text(reference)
    assert exposition.body(True, False) == render_openmetrics(reference)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_go_float_is_prometheus_clients_float_format(value: float) -> None:
    assert ex.go_float(value) == floatToGoString(value)


def test_an_unscraped_tick_renders_nothing_and_each_variant_renders_once(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = []
    real = ex.families
    monkeypatch.setattr(ex, "families", lambda *a, **k: walks.append(1) or real(*a, **k))
    renderer = ex.Renderer()
    first = renderer.render(rich_snapshot(), SCRAPES)
    renderer.render(rich_snapshot(), SCRAPES)  # a tick nobody scraped
    assert walks == []
    third = renderer.render(rich_snapshot(), SCRAPES)
    assert first.rendered() == []
    text = third.text
    assert third.text is text and third.body(False, False) is text
    assert gzip.decompress(third.text_gzip) == text
    assert third.openmetrics.endswith(b"# EOF\n")
    assert len(walks) == 1  # both formats share one walk of the snapshot
    assert third.rendered() == [(False, False), (False, True), (True, False)]
    assert third.render_s > 0
    # The next tick reports how long the previous exposition took to render.
    fourth = renderer.render(rich_snapshot(), SCRAPES)
    assert renderer.last_render_s == third.render_s
    assert f"wattlens_render_duration_seconds{{node=\"x\"}} {ex.go_float(third.render_s)}" in (
        fourth.text.decode().replace(ex.escape_label_value(NASTY), "x"))
    fresh = renderer.render(rich_snapshot(), SCRAPES)
    assert gzip.decompress(fresh.openmetrics_gzip) == fresh.openmetrics  # compressed as it was made


def test_concurrent_scrapes_on_the_loop_share_one_render_off_the_loop() -> None:
    renders = []
    loop_thread = []

    async def main() -> list[bytes]:
        loop_thread.append(threading.get_ident())
        exposition = ex.Renderer().render(rich_snapshot(pods=300), SCRAPES)
        real = exposition._render

        def counted(variant: ex.Variant) -> bytes:
            renders.append((variant, threading.get_ident()))
            return real(variant)

        exposition._render = counted  # type: ignore[method-assign]
        return list(await asyncio.gather(*(exposition.body_async(True, True) for _ in range(20))))

    bodies = asyncio.run(main())
    assert len(set(bodies)) == 1
    assert [v for v, _ in renders] == [(True, True)]  # compressed as it is made, once
    assert all(thread != loop_thread[0] for _, thread in renders)


def test_label_text_is_escaped_once_per_series_and_dropped_when_the_series_goes() -> None:
    renderer = ex.Renderer(standard=False)
    escapes = []
    real = ex.escape_label_value

    def counting(value: str) -> str:
        escapes.append(value)
        return real(value)

    ex.escape_label_value = counting  # type: ignore[assignment]
    try:
        assert renderer.render(rich_snapshot(pods=3)).text
        first = len(escapes)
        assert renderer.render(rich_snapshot(pods=3, value=2.5)).text
        assert len(escapes) == first  # same series, new values: nothing escaped again
        assert renderer.render(rich_snapshot(pods=4)).text
        born = len(escapes) - first
        # Only the new pod's series: 2 CPU zones x 6 labels, 1 GPU x 6, 2 x 6 watts, and its container's 10;
        # carbon: the pod's operational (5 labels) and embodied (4); its container's grams are in the pod's.
        assert born == 2 * 6 + 6 + 2 * 6 + 10 + 5 + 4
    finally:
        ex.escape_label_value = real  # type: ignore[assignment]
    def cached_pods() -> int:  # label texts kept for pod joules series
        return sum(1 for (name, _), zones in renderer._workload_by_value.items()
                   if name == "wattlens_pod_cpu_joules_total"
                   for zone in zones if not zone.startswith(("watts:", "co2:")))

    assert cached_pods() == 4 * 2  # 4 pods x 2 CPU zones
    for n in range(40, 0, -1):  # pods go: the label text of the gone ones is dropped, bounded by the live ones
        assert renderer.render(rich_snapshot(pods=n)).text
        workloads = 2 * n + 4
        assert len(renderer._workload_prefixes) <= 2 * workloads + 16
        assert len(renderer._workload_by_value) <= 2 * workloads + 16
    assert cached_pods() <= 2 * (2 * 5 + 16)


# --- a real Prometheus scrapes the real daemon, in OpenMetrics and in text ---------------------------------------


class TextOnly(http.server.BaseHTTPRequestHandler):
    """Forwards a scrape to wattlens asking for text/plain (gzip passed through), as a scraper that takes only
    the text format would: Prometheus 2.42 has no setting for its Accept header."""

    upstream = ""

    def do_GET(self) -> None:
        request = urllib.request.Request(self.upstream, headers={
            "Accept": "text/plain;version=0.0.4", "Accept-Encoding": self.headers.get("Accept-Encoding", "")})
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            self.send_response(response.status)
            for header in ("Content-Type", "Content-Encoding"):
                if response.headers.get(header):
                    self.send_header(header, response.headers[header])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def _query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        import json

        return list(json.load(response)["data"]["result"])


def test_a_real_prometheus_scrapes_both_formats(tmp_path: Path) -> None:
    binary = tool("prometheus", "apt-get install prometheus")
    promtool = tool("promtool", "apt-get install prometheus")
    tree = RaplTree.copy("intel-2socket-server", tmp_path)
    node = 'lint "node" \\ one'
    with Daemon("--sys", str(tree.root), "--meters", "rapl", "--interval", "0.5", "--node-name", node) as daemon:
        daemon.wait_ready()
        status, headers, text = daemon.get("/metrics", {"Accept": "text/plain"})
        assert status == 200 and headers["content-type"].startswith("text/plain")
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert lint.returncode == 0 and lint.stdout == lint.stderr == b"", lint.stderr.decode()

        TextOnly.upstream = f"http://127.0.0.1:{daemon.port}/metrics"
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TextOnly)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        with socket.socket() as probe:  # a free port for Prometheus' own web server
            probe.bind(("127.0.0.1", 0))
            web = probe.getsockname()[1]
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [
            {"job_name": "openmetrics", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]},
            {"job_name": "text", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{proxy.server_address[1]}"]}]},
        ]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = subprocess.Popen(["timeout", "--kill-after=10", "120", binary,
                                 f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
        try:
            deadline, ups = time.monotonic() + 40, {}
            while time.monotonic() < deadline and len(ups) < 2:
                time.sleep(0.5)
                assert prom.poll() is None, prom.communicate()[1].decode()[-2000:]
                try:
                    rows = _query(web, "up == 1 and scrape_samples_scraped > 40")
                except OSError:
                    continue
                ups = {r["metric"]["job"]: r for r in rows}
            assert set(ups) == {"openmetrics", "text"}, (_query(web, "up"), _query(web, "scrape_samples_scraped"))
            time.sleep(3)  # a few more scrapes: every family has samples by then (watts after the second tick)
            names = {job: {r["metric"]["__name__"] for r in _query(web, f'group by (__name__) ({{job="{job}"}})')}
                     for job in ("openmetrics", "text")}
            assert names["openmetrics"] == names["text"]
            assert {"wattlens_node_cpu_watts", "wattlens_build_info", "process_cpu_seconds_total"} <= names["text"]
            # Escaped label values arrive as they were: the node name with its quotes and backslash.
            for job in ("openmetrics", "text"):
                rows = _query(web, f'wattlens_node_cpu_joules_total{{job="{job}"}}')
                assert len(rows) == 4 and {r["metric"]["node"] for r in rows} == {node}
                info = _query(web, f'wattlens_build_info{{job="{job}"}}')
                assert len(info) == 1
            joules = _query(web, 'sum by (job) (wattlens_node_cpu_joules_total)')
            assert all(math.isfinite(float(r["value"][1])) for r in joules)
        finally:
            prom.terminate()
            _, err = prom.communicate(timeout=20)
            proxy.shutdown()
        assert b"level=error" not in err, err.decode()[-2000:]
    assert shutil.which("prometheus")
