"""Snapshot → metric families → pre-rendered exposition bytes, once per tick.

Every scrape is served from the bytes made here (text 0.0.4 and OpenMetrics, each also gzipped), so a scrape
costs a dictionary lookup, not a render. prometheus-client does the formatting and label escaping.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics

from exporter import metrics as m
from exporter.counters import MICRO
from exporter.snapshot import Snapshot, ZoneState
from exporter.zones import role_of

GZIP_LEVEL = 6  # the size/CPU knee for this kind of text; level 9 costs ~3x for ~2 % smaller
CONTENT_TYPE_TEXT = CONTENT_TYPE_PLAIN_0_0_4


@dataclass(frozen=True, slots=True)
class Exposition:
    """One tick's rendered metrics, in every variant a scraper can ask for."""

    text: bytes
    text_gzip: bytes
    openmetrics: bytes
    openmetrics_gzip: bytes
    ready: bool
    rendered_at: float  # monotonic

    def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        if openmetrics:
            return self.openmetrics_gzip if gzipped else self.openmetrics
        return self.text_gzip if gzipped else self.text


def _family(fam: m.Family) -> Metric:
    if fam.kind == "counter":
        return CounterMetricFamily(fam.full_name, fam.help, labels=fam.labels)
    if fam.kind == "gauge":
        return GaugeMetricFamily(fam.full_name, fam.help, labels=fam.labels)
    return InfoMetricFamily(fam.full_name, fam.help, labels=fam.labels)


def _add(metric: Metric, labels: list[str], value: float) -> None:
    # Counter/Gauge families share this signature; Metric itself does not declare it.
    metric.add_metric(labels, value)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """What the HTTP endpoint reports about itself, copied on the event loop before each tick."""

    scrapes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    rejections: Mapping[str, int] = field(default_factory=dict)
    tls_not_after: float | None = None


def families(snap: Snapshot, endpoint: EndpointStats, render_s: float) -> Iterator[Metric]:
    node = snap.info.node
    yield from _zone_families(snap)
    yield from _node_energy_families(snap)
    idle, active = _family(m.NODE_CPU_IDLE_JOULES), _family(m.NODE_CPU_ACTIVE_JOULES)
    baseline = _family(m.NODE_CPU_IDLE_WATTS)
    for d in snap.domains:
        _add(idle, [node, d.zone, d.source], d.idle_uj / MICRO)
        _add(active, [node, d.zone, d.source], d.active_uj / MICRO)
        if d.idle_watts is not None:
            _add(baseline, [node, d.zone, d.source, d.idle_method], d.idle_watts)
    yield from (idle, active, baseline)

    up, errors = _family(m.SOURCE_UP), _family(m.SOURCE_ERRORS)
    for source in snap.sources:
        _add(up, [node, source.source, source.device], 1.0 if source.up else 0.0)
    for error in snap.errors:
        _add(errors, [node, error.source, error.device], error.count)
    yield from (up, errors)

    yield from _workload_families(snap)
    if snap.accelerators:
        yield from _gpu_families(snap)
    if snap.carbon_intensity is not None:
        carbon = _family(m.GRID_CARBON_INTENSITY)
        _add(carbon, [node], snap.carbon_intensity)
        yield carbon

    build = InfoMetricFamily(m.BUILD_INFO.full_name, m.BUILD_INFO.help)
    build.add_metric([], {"node": node, "version": snap.info.version, "python_version": snap.info.python_version})
    info = InfoMetricFamily(m.NODE_INFO.full_name, m.NODE_INFO.help)
    info.add_metric(
        [],
        {
            "node": node,
            "cpu_model": snap.info.cpu_model,
            "cpus": str(snap.info.cpus),
            "sockets": str(snap.info.sockets),
            "kernel": snap.info.kernel,
            "cgroup_version": snap.info.cgroup_version,
            "meter": snap.meter,
        },
    )
    yield from (build, info)

    t = snap.ticks
    for fam, value in (
        (m.TICKS, t.ticks),
        (m.TICKS_SKIPPED, t.skipped),
        (m.TICK_DURATION, t.duration_s),
        (m.TICK_CPU, t.cpu_s_total),
        (m.LAST_TICK, t.last_unix_time),
        (m.RENDER_DURATION, render_s),
    ):
        metric = _family(fam)
        _add(metric, [node], float(value))
        yield metric
    served = _family(m.SCRAPES)
    for (fmt, encoding), count in sorted(endpoint.scrapes.items()):
        _add(served, [node, fmt, encoding], count)
    yield served
    rejected = _family(m.HTTP_REJECTIONS)
    for reason, count in sorted(endpoint.rejections.items()):
        _add(rejected, [node, reason], count)
    yield rejected
    if endpoint.tls_not_after is not None:
        expiry = _family(m.TLS_CERT_EXPIRY)
        _add(expiry, [node], endpoint.tls_not_after)
        yield expiry


def _zone_families(snap: Snapshot) -> Iterator[Metric]:
    """Every node counter: CPU zones, superchip modules and the platform, each in its own families."""
    node = snap.info.node
    joules, watts = _family(m.NODE_CPU_JOULES), _family(m.NODE_CPU_WATTS)
    wraps, resets = _family(m.COUNTER_WRAPS), _family(m.COUNTER_RESETS)
    node_level = []
    for z in snap.zones:
        zone = z.zone
        if role_of(zone.zone) != "cpu":
            node_level.append(z)
            continue
        zone_labels = [node, zone.zone, zone.socket, zone.die, zone.source]
        _add(joules, [*zone_labels, z.method], z.joules_uj / MICRO)
        _add(wraps, zone_labels, z.wraps)
        _add(resets, zone_labels, z.resets)
        if z.watts is not None:
            _add(watts, zone_labels, z.watts)
    yield from (joules, watts, wraps, resets)
    if node_level:  # most nodes have neither a superchip module nor a platform meter
        yield from _node_level_families(node, node_level)


def _node_level_families(node: str, zones: list[ZoneState]) -> Iterator[Metric]:
    module, module_watts = _family(m.NODE_MODULE_JOULES), _family(m.NODE_MODULE_WATTS)
    platform, platform_watts = _family(m.NODE_PLATFORM_JOULES), _family(m.NODE_PLATFORM_WATTS)
    platform_age = _family(m.NODE_PLATFORM_READING_AGE)
    for z in zones:
        zone = z.zone
        if zone.zone == "module":
            _add(module, [node, zone.socket, zone.source, z.method], z.joules_uj / MICRO)
            if z.watts is not None:
                _add(module_watts, [node, zone.socket, zone.source], z.watts)
            continue
        _add(platform, [node, zone.source, zone.device, z.method], z.joules_uj / MICRO)
        if z.watts is not None:
            _add(platform_watts, [node, zone.source, zone.device], z.watts)
        if z.reading_age_s is not None:
            _add(platform_age, [node, zone.source, zone.device], z.reading_age_s)
    if module.samples:
        yield from (module, module_watts)
    if platform.samples:
        yield from (platform, platform_watts, platform_age)


def _node_energy_families(snap: Snapshot) -> Iterator[Metric]:
    """The node's total, the rest of the node, and how the zones nest."""
    node = snap.info.node
    total = _family(m.NODE_JOULES)
    _add(total, [node], snap.node.total_uj / MICRO)
    yield total
    if snap.node.rest_uj is not None:
        rest = _family(m.NODE_REST_JOULES)
        _add(rest, [node], snap.node.rest_uj / MICRO)
        yield rest
    info = InfoMetricFamily(m.NODE_ZONE_INFO.full_name, m.NODE_ZONE_INFO.help)
    for i in snap.zone_info:
        values = (node, i.zone, i.source, i.role, i.parent, str(i.top_level).lower())
        info.add_metric([], dict(zip(m.NODE_ZONE_INFO.labels, values, strict=True)))
    yield info
    if snap.meter_switches:  # only after a hand-over: most nodes never have one
        switches = _family(m.METER_SWITCHES)
        _add(switches, [node], snap.meter_switches)
        yield switches


def _gpu_families(snap: Snapshot) -> Iterator[Metric]:
    node = snap.info.node
    joules, watts = _family(m.NODE_GPU_JOULES), _family(m.NODE_GPU_WATTS)
    idle, active = _family(m.NODE_GPU_IDLE_JOULES), _family(m.NODE_GPU_ACTIVE_JOULES)
    baseline, resets = _family(m.NODE_GPU_IDLE_WATTS), _family(m.NODE_GPU_RESETS)
    splits, unattributed = _family(m.GPU_ATTRIBUTION_TICKS), _family(m.UNATTRIBUTED_GPU_JOULES)
    info = InfoMetricFamily(m.NODE_GPU_INFO.full_name, m.NODE_GPU_INFO.help)
    for g in snap.accelerators:
        device = g.device
        labels = [node, str(device.index), device.uuid, device.model]
        _add(joules, [*labels, g.method], g.joules_uj / MICRO)
        _add(idle, labels, g.idle_uj / MICRO)
        _add(active, labels, g.active_uj / MICRO)
        _add(resets, labels, g.resets)
        _add(unattributed, labels[:3], g.unattributed_uj / MICRO)
        if g.watts is not None:
            _add(watts, labels, g.watts)
        if g.idle_watts is not None:
            _add(baseline, [*labels, g.idle_method], g.idle_watts)
        for split, count in g.splits:
            _add(splits, [*labels[:3], split], count)
        info.add_metric(
            [],
            {
                "node": node,
                "gpu": str(device.index),
                "gpu_uuid": device.uuid,
                "gpu_model": device.model,
                "driver": snap.accelerator_driver,
                "mig": str(g.partitioned).lower(),
            },
        )
    yield from (joules, watts, idle, active, baseline, resets, info, splits, unattributed)


def _workload_families(snap: Snapshot) -> Iterator[Metric]:
    node = snap.info.node
    sources = {d.zone: d.source for d in snap.domains}
    joules = {kind: _family(fam) for kind, fam in m.WORKLOAD_FAMILIES.items()}
    gpu_joules = {kind: _family(fam) for kind, fam in m.WORKLOAD_GPU_FAMILIES.items()}
    gpu_labels = {f"gpu:{g.device.uuid}": (str(g.device.index), g.device.uuid) for g in snap.accelerators}
    pod_watts = _family(m.POD_CPU_WATTS)
    for w in snap.workloads:
        values = [value for _, value in w.labels]
        for zone, microjoules in w.energy_uj:
            if zone in gpu_labels:
                _add(gpu_joules[w.kind], [node, *values, *gpu_labels[zone]], microjoules / MICRO)
            else:
                _add(joules[w.kind], [node, *values, zone, sources.get(zone, snap.meter)], microjoules / MICRO)
        if w.kind == "pod" and snap.tick_seconds > 0:
            for zone, microjoules in w.last_uj:
                if zone not in gpu_labels:
                    source = sources.get(zone, snap.meter)
                    _add(pod_watts, [node, *values, zone, source], microjoules / MICRO / snap.tick_seconds)
    yield from joules.values()
    if snap.accelerators:
        yield from gpu_joules.values()
    yield pod_watts
    unattributed = _family(m.UNATTRIBUTED_CPU_JOULES)
    for d in snap.domains:
        _add(unattributed, [node, d.zone, d.source], d.unattributed_uj / MICRO)
    yield unattributed
    yield from _process_families(snap)
    yield from _pod_watch_families(snap)
    workloads = _family(m.WORKLOADS)
    counts = dict.fromkeys(m.WORKLOAD_FAMILIES, 0)
    for w in snap.workloads:
        counts[w.kind] += 1
    for kind, count in counts.items():
        _add(workloads, [node, kind], count)
    yield workloads
    for fam, value in (
        (m.CGROUP_READ_ERRORS, snap.cgroup_read_errors),
        (m.CGROUP_WALKS_TRUNCATED, snap.cgroup_walks_truncated),
    ):
        metric = _family(fam)
        _add(metric, [node], value)
        yield metric


def label_name(key: str) -> str:
    """A Kubernetes label key as a Prometheus label name, as kube-state-metrics writes it."""
    return "label_" + "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key)


def _pod_watch_families(snap: Snapshot) -> Iterator[Metric]:
    if snap.pod_watch is None:
        return
    node = snap.info.node
    names = [*m.POD_LABELS.labels, *map(label_name, snap.pod_label_keys)]
    labels = GaugeMetricFamily(m.POD_LABELS.full_name, m.POD_LABELS.help, labels=names)
    for row in snap.pod_labels:
        labels.add_metric([node, row.namespace, row.pod, row.uid, row.owner_kind, row.owner_name, *row.values], 1.0)
    watch = snap.pod_watch
    requests, failures = _family(m.POD_WATCH_REQUESTS), _family(m.POD_WATCH_ERRORS)
    _add(requests, [node, "list"], watch.lists)
    _add(requests, [node, "watch"], watch.watches)
    _add(failures, [node], watch.errors)
    yield from (labels, requests, failures)


def _process_families(snap: Snapshot) -> Iterator[Metric]:
    if not (snap.processes or snap.processes_other):
        return
    node = snap.info.node
    sources = {d.zone: d.source for d in snap.domains}
    processes = _family(m.PROCESS_CPU_JOULES)
    for process in snap.processes:
        key = process.key
        for zone, microjoules in process.energy_uj:
            labels = [node, str(key.pid), key.comm, key.container_id, key.unit, zone, sources.get(zone, snap.meter)]
            _add(processes, labels, microjoules / MICRO)
    for zone, microjoules in snap.processes_other:
        _add(processes, [node, "", "other", "", "", zone, sources.get(zone, snap.meter)], microjoules / MICRO)
    yield processes


class Renderer:
    """Holds the registry (our families plus the standard process/platform collectors) and renders it."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._endpoint = EndpointStats()
        self._last_render_s = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def collect(self) -> Iterator[Metric]:
        if self._snapshot is not None:
            yield from families(self._snapshot, self._endpoint, self._last_render_s)

    def render(self, snap: Snapshot, endpoint: EndpointStats | None = None) -> Exposition:
        started = time.perf_counter()
        self._snapshot, self._endpoint = snap, endpoint or EndpointStats()
        text = render_text(self.registry)
        openmetrics: bytes = render_openmetrics(self.registry)  # type: ignore[no-untyped-call]
        exposition = Exposition(
            text=text,
            text_gzip=gzip.compress(text, GZIP_LEVEL, mtime=0),
            openmetrics=openmetrics,
            openmetrics_gzip=gzip.compress(openmetrics, GZIP_LEVEL, mtime=0),
            ready=snap.ready,
            rendered_at=time.monotonic(),
        )
        self._last_render_s = time.perf_counter() - started
        return exposition
