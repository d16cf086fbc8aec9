"""The fleet benchmark (benchmarks/fleet.py, docs/scale.md) at its smallest, so that it keeps working: two real
wattlens daemons on generated node trees, scraped by a real Prometheus with the shipped rules, its aggregates
remote-written into VictoriaMetrics, one daemon pushing OTLP there too. The figures are the benchmark's (not
asserted here beyond being measured); what is asserted is that every stage ran and the conservation check held
in the global store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, tool
from victoria import victoria_metrics_binary


def test_fleet_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    prometheus = tool("prometheus", "apt-get install prometheus (.ci/run)")
    env = {**os.environ, "VICTORIA_METRICS": victoria_metrics_binary(),
           "PATH": f"{Path(prometheus).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "fleet.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/fleet.py", "--nodes", "2", "--pods", "5", "--duration", "3",
         "--scrape-interval", "1", "--tick", "1", "--otlp-nodes", "1", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["nodes"] == 2 and figures["series_per_node"] > 100
    assert figures["prometheus_rss_mib"] > figures["prometheus_idle_rss_mib"] > 0
    assert figures["block_samples"] > 0 and figures["bytes_per_sample"] > 0 and figures["scrapes"] > 0
    assert figures["federated_series"] > 0 and figures["otlp_series"] > 0
    assert any("idle + unattributed + workloads" in line for line in figures["checks"]), figures["checks"]
    assert "extrapolation" in run.stdout and "10,000" in run.stdout
