"""`wattlens once --json`: one tick's Snapshot as a JSON document, for scripts and `jq`.

It carries every value the exposition carries (tests/test_once_json.py checks each series of the exposition
against it), grouped by what it describes rather than by metric family: zones, how they nest, the node's total,
domains, workloads with their labels by name, GPUs, processes, sources. Joules are floats (µJ / 1e6), as in the
exposition. Two values of the exposition describe the HTTP side, not a tick, and are not here: render time and
scrapes served.
"""

from __future__ import annotations

from typing import Any

from exporter.carbon.ledger import NG_PER_GRAM
from exporter.counters import MICRO
from exporter.snapshot import CarbonDomain, Snapshot, WorkloadState
from exporter.workloads.labels import LABELS, rollup_group, rollup_labels

SCHEMA_VERSION = 1


def _joules(microjoules: int) -> float:
    return microjoules / MICRO


def _workload(
    w: WorkloadState, sources: dict[str, str], gpu_labels: dict[str, tuple[str, str]], tick_s: float
) -> dict[str, Any]:
    last = dict(w.last_uj)
    cpu, gpu = [], []
    for zone, microjoules in w.energy_uj:
        if zone in gpu_labels:
            index, uuid = gpu_labels[zone]
            gpu.append({"gpu": index, "gpu_uuid": uuid, "joules": _joules(microjoules)})
            continue
        watts = _joules(last[zone]) / tick_s if zone in last and tick_s > 0 else None
        cpu.append({"zone": zone, "source": sources.get(zone, ""), "joules": _joules(microjoules), "watts": watts})
    return {
        "kind": w.kind,
        "labels": dict(w.labels),
        "rollup": w.labels == rollup_labels(w.kind, *rollup_group(w.kind, w.labels)),  # the series budget's
        "ended": not w.last_uj,  # no share in this tick: ended, or its series frozen by the series budget
        "cpu": cpu,
        "gpu": gpu,
        # Carbon is per top-level workload: a pod's containers are in their pod's grams (null here).
        "operational_carbon_grams": w.operational_ng / NG_PER_GRAM if w.top_level else None,
        "embodied_carbon_grams": w.embodied_ng / NG_PER_GRAM if w.top_level else None,
    }


def _carbon(domains: tuple[CarbonDomain, ...]) -> list[dict[str, Any]]:
    return [
        {
            "domain": d.domain,
            "idle_grams": d.idle_ng / NG_PER_GRAM,
            "unattributed_grams": d.unattributed_ng / NG_PER_GRAM,
            "workloads_grams": d.workloads_ng / NG_PER_GRAM,
        }
        for d in domains
    ]


def snapshot_document(snap: Snapshot) -> dict[str, Any]:
    sources = {d.zone: d.source for d in snap.domains}
    gpu_labels = {f"gpu:{g.device.uuid}": (str(g.device.index), g.device.uuid) for g in snap.accelerators}
    counts = dict.fromkeys(LABELS, 0)
    for w in snap.workloads:
        counts[w.kind] += 1
    ticks = snap.ticks
    return {
        "schema": SCHEMA_VERSION,
        "node": snap.info.node,
        "meter": snap.meter,
        "ready": snap.ready,
        "build": {"version": snap.info.version, "python_version": snap.info.python_version},
        "host": {
            "cpu_model": snap.info.cpu_model,
            "cpus": snap.info.cpus,
            "sockets": snap.info.sockets,
            "kernel": snap.info.kernel,
            "cgroup_version": snap.info.cgroup_version,
        },
        "ticks": {
            "total": ticks.ticks,
            "skipped": ticks.skipped,
            "duration_seconds": ticks.duration_s,
            "cpu_seconds_total": ticks.cpu_s_total,
            "last_timestamp_seconds": ticks.last_unix_time,
            "length_seconds": snap.tick_seconds,
        },
        "zones": [
            {
                "zone": z.zone.zone,
                "socket": z.zone.socket,
                "die": z.zone.die,
                "source": z.zone.source,
                "device": z.zone.device,
                "method": z.method,
                "joules": _joules(z.joules_uj),
                "watts": z.watts,
                "up": z.up,
                "wraps": z.wraps,
                "resets": z.resets,
                "reading_age_seconds": z.reading_age_s,
            }
            for z in snap.zones
        ],
        "containment": [
            {
                "zone": i.zone,
                "source": i.source,
                "role": i.role,
                "parent": i.parent,
                "top_level": i.top_level,
            }
            for i in snap.zone_info
        ],
        "node_energy": {
            "joules": _joules(snap.node.total_uj),
            "rest_of_node_joules": None if snap.node.rest_uj is None else _joules(snap.node.rest_uj),
        },
        "meter_switches": snap.meter_switches,
        "domains": [
            {
                "zone": d.zone,
                "source": d.source,
                "idle_joules": _joules(d.idle_uj),
                "active_joules": _joules(d.active_uj),
                "idle_watts": d.idle_watts,
                "idle_method": d.idle_method,
            }
            for d in snap.domains
        ],
        "unattributed": [
            {"zone": d.zone, "source": d.source, "joules": _joules(d.unattributed_uj)} for d in snap.domains
        ],
        "workloads": [_workload(w, sources, gpu_labels, snap.tick_seconds) for w in snap.workloads],
        "workload_counts": counts,
        "processes": [
            {
                "pid": p.key.pid,
                "comm": p.key.comm,
                "container_id": p.key.container_id,
                "unit": p.key.unit,
                "cpu": [
                    {"zone": zone, "source": sources.get(zone, ""), "joules": _joules(uj)} for zone, uj in p.energy_uj
                ],
            }
            for p in snap.processes
        ],
        "processes_other": [
            {"zone": zone, "source": sources.get(zone, ""), "joules": _joules(uj)} for zone, uj in snap.processes_other
        ],
        "gpus": [
            {
                "gpu": str(g.device.index),
                "gpu_uuid": g.device.uuid,
                "gpu_model": g.device.model,
                "scope": g.device.scope,
                "source": g.source,
                "driver": snap.accelerator_driver,
                "mig": g.partitioned,
                "method": g.method,
                "up": g.up,
                "joules": _joules(g.joules_uj),
                "watts": g.watts,
                "idle_joules": _joules(g.idle_uj),
                "active_joules": _joules(g.active_uj),
                "unattributed_joules": _joules(g.unattributed_uj),
                "idle_watts": g.idle_watts,
                "idle_method": g.idle_method,
                "resets": g.resets,
                "attribution_ticks": dict(g.splits),
                "partition": g.device.partition,
                "scopes": [{"scope": c.scope, "watts": c.watts, "joules": _joules(c.joules_uj)} for c in g.scopes],
                "instances": [
                    {
                        "gpu_instance": i.instance,
                        "mig_profile": i.profile,
                        "mig_uuid": i.uuid,
                        "active_joules": _joules(i.active_uj),
                    }
                    for i in g.instances
                ],
            }
            for g in snap.accelerators
        ],
        "sources": [{"source": s.source, "device": s.device, "up": s.up} for s in snap.sources],
        "source_errors": [{"source": e.source, "device": e.device, "count": e.count} for e in snap.errors],
        "cgroups": {
            "read_errors": snap.cgroup_read_errors,
            "walks_truncated": snap.cgroup_walks_truncated,
            "full_walks": snap.cgroup_full_walks,
        },
        "fds": {
            "budget": snap.fd_budget,
            "held": snap.fds_held,
            "degraded": {reader: reader in snap.fd_degraded for reader in ("cgroups", "processes")},
        },
        "series_budget": _budget(snap),
        "kubernetes": _kubernetes(snap),
        "carbon_intensity_grams_per_kwh": snap.carbon_intensity,
        "carbon": {
            "source": snap.carbon.source,
            "kind": snap.carbon.kind,
            "age_seconds": snap.carbon.age_s,
            "operational": _carbon(snap.carbon.operational),
            "embodied": _carbon(snap.carbon.embodied),
        },
    }


def _budget(snap: Snapshot) -> dict[str, Any] | None:
    """What the series budget did (None without workload series)."""
    budget = snap.budget
    if budget is None:
        return None
    return {
        "max_series": budget.max_series,
        "series": budget.series,
        "folded": dict(budget.folded),
        "folds": dict(budget.folds),
        "unfolds": dict(budget.unfolds),
        "dropped": budget.dropped,
    }


def _kubernetes(snap: Snapshot) -> dict[str, Any] | None:
    """The API watch (kubernetes_api: true): its request counters and each pod's owner and labels."""
    if snap.pod_watch is None:
        return None
    watch = snap.pod_watch
    pods = [
        {
            "namespace": row.namespace,
            "pod": row.pod,
            "uid": row.uid,
            "owner_kind": row.owner_kind,
            "owner_name": row.owner_name,
            "labels": dict(zip(snap.pod_label_keys, row.values, strict=True)),
        }
        for row in snap.pod_labels
    ]
    return {
        "requests": {"list": watch.lists, "watch": watch.watches},
        "errors": watch.errors,
        "synced": watch.synced,
        "pods": pods,
    }
