"""VictoriaMetrics 1.112 (Debian trixie) as the fleet's OTLP receiver and remote-write store (groundwork for
issue 16), checked for real: what it stores for an OTLP push from the OpenTelemetry SDK's HTTP exporter, with
and without -opentelemetry.usePrometheusNaming; that it drops delta sums; and that Debian's Prometheus 2.42
remote-writes into it. docs/research/otel.md quotes these results.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import require, tool
from victoria import VictoriaMetrics, free_port

RESOURCE = {"host.name": "node-a", "k8s.node.name": "node-a", "k8s.cluster.name": "fleet-1", "service.name": "wattlens"}
POD_UID = "0000000a-0000-4000-8000-00000000000a"
SDK_LABELS = {"service.instance.id", "telemetry.sdk.language", "telemetry.sdk.name", "telemetry.sdk.version"}


def otel_sdk() -> None:
    require(importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None,
            "the OpenTelemetry SDK is not installed (the dev extra: opentelemetry-exporter-otlp-proto-http)")


def push(url: str, delta: bool = False) -> None:
    """One OTLP/HTTP push through the SDK: host energy, a pod's CPU-package energy, a GPU's power, grams."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import Counter, MeterProvider, ObservableCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    exporter = OTLPMetricExporter(endpoint=f"{url}/opentelemetry/v1/metrics", timeout=5,
                                  preferred_temporality={ObservableCounter: temporality, Counter: temporality})
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create(RESOURCE))
    meter = provider.get_meter("wattlens")

    def constant(value: float, attributes: dict[str, str]) -> Any:
        def callback(_options: CallbackOptions) -> list[Observation]:
            return [Observation(value, attributes)]
        return [callback]

    prefix = "delta." if delta else ""
    meter.create_observable_counter(f"{prefix}hw.host.energy", unit="J",
                                    callbacks=constant(1234.5, {"hw.id": "platform", "hw.type": "enclosure"}))
    meter.create_observable_counter(f"{prefix}hw.energy", unit="J", callbacks=constant(
        77.25, {"hw.id": "intel-rapl:0", "hw.type": "cpu", "hw.name": "package-0",
                "k8s.namespace.name": "llm", "k8s.pod.uid": POD_UID}))
    meter.create_observable_gauge(f"{prefix}hw.power", unit="W",
                                  callbacks=constant(42.0, {"hw.id": "gpu-0", "hw.type": "gpu"}))
    meter.create_observable_counter(f"{prefix}wattlens.operational_carbon", unit="g",
                                    callbacks=constant(3.5, {"k8s.pod.uid": POD_UID}))
    assert provider.force_flush(timeout_millis=10_000)
    provider.shutdown()


def stored(vm: VictoriaMetrics, expect: int) -> dict[str, tuple[dict[str, str], float]]:
    """Every series VictoriaMetrics holds, once there are `expect` of them (new series take up to about a second
    to become searchable): name → (labels without the SDK's own, value)."""
    deadline = time.monotonic() + 5
    while True:
        vm.flush()
        samples = vm.query('{__name__=~".+"}')
        if len(samples) >= expect or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    series = {}
    for sample in samples:
        labels = dict(sample["metric"])
        name = labels.pop("__name__")
        for key in list(labels):
            if key.replace("_", ".") in SDK_LABELS:
                del labels[key]
        series[name] = (labels, float(sample["value"][1]))
    return series


def test_otlp_push_as_stored_by_default(tmp_path: Path):
    otel_sdk()
    with VictoriaMetrics(tmp_path / "vm") as vm:
        push(vm.url)
        series = stored(vm, expect=4)
        # Names and attribute keys are kept as sent (dots included, no unit suffix); resource attributes become
        # labels of every series.
        assert series == {
            "hw.host.energy": ({**RESOURCE, "hw.id": "platform", "hw.type": "enclosure"}, 1234.5),
            "hw.energy": ({**RESOURCE, "hw.id": "intel-rapl:0", "hw.type": "cpu", "hw.name": "package-0",
                           "k8s.namespace.name": "llm", "k8s.pod.uid": POD_UID}, 77.25),
            "hw.power": ({**RESOURCE, "hw.id": "gpu-0", "hw.type": "gpu"}, 42.0),
            "wattlens.operational_carbon": ({**RESOURCE, "k8s.pod.uid": POD_UID}, 3.5),
        }
        # MetricsQL takes dotted names and labels bare.
        result = vm.query('sum by (k8s.cluster.name) (hw.energy{k8s.namespace.name="llm"})')
        assert result == [{"metric": {"k8s.cluster.name": "fleet-1"}, "value": [pytest.approx(time.time(), abs=60),
                                                                                "77.25"]}]


def test_otlp_push_with_prometheus_naming_and_delta_dropped(tmp_path: Path):
    otel_sdk()
    with VictoriaMetrics(tmp_path / "vm", "-opentelemetry.usePrometheusNaming") as vm:
        push(vm.url)
        push(vm.url, delta=True)
        series = stored(vm, expect=5)
        flat = {key.replace(".", "_"): value for key, value in RESOURCE.items()}
        # Prometheus naming: dots → underscores, the unit as a suffix (J → joules, W → watts, g → grams) and
        # _total on monotonic sums.
        assert series["hw_host_energy_joules_total"] == ({**flat, "hw_id": "platform", "hw_type": "enclosure"}, 1234.5)
        assert series["hw_energy_joules_total"][0]["k8s_pod_uid"] == POD_UID
        assert series["hw_power_watts"][1] == 42.0
        assert series["wattlens_operational_carbon_grams_total"][1] == 3.5
        # Delta sums are refused ("unsupported delta temporality … skipping it"); the delta gauge is kept.
        assert not [name for name in series if name.startswith("delta_") and "power" not in name]
        assert "delta_hw_power_watts" in series
        dropped = 'vm_protoparser_rows_dropped_total{type="opentelemetry",reason="unsupported_sum_aggregation"}'
        assert vm.self_metric(dropped) == 3
        assert "unsupported delta temporality" in vm.log()


def test_otlp_push_built_from_a_snapshot_without_sdk_instruments(tmp_path: Path):
    """The path issue 16 needs: data points built straight from a snapshot (no MeterProvider, whose instruments
    keep every attribute set ever seen), one exporter call, and a Resource without the SDK's random
    service.instance.id, so a restarted daemon continues the same series."""
    otel_sdk()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Metric,
        MetricExportResult,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    now = time.time_ns()

    def point(pod: str, joules: float) -> NumberDataPoint:
        return NumberDataPoint(attributes={"k8s.namespace.name": "llm", "k8s.pod.name": pod, "hw.type": "cpu",
                                           "hw.id": "package-0"},
                               start_time_unix_nano=now - 60 * 10**9, time_unix_nano=now, value=joules, exemplars=[])

    energy = Sum(data_points=[point("a", 10.5), point("b", 2.25)],
                 aggregation_temporality=AggregationTemporality.CUMULATIVE, is_monotonic=True)
    resource = Resource({"host.name": "node-a", "k8s.node.name": "node-a", "service.name": "wattlens",
                         "service.instance.id": "node-a"})
    data = MetricsData(resource_metrics=[ResourceMetrics(
        resource=resource, schema_url="",
        scope_metrics=[ScopeMetrics(scope=InstrumentationScope("wattlens"), schema_url="", metrics=[
            Metric(name="wattlens.pod.energy", description="", unit="J", data=energy)])])])
    with VictoriaMetrics(tmp_path / "vm") as vm:
        exporter = OTLPMetricExporter(endpoint=f"{vm.url}/opentelemetry/v1/metrics", timeout=5)
        assert exporter.export(data, timeout_millis=5_000) == MetricExportResult.SUCCESS
        exporter.shutdown()
        vm.flush()
        deadline = time.monotonic() + 5
        while len(result := vm.query("wattlens.pod.energy")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            vm.flush()
        labels = {sample["metric"]["k8s.pod.name"]: (sample["metric"], sample["value"][1]) for sample in result}
        assert labels["a"][1] == "10.5" and labels["b"][1] == "2.25"
        assert labels["a"][0] == {"__name__": "wattlens.pod.energy", "host.name": "node-a", "k8s.node.name": "node-a",
                                  "service.name": "wattlens", "service.instance.id": "node-a",
                                  "k8s.namespace.name": "llm", "k8s.pod.name": "a", "hw.type": "cpu",
                                  "hw.id": "package-0"}


EXPOSITION = (
    b"# HELP wattlens_node_energy_joules_total Energy.\n# TYPE wattlens_node_energy_joules_total counter\n"
    b'wattlens_node_energy_joules_total{node="node-a",zone="package-0"} 123.5\n'
)


@pytest.fixture
def target() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(EXPOSITION)))
            self.end_headers()
            self.wfile.write(EXPOSITION)

        def log_message(self, *_: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_remote_writes_into_victoria_metrics(tmp_path: Path, target: str):
    prometheus = tool("prometheus", "apt-get install prometheus")
    with VictoriaMetrics(tmp_path / "vm") as vm:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, external_labels: {cluster: fleet-1}}\n"
            f"scrape_configs: [{{job_name: wattlens, static_configs: [{{targets: ['{target}']}}]}}]\n"
            f"remote_write: [{{url: '{vm.url}/api/v1/write', queue_config: {{batch_send_deadline: 1s}}}}]\n"
        )
        port = free_port()
        process = subprocess.Popen(
            ["timeout", "-s", "KILL", "30", prometheus, f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'prometheus'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            # Prometheus 2.42 replays its (empty) WAL for about 5 s before its first remote-write batch.
            deadline = time.monotonic() + 12
            result: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not result:
                time.sleep(0.25)
                vm.flush()
                result = vm.query("wattlens_node_energy_joules_total")
        finally:
            process.terminate()
            process.wait(timeout=10)
        assert result, "no remote-written sample reached VictoriaMetrics in 12 s"
        assert result[0]["metric"] == {"__name__": "wattlens_node_energy_joules_total", "cluster": "fleet-1",
                                       "instance": target, "job": "wattlens", "node": "node-a", "zone": "package-0"}
        assert result[0]["value"][1] == "123.5"
        assert vm.self_metric('vm_rows_inserted_total{type="promremotewrite"}') > 0
