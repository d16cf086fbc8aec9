"""Runs the real Engine against the stub NVML library in its own process (LD_LIBRARY_PATH must be set at
process start). Reads a JSON scenario on stdin, prints one JSON object per tick on stdout.

scenario = {"flags": {...config flags...}, "state_path": str,
            "steps": [{"now": float, "state": str (a prepared state file copied into state_path),
                       "poll": bool (only poll the GPUs' processes, as the meter's thread does between ticks),
                       "spawn": {pid: [cgroup path, start in µs since the epoch]}, "exit": [pid, ...]}],
            "render": bool, "document": bool (also the `once --json` document)}
Processes spawned get /proc/<pid>/{stat,cgroup} under the scenario's proc_path (stat's starttime from their
start); an exited process's directory is removed, as the kernel's is once the task is reaped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from exporter.config import load_config
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.meters.gpu_processes import BOOT_US, CLK_TCK
from exporter.snapshot import Snapshot
from exporter.snapshot_json import snapshot_document


def summary(snap: Snapshot) -> dict[str, Any]:
    return {
        "gpus": [
            {"index": g.device.index, "uuid": g.device.uuid, "joules_uj": g.joules_uj, "idle_uj": g.idle_uj,
             "active_uj": g.active_uj, "unattributed_uj": g.unattributed_uj, "up": g.up, "resets": g.resets,
             "method": g.method, "mig": g.partitioned, "splits": dict(g.splits), "idle_method": g.idle_method,
             "idle_watts": g.idle_watts, "scope": g.device.scope, "partition": g.device.partition,
             "scopes": {s.scope: [s.watts, s.joules_uj] for s in g.scopes},
             "instances": {i.instance: [i.profile, i.uuid, i.active_uj] for i in g.instances}}
            for g in snap.accelerators
        ],
        "workloads": [{"kind": w.kind, "labels": [value for _, value in w.labels], "energy_uj": dict(w.energy_uj)}
                      for w in snap.workloads],
        "sources": [[s.source, s.device, s.up] for s in snap.sources],
        "zones": {z.zone.device: z.joules_uj for z in snap.zones},
        "node_total_uj": snap.node.total_uj,
        "rest_uj": snap.node.rest_uj,
        "zone_info": [[i.zone, i.parent, i.top_level] for i in snap.zone_info],
    }


def spawn(proc: str, pid: str, cgroup: str, start_us: int) -> None:
    os.makedirs(f"{proc}/{pid}", exist_ok=True)
    ticks = (start_us - BOOT_US) * CLK_TCK // 1_000_000
    with open(f"{proc}/{pid}/stat", "w") as stat:
        stat.write(f"{pid} (python3 (job)) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0\n")
    with open(f"{proc}/{pid}/cgroup", "w") as handle:
        handle.write(f"0::/{cgroup}\n")


def main() -> None:
    scenario = json.load(sys.stdin)
    proc = scenario["flags"].get("proc_path", "/proc")

    def install(state: str) -> None:
        shutil.copy(state, scenario["state_path"] + ".next")
        os.replace(scenario["state_path"] + ".next", scenario["state_path"])

    install(scenario["steps"][0]["state"])  # the GPUs NVML lists at start
    engine = Engine.start(load_config(scenario["flags"], None, environ={}))
    for step in scenario["steps"]:
        install(step["state"])
        for pid in step.get("exit", ()):
            shutil.rmtree(f"{proc}/{pid}")
        for pid, (cgroup, start_us) in step.get("spawn", {}).items():
            spawn(proc, pid, cgroup, start_us)
        if step.get("poll"):
            for meter in engine.accelerators:
                meter.poll(step["now"], wait=True)
            continue
        snap = engine.tick(step["now"])
        out = summary(snap)
        if scenario.get("render"):
            out["text"] = Renderer().render(snap).text.decode()
        if scenario.get("document"):
            out["document"] = snapshot_document(snap)
        print(json.dumps(out), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
