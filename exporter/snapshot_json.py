"""`wattlens once --json`: one tick's Snapshot as a JSON document, for scripts and `jq`.

It carries every value the exposition carries (tests/test_once_json.py checks each series of the exposition
against it), grouped by what it describes rather than by metric family: zones, domains, workloads with their
labels by name, GPUs, processes, sources. Joules are floats (µJ / 1e6), as in the exposition. Two values of
the exposition describe the HTTP side, not a tick, and are not here: render time and scrapes served.
"""

from __future__ import annotations

from typing import Any

from exporter.counters import MICRO
from exporter.engine import Snapshot, WorkloadState
from exporter.workloads.labels import LABELS, rollup_group, rollup_labels

SCHEMA_VERSION = 1


def _joules(microjoules: int) -> float:
    return microjoules / MICRO


def _workload(w: WorkloadState, source: str, gpu_labels: dict[str, tuple[str, str]], tick_s: float) -> dict[str, Any]:
    last = dict(w.last_uj)
    cpu, gpu = [], []
    for zone, microjoules in w.energy_uj:
        if zone in gpu_labels:
            index, uuid = gpu_labels[zone]
            gpu.append({"gpu": index, "gpu_uuid": uuid, "joules": _joules(microjoules)})
            continue
        watts = _joules(last[zone]) / tick_s if zone in last and tick_s > 0 else None
        cpu.append({"zone": zone, "source": source, "joules": _joules(microjoules), "watts": watts})
    return {
        "kind": w.kind,
        "labels": dict(zip(LABELS[w.kind], w.labels, strict=True)),
        "rollup": w.labels == rollup_labels(w.kind, *rollup_group(w.kind, w.labels)),  # the series budget's
        "ended": not w.last_uj,  # no share in this tick: ended, or its series frozen by the series budget
        "cpu": cpu,
        "gpu": gpu,
    }


def snapshot_document(snap: Snapshot) -> dict[str, Any]:
    source = snap.meter
    gpu_labels = {f"gpu:{g.gpu.uuid}": (str(g.gpu.index), g.gpu.uuid) for g in snap.gpus}
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
                "joules": _joules(z.joules_uj),
                "watts": z.watts,
                "up": z.up,
                "wraps": z.wraps,
                "resets": z.resets,
            }
            for z in snap.zones
        ],
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
            {"zone": zone, "source": source, "joules": _joules(microjoules)} for zone, microjoules in snap.unattributed
        ],
        "workloads": [_workload(w, source, gpu_labels, snap.tick_seconds) for w in snap.workloads],
        "workload_counts": counts,
        "processes": [
            {
                "pid": key.pid,
                "comm": key.comm,
                "container_id": key.container_id,
                "unit": key.unit,
                "cpu": [{"zone": zone, "source": source, "joules": _joules(uj)} for zone, uj in energy],
            }
            for key, energy in snap.processes
        ],
        "processes_other": [
            {"zone": zone, "source": source, "joules": _joules(uj)} for zone, uj in snap.processes_other
        ],
        "gpus": [
            {
                "gpu": str(g.gpu.index),
                "gpu_uuid": g.gpu.uuid,
                "gpu_model": g.gpu.model,
                "driver": snap.gpu_driver,
                "mig": g.mig,
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
            }
            for g in snap.gpus
        ],
        "sources": [{"source": s, "device": device, "up": up} for s, device, up in snap.sources],
        "source_errors": [{"source": s, "device": device, "count": count} for s, device, count in snap.errors],
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
    lists, watches, errors, synced = snap.pod_watch
    pods = []
    for row in snap.pod_labels:
        namespace, pod, uid, owner_kind, owner_name, *values = row
        pods.append(
            {
                "namespace": namespace,
                "pod": pod,
                "uid": uid,
                "owner_kind": owner_kind,
                "owner_name": owner_name,
                "labels": dict(zip(snap.pod_label_keys, values, strict=True)),
            }
        )
    return {"requests": {"list": lists, "watch": watches}, "errors": errors, "synced": synced, "pods": pods}
