"""The reference rendering: the exposition's families through prometheus-client (slow; tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from exporter.exposition import EndpointStats, Rows, families
from exporter.snapshot import Snapshot


class Reference:
    def __init__(self, rows: list[Rows]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        for r in self.rows:
            fam = r.family
            metric: Metric
            if fam.kind == "info":
                metric = InfoMetricFamily(fam.full_name, fam.help)
                for values, _ in r.samples:
                    metric.add_metric([], dict(zip(r.names, values, strict=True)))
            else:
                cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
                metric = cls(fam.full_name, fam.help, labels=r.names)
                for values, value in r.samples:
                    metric.add_metric(list(values), value)
            yield metric


def reference_registry(snap: Snapshot, endpoint: EndpointStats, render_s: float) -> CollectorRegistry:
    """The same families as prometheus-client metric families: its generate_latest output must equal the
    exposition's, series by series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference(families(snap, endpoint, render_s)))  # type: ignore[arg-type]
    return registry
