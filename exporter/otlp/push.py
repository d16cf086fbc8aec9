"""The OTLP push: snapshots handed over by the tick, sent from a thread of their own through the OpenTelemetry SDK's
OTLP exporter (HTTP/protobuf or gRPC).

The tick only appends a snapshot reference to a bounded queue (`offer`, O(1), never waits on the network). The push
thread builds each queued snapshot's OTLP request and exports it. While the receiver is unreachable the snapshots
wait, oldest first, up to `otlp_queue` of them; a newer one pushes the oldest out (`dropped`). With cumulative
temporality (the default) nothing is lost then, only resolution: the next push carries the totals. Delta
temporality sends what each series gained since the last *delivered* push, so a dropped push is not lost either.
Memory is bounded by the queue (snapshots of at most max_series workload series) and one request in flight.

The SDK's instruments are not used: an asynchronous instrument keeps every attribute set it ever saw (pod churn
ends in `otel.metric.overflow` after 2,000), and its periodic reader drops a failed batch. The data points are
built from the snapshot instead (build.py), so the series budget and TTL stay wattlens's, and a restarted daemon
continues its series (service.instance.id is the node name, not the SDK's random one).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from exporter import __version__
from exporter.files import CREDENTIAL_FILE_LIMIT, read_operator_file
from exporter.otlp import mapping as om
from exporter.otlp.build import Attributes, Builder, Points, count

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.snapshot import Snapshot

log = logging.getLogger(__name__)
SDK_LOGGER = "opentelemetry.exporter.otlp"
FIRST_BACKOFF_S = 1.0


class OtlpUnavailable(Exception):
    """The push cannot start; the message is the one line to show (a missing extra, a bad file)."""


class Exporter(Protocol):
    """What the push uses of an OpenTelemetry metric exporter."""

    def export(self, metrics_data: Any, timeout_millis: float = ...) -> Any: ...
    def shutdown(self, timeout_millis: float = ...) -> None: ...


@dataclass(frozen=True, slots=True)
class PushStats:
    """The push's own counters, for the self-metrics (copied under the push's lock)."""

    pushes_ok: int = 0
    pushes_failed: int = 0
    dropped: int = 0  # pushes that never left: pushed out of the full queue by newer ones
    points: int = 0  # data points delivered
    queued: int = 0
    last_success_unix: float | None = None
    last_duration_s: float = 0.0


@dataclass(slots=True)
class _Queued:
    snapshot: Snapshot
    time_ns: int


class _LastMessage(logging.Handler):
    """The SDK exporter logs every retry; the push keeps its last message as the reason it reports, once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.message = record.getMessage()
        except (TypeError, ValueError):
            self.message = str(record.msg)


@dataclass
class OtlpPush:
    """Pushes every `every` ticks' snapshot to `exporter` from its own thread. `resource` holds the resource
    attributes; `delta` selects delta temporality."""

    exporter: Exporter
    resource: dict[str, str]
    every: int = 1
    capacity: int = 4
    delta: bool = False
    backoff_max_s: float = 30.0
    endpoint: str = ""  # for the log lines
    start_ns: int = field(default_factory=time.time_ns)
    _queue: deque[_Queued] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stats: PushStats = field(default_factory=PushStats)
    _since_push: int = 0
    _pushed_once: bool = False
    _failing: bool = False
    _builder: Builder = field(default_factory=Builder)
    _acked: dict[tuple[str, Attributes], tuple[float, int]] = field(default_factory=dict)  # delta: (value, time)
    _reason: _LastMessage = field(default_factory=_LastMessage)
    _sdk: Any = None  # opentelemetry.sdk.metrics.export, imported by start()

    # --- the tick's side ---------------------------------------------------------------------------

    def offer(self, snapshot: Snapshot) -> None:
        """Queue this tick's snapshot if a push is due (every `every` ticks, once the first deltas are in)."""
        if not snapshot.ready:
            return
        self._since_push += 1
        if self._pushed_once and self._since_push < self.every:
            return
        self._since_push, self._pushed_once = 0, True
        stamp = int(snapshot.ticks.last_unix_time * 1e9) or time.time_ns()
        with self._cond:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self._stats = replace(self._stats, dropped=self._stats.dropped + 1)
            self._queue.append(_Queued(snapshot, stamp))
            self._stats = replace(self._stats, queued=len(self._queue))
            self._cond.notify()

    def stats(self) -> PushStats:
        with self._cond:
            return self._stats

    # --- the push thread ---------------------------------------------------------------------------

    def start(self) -> None:
        from opentelemetry.sdk.metrics import export  # noqa: PLC0415 - only when the push is configured

        self._sdk = export
        sdk_log = logging.getLogger(SDK_LOGGER)
        sdk_log.addHandler(self._reason)
        sdk_log.propagate = False  # its retry warnings would repeat every push; the push says it once
        self._thread = threading.Thread(target=self._run, name="wattlens-otlp", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop: one last push of the newest snapshot (the final totals), then the exporter's shutdown."""
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    break
                item = self._queue.popleft()
            if self._send(item):
                backoff = FIRST_BACKOFF_S
                continue
            # A failed export leaves reference cycles behind (the exceptions' tracebacks hold the request's frames and
            # its serialized body); with the daemon's young-generation threshold at 50,000 they would pile up for
            # minutes (~10 MiB in a long outage) before a collection. Collected now, at most once per backoff.
            gc.collect(1)
            with self._cond:  # back at the head, unless newer ones filled the queue meanwhile
                if len(self._queue) < self.capacity:
                    self._queue.appendleft(item)
                else:
                    self._stats = replace(self._stats, dropped=self._stats.dropped + 1)
                self._stats = replace(self._stats, queued=len(self._queue))
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.backoff_max_s)
        with self._cond:
            last = self._queue[-1] if self._queue else None
            self._queue.clear()
        if last is not None:
            self._send(last)
        self.exporter.shutdown()

    def _send(self, item: _Queued) -> bool:
        started = time.perf_counter()
        batch = self._builder.points(item.snapshot, self.stats().dropped)
        data = self._metrics_data(batch, item.time_ns)
        try:
            ok = bool(self.exporter.export(data, timeout_millis=60_000) == self._sdk.MetricExportResult.SUCCESS)
        except Exception as exc:
            self._reason.message = f"{type(exc).__name__}: {exc}"
            ok = False
        elapsed = time.perf_counter() - started
        with self._cond:
            s = self._stats
            if ok:
                self._stats = replace(
                    s,
                    pushes_ok=s.pushes_ok + 1,
                    points=s.points + count(batch),
                    last_success_unix=time.time(),
                    last_duration_s=elapsed,
                    queued=len(self._queue),
                )
            else:
                self._stats = replace(s, pushes_failed=s.pushes_failed + 1, last_duration_s=elapsed)
        if ok:
            if self.delta:
                self._acknowledge(batch, item.time_ns)
            if self._failing:
                log.info("OTLP push to %s works again (%d pushes dropped so far)", self.endpoint, self.stats().dropped)
            self._failing = False
        elif not self._failing:
            self._failing = True
            log.warning(
                "OTLP push to %s failed (%s); keeping up to %d pushes and retrying with backoff",
                self.endpoint,
                self._reason.message or "no reason given",
                self.capacity,
            )
        return ok

    # --- OTLP data -------------------------------------------------------------------------------

    def _metrics_data(self, batch: list[Points], time_ns: int) -> Any:
        sdk = self._sdk
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

        temporality = sdk.AggregationTemporality.DELTA if self.delta else sdk.AggregationTemporality.CUMULATIVE
        metrics = []
        for p in batch:
            points = []
            for attributes, total in p.points:
                value, start = total, self.start_ns
                if p.metric.kind == "sum" and self.delta:
                    value, start = self._delta(p.metric.name, attributes, total)
                elif p.metric.kind == "gauge":
                    start = 0
                points.append(sdk.NumberDataPoint(dict(attributes), start, time_ns, value, exemplars=[]))
            if p.metric.kind == "sum":
                data = sdk.Sum(data_points=points, aggregation_temporality=temporality, is_monotonic=True)
            else:
                data = sdk.Gauge(data_points=points)
            metrics.append(sdk.Metric(p.metric.name, p.metric.description, p.metric.unit, data))
        scope = InstrumentationScope(om.SCOPE, __version__)
        scoped = sdk.ScopeMetrics(scope=scope, metrics=metrics, schema_url="")
        resource = sdk.ResourceMetrics(resource=Resource(self.resource), scope_metrics=[scoped], schema_url="")
        return sdk.MetricsData(resource_metrics=[resource])

    def _delta(self, name: str, attributes: Attributes, value: float) -> tuple[float, int]:
        """What a counter gained since the last delivered push, and since when (a decrease: it started again)."""
        acked = self._acked.get((name, attributes))
        if acked is None:
            return value, self.start_ns
        before, since = acked
        return (value - before if value >= before else value), since

    def _acknowledge(self, batch: list[Points], time_ns: int) -> None:
        acked: dict[tuple[str, Attributes], tuple[float, int]] = {}
        for p in batch:
            if p.metric.kind == "sum":
                for attributes, value in p.points:
                    acked[(p.metric.name, attributes)] = (value, time_ns)
        self._acked = acked  # series that went are forgotten


def resource_attributes(config: Config, in_kubernetes: bool) -> dict[str, str]:
    """The resource: who reports. service.instance.id is the node name, so a restarted daemon's series continue."""
    attributes = {
        "service.name": "wattlens",
        "service.version": __version__,
        "service.instance.id": config.node_name,
        "host.name": config.node_name,
    }
    if in_kubernetes or config.cluster_name:
        attributes["k8s.node.name"] = config.node_name
    if config.cluster_name:
        attributes["k8s.cluster.name"] = config.cluster_name
    attributes.update(config.otlp_resource_attributes)
    return attributes


def open_push(config: Config, in_kubernetes: bool) -> OtlpPush:
    """The push of otlp_endpoint, with the SDK exporter of otlp_protocol (not started), or OtlpUnavailable."""
    exporter = _exporter(config)
    return OtlpPush(
        exporter=exporter,
        resource=resource_attributes(config, in_kubernetes),
        every=max(1, round(config.otlp_interval / config.interval)),
        capacity=config.otlp_queue,
        delta=config.otlp_temporality == "delta",
        backoff_max_s=config.otlp_interval,
        endpoint=_shown(config.otlp_url()),
    )


def _shown(url: str) -> str:
    """The URL for log lines, without credentials in it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _exporter(config: Config) -> Exporter:
    if config.otlp_protocol == "grpc":
        return _grpc_exporter(config)
    try:
        from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
    except ImportError:
        raise OtlpUnavailable(
            "otlp_endpoint is set but the OpenTelemetry OTLP/HTTP exporter is not installed. Fix: pip install "
            "'wattlens[otlp]', or unset otlp_endpoint"
        ) from None
    for setting in ("otlp_ca_file", "otlp_client_cert_file", "otlp_client_key_file"):
        _readable(config, setting)
    exporter: Exporter = OTLPMetricExporter(
        endpoint=config.otlp_url(),
        certificate_file=str(config.otlp_ca_file) if config.otlp_ca_file else None,
        client_certificate_file=str(config.otlp_client_cert_file) if config.otlp_client_cert_file else None,
        client_key_file=str(config.otlp_client_key_file) if config.otlp_client_key_file else None,
        headers=dict(config.otlp_headers),
        timeout=config.otlp_timeout,
        compression=Compression.Gzip if config.otlp_compression == "gzip" else Compression.NoCompression,
    )
    return exporter


def _grpc_exporter(config: Config) -> Exporter:
    try:
        import grpc  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
    except ImportError:
        raise OtlpUnavailable(
            "otlp_protocol=grpc needs the OpenTelemetry OTLP/gRPC exporter (and grpcio), which is not installed. "
            "Fix: pip install 'wattlens[otlp-grpc]', or set otlp_protocol to http/protobuf"
        ) from None
    credentials = None
    url = config.otlp_url()
    if url.startswith("https://"):
        files = [_readable(config, s) for s in ("otlp_ca_file", "otlp_client_key_file", "otlp_client_cert_file")]
        credentials = grpc.ssl_channel_credentials(*files)
    exporter: Exporter = OTLPMetricExporter(
        endpoint=url,
        insecure=url.startswith("http://"),
        credentials=credentials,
        headers=dict(config.otlp_headers),
        timeout=config.otlp_timeout,
        compression=grpc.Compression.Gzip if config.otlp_compression == "gzip" else grpc.Compression.NoCompression,
    )
    return exporter


def _readable(config: Config, setting: str) -> bytes | None:
    path = getattr(config, setting)
    if path is None:
        return None
    try:
        return read_operator_file(path, CREDENTIAL_FILE_LIMIT)
    except OSError as exc:
        raise OtlpUnavailable(
            f"{setting} {path}: cannot be read ({exc.strerror or exc}). Fix: point {setting} to a readable PEM file, "
            "or unset it"
        ) from None
