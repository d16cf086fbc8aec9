"""Runs the real Engine against the stub NVML library in its own process (LD_LIBRARY_PATH must be set at
process start). Reads a JSON scenario on stdin, prints one JSON object per tick on stdout.

scenario = {"flags": {...config flags...}, "state_path": str,
            "steps": [{"now": float, "state": str (a prepared state file copied into state_path)}],
            "render": bool, "document": bool (also the `once --json` document)}
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
from exporter.snapshot import Snapshot
from exporter.snapshot_json import snapshot_document


def summary(snap: Snapshot) -> dict[str, Any]:
    return {
        "gpus": [
            {"index": g.device.index, "uuid": g.device.uuid, "joules_uj": g.joules_uj, "idle_uj": g.idle_uj,
             "active_uj": g.active_uj, "unattributed_uj": g.unattributed_uj, "up": g.up, "resets": g.resets,
             "method": g.method, "mig": g.partitioned, "splits": dict(g.splits), "idle_method": g.idle_method,
             "scope": g.device.scope}
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


def main() -> None:
    scenario = json.load(sys.stdin)

    def install(state: str) -> None:
        shutil.copy(state, scenario["state_path"] + ".next")
        os.replace(scenario["state_path"] + ".next", scenario["state_path"])

    install(scenario["steps"][0]["state"])  # the GPUs NVML lists at start
    engine = Engine.start(load_config(scenario["flags"], None, environ={}))
    for step in scenario["steps"]:
        install(step["state"])
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
