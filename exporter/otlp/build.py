"""A snapshot as OTLP points (pure; no OpenTelemetry import): every metric of mapping.py with its data points.

The points are the snapshot's values, exactly what the Prometheus exposition of the same tick shows (joules are
µJ / 1e6). Attribute tuples of a workload are made once per label tuple and kept while it lives (the engine keeps
that tuple while the names stay), as the exposition keeps its label text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.carbon.ledger import NG_PER_GRAM
from exporter.counters import MICRO
from exporter.otlp import mapping as om
from exporter.workloads.labels import rollup_group, rollup_labels
from exporter.zones import role_of

if TYPE_CHECKING:
    from exporter.snapshot import Labels, Snapshot, WorkloadState

AttributeValue = str | int | bool
Attributes = tuple[tuple[str, AttributeValue], ...]
GPU_PREFIX = "gpu:"


@dataclass(frozen=True, slots=True)
class Points:
    """One OTLP metric's data points of a tick: (attributes, value)."""

    metric: om.OtlpMetric
    points: tuple[tuple[Attributes, float], ...]


def _present(pairs: tuple[tuple[str, AttributeValue], ...]) -> Attributes:
    """Attributes without empty values (a name the node does not know is absent, not "")."""
    return tuple((key, value) for key, value in pairs if value != "")


class Builder:
    """Makes each tick's points; keeps the attribute tuples of workloads and domains across ticks."""

    def __init__(self) -> None:
        self._workloads: dict[int, tuple[Labels, Attributes]] = {}  # id(labels) → (labels, attributes)
        self._domains: dict[str, Attributes] = {}

    def points(self, snap: Snapshot, dropped_pushes: int = 0) -> list[Points]:
        out = self._node(snap)
        out += self._workload_points(snap)
        if snap.processes or snap.processes_other:
            out.append(self._processes(snap))
        if snap.carbon_intensity is not None:
            out.append(Points(om.CARBON, (((), snap.carbon_intensity),)))
        out += self._carbon(snap)
        up = tuple(
            (_present((("wattlens.source", s.source), ("wattlens.device", s.device))), 1.0 if s.up else 0.0)
            for s in snap.sources
        )
        out.append(Points(om.SOURCE_UP, up))
        out.append(Points(om.TICKS, (((), float(snap.ticks.ticks)),)))
        if snap.budget is not None:
            folded = tuple(((("wattlens.workload.kind", kind),), float(n)) for kind, n in snap.budget.folded)
            out.append(Points(om.FOLDED, folded))
        out.append(Points(om.DROPPED, (((), float(dropped_pushes)),)))
        return [p for p in out if p.points]

    def _node(self, snap: Snapshot) -> list[Points]:
        energy: list[tuple[Attributes, float]] = []
        power: list[tuple[Attributes, float]] = []
        host: list[tuple[Attributes, float]] = []
        host_power: list[tuple[Attributes, float]] = []
        for z in snap.zones:
            zone = z.zone
            if role_of(zone.zone) == "platform":  # the whole host: hw.host.*, never added to hw.energy
                attributes = _present((("hw.id", zone.device), ("wattlens.source", zone.source)))
                host.append((attributes, z.joules_uj / MICRO))
                if z.watts is not None:
                    host_power.append((attributes, z.watts))
                continue
            attributes = _present(
                (
                    ("hw.id", zone.device),
                    ("hw.type", om.hw_type(zone.zone)),
                    ("hw.name", zone.zone),
                    ("hw.parent", om.hw_parent(zone.zone, zone.device)),
                    ("wattlens.socket", zone.socket),
                    ("wattlens.die", zone.die),
                    ("wattlens.source", zone.source),
                )
            )
            energy.append((attributes, z.joules_uj / MICRO))
            if z.watts is not None:
                power.append((attributes, z.watts))
        idle: list[tuple[Attributes, float]] = []
        active: list[tuple[Attributes, float]] = []
        unattributed: list[tuple[Attributes, float]] = []
        for d in snap.domains:
            attributes = (("hw.type", om.hw_type(d.zone)), ("hw.name", d.zone), ("wattlens.source", d.source))
            idle.append((attributes, d.idle_uj / MICRO))
            active.append((attributes, d.active_uj / MICRO))
            unattributed.append((attributes, d.unattributed_uj / MICRO))
        for g in snap.accelerators:
            gpu = self._domain(f"{GPU_PREFIX}{g.device.uuid}")
            device = (*gpu, ("hw.name", g.device.model), ("wattlens.gpu.index", str(g.device.index)))
            energy.append((device, g.joules_uj / MICRO))
            if g.watts is not None:
                power.append((device, g.watts))
            idle.append((gpu, g.idle_uj / MICRO))
            active.append((gpu, g.active_uj / MICRO))
            unattributed.append((gpu, g.unattributed_uj / MICRO))
        out = [
            Points(om.HW_ENERGY, tuple(energy)),
            Points(om.HW_POWER, tuple(power)),
            Points(om.HOST_ENERGY, tuple(host)),
            Points(om.HOST_POWER, tuple(host_power)),
            Points(om.NODE_ENERGY, (((), snap.node.total_uj / MICRO),)),
            Points(om.IDLE, tuple(idle)),
            Points(om.ACTIVE, tuple(active)),
            Points(om.UNATTRIBUTED, tuple(unattributed)),
        ]
        if snap.node.rest_uj is not None:
            out.append(Points(om.REST, (((), snap.node.rest_uj / MICRO),)))
        return out

    def _domain(self, domain: str) -> Attributes:
        """A CPU zone (hw.type, hw.name) or a GPU (hw.type gpu, hw.id its UUID)."""
        known = self._domains.get(domain)
        if known is None:
            if domain.startswith(GPU_PREFIX):
                known = (("hw.type", "gpu"), ("hw.id", domain[len(GPU_PREFIX) :]))
            else:
                known = (("hw.type", om.hw_type(domain)), ("hw.name", domain))
            self._domains[domain] = known
        return known

    def _workload(self, w: WorkloadState) -> Attributes:
        entry = self._workloads.get(id(w.labels))
        if entry is not None and entry[0] is w.labels:
            return entry[1]
        names = om.WORKLOAD_ATTRIBUTES[w.kind]
        if w.kind == "container" and w.label("parent_kind") == "pod":
            names = (*names[:3], om.POD_CONTAINER_NAME, *names[4:])
        attributes = _present(tuple(zip(names, (value for _, value in w.labels), strict=True)))
        if w.labels == rollup_labels(w.kind, *rollup_group(w.kind, w.labels)):
            attributes += ((om.ROLLUP, True),)
        self._workloads[id(w.labels)] = (w.labels, attributes)  # holds the tuple: its id is not reused meanwhile
        return attributes

    def _workload_points(self, snap: Snapshot) -> list[Points]:
        by_kind: dict[str, list[tuple[Attributes, float]]] = {kind: [] for kind in om.WORKLOADS}
        for w in snap.workloads:
            base = self._workload(w)
            points = by_kind[w.kind]
            for domain, microjoules in w.energy_uj:
                points.append((base + self._domain(domain), microjoules / MICRO))
        if len(self._workloads) > 2 * len(snap.workloads) + 16:  # workloads went: forget their attributes
            live = {id(w.labels) for w in snap.workloads}
            self._workloads = {key: entry for key, entry in self._workloads.items() if key in live}
        return [Points(om.WORKLOADS[kind], tuple(points)) for kind, points in by_kind.items()]

    def _carbon(self, snap: Snapshot) -> list[Points]:
        """The node's grams by domain and part, and every top-level workload's (as the exposition has them)."""
        carbon = snap.carbon
        kind = (("wattlens.carbon.kind", carbon.kind),)
        out = []
        for metric, domains, extra in (
            (om.NODE_OPERATIONAL_CARBON, carbon.operational, kind),
            (om.NODE_EMBODIED_CARBON, carbon.embodied, ()),
        ):
            points = []
            for d in domains:
                where = (("hw.type", "host"),) if d.domain == "host" else self._domain(d.domain)
                for part, nanograms in (
                    ("idle", d.idle_ng),
                    ("unattributed", d.unattributed_ng),
                    ("workloads", d.workloads_ng),
                ):
                    points.append(((*where, ("wattlens.carbon.part", part), *extra), nanograms / NG_PER_GRAM))
            out.append(Points(metric, tuple(points)))
        for part, domains, extra in (("operational", carbon.operational, kind), ("embodied", carbon.embodied, ())):
            if not domains:  # not counted on this node (no intensity, or embodied off): no series, as on /metrics
                continue
            by_kind: dict[str, list[tuple[Attributes, float]]] = {}
            for w in snap.workloads:
                if w.top_level:
                    nanograms = w.operational_ng if part == "operational" else w.embodied_ng
                    by_kind.setdefault(w.kind, []).append(((*self._workload(w), *extra), nanograms / NG_PER_GRAM))
            out += [Points(om.WORKLOAD_CARBON[(k, part)], tuple(points)) for k, points in by_kind.items()]
        return out

    def _processes(self, snap: Snapshot) -> Points:
        points: list[tuple[Attributes, float]] = []
        for process in snap.processes:
            key = process.key
            base = _present(
                (
                    ("process.pid", key.pid),
                    ("process.command", key.comm),
                    ("container.id", key.container_id),
                    ("wattlens.systemd.unit", key.unit),
                )
            )
            points += [(base + self._domain(zone), uj / MICRO) for zone, uj in process.energy_uj]
        points += [(((om.ROLLUP, True), *self._domain(zone)), uj / MICRO) for zone, uj in snap.processes_other]
        return Points(om.PROCESS, tuple(points))


def count(batch: list[Points]) -> int:
    return sum(len(p.points) for p in batch)
