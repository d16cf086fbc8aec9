"""The OTLP push (exporter/otlp/): the mapping covers every family, the points carry the exposition's values, the
push never waits on the receiver, its queue is bounded and its drops counted, delta temporality loses nothing
across failed pushes, and a real gRPC receiver (grpcio serving the OTLP MetricsService) gets the push."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import REPO, make_config
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData
from test_exposition_renderer import rich_snapshot

from exporter.exposition import EndpointStats, families
from exporter.otlp import mapping as om
from exporter.otlp.build import Builder
from exporter.otlp.push import OtlpPush, OtlpUnavailable, open_push, resource_attributes
from exporter.snapshot import Snapshot, TickStats, WorkloadState
from exporter.workloads.labels import rollup_labels


def test_every_family_is_pushed_or_says_why_not() -> None:
    from exporter import metrics

    pushed = [f.full_name for metric in om.METRICS for f in metric.families]
    assert len(pushed) == len(set(pushed)), "a family in two OTLP metrics"
    assert not set(pushed) & set(om.PULL_ONLY)
    assert set(pushed) | set(om.PULL_ONLY) == {f.full_name for f in metrics.CATALOGUE}


def test_otel_doc_table_is_generated_from_the_mapping() -> None:
    assert om.reference_markdown() in (REPO / "docs" / "otel.md").read_text(), "run: python -m exporter.otlp.mapping"


def test_points_carry_the_exposition_values() -> None:
    """Every sample of a pushed family is a data point of its OTLP metric, with the same value."""
    snap = rich_snapshot(name="n1")
    rows = {r.family.full_name: r for r in families(snap, EndpointStats(), 0.0)}
    batch = {p.metric.name: p for p in Builder().points(snap)}
    for metric in om.METRICS:
        if not metric.families:
            continue
        samples = [rows[f.full_name].samples for f in metric.families if f.full_name in rows]
        pulled = Counter(value for family in samples for _, value in family)
        pushed = Counter(value for _, value in batch[metric.name].points) if metric.name in batch else Counter()
        assert pushed == pulled, metric.name


def test_workload_attributes_rollups_and_domains() -> None:
    snap = rich_snapshot(name="n1", pods=1)
    rollup = WorkloadState("pod", rollup_labels("pod", "shop", ""), (("package", 7_000_000),), (("package", 1),))
    snap = replace(snap, workloads=(*snap.workloads, rollup))
    batch = {p.metric.name: dict(p.points) for p in Builder().points(snap)}
    pods = batch["wattlens.pod.energy"]
    assert pods[(("k8s.namespace.name", "ns-0"), ("k8s.pod.name", "n1-0"), ("k8s.pod.uid", "uid-0"),
                 ("hw.type", "memory"), ("hw.name", "dram"))] == 7 / 1e6
    assert pods[(("k8s.namespace.name", "ns-0"), ("k8s.pod.name", "n1-0"), ("k8s.pod.uid", "uid-0"),
                 ("hw.type", "gpu"), ("hw.id", "GPU-1234"))] == 3 / 1e6
    # The budget's rollup: empty identity left out, marked; the same joules as its Prometheus series.
    rolled = (("k8s.namespace.name", "shop"), ("k8s.pod.name", "(folded)"), (om.ROLLUP, True))
    assert pods[(*rolled, ("hw.type", "cpu"), ("hw.name", "package"))] == 7.0
    containers = list(batch["wattlens.container.energy"])
    assert ("k8s.container.name", "app") in containers[0] and ("wattlens.parent_kind", "pod") in containers[0]
    assert batch["wattlens.service.energy"][(("wattlens.systemd.unit", "n1.service"), ("hw.type", "cpu"),
                                            ("hw.name", "package"))] == 99 / 1e6


def test_resource_names_the_node_and_cluster() -> None:
    config = make_config(node_name="node-7", cluster_name="fleet-1",
                         otlp_resource_attributes="deployment.environment=x")
    assert resource_attributes(config, in_kubernetes=False) == {
        "service.name": "wattlens", "service.version": resource_attributes(config, False)["service.version"],
        "service.instance.id": "node-7", "host.name": "node-7", "k8s.node.name": "node-7",
        "k8s.cluster.name": "fleet-1", "deployment.environment": "x"}
    bare = resource_attributes(make_config(node_name="host-1"), in_kubernetes=False)
    assert "k8s.node.name" not in bare and "k8s.cluster.name" not in bare


# --- the push thread ------------------------------------------------------------------------------------------


class FakeExporter:
    """An OTLP exporter whose receiver is up or down on command, and can hang."""

    def __init__(self) -> None:
        self.up = True
        self.gate = threading.Event()
        self.gate.set()
        self.received: list[MetricsData] = []
        self.calls = 0
        self.shut = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 0) -> MetricExportResult:
        self.calls += 1
        self.gate.wait(30)
        if not self.up:
            return MetricExportResult.FAILURE
        self.received.append(metrics_data)
        return MetricExportResult.SUCCESS

    def shutdown(self, timeout_millis: float = 0) -> None:
        self.shut = True


def snapshot(n: int, joules: int) -> Snapshot:
    """Tick n: one pod whose package counter reads `joules` J."""
    base = rich_snapshot(name="n1", pods=0)
    pod = WorkloadState("pod", (("namespace", "ns"), ("pod", "p"), ("uid", "u")), (("package", joules * 10**6),),
                        (("package", 10**6),))
    return replace(base, workloads=(pod,), ticks=TickStats(n, 0, 0.01, 0.1, 1.7e9 + n), ready=True)


def pod_values(data: MetricsData) -> list[tuple[float, int, int]]:
    """(value, start, time) of the pod's point."""
    for metric in data.resource_metrics[0].scope_metrics[0].metrics:
        if metric.name == "wattlens.pod.energy":
            return [(p.value, p.start_time_unix_nano, p.time_unix_nano) for p in metric.data.data_points]
    return []


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_offer_never_waits_and_the_queue_is_bounded() -> None:
    exporter = FakeExporter()
    exporter.gate.clear()  # the receiver hangs
    push = OtlpPush(exporter, {"service.name": "wattlens"}, capacity=3)
    push.start()
    try:
        push.offer(snapshot(1, 1))
        wait_for(lambda: exporter.calls == 1)  # in flight, hanging
        slowest = 0.0
        for n in range(2, 12):
            started = time.perf_counter()
            push.offer(snapshot(n, n))
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.05, f"offer waited {slowest:.3f} s"
        stats = push.stats()
        assert stats.queued == 3 and stats.dropped == 10 - 3  # ticks 2-11 offered, the newest 3 kept
        exporter.gate.set()  # the receiver answers again: the hung push, then the queue, oldest first
        wait_for(lambda: push.stats().pushes_ok == 4)
        times = [pod_values(d)[0][2] for d in exporter.received]
        assert times == sorted(times) and [pod_values(d)[0][0] for d in exporter.received] == [1.0, 9.0, 10.0, 11.0]
        assert push.stats().queued == 0 and push.stats().points > 0
    finally:
        push.close()
    assert exporter.shut


def test_receiver_down_then_back_counts_failures_and_keeps_the_newest() -> None:
    exporter = FakeExporter()
    exporter.up = False
    push = OtlpPush(exporter, {}, capacity=2, backoff_max_s=0.05)
    push.start()
    try:
        for n in range(1, 6):
            push.offer(snapshot(n, n))
            time.sleep(0.02)
        wait_for(lambda: push.stats().pushes_failed >= 3)
        assert push.stats().queued <= 2
        exporter.up = True
        wait_for(lambda: push.stats().queued == 0 and push.stats().pushes_ok >= 1)
        assert pod_values(exporter.received[-1])[0][0] == 5.0  # the newest totals arrived
        assert push.stats().dropped >= 3
    finally:
        push.close()


def test_delta_temporality_loses_nothing_across_failed_pushes() -> None:
    exporter = FakeExporter()
    push = OtlpPush(exporter, {}, capacity=1, delta=True, backoff_max_s=0.05)
    push.start()
    try:
        joules = 0
        for n in range(1, 13):
            joules += n  # the pod's counter grows by n J in tick n
            exporter.up = n not in (4, 5, 6, 9)  # the receiver is down now and then
            push.offer(snapshot(n, joules))
            wait_for(lambda: push.stats().queued == 0 or not exporter.up)
            time.sleep(0.06)
        exporter.up = True
        wait_for(lambda: push.stats().queued == 0)
        points = [pod_values(d)[0] for d in exporter.received]
        assert sum(value for value, _, _ in points) == joules  # every joule once
        for (_, _, before), (_, start, _) in itertools.pairwise(points):
            assert start == before  # each delta starts where the delivered one before it ended
        assert push.stats().dropped > 0  # some pushes were dropped, and their energy still arrived
    finally:
        push.close()


def test_close_sends_the_final_totals() -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    push = OtlpPush(exporter, {}, capacity=4)
    push.start()
    push.offer(snapshot(1, 1))
    wait_for(lambda: exporter.calls == 1)
    for n in (2, 3):
        push.offer(snapshot(n, n))
    exporter.gate.set()
    push.close()
    assert pod_values(exporter.received[-1])[0][0] == 3.0 and exporter.shut


def test_every_sets_the_push_cadence_in_ticks() -> None:
    exporter = FakeExporter()
    push = OtlpPush(exporter, {}, every=3)
    for n in range(1, 8):
        push.offer(snapshot(n, n))
    assert push.stats().queued == 3  # ticks 1, 4 and 7
    push.offer(replace(snapshot(8, 8), ready=False))
    assert push.stats().queued == 3


def test_missing_exporter_and_unreadable_files_are_one_line_errors(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.metric_exporter", None)
    with pytest.raises(OtlpUnavailable, match=r"pip install 'wattlens\[otlp-grpc\]'"):
        open_push(make_config(otlp_endpoint="http://127.0.0.1:4317", otlp_protocol="grpc"), False)
    with pytest.raises(OtlpUnavailable, match=r"otlp_ca_file .*/nope: cannot be read"):
        open_push(make_config(otlp_endpoint="https://x:4318", otlp_ca_file=tmp_path / "nope"), False)


def test_daemon_refuses_to_start_without_the_exporter(tmp_path: Path) -> None:
    """The real command: one line naming the setting and the fix, exit 2, no traceback."""
    import subprocess

    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['opentelemetry.exporter.otlp.proto.http.metric_exporter'] = None\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", "--meters", "model", "--node-name", "n",
         "--otlp-endpoint", "http://127.0.0.1:9/v1/metrics"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker)})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "pip install 'wattlens[otlp]'" in result.stderr.strip().splitlines()[-1]


# --- a real gRPC receiver -------------------------------------------------------------------------------------


def test_grpc_push_reaches_a_real_grpc_receiver() -> None:
    received: list[Any] = []
    headers: list[dict[str, str]] = []

    class Service(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's method name
            received.append(request)
            headers.append(dict(context.invocation_metadata()))
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config = make_config(otlp_endpoint=f"http://127.0.0.1:{port}", otlp_protocol="grpc", node_name="g1",
                             otlp_headers="x-scope-orgid=fleet-1", otlp_timeout="5")
        push = open_push(config, in_kubernetes=True)
        push.start()
        push.offer(snapshot(1, 42))
        wait_for(lambda: push.stats().pushes_ok == 1)
        push.close()
    finally:
        server.stop(0)
    request = received[0]
    resource = {kv.key: kv.value.string_value for kv in request.resource_metrics[0].resource.attributes}
    assert resource["service.instance.id"] == "g1" and resource["k8s.node.name"] == "g1"
    metrics = {metric.name: metric for metric in request.resource_metrics[0].scope_metrics[0].metrics}
    pod = metrics["wattlens.pod.energy"].sum
    assert pod.is_monotonic and pod.aggregation_temporality == 2  # cumulative
    assert pod.data_points[0].as_double == 42.0
    assert "hw.energy" in metrics and metrics["hw.energy"].unit == "J"
    assert headers[0]["x-scope-orgid"] == "fleet-1"
