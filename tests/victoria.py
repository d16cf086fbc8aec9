"""A real VictoriaMetrics for tests: Debian trixie's 1.112 (OTLP ingestion, remote-write, PromQL/MetricsQL), fetched
by scripts/fetch-victoria-metrics.sh without touching the machine's apt state, run on loopback with a temporary
storage directory and a bounded life (`timeout -s KILL`), so a crashed test leaves no server behind.

The binary is found in $VICTORIA_METRICS, on PATH, or in the default cache the script fills
(`scripts/fetch-victoria-metrics.sh /var/tmp/wattlens-victoria-metrics`); without it the test skips locally and
fails in CI, like every other tool.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from helpers import require

DEFAULT_CACHE = Path("/var/tmp/wattlens-victoria-metrics")
FETCH = "scripts/fetch-victoria-metrics.sh /var/tmp/wattlens-victoria-metrics"


def victoria_metrics_binary() -> str:
    candidates = [
        os.environ.get("VICTORIA_METRICS"),
        shutil.which("victoria-metrics"),
        str(DEFAULT_CACHE / "root" / "usr" / "bin" / "victoria-metrics"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    require(False, f"VictoriaMetrics 1.112 is not fetched (run {FETCH}, or set VICTORIA_METRICS)")
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class VictoriaMetrics:
    """One single-node VictoriaMetrics on 127.0.0.1; data is visible to queries as soon as `flush()` returns."""

    def __init__(self, storage: Path, *flags: str, lifetime_s: int = 60, port: int | None = None) -> None:
        self.port = port or free_port()  # a port of its own, or one it had before (a restart on the same storage)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = storage.parent / f"{storage.name}.log"
        command = [
            "timeout", "-s", "KILL", str(lifetime_s), victoria_metrics_binary(),
            f"-storageDataPath={storage}", f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=1d", "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN", *flags,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"victoria-metrics exited {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/health") == b"OK":
                    return
            except OSError:
                time.sleep(0.02)
        self.close()
        raise AssertionError(f"victoria-metrics did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return bytes(response.read())

    def flush(self) -> None:
        """Make everything ingested so far searchable now (VictoriaMetrics' own test hook)."""
        self.get("/internal/force_flush")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        answer = json.loads(self.get("/api/v1/query", query=promql))
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def self_metric(self, name_and_labels: str) -> float:
        """A sample of VictoriaMetrics' own /metrics, e.g. 'vm_rows_inserted_total{type="opentelemetry"}'."""
        for line in self.get("/metrics").decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name_and_labels:
                return float(value)
        return 0.0

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> VictoriaMetrics:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
