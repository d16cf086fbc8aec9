"""Snapshot → exposition bytes, rendered lazily: at most once per tick, per format and encoding asked for.

A tick only wraps its snapshot in an `Exposition`; nothing is rendered until a scrape asks for a variant (text
0.0.4 or OpenMetrics, identity or gzip), and each variant is rendered at most once per tick, so an unscraped
tick renders nothing. Sample lines are the same in both formats (only the family headers differ), so they are
made once per tick and shared. Each series' label text is escaped when the series is born and reused while
it lives; a render then costs a dictionary lookup and a float format per series.

The output is byte for byte what prometheus-client renders for the same families (the tests compare them,
series by series, in both formats), including its standard process_* and python_info families. The daemon does
not import prometheus-client: it would cost 4.7 MiB of resident memory for those seven families.
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter import metrics as m
from exporter.carbon.ledger import NG_PER_GRAM
from exporter.counters import MICRO
from exporter.zones import role_of

if TYPE_CHECKING:
    from exporter.otlp.push import PushStats
    from exporter.snapshot import Labels, Snapshot, WorkloadState, ZoneState

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_EOF = "# EOF\n"
_ANY_TICK = -1.0  # lines of pod watts that are all 0 hold for any tick length


# --- the walk: every family of a snapshot, in exposition order ------------------------------------------------


@dataclass(slots=True)
class Rows:
    """One family's samples: label values in `names` order (the catalogue's, plus pod label keys) and a value.

    `workloads`: a CPU family of every workload (pods, containers, services, VMs, users, pod watts), whose
    samples are left out when the walk is asked to (`workload_samples=False`): the renderer makes their lines
    straight from the snapshot, the bulk of the series."""

    family: m.Family
    names: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    workloads: bool = False

    def add(self, values: tuple[str, ...], value: float) -> None:
        self.samples.append((values, value))


def _rows(fam: m.Family) -> Rows:
    return Rows(fam, fam.labels)


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """What the HTTP endpoint reports about itself, copied on the event loop before each tick."""

    scrapes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    rejections: Mapping[str, int] = field(default_factory=dict)
    tls_not_after: float | None = None
    otlp: PushStats | None = None  # the OTLP push's counters, where it runs


def families(snap: Snapshot, endpoint: EndpointStats, render_s: float, workload_samples: bool = True) -> list[Rows]:
    """Every family of the exposition with its samples, in the order they are rendered."""
    node = snap.info.node
    out: list[Rows] = []
    _zone_families(snap, out)
    _node_energy_families(snap, out)

    idle, active = _rows(m.NODE_CPU_IDLE_JOULES), _rows(m.NODE_CPU_ACTIVE_JOULES)
    baseline = _rows(m.NODE_CPU_IDLE_WATTS)
    for d in snap.domains:
        idle.add((node, d.zone, d.source), d.idle_uj / MICRO)
        active.add((node, d.zone, d.source), d.active_uj / MICRO)
        if d.idle_watts is not None:
            baseline.add((node, d.zone, d.source, d.idle_method), d.idle_watts)
    out += (idle, active, baseline)

    up, errors = _rows(m.SOURCE_UP), _rows(m.SOURCE_ERRORS)
    for source in snap.sources:
        up.add((node, source.source, source.device), 1.0 if source.up else 0.0)
    for error in snap.errors:
        errors.add((node, error.source, error.device), error.count)
    out += (up, errors)

    _workload_families(snap, out, workload_samples)
    if snap.accelerators:
        _gpu_families(snap, out)
    _carbon_families(snap, out, workload_samples)

    build, info = _rows(m.BUILD_INFO), _rows(m.NODE_INFO)
    build.add((node, snap.info.version, snap.info.python_version), 1.0)
    i = snap.info
    info.add((node, i.cpu_model, str(i.cpus), str(i.sockets), i.kernel, i.cgroup_version, snap.meter), 1.0)
    out += (build, info)

    t = snap.ticks
    for fam, value in (
        (m.TICKS, t.ticks),
        (m.TICKS_SKIPPED, t.skipped),
        (m.TICK_DURATION, t.duration_s),
        (m.TICK_CPU, t.cpu_s_total),
        (m.LAST_TICK, t.last_unix_time),
        (m.RENDER_DURATION, render_s),
    ):
        rows = _rows(fam)
        rows.add((node,), float(value))
        out.append(rows)
    _endpoint_families(node, endpoint, out)
    return out


def _endpoint_families(node: str, endpoint: EndpointStats, out: list[Rows]) -> None:
    """What the HTTP endpoint and the OTLP push report about themselves."""
    served = _rows(m.SCRAPES)
    for (fmt, encoding), count in sorted(endpoint.scrapes.items()):
        served.add((node, fmt, encoding), count)
    out.append(served)
    rejected = _rows(m.HTTP_REJECTIONS)
    for reason, count in sorted(endpoint.rejections.items()):
        rejected.add((node, reason), count)
    out.append(rejected)
    if endpoint.tls_not_after is not None:
        expiry = _rows(m.TLS_CERT_EXPIRY)
        expiry.add((node,), endpoint.tls_not_after)
        out.append(expiry)
    if endpoint.otlp is not None:
        _otlp_families(node, endpoint.otlp, out)


def _otlp_families(node: str, push: PushStats, out: list[Rows]) -> None:
    pushes = _rows(m.OTLP_PUSHES)
    pushes.add((node, "success"), push.pushes_ok)
    pushes.add((node, "failure"), push.pushes_failed)
    out.append(pushes)
    for fam, value in (
        (m.OTLP_DROPPED, push.dropped),
        (m.OTLP_POINTS, push.points),
        (m.OTLP_QUEUED, push.queued),
        (m.OTLP_DURATION, push.last_duration_s),
    ):
        rows = _rows(fam)
        rows.add((node,), float(value))
        out.append(rows)
    if push.last_success_unix is not None:
        last = _rows(m.OTLP_LAST_SUCCESS)
        last.add((node,), push.last_success_unix)
        out.append(last)


def _zone_families(snap: Snapshot, out: list[Rows]) -> None:
    """Every node counter: CPU zones, superchip modules and the platform, each in its own families."""
    node = snap.info.node
    joules, watts = _rows(m.NODE_CPU_JOULES), _rows(m.NODE_CPU_WATTS)
    wraps, resets = _rows(m.COUNTER_WRAPS), _rows(m.COUNTER_RESETS)
    node_level = []
    for z in snap.zones:
        zone = z.zone
        if role_of(zone.zone) != "cpu":
            node_level.append(z)
            continue
        zone_labels = (node, zone.zone, zone.socket, zone.die, zone.source)
        joules.add((*zone_labels, z.method), z.joules_uj / MICRO)
        wraps.add(zone_labels, z.wraps)
        resets.add(zone_labels, z.resets)
        if z.watts is not None:
            watts.add(zone_labels, z.watts)
    out += (joules, watts, wraps, resets)
    if node_level:  # most nodes have neither a superchip module nor a platform meter
        _node_level_families(node, node_level, out)


def _node_level_families(node: str, zones: list[ZoneState], out: list[Rows]) -> None:
    module, module_watts = _rows(m.NODE_MODULE_JOULES), _rows(m.NODE_MODULE_WATTS)
    platform, platform_watts = _rows(m.NODE_PLATFORM_JOULES), _rows(m.NODE_PLATFORM_WATTS)
    platform_age = _rows(m.NODE_PLATFORM_READING_AGE)
    for z in zones:
        zone = z.zone
        if zone.zone == "module":
            module.add((node, zone.socket, zone.source, z.method), z.joules_uj / MICRO)
            if z.watts is not None:
                module_watts.add((node, zone.socket, zone.source), z.watts)
            continue
        platform.add((node, zone.source, zone.device, z.method), z.joules_uj / MICRO)
        if z.watts is not None:
            platform_watts.add((node, zone.source, zone.device), z.watts)
        if z.reading_age_s is not None:
            platform_age.add((node, zone.source, zone.device), z.reading_age_s)
    if module.samples:
        out += (module, module_watts)
    if platform.samples:
        out += (platform, platform_watts, platform_age)


def _node_energy_families(snap: Snapshot, out: list[Rows]) -> None:
    """The node's total, the rest of the node, how the zones nest, and runtime meter hand-overs."""
    node = snap.info.node
    total = _rows(m.NODE_JOULES)
    total.add((node,), snap.node.total_uj / MICRO)
    out.append(total)
    if snap.node.rest_uj is not None:
        rest = _rows(m.NODE_REST_JOULES)
        rest.add((node,), snap.node.rest_uj / MICRO)
        out.append(rest)
    info = _rows(m.NODE_ZONE_INFO)
    for i in snap.zone_info:
        info.add((node, i.zone, i.source, i.role, i.parent, "true" if i.top_level else "false"), 1.0)
    out.append(info)
    if snap.meter_switches:  # only after a hand-over: most nodes never have one
        switches = _rows(m.METER_SWITCHES)
        switches.add((node,), snap.meter_switches)
        out.append(switches)


def _gpu_families(snap: Snapshot, out: list[Rows]) -> None:
    node = snap.info.node
    joules, watts = _rows(m.NODE_GPU_JOULES), _rows(m.NODE_GPU_WATTS)
    idle, active = _rows(m.NODE_GPU_IDLE_JOULES), _rows(m.NODE_GPU_ACTIVE_JOULES)
    baseline, resets = _rows(m.NODE_GPU_IDLE_WATTS), _rows(m.NODE_GPU_RESETS)
    splits, unattributed = _rows(m.GPU_ATTRIBUTION_TICKS), _rows(m.UNATTRIBUTED_GPU_JOULES)
    info = _rows(m.NODE_GPU_INFO)
    scope_watts, scope_joules = _rows(m.NODE_GPU_SCOPE_WATTS), _rows(m.NODE_GPU_SCOPE_JOULES)
    instances = _rows(m.NODE_GPU_INSTANCE_ACTIVE_JOULES)
    for g in snap.accelerators:
        labels = (node, str(g.device.index), g.device.uuid, g.device.model)
        joules.add((*labels, g.method), g.joules_uj / MICRO)
        idle.add(labels, g.idle_uj / MICRO)
        active.add(labels, g.active_uj / MICRO)
        resets.add(labels, g.resets)
        unattributed.add(labels[:3], g.unattributed_uj / MICRO)
        if g.watts is not None:
            watts.add(labels, g.watts)
        if g.idle_watts is not None:
            baseline.add((*labels, g.idle_method), g.idle_watts)
        for split, count in g.splits:
            splits.add((*labels[:3], split), count)
        info.add((*labels, snap.accelerator_driver, str(g.partitioned).lower(), g.device.partition), 1.0)
        for scope in g.scopes:
            scope_watts.add((*labels, scope.scope), scope.watts)
            scope_joules.add((*labels, scope.scope), scope.joules_uj / MICRO)
        for i in g.instances:
            instances.add((*labels[:3], i.instance, i.profile, i.uuid), i.active_uj / MICRO)
    out += (joules, watts, idle, active, baseline, resets, info, splits, unattributed)
    out += (f for f in (scope_watts, scope_joules, instances) if f.samples)


def _workload_families(snap: Snapshot, out: list[Rows], samples: bool) -> None:
    node = snap.info.node
    sources = {d.zone: d.source for d in snap.domains}
    joules = {kind: Rows(fam, fam.labels, workloads=True) for kind, fam in m.WORKLOAD_FAMILIES.items()}
    gpu_joules = {kind: _rows(fam) for kind, fam in m.WORKLOAD_GPU_FAMILIES.items()}
    gpu_labels = {f"gpu:{g.device.uuid}": (str(g.device.index), g.device.uuid) for g in snap.accelerators}
    pod_watts = Rows(m.POD_CPU_WATTS, m.POD_CPU_WATTS.labels, workloads=True)
    tick_s = snap.tick_seconds
    watts = pod_watts.samples.append
    for w in snap.workloads if samples or gpu_labels else ():
        add = joules[w.kind].samples.append
        values = tuple(value for _, value in w.labels)
        for zone, microjoules in w.energy_uj:
            if zone in gpu_labels:
                gpu_joules[w.kind].add((node, *values, *gpu_labels[zone]), microjoules / MICRO)
            elif samples:
                add(((node, *values, zone, sources.get(zone, snap.meter)), microjoules / MICRO))
        if samples and w.kind == "pod" and tick_s > 0:
            for zone, microjoules in w.last_uj:
                if zone not in gpu_labels:
                    watts(((node, *values, zone, sources.get(zone, snap.meter)), microjoules / MICRO / tick_s))
    out += joules.values()
    if snap.accelerators:
        out += gpu_joules.values()
    out.append(pod_watts)
    unattributed = _rows(m.UNATTRIBUTED_CPU_JOULES)
    for d in snap.domains:
        unattributed.add((node, d.zone, d.source), d.unattributed_uj / MICRO)
    out.append(unattributed)
    _process_families(snap, out)
    _pod_watch_families(snap, out)
    workloads = _rows(m.WORKLOADS)
    counts = dict.fromkeys(m.WORKLOAD_FAMILIES, 0)
    for w in snap.workloads:
        counts[w.kind] += 1
    for kind, count in counts.items():
        workloads.add((node, kind), count)
    out.append(workloads)
    _budget_families(snap, out)
    _walk_families(snap, out)


def _budget_families(snap: Snapshot, out: list[Rows]) -> None:
    budget = snap.budget
    if budget is None:
        return
    node = snap.info.node
    limit, series, dropped = _rows(m.SERIES_BUDGET), _rows(m.WORKLOAD_SERIES), _rows(m.WORKLOAD_SERIES_DROPPED)
    limit.add((node,), budget.max_series)
    series.add((node,), budget.series)
    dropped.add((node,), budget.dropped)
    folded, folds, unfolds = _rows(m.WORKLOADS_FOLDED), _rows(m.WORKLOAD_FOLDS), _rows(m.WORKLOAD_UNFOLDS)
    for rows, counts in ((folded, budget.folded), (folds, budget.folds), (unfolds, budget.unfolds)):
        for kind, count in counts:  # only kinds that have folded (3 series per node, not 21, where none has)
            rows.add((node, kind), count)
    out += (limit, series, folded, folds, unfolds, dropped)


def _carbon_families(snap: Snapshot, out: list[Rows], samples: bool) -> None:
    """The intensity in force, the node's carbon by domain and part, and every workload's grams (workload
    families, whose lines the renderer makes with the joules', unless `samples`)."""
    node, carbon = snap.info.node, snap.carbon
    if snap.carbon_intensity is not None:
        intensity = _rows(m.GRID_CARBON_INTENSITY)
        intensity.add((node, carbon.source, carbon.kind), snap.carbon_intensity)
        out.append(intensity)
        if carbon.age_s is not None:
            age = _rows(m.GRID_CARBON_INTENSITY_AGE)
            age.add((node, carbon.source), carbon.age_s)
            out.append(age)
    for domains, fam, extra, by_kind in (
        (carbon.operational, m.NODE_OPERATIONAL_CARBON, (carbon.kind,), m.WORKLOAD_OPERATIONAL_CARBON),
        (carbon.embodied, m.NODE_EMBODIED_CARBON, (), m.WORKLOAD_EMBODIED_CARBON),
    ):
        if not domains:
            continue
        rows = _rows(fam)
        for d in domains:
            for part, nanograms in (
                ("idle", d.idle_ng),
                ("unattributed", d.unattributed_ng),
                ("workloads", d.workloads_ng),
            ):
                rows.add((node, d.domain, part, *extra), nanograms / NG_PER_GRAM)
        out.append(rows)
        workloads = {kind: Rows(f, f.labels, workloads=True) for kind, f in by_kind.items()}
        operational = fam is m.NODE_OPERATIONAL_CARBON
        for w in snap.workloads if samples else ():
            if not w.top_level:
                continue
            values = tuple(value for _, value in w.labels)
            nanograms = w.operational_ng if operational else w.embodied_ng
            workloads[w.kind].add((node, *values, *extra), nanograms / NG_PER_GRAM)
        out += workloads.values()


def _walk_families(snap: Snapshot, out: list[Rows]) -> None:
    node = snap.info.node
    for fam, value in (
        (m.CGROUP_READ_ERRORS, snap.cgroup_read_errors),
        (m.CGROUP_WALKS_TRUNCATED, snap.cgroup_walks_truncated),
        (m.CGROUP_FULL_WALKS, snap.cgroup_full_walks),
        (m.FD_BUDGET, snap.fd_budget),
        (m.FDS_HELD, snap.fds_held),
    ):
        rows = _rows(fam)
        rows.add((node,), value)
        out.append(rows)
    degraded = _rows(m.FD_DEGRADED)
    for reader in ("cgroups", "processes"):
        degraded.add((node, reader), 1.0 if reader in snap.fd_degraded else 0.0)
    out.append(degraded)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = resource.getpagesize()
_PYTHON = (
    platform.python_version(),
    platform.python_implementation(),
    *platform.python_version_tuple(),
)


def _boot_time(proc: str) -> float:
    try:
        with open(f"{proc}/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


_BOOT_TIME = _boot_time("/proc")


class _OpenFds:
    """process_open_fds, counted at most every `every_s`: listing /proc/self/fd costs ~2 µs per fd, 8 ms a scrape
    with the 4,000 cgroup files of a 1,000-pod node held open."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._at, self._count = -every_s, 0

    def count(self, directory: str) -> int:
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._count, self._at = len(os.listdir(directory)), now
        return self._count


_open_fds = _OpenFds()


def standard_families(proc: str = "/proc/self") -> list[Rows]:
    """This process's CPU, memory, start time and fds, and the Python version, as prometheus-client's process
    and platform collectors export them."""
    vmem, rss, start, cpu, open_fds, max_fds, python = (Rows(f, f.labels) for f in m.STANDARD)
    out: list[Rows] = []
    if _BOOT_TIME:
        try:
            with open(f"{proc}/stat", "rb") as handle:
                parts = handle.read().split(b")")[-1].split()
            vmem.add((), float(parts[20]))
            rss.add((), float(parts[21]) * _PAGE_SIZE)
            start.add((), float(parts[19]) / _CLOCK_TICKS + _BOOT_TIME)
            cpu.add((), float(parts[11]) / _CLOCK_TICKS + float(parts[12]) / _CLOCK_TICKS)
            out += (vmem, rss, start, cpu)
        except (OSError, IndexError, ValueError):
            pass
        try:
            with open(f"{proc}/limits", "rb") as limits:
                line = next(line for line in limits if line.startswith(b"Max open file"))
            max_fds.add((), float(line.split()[3]))
            open_fds.add((), _open_fds.count(f"{proc}/fd"))
            out += (open_fds, max_fds)
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    python.add(_PYTHON, 1.0)
    out.append(python)
    return out


def label_name(key: str) -> str:
    """A Kubernetes label key as a Prometheus label name, as kube-state-metrics writes it."""
    return "label_" + "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key)


def _pod_watch_families(snap: Snapshot, out: list[Rows]) -> None:
    if snap.pod_watch is None:
        return
    node = snap.info.node
    labels = Rows(m.POD_LABELS, (*m.POD_LABELS.labels, *map(label_name, snap.pod_label_keys)))
    for row in snap.pod_labels:
        labels.add((node, row.namespace, row.pod, row.uid, row.owner_kind, row.owner_name, *row.values), 1.0)
    watch = snap.pod_watch
    requests, failures = _rows(m.POD_WATCH_REQUESTS), _rows(m.POD_WATCH_ERRORS)
    requests.add((node, "list"), watch.lists)
    requests.add((node, "watch"), watch.watches)
    failures.add((node,), watch.errors)
    out += (labels, requests, failures)


def _process_families(snap: Snapshot, out: list[Rows]) -> None:
    if not (snap.processes or snap.processes_other):
        return
    node = snap.info.node
    sources = {d.zone: d.source for d in snap.domains}
    processes = _rows(m.PROCESS_CPU_JOULES)
    for process in snap.processes:
        key = process.key
        for zone, microjoules in process.energy_uj:
            labels = (node, str(key.pid), key.comm, key.container_id, key.unit, zone, sources.get(zone, snap.meter))
            processes.add(labels, microjoules / MICRO)
    for zone, microjoules in snap.processes_other:
        processes.add((node, "", "other", "", "", zone, sources.get(zone, snap.meter)), microjoules / MICRO)
    out.append(processes)


# --- formatting ----------------------------------------------------------------------------------------------


_SPECIAL = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def _value(value: float) -> str:
    """go_float, quicker for the common case: a float whose dot is among its first 7 characters."""
    text = repr(value)
    dot = text.find(".")
    return text if 0 <= dot <= 6 or value <= 0 < dot else go_float(value)


def go_float(value: float) -> str:
    """A sample value as Prometheus' Go code writes it (prometheus-client's floatToGoString, same bytes)."""
    text = repr(float(value))
    dot = text.find(".")
    if dot > 6 and value > 0:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    if dot < 0:  # nan, inf, or already an exponent (1e+22)
        return _SPECIAL.get(text, text)
    return text


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(frozen=True, slots=True)
class _Names:
    """How a family is named in each format."""

    sample: str  # the name on every sample line (counters end in _total, info families in _info)
    text_header: str
    openmetrics_header: str


def _names(fam: m.Family) -> _Names:
    name = fam.full_name
    if fam.kind == "counter":
        text = f"# HELP {name} {_help_text(fam.help)}\n# TYPE {name} counter\n"
        base = name.removesuffix("_total")
        return _Names(name, text, f"# HELP {base} {_help_openmetrics(fam.help)}\n# TYPE {base} counter\n")
    if fam.kind == "info":
        text = f"# HELP {name}_info {_help_text(fam.help)}\n# TYPE {name}_info gauge\n"
        return _Names(name + "_info", text, f"# HELP {name} {_help_openmetrics(fam.help)}\n# TYPE {name} info\n")
    text = f"# HELP {name} {_help_text(fam.help)}\n# TYPE {name} gauge\n"
    return _Names(name, text, f"# HELP {name} {_help_openmetrics(fam.help)}\n# TYPE {name} gauge\n")


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _help_openmetrics(text: str) -> str:
    return escape_label_value(text)


class _FamilyLines:
    """The label text of one family's live series, made when a series is born and kept while it lives."""

    __slots__ = ("label_names", "names", "order", "prefixes")

    def __init__(self, fam: m.Family, label_names: tuple[str, ...]) -> None:
        self.names = _names(fam)
        self.label_names = label_names
        self.order = sorted(range(len(label_names)), key=label_names.__getitem__)  # label names sort
        self.prefixes: dict[tuple[str, ...], str] = {}

    def prefix(self, values: tuple[str, ...]) -> str:
        names = self.label_names
        pairs = ",".join(f'{names[i]}="{escape_label_value(values[i])}"' for i in self.order)
        return f"{self.names.sample}{{{pairs}}} " if pairs else f"{self.names.sample} "

    def render(self, samples: Sequence[tuple[tuple[str, ...], float]]) -> str:
        """The sample lines. Label text of series that went is dropped once it is as much as the live one's."""
        known = self.prefixes
        get, lines = known.get, []
        for values, value in samples:
            prefix = get(values)
            if prefix is None:
                prefix = known[values] = self.prefix(values)
            lines.append(f"{prefix}{_value(value)}\n")
        if len(known) > 2 * len(samples) + 16:
            self.prefixes = {values: known[values] for values, _ in samples}
        return "".join(lines)


@dataclass(frozen=True, slots=True)
class _Body:
    """One tick's sample lines per family, shared by both formats."""

    sections: tuple[tuple[_Names, str], ...]

    def parts(self, openmetrics: bool) -> list[str]:
        if openmetrics:
            return [*(p for names, lines in self.sections for p in (names.openmetrics_header, lines)), _EOF]
        return [p for names, lines in self.sections for p in (names.text_header, lines)]

    def encoded(self, openmetrics: bool) -> bytes:
        """The variant's bytes, encoded part by part: one non-ASCII character in a help text would otherwise widen
        the whole joined body to two bytes per character and make its encoding 20 times slower."""
        return b"".join([part.encode() for part in self.parts(openmetrics)])

    def gzipped(self, openmetrics: bool) -> bytes:
        """The variant compressed as it is made, without the uncompressed whole (what Prometheus asks for)."""
        from exporter.deflate import gzip_parts  # noqa: PLC0415 (resident only once a scrape asks for gzip)

        return gzip_parts(self.parts(openmetrics))


class Renderer:
    """Holds the per-series label text across ticks.

    Renders run on one thread at a time (the lock): the daemon's render thread, or the caller's.
    """

    def __init__(self, executor: Executor | None = None, standard: bool = True) -> None:
        self.executor = executor  # where scrapes on the event loop have variants rendered
        self.standard = standard  # with the process_* and python_info families
        self._families: dict[tuple[str, tuple[str, ...]], _FamilyLines] = {}
        self._lock = threading.Lock()
        self.last_render_s = 0.0  # wall time spent rendering the previous tick's exposition
        self._current: Exposition | None = None
        self._workload_context: tuple[object, ...] = ()
        # id(labels) → its label text by zone (or "watts:" + zone) and its last lines
        self._workload_prefixes: dict[int, _WorkloadText] = {}
        self._workload_by_value: dict[tuple[str, Labels], dict[str, str]] = {}  # the same, by value

    def render(self, snap: Snapshot, endpoint: EndpointStats | None = None) -> Exposition:
        """This tick's exposition; nothing is rendered until a variant is asked for."""
        if self._current is not None:
            self.last_render_s = self._current.render_s
        stats, render_s = endpoint or EndpointStats(), self.last_render_s
        exposition = Exposition(snap.ready, lambda: self._body(snap, stats, render_s), self)
        self._current = exposition
        return exposition

    def _body(self, snap: Snapshot, endpoint: EndpointStats, render_s: float) -> _Body:
        rows = families(snap, endpoint, render_s, workload_samples=False)
        if self.standard:
            rows += standard_families()
        known, seen = self._families, {}
        for family in rows:
            key = (family.family.full_name, family.names)
            seen[key] = known.get(key) or _FamilyLines(family.family, family.names)
        self._families = seen  # families gone this tick (pod label keys changed) drop their series
        workload_lines = self._workload_lines(snap)
        sections = []
        for family in rows:
            lines = seen[(family.family.full_name, family.names)]
            text = workload_lines[family.family.full_name] if family.workloads else lines.render(family.samples)
            sections.append((lines.names, text))
        return _Body(tuple(sections))

    def _workload_lines(self, snap: Snapshot) -> dict[str, str]:
        """The lines of the CPU workload families, the pods' watts and the workloads' carbon families, in the
        order `families` has their samples. A workload whose state is the one of the previous render (the engine
        hands out the same record while its energy does not change: an idle workload) reuses its lines as they
        were; the others are made from label text kept per workload (by its label values) and zone."""
        node, meter, tick_s = snap.info.node, snap.meter, snap.tick_seconds
        sources = {d.zone: d.source for d in snap.domains}
        gpu_zones = frozenset(f"gpu:{g.device.uuid}" for g in snap.accelerators)
        carbon_on = (snap.carbon.kind, bool(snap.carbon.operational), bool(snap.carbon.embodied))
        # The node, each domain's meter, the accelerators and the carbon families: the same in a running daemon
        # unless one changes.
        context = (node, meter, tuple(sources.items()), gpu_zones, carbon_on)
        if context != self._workload_context:
            self._workload_context, self._workload_prefixes, self._workload_by_value = context, {}, {}
        names = {kind: fam.full_name for kind, fam in m.WORKLOAD_FAMILIES.items()}
        family_lines = {
            fam.full_name: self._families[(fam.full_name, fam.labels)] for fam in m.WORKLOAD_FAMILIES.values()
        }
        watts = _PodWatts(node, meter, sources, gpu_zones, tick_s, self._families[_WATTS_KEY])
        out: dict[str, list[str]] = {name: [] for name in (*names.values(), m.POD_CPU_WATTS.full_name)}
        watts_out = out[m.POD_CPU_WATTS.full_name]
        carbon = self._carbon_lines(snap, out)
        # Per kind: where its joules lines go, and its carbon lines (one list per carbon family).
        joules_out = {kind: out[name] for kind, name in names.items()}
        carbon_out = {kind: [family.lines[kind][1] for family in carbon] for kind in names}
        # By the identity of a workload's label values: the engine keeps that tuple while the names stay, so
        # a lookup hashes an int. The entry holds the tuple, so its id cannot be reused while it is cached.
        known, by_value = self._workload_prefixes, self._workload_by_value
        for w in snap.workloads:
            kept = known.get(id(w.labels))
            if kept is None or kept.labels is not w.labels:  # a new workload, or new names: by value then
                name = names[w.kind]
                zones = by_value.get((name, w.labels))
                if zones is None:
                    zones = by_value[(name, w.labels)] = {}
                kept = known[id(w.labels)] = _WorkloadText(w.labels, name, zones, w.top_level)
            made = kept.tick_s
            if kept.state is not w or not (made is None or made == tick_s or made < 0 < tick_s):
                mine, lines = kept.zones, []
                for zone, microjoules in w.energy_uj:
                    prefix = mine.get(zone)
                    if prefix is None:
                        if zone in gpu_zones:
                            continue
                        values = (node, *(value for _, value in w.labels), zone, sources.get(zone, meter))
                        prefix = mine[zone] = family_lines[kept.family].prefix(values)
                    joules = microjoules / MICRO
                    text = repr(joules)  # _value, inlined: this line runs for most series
                    dot = text.find(".")
                    lines.append(f"{prefix}{text if 0 <= dot <= 6 or joules <= 0 < dot else go_float(joules)}\n")
                kept.state, kept.joules = w, "".join(lines)
                kept.watts, kept.tick_s = watts.lines(w, mine) if w.kind == "pod" else ("", None)
                kept.carbon = _carbon_workload_lines(node, w, mine, carbon) if kept.top_level and carbon else ()
            joules_out[w.kind].append(kept.joules)
            if kept.watts:
                watts_out.append(kept.watts)
            if kept.carbon:  # none for a workload inside another
                for lines_out, text in zip(carbon_out[w.kind], kept.carbon, strict=True):
                    lines_out.append(text)
        if len(known) > 2 * len(snap.workloads) + 16 or len(by_value) > 2 * len(snap.workloads) + 16:
            live = {id(w.labels) for w in snap.workloads}  # workloads went: drop their label text
            self._workload_prefixes = {key: value for key, value in known.items() if key in live}
            self._workload_by_value = {(t.family, t.labels): t.zones for t in self._workload_prefixes.values()}
        return {name: "".join(lines) for name, lines in out.items()}

    def _carbon_lines(self, snap: Snapshot, out: dict[str, list[str]]) -> list[_CarbonLines]:
        """The workload carbon families this tick has: per kind their label text and line list (in `out`)."""
        carbon = []
        for key, on, by_kind, extra, grams in (
            ("co2:op", snap.carbon.operational, m.WORKLOAD_OPERATIONAL_CARBON, (snap.carbon.kind,), _operational),
            ("co2:emb", snap.carbon.embodied, m.WORKLOAD_EMBODIED_CARBON, (), _embodied),
        ):
            if on:
                lines = {kind: (self._families[(f.full_name, f.labels)], out.setdefault(f.full_name, []))
                         for kind, f in by_kind.items()}  # fmt: skip
                carbon.append(_CarbonLines(key, lines, extra, grams))
        return carbon


@dataclass(frozen=True, slots=True)
class _CarbonLines:
    """One carbon family per workload kind: where its lines go, its label text, the extra label values."""

    key: str  # the workload's label-text cache key
    lines: dict[str, tuple[_FamilyLines, list[str]]]
    extra: tuple[str, ...]
    grams: Callable[[WorkloadState], int]  # nanograms


def _carbon_workload_lines(
    node: str, w: WorkloadState, mine: dict[str, str], carbon: list[_CarbonLines]
) -> tuple[str, ...]:
    """A top-level workload's carbon lines, one per family in `carbon` (operational, embodied). A workload
    inside another has none (a pod's containers: their grams are in their pod's)."""
    lines = []
    for family in carbon:
        prefix = mine.get(family.key)
        if prefix is None:
            values = (node, *(value for _, value in w.labels), *family.extra)
            prefix = mine[family.key] = family.lines[w.kind][0].prefix(values)
        lines.append(f"{prefix}{_value(family.grams(w) / NG_PER_GRAM)}\n")
    return tuple(lines)


def _operational(w: WorkloadState) -> int:
    return w.operational_ng


def _embodied(w: WorkloadState) -> int:
    return w.embodied_ng


@dataclass(slots=True)
class _WorkloadText:
    """A workload's label text by zone (and "watts:" + zone), and the lines last made for it: kept while its
    state is the one they were made from. `tick_s`: the tick length its watts lines were divided by (None: it
    has none; _ANY_TICK: every one is 0, whatever the tick's length)."""

    labels: Labels
    family: str
    zones: dict[str, str]
    top_level: bool  # it has carbon lines (WorkloadState.top_level: by its labels, which this text is of)
    state: WorkloadState | None = None
    joules: str = ""
    watts: str = ""
    tick_s: float | None = None
    carbon: tuple[str, ...] = ()  # its carbon lines, one per carbon family of the render


_WATTS_KEY = (m.POD_CPU_WATTS.full_name, m.POD_CPU_WATTS.labels)


@dataclass(frozen=True, slots=True)
class _PodWatts:
    """What a render needs to make a pod's watts lines."""

    node: str
    meter: str
    sources: dict[str, str]
    gpu_zones: frozenset[str]
    tick_s: float
    family: _FamilyLines

    def lines(self, w: WorkloadState, mine: dict[str, str]) -> tuple[str, float]:
        """The pod's watts lines, and the tick length they hold for: _ANY_TICK when every one is 0 (or there is
        none), else this tick's. `mine`: its label text by "watts:" + zone, filled in as zones come."""
        tick_s = self.tick_s
        if tick_s <= 0:
            return "", tick_s
        lines, made = [], _ANY_TICK
        for zone, microjoules in w.last_uj:
            if zone in self.gpu_zones:
                continue
            prefix = mine.get("watts:" + zone)
            if prefix is None:
                values = (self.node, *(value for _, value in w.labels), zone, self.sources.get(zone, self.meter))
                prefix = mine["watts:" + zone] = self.family.prefix(values)
            lines.append(f"{prefix}{_value(microjoules / MICRO / tick_s)}\n")
            if microjoules:
                made = tick_s
        return "".join(lines), made


Variant = tuple[bool, bool]  # (openmetrics, gzipped)


class Exposition:
    """One tick's metrics; each variant is rendered on first use, once."""

    def __init__(self, ready: bool, body: Callable[[], _Body] | None, renderer: Renderer | None) -> None:
        self.ready = ready
        self.render_s = 0.0  # wall time spent rendering this exposition so far
        self._make_body = body
        self._renderer = renderer
        self._body: _Body | None = None
        self._variants: dict[Variant, bytes] = {}
        self._pending: dict[Variant, asyncio.Future[bytes]] = {}

    @classmethod
    def of(cls, text: bytes, openmetrics: bytes, ready: bool = True) -> Exposition:
        """An exposition already rendered (tests, tools)."""
        from exporter.deflate import gzip_bytes  # noqa: PLC0415

        exposition = cls(ready, None, None)
        exposition._variants = {
            (False, False): text,
            (True, False): openmetrics,
            (False, True): gzip_bytes(text),
            (True, True): gzip_bytes(openmetrics),
        }
        return exposition

    def rendered(self) -> list[Variant]:
        return sorted(self._variants)

    def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The bytes of one variant, rendered now if this is its first use (on the calling thread)."""
        variant = (openmetrics, gzipped)
        done = self._variants.get(variant)
        if done is not None:
            return done
        renderer = self._renderer
        assert renderer is not None  # `of` made every variant
        with renderer._lock:
            done = self._variants.get(variant)
            if done is None:
                started = time.perf_counter()
                done = self._render(variant)
                self.render_s += time.perf_counter() - started
        return done

    def _render(self, variant: Variant) -> bytes:
        openmetrics, gzipped = variant
        plain = self._variants.get((openmetrics, False))
        if gzipped and plain is not None:
            from exporter.deflate import gzip_bytes  # noqa: PLC0415

            done = gzip_bytes(plain)
        else:
            if self._body is None:
                assert self._make_body is not None
                self._body = self._make_body()
            done = self._body.gzipped(openmetrics) if gzipped else self._body.encoded(openmetrics)
        self._variants[variant] = done
        return done

    async def body_async(self, openmetrics: bool, gzipped: bool) -> bytes:
        """`body` for the event loop: a variant already rendered is returned at once; the first request for
        one renders it on the renderer's executor, and requests arriving meanwhile wait for that render."""
        variant = (openmetrics, gzipped)
        done = self._variants.get(variant)
        if done is not None:
            return done
        pending = self._pending.get(variant)
        if pending is None:
            executor = self._renderer.executor if self._renderer is not None else None
            pending = asyncio.get_running_loop().run_in_executor(executor, self.body, openmetrics, gzipped)
            self._pending[variant] = pending
        return await asyncio.shield(pending)  # a client that goes away does not cancel the render

    # Conveniences for tools and tests.
    @property
    def text(self) -> bytes:
        return self.body(False, False)

    @property
    def openmetrics(self) -> bytes:
        return self.body(True, False)

    @property
    def text_gzip(self) -> bytes:
        return self.body(False, True)

    @property
    def openmetrics_gzip(self) -> bytes:
        return self.body(True, True)
