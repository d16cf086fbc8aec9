#!/usr/bin/env python3
"""wattlens fleet: what N simulated nodes cost a real Prometheus, and what that means at 1,000 and 10,000 nodes.

Run from the repository root:  .venv/bin/python benchmarks/fleet.py   (see benchmarks/README.md)

Every node is a real wattlens process (`python -m exporter`, its own node name) reading a generated node tree of
its own (the attribution benchmark's generator: cgroup v2 tree, kubelet logs, /proc, a 2-socket RAPL fixture, on
tmpfs), advanced every tick by this script. A real Prometheus (Debian's 2.42) scrapes them all with the shipped
recording rules (deploy/prometheus/wattlens-rules.yaml) and remote-writes only the per-cluster and per-namespace
aggregates into VictoriaMetrics 1.112 (the long-term store of the "aggregate before federation" layout), and a
few of the nodes also push OTLP into the same VictoriaMetrics (its OTLP receiver). After the run it prints: series
per node; Prometheus memory (RSS, against an idle Prometheus measured in the same run) and bytes per sample (a
TSDB snapshot of the head block: block bytes / samples) per node; scrape CPU per node (Prometheus' and the
exporter's); what reached VictoriaMetrics; and the extrapolation to 1,000 and 10,000 nodes at the shipped 30 s
scrape interval.

Everything listens on 127.0.0.1; every server runs under `timeout -s KILL` so none outlives the run; nothing
outside the temporary directory (and VictoriaMetrics' fetch cache, see scripts/fetch-victoria-metrics.sh) is
written. Exit 0, or 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attribution import Node, temp_parent
from common import REPO, Deadline, hard_deadline, heading, machine, positive, run_bench

RULES = REPO / "deploy" / "prometheus" / "wattlens-rules.yaml"
VM_CACHE = Path("/var/tmp/wattlens-victoria-metrics")
PRODUCTION_SCRAPE_S = 30.0  # the chart's and the kustomize ServiceMonitor's interval
CLUSTER = "fleet-1"
# What the per-cluster Prometheus sends to the global store: the cluster- and namespace-level aggregates only.
FEDERATED = r"cluster[a-z_]*:.+|namespace(_zone)?:.+"
HARD_TIMEOUT_S = 3600


class Failed(Exception):
    """A check of the run failed; the message says which."""


@dataclass
class Figures:
    """What one run measured (also written as JSON with --json)."""

    nodes: int
    pods: int
    scrape_interval_s: float
    tick_s: float
    duration_s: float
    series_per_node: float = 0.0
    series_per_node_max: float = 0.0
    head_series: int = 0
    prometheus_rss_mib: float = 0.0
    prometheus_idle_rss_mib: float = 0.0
    prometheus_heap_mib: float = 0.0
    bytes_per_sample: float = 0.0  # the block's chunks / its samples
    block_bytes: int = 0
    chunk_bytes: int = 0
    index_bytes: int = 0
    block_samples: int = 0
    block_series: int = 0
    prometheus_cpu_s: float = 0.0
    scrapes: int = 0
    exporter_cpu_s_per_s: list[float] = field(default_factory=list)
    exporter_rss_mib: list[float] = field(default_factory=list)
    exporter_tick_cpu_ms: float = 0.0  # per tick, from wattlens_tick_cpu_seconds_total
    exporter_render_ms: float = 0.0  # per scrape, from wattlens_render_duration_seconds
    feeder_s_per_round: float = 0.0  # advancing every node tree once (the simulation's own cost)
    federated_series: int = 0
    federated_per_node_series: int = 0
    otlp_nodes: int = 0
    otlp_series: int = 0
    remote_write_rows: float = 0.0
    otlp_rows: float = 0.0
    checks: list[str] = field(default_factory=list)


# --- processes --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, data: bytes | None = None, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
        return bytes(response.read())


def victoria_metrics() -> str:
    """The VictoriaMetrics 1.112 binary: $VICTORIA_METRICS, or fetched into its cache by the project's script."""
    binary = os.environ.get("VICTORIA_METRICS") or str(VM_CACHE / "root" / "usr" / "bin" / "victoria-metrics")
    if not os.access(binary, os.X_OK):
        out = subprocess.run(["bash", str(REPO / "scripts" / "fetch-victoria-metrics.sh"), str(VM_CACHE)],
                             capture_output=True, text=True, check=True, timeout=600)
        binary = out.stdout.strip()
    return binary


def prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise Failed("prometheus is not installed (apt-get install prometheus)")
    return found


class Server:
    """A server process under `timeout -s KILL`, logging to a file."""

    def __init__(self, name: str, command: list[str], log: Path, lifetime_s: int, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(["timeout", "-s", "KILL", str(lifetime_s), *command], stdout=out,
                                            stderr=subprocess.STDOUT, env=env)

    def pid(self) -> int:
        """The server's own pid (the child of `timeout`)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0]) if children else self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(url: str, server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise Failed(f"{server.name} exited: {server.log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError):
            get(url, timeout=2)
            return
        time.sleep(0.1)
    raise Failed(f"{server.name} did not become ready")


@dataclass
class Exporter:
    name: str
    server: Server
    port: int = 0


def start_exporters(nodes: list[Node], args: argparse.Namespace, tmp: Path, vm_url: str) -> list[Exporter]:
    lifetime = int(args.duration + 900)
    exporters = []
    for i, node in enumerate(nodes):
        name = f"fleet-{i:03d}"
        command = [sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", "--interval", str(args.tick),
                   "--node-name", name, "--sys", str(node.sys), "--proc", str(node.proc),
                   "--cgroup-root", str(node.cgroup), "--meters", "rapl"]
        if i < args.otlp_nodes:
            command += ["--otlp-endpoint", f"{vm_url}/opentelemetry/v1/metrics", "--otlp-interval",
                        str(args.scrape_interval), "--cluster-name", CLUSTER]
        env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "WATTLENS_GPUS": "false",
               "WATTLENS_KUBELET_LOG_PATH": str(node.log), "PYTHONPATH": str(REPO)}
        exporters.append(Exporter(name, Server(name, command, tmp / f"{name}.log", lifetime, env)))
    deadline = time.monotonic() + 120
    for exporter in exporters:
        while not exporter.port:
            match = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", exporter.server.log.read_text())
            if match:
                exporter.port = int(match.group(1))
            elif exporter.server.process.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"{exporter.name} did not start: {exporter.server.log.read_text()[-2000:]}")
            else:
                time.sleep(0.1)
    return exporters


class Feeder:
    """Advances every node tree once per tick, in a thread: CPU time, cgroups, /proc/stat, RAPL counters."""

    def __init__(self, nodes: list[Node], tick_s: float) -> None:
        self.nodes, self.tick_s = nodes, tick_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

        self.rounds = 0
        self.busy_s = 0.0

    def run(self) -> None:
        while not self.stop.wait(self.tick_s):
            started = time.perf_counter()
            for node in self.nodes:
                node.advance(self.tick_s, False, 0)
            self.rounds += 1
            self.busy_s += time.perf_counter() - started


# --- Prometheus -------------------------------------------------------------------------------------------------


def prometheus_config(path: Path, targets: list[str], scrape_s: float, vm_url: str | None) -> None:
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{scrape_s:g}s", "evaluation_interval": f"{scrape_s:g}s",
                   "scrape_timeout": f"{min(scrape_s, 10):g}s", "external_labels": {"cluster": CLUSTER}},
        "rule_files": [str(RULES)] if targets else [],
        "scrape_configs": [{"job_name": "wattlens", "honor_labels": True,
                            "static_configs": [{"targets": targets}]}] if targets else [],
    }
    if vm_url is not None:
        config["remote_write"] = [{
            "url": f"{vm_url}/api/v1/write",
            "queue_config": {"batch_send_deadline": "1s"},
            "write_relabel_configs": [{"source_labels": ["__name__"], "regex": FEDERATED, "action": "keep"}],
        }]
    path.write_text(json.dumps(config))  # JSON is YAML


class Prometheus:
    def __init__(self, tmp: Path, name: str, targets: list[str], scrape_s: float, vm_url: str | None,
                 lifetime_s: int) -> None:
        self.data = tmp / f"{name}-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / f"{name}.yml"
        prometheus_config(config, targets, scrape_s, vm_url)
        self.server = Server(name, [prometheus(), f"--config.file={config}", f"--storage.tsdb.path={self.data}",
                                    f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-admin-api",
                                    "--storage.tsdb.retention.time=1d"], tmp / f"{name}.log", lifetime_s)
        wait_healthy(f"{self.url}/-/ready", self.server, timeout=60)

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = json.loads(get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        return list(answer["data"]["result"])

    def scalar(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def self_metric(self, name: str) -> float:
        for line in get(f"{self.url}/metrics").decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def snapshot_block(self) -> Block:
        """A TSDB snapshot of everything in memory, written as a block the way a head compaction writes it."""
        answer = json.loads(get(f"{self.url}/api/v1/admin/tsdb/snapshot", data=b""))
        directory = self.data / "snapshots" / answer["data"]["name"]
        block = Block()
        for meta in directory.glob("*/meta.json"):
            stats = json.loads(meta.read_text())["stats"]
            block.samples += stats["numSamples"]
            block.series += stats["numSeries"]
            block.chunks += sum(p.stat().st_size for p in (meta.parent / "chunks").iterdir())
            block.index += (meta.parent / "index").stat().st_size
            block.size += sum(p.stat().st_size for p in meta.parent.rglob("*") if p.is_file())
        return block


@dataclass
class Block:
    size: int = 0
    chunks: int = 0
    index: int = 0
    samples: int = 0
    series: int = 0


class VictoriaMetrics:
    def __init__(self, tmp: Path, lifetime_s: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = Server("victoria-metrics", [
            victoria_metrics(), f"-storageDataPath={tmp / 'vm'}", f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=1d", "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN"],
            tmp / "victoria-metrics.log", lifetime_s)
        wait_healthy(f"{self.url}/health", self.server)

    def query(self, promql: str) -> list[dict[str, Any]]:
        get(f"{self.url}/internal/force_flush")
        answer = json.loads(get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        return list(answer["data"]["result"])

    def self_metric(self, sample: str) -> float:
        for line in get(f"{self.url}/metrics").decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == sample:
                return float(value)
        return 0.0


# --- the run ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stopping(servers: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()


def idle_prometheus_rss(tmp: Path, scrape_s: float) -> float:
    """RSS of the same Prometheus with nothing to scrape, after it settled: the floor of the comparison."""
    idle = Prometheus(tmp, "prometheus-idle", [], scrape_s, None, 120)
    try:
        time.sleep(max(3.0, 3 * scrape_s))
        return rss_mib(idle.server.pid())
    finally:
        idle.server.stop()


def measure(args: argparse.Namespace, tmp: Path) -> Figures:
    figures = Figures(args.nodes, args.pods, args.scrape_interval, args.tick, args.duration,
                      otlp_nodes=args.otlp_nodes)
    started = time.perf_counter()
    nodes = [Node(tmp / f"node-{i:03d}", args.seed + i, pods=args.pods) for i in range(args.nodes)]
    print(f"  {args.nodes} node trees of {args.pods} pods built in {time.perf_counter() - started:.1f} s", flush=True)
    lifetime = int(args.duration + 900)
    figures.prometheus_idle_rss_mib = idle_prometheus_rss(tmp, args.scrape_interval)
    servers: list[Any] = []
    feeder = Feeder(nodes, args.tick)
    with stopping(servers):
        vm = VictoriaMetrics(tmp, lifetime)
        servers.append(vm.server)
        exporters = start_exporters(nodes, args, tmp, vm.url)
        servers += [e.server for e in exporters]
        feeder.thread.start()
        print(f"  {len(exporters)} exporters serving; starting Prometheus", flush=True)
        prom = Prometheus(tmp, "prometheus", [f"127.0.0.1:{e.port}" for e in exporters], args.scrape_interval,
                          vm.url, lifetime)
        servers.append(prom.server)
        deadline = time.monotonic() + 60 + 3 * args.scrape_interval
        while prom.scalar('count(up{job="wattlens"} == 1)') < args.nodes:
            if time.monotonic() > deadline:
                raise Failed("Prometheus does not see every exporter up")
            time.sleep(0.5)
        time.sleep(2 * args.scrape_interval)  # the first scrapes of every target, and rules evaluated
        prom_pid = prom.server.pid()
        exporter_pids = [e.server.pid() for e in exporters]
        cpu0, wall0 = cpu_s(prom_pid), time.monotonic()
        scrapes0 = prom.self_metric("prometheus_target_interval_length_seconds_count")
        rounds0, busy0 = feeder.rounds, feeder.busy_s
        exporter_cpu0 = [cpu_s(pid) for pid in exporter_pids]
        print(f"  measuring for {args.duration:g} s", flush=True)
        time.sleep(args.duration)
        wall = time.monotonic() - wall0
        figures.prometheus_cpu_s = cpu_s(prom_pid) - cpu0
        figures.scrapes = round(prom.self_metric("prometheus_target_interval_length_seconds_count") - scrapes0)
        figures.feeder_s_per_round = (feeder.busy_s - busy0) / max(1, feeder.rounds - rounds0)
        window = f"{max(2 * args.scrape_interval, args.duration):.0f}s"
        figures.exporter_tick_cpu_ms = 1e3 * prom.scalar(
            f"sum(increase(wattlens_tick_cpu_seconds_total[{window}])) / sum(increase(wattlens_ticks_total[{window}]))")
        figures.exporter_render_ms = 1e3 * prom.scalar(
            f"avg(avg_over_time(wattlens_render_duration_seconds[{window}]))")
        figures.exporter_cpu_s_per_s = [(cpu_s(p) - c) / wall for p, c in zip(exporter_pids, exporter_cpu0,
                                                                                strict=True)]
        figures.exporter_rss_mib = [rss_mib(pid) for pid in exporter_pids]
        figures.duration_s = wall
        figures.series_per_node = prom.scalar('avg(scrape_samples_post_metric_relabeling{job="wattlens"})')
        figures.series_per_node_max = prom.scalar('max(scrape_samples_post_metric_relabeling{job="wattlens"})')
        figures.head_series = round(prom.self_metric("prometheus_tsdb_head_series"))
        figures.prometheus_rss_mib = rss_mib(prom_pid)
        figures.prometheus_heap_mib = prom.self_metric("go_memstats_heap_inuse_bytes") / 2**20
        block = prom.snapshot_block()
        figures.block_bytes, figures.chunk_bytes, figures.index_bytes = block.size, block.chunks, block.index
        figures.block_samples, figures.block_series = block.samples, block.series
        figures.bytes_per_sample = block.chunks / max(1, block.samples)
        feeder.stop.set()
        # rate()[5m] over less than its window extrapolates each series from its own first sample (a workload's
        # series starts a tick after the node's): exact only once the window is full.
        check_federation(prom, vm, figures, 1e-6 if wall > 300 + 2 * args.scrape_interval else 1e-3)
        check_otlp(vm, exporters[: args.otlp_nodes], figures)
        figures.remote_write_rows = vm.self_metric('vm_rows_inserted_total{type="promremotewrite"}')
        figures.otlp_rows = vm.self_metric('vm_rows_inserted_total{type="opentelemetry"}')
    return figures


def check_federation(prom: Prometheus, vm: VictoriaMetrics, figures: Figures, tolerance: float) -> None:
    """The global store got the aggregates, and they conserve: node = idle + unattributed + workloads."""
    deadline = time.monotonic() + 30
    while True:
        federated = vm.query(f'count({{__name__=~"{FEDERATED}",cluster="{CLUSTER}"}})')
        if federated or time.monotonic() > deadline:
            break
        time.sleep(1)
    figures.federated_series = int(float(federated[0]["value"][1])) if federated else 0
    per_node = vm.query(f'count({{__name__=~"{FEDERATED}",cluster="{CLUSTER}",node!=""}})')
    figures.federated_per_node_series = int(float(per_node[0]["value"][1])) if per_node else 0
    if not figures.federated_series:
        raise Failed("no aggregate reached VictoriaMetrics through remote write")
    raw = vm.query('count({__name__=~"wattlens_.+"})')
    if raw:
        raise Failed(f"raw series reached the global store: {raw}")
    parts = {}
    for rule in ("node_cpu_joules", "node_cpu_idle_joules", "unattributed_cpu_joules", "workload_cpu_joules"):
        result = vm.query(f'sum(cluster_zone:wattlens_{rule}:rate5m{{zone="package",cluster="{CLUSTER}"}})')
        parts[rule] = float(result[0]["value"][1]) if result else float("nan")
    node, rest = parts["node_cpu_joules"], sum(v for k, v in parts.items() if k != "node_cpu_joules")
    gap = abs(node - rest) / node if node else float("nan")
    line = (f"cluster package {node:.1f} W = idle + unattributed + workloads {rest:.1f} W in the global store"
            f" (off by {gap:.2e}, tolerance {tolerance:g})")
    figures.checks.append(line)
    if not gap < tolerance:
        raise Failed(line)
    local = prom.scalar('sum(cluster_zone:wattlens_node_cpu_joules:rate5m{zone="package"})')
    figures.checks.append(f"the same in the cluster's Prometheus: {local:.1f} W")


def check_otlp(vm: VictoriaMetrics, pushers: list[Exporter], figures: Figures) -> None:
    if not pushers:
        return
    result = vm.query('count({__name__=~"hw\\\\..+|wattlens\\\\..+"})')
    figures.otlp_series = int(float(result[0]["value"][1])) if result else 0
    nodes = {s["metric"].get("k8s.node.name") for s in vm.query('hw.energy{hw.id="intel-rapl:0"}')}
    if nodes != {e.name for e in pushers}:
        raise Failed(f"OTLP pushes arrived from {sorted(n or '' for n in nodes)}, not from every pushing node")
    figures.checks.append(f"OTLP: {len(pushers)} node(s) pushed {figures.otlp_series} series into VictoriaMetrics")


# --- the report -------------------------------------------------------------------------------------------------


def report(f: Figures) -> None:
    heading(f"fleet: {f.nodes} nodes x {f.pods} pods, scraped every {f.scrape_interval_s:g} s for {f.duration_s:.0f} s")
    per_scrape_cpu_ms = f.prometheus_cpu_s / max(1, f.scrapes) * 1e3
    rss_per_node = (f.prometheus_rss_mib - f.prometheus_idle_rss_mib) / f.nodes
    exporter_cpu = sum(f.exporter_cpu_s_per_s) / len(f.exporter_cpu_s_per_s)
    exporter_rss = sum(f.exporter_rss_mib) / len(f.exporter_rss_mib)
    index_per_series = f.index_bytes / max(1, f.block_series)
    rows = [
        ("series per node (scraped samples)", f"{f.series_per_node:,.0f} (max {f.series_per_node_max:,.0f})"),
        ("Prometheus head series", f"{f.head_series:,} ({f.head_series / f.nodes:,.0f} per node, recording rules"
                                   " included)"),
        ("Prometheus RSS", f"{f.prometheus_rss_mib:,.0f} MiB; idle {f.prometheus_idle_rss_mib:,.0f} MiB;"
                           f" {rss_per_node:,.2f} MiB per node ({rss_per_node * 2**20 / max(1, f.series_per_node):,.0f}"
                           " bytes per scraped series)"),
        ("Prometheus Go heap in use", f"{f.prometheus_heap_mib:,.0f} MiB"),
        ("bytes per sample (TSDB block)", f"{f.bytes_per_sample:.2f} in chunks ({f.chunk_bytes / 2**20:,.1f} MiB for"
                                          f" {f.block_samples:,} samples); index {index_per_series:,.0f} bytes per"
                                          f" series; {f.block_samples / max(1, f.block_series):.0f} samples a"
                                          " series"),
        ("Prometheus CPU per scrape of a node", f"{per_scrape_cpu_ms:.2f} ms (scrape, ingest, rules, remote write;"
                                                f" {f.scrapes:,} scrapes)"),
        ("exporter CPU per node", f"{exporter_cpu * 1e3:.1f} ms/s ({exporter_cpu:.2%} of a core); tick"
                                  f" {f.exporter_tick_cpu_ms:.1f} ms CPU every {f.tick_s:g} s, render"
                                  f" {f.exporter_render_ms:.1f} ms per scrape; RSS {exporter_rss:.0f} MiB"),
        ("simulation (advancing every node tree)", f"{f.feeder_s_per_round:.2f} s per {f.tick_s:g} s round, in this"
                                                    " process: not part of the figures above"),
        ("global store (remote write)", f"{f.federated_series} aggregate series for the whole cluster, of which"
                                        f" {f.federated_per_node_series} carry a node label"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    for line in f.checks:
        print(f"  check: {line}")

    heading(f"extrapolation at the shipped {PRODUCTION_SCRAPE_S:g} s scrape interval (two Prometheus replicas scrape)")
    samples_day_node = f.series_per_node * 86400 / PRODUCTION_SCRAPE_S
    scrape_cpu_node = per_scrape_cpu_ms / 1e3 / PRODUCTION_SCRAPE_S  # cores, per Prometheus
    # The exporter as deployed: a tick every tick_s, a render for each of two replicas' scrapes every 30 s.
    exporter_node = f.exporter_tick_cpu_ms / 1e3 / f.tick_s + 2 * f.exporter_render_ms / 1e3 / PRODUCTION_SCRAPE_S
    print(f"  {'nodes':>7} {'series':>12} {'Prom. memory':>13} {'disk/day':>10} {'Prom. CPU':>10}"
          f" {'exporters CPU':>14} {'global store series':>20}")
    constant = f.federated_series - f.federated_per_node_series
    for n in (f.nodes, 1000, 10_000):
        memory_gib = (f.prometheus_idle_rss_mib + rss_per_node * n) / 1024
        disk_gib = f.bytes_per_sample * samples_day_node * n / 2**30
        federated = constant + f.federated_per_node_series / f.nodes * n
        print(f"  {n:>7,} {f.series_per_node * n:>12,.0f} {memory_gib:>9,.1f} GiB {disk_gib:>6,.1f} GiB"
              f" {scrape_cpu_node * n:>6,.2f} cores {exporter_node * n:>8,.1f} cores {federated:>20,.0f}")
    print("  Per Prometheus replica. Memory: idle + the measured MiB per node (it follows series, not the scrape"
          " interval).\n  Disk: chunk bytes per sample x samples per day (compacted blocks add the index, about"
          f" {index_per_series:,.0f} B per\n  series per block). Prometheus CPU: the measured CPU per scrape"
          " at one scrape per node every 30 s. Exporters: summed\n  over the fleet, on the nodes themselves."
          " One Prometheus per cluster (or per shard of a few thousand nodes)\n  keeps the raw series; the global"
          " store only the aggregates (per-node rules such as node:wattlens_node_joules:rate5m\n  grow with"
          " nodes, per-cluster and per-namespace ones do not).")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=positive, default=50, help="simulated nodes, one wattlens process each (50)")
    p.add_argument("--pods", type=positive, default=100, help="pods per node (100)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds measured after warm-up (600)")
    p.add_argument("--scrape-interval", type=float, default=5.0,
                   help="Prometheus' scrape and rule interval, seconds (5: full 120-sample chunks in 10 minutes)")
    p.add_argument("--tick", type=float, default=5.0, help="wattlens' interval, seconds (5)")
    p.add_argument("--otlp-nodes", type=int, default=5, help="nodes that also push OTLP to VictoriaMetrics (5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    load = os.getloadavg()
    print(f"wattlens fleet benchmark: {machine()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with hard_deadline(HARD_TIMEOUT_S), tempfile.TemporaryDirectory(prefix="wattlens-fleet-", dir=temp_parent()) as t:
        figures = measure(args, Path(t))
    report(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=1))
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f}; total wall time {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), (Deadline, Failed, OSError, subprocess.SubprocessError))


if __name__ == "__main__":
    sys.exit(main())
