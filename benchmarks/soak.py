#!/usr/bin/env python3
"""Soak: the real daemon under heavy workload churn; RSS and fds flat after warm-up, conservation at the end.

Run from the repository root:  .venv/bin/python benchmarks/soak.py [--minutes 3]   (see benchmarks/README.md)

The daemon (--interval 1, process_metrics on, WATTLENS_WORKLOAD_TTL short) reads a RAPL fixture copy, a fake
/proc and a fake cgroup v2 tree that a driver changes every second: `--pods` new pods (each with two
containers, and the kubelet's log directory and container log files for their names) are created and those
older than `--life` s removed; `--procs` new fake processes (/proc/<pid>/stat and cgroup) are created, those
older than `--life` s removed, and the live ones' CPU times advanced. Ten services stay for the whole run.

Every `--sample` s the daemon's RSS (/proc/<pid>/status) and fd count (/proc/<pid>/fd) are recorded. At the end
of the warm-up (the first 20 %) and at the end of the run the churn pauses for 2.5 s (same live population
both times) and a checkpoint is taken: RSS growth % and fd delta between the two checkpoints are the verdict.
A scraper reads /metrics every 0.5 s and keeps the last value of every top-level workload series (an ended
workload stays frozen for the TTL, so its final value is always seen). After the run the churn stops, the TTL
passes, and per zone node = idle + unattributed + Σ top-level (every pod and service ever exported) is checked,
as is that every ended pod was dropped after the TTL and not before. Exit 1 if RSS grew > 5 %, fds grew,
conservation failed, or the TTL was not honoured.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, Deadline, hard_deadline, heading, machine, pct, run_bench

sys.path.insert(0, str(REPO / "tests"))  # the fixture trees tests drive: RaplTree, CgroupFixture, ProcTree
from helpers import CgroupFixture, ProcTree, RaplTree
from load import RAPL_ZONES, DaemonProc

_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
TOP_FAMILIES = ("wattlens_pod_cpu_joules_total", "wattlens_service_cpu_joules_total")
STAT_FORMAT = "{pid} ({comm}) S 1 1 1 0 -1 4194560 0 0 0 0 {utime:012d} {stime:012d} 0 0 20 0 1 0 {start} 0 0\n"


def parse(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for line in body.splitlines():
        match = _LINE.match(line)
        if match:
            out[(match["name"], tuple(_LABEL.findall(match["labels"])))] = float(match["value"])
    return out


class ChurnNode:
    """RAPL, /proc (stat + per-pid dirs), cgroups and kubelet logs, churned by a thread once a second."""

    def __init__(self, root: Path, pods: int, procs: int, life_s: float, services: int = 10) -> None:
        self.rapl = RaplTree.copy("intel-2socket-server", root)
        self.proc = ProcTree(root / "proc", cpus=4)
        self.cgroups = CgroupFixture(root / "cgroup")
        self.logs = root / "log"
        (self.logs / "pods").mkdir(parents=True)
        (self.logs / "containers").mkdir()
        self.pods_per_step, self.procs_per_step, self.life_s = pods, procs, life_s
        self.services = [f"system.slice/svc{i}.service" for i in range(services)]
        for path in self.services:
            self.cgroups.add(path)
        self.live_pods: dict[int, tuple[float, str, list[str]]] = {}  # n → (born, uid, container cgroup paths)
        self.live_procs: dict[int, tuple[float, int, str]] = {}  # pid → (born, utime, container cgroup path)
        self.removed_pods: dict[str, float] = {}  # uid → monotonic time of removal
        self.created_pods = self.created_containers = self.created_procs = 0
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._rng = random.Random(7)
        self._next_pid = 1000
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)

    # --- churn ---
    def _add_pod(self, now: float) -> None:
        n = self.created_pods
        self.created_pods += 1
        uid = f"{n:08x}-0000-4000-8000-{n:012x}"
        pod = f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
        containers = []
        pod_log = self.logs / "pods" / f"churn_pod-{n}_{uid}"
        pod_log.mkdir()
        for j in range(2):
            cid = f"{n * 4 + j:064x}"
            path = f"{pod}/cri-containerd-{cid}.scope"
            self.cgroups.add(path)
            containers.append(path)
            (pod_log / f"c{j}").mkdir()
            (self.logs / "containers" / f"pod-{n}_churn_c{j}-{cid}.log").touch()
        self.created_containers += 2
        self.live_pods[n] = (now, uid, containers)

    def _remove_pod(self, n: int, now: float) -> None:
        _, uid, containers = self.live_pods.pop(n)
        self.cgroups.remove(containers[0].rsplit("/", 1)[0])
        shutil.rmtree(self.logs / "pods" / f"churn_pod-{n}_{uid}")
        for j, path in enumerate(containers):
            (self.logs / "containers" / f"pod-{n}_churn_c{j}-{path.rsplit('-', 1)[1][:-6]}.log").unlink()
        self.removed_pods[uid] = now

    def _write_stat(self, pid: int, utime: int, start: int, flags: int) -> None:
        text = STAT_FORMAT.format(pid=pid, comm=f"job-{pid % 97}", utime=utime, stime=utime // 4, start=start)
        fd = os.open(self.proc.root / str(pid) / "stat", os.O_WRONLY | flags, 0o444)
        try:
            os.pwrite(fd, text.encode(), 0)  # same length every time: a concurrent pread never sees a torn value
        finally:
            os.close(fd)

    def _add_proc(self, now: float) -> None:
        pid = self._next_pid
        self._next_pid += 1
        self.created_procs += 1
        container = self._rng.choice([c for _, _, cs in self.live_pods.values() for c in cs] or self.services)
        (self.proc.root / str(pid)).mkdir()
        (self.proc.root / str(pid) / "cgroup").write_text(f"0::/{container}\n")
        self._write_stat(pid, 0, pid, os.O_CREAT)
        self.live_procs[pid] = (now, 0, container)

    def step(self, seconds: float) -> None:
        now = time.monotonic()
        if not self.paused.is_set():
            for n in [n for n, (born, _, _) in self.live_pods.items() if now - born >= self.life_s]:
                self._remove_pod(n, now)
            for pid in [p for p, (born, _, _) in self.live_procs.items() if now - born >= self.life_s]:
                del self.live_procs[pid]
                shutil.rmtree(self.proc.root / str(pid))
            for _ in range(self.pods_per_step):
                self._add_pod(now)
            for _ in range(self.procs_per_step):
                self._add_proc(now)
        busy = 0
        for path in self.services + [c for _, _, cs in self.live_pods.values() for c in cs]:
            usec = self._rng.randrange(0, int(20_000 * seconds))
            self.cgroups.burn(path, usec)
            busy += usec
        for pid, (born, before, container) in list(self.live_procs.items()):
            utime = before + self._rng.randrange(0, 5)
            self.live_procs[pid] = (born, utime, container)
            self._write_stat(pid, utime, pid, 0)
        self.proc.advance_usec(busy + 100_000, int(400_000 * seconds))
        for zone, watts in RAPL_ZONES.items():
            self.rapl.advance(zone, int(watts * seconds * 1e6))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            self.step(now - last)
            last = now

    def start(self) -> ChurnNode:
        self.step(1.0)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def live_uids(self) -> set[str]:
        return {uid for _, uid, _ in self.live_pods.values()}


def identity(key: tuple[str, tuple[tuple[str, str], ...]]) -> tuple[str, str, str]:
    """A top-level workload's identity: family, uid (pods) or unit (services), zone. Not the whole label set: a
    pod's series is renamed once when its name appears in the kubelet logs (pod="" → pod="name"), carrying
    the same cumulative value, and must not be counted twice."""
    labels = dict(key[1])
    return key[0], labels.get("uid", labels.get("unit", "")), labels["zone"]


class Tracker:
    """Scrapes /metrics every `period` s; the last value of every top-level series, and when each pod was
    last exported."""

    def __init__(self, daemon: DaemonProc, period: float = 0.5) -> None:
        self.daemon, self.period = daemon, period
        self.top: dict[tuple[str, str, str], float] = {}
        self.pod_last_seen: dict[str, float] = {}
        self.scrapes = self.failures = 0
        self.tick_durations: dict[float, float] = {}
        self.last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker", daemon=True)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.daemon.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        now = time.monotonic()
        samples = parse(body.decode())
        for key, value in samples.items():
            if key[0] in TOP_FAMILIES:
                ident = identity(key)
                self.top[ident] = max(value, self.top.get(ident, 0.0))
                if key[0] == TOP_FAMILIES[0]:
                    self.pod_last_seen[dict(key[1])["uid"]] = now
        ticks = next((v for k, v in samples.items() if k[0] == "wattlens_ticks_total"), None)
        duration = next((v for k, v in samples.items() if k[0] == "wattlens_tick_duration_seconds"), None)
        if ticks is not None and duration is not None:
            self.tick_durations[ticks] = duration
        self.scrapes += 1
        self.last = samples
        return samples

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.scrape()
            except (OSError, http.client.HTTPException, RuntimeError):
                self.failures += 1

    def start(self) -> Tracker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@dataclass
class Conservation:
    zone: str
    node: float
    idle: float
    unattributed: float
    top: float
    series: int

    @property
    def error(self) -> float:
        return self.node - (self.idle + self.unattributed + self.top)


@dataclass
class SoakResult:
    seconds: float
    ttl: float
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # t, RSS KiB, fds, pods, procs
    checkpoints: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (RSS KiB, fds)
    conservation: list[Conservation] = field(default_factory=list)
    created: tuple[int, int, int] = (0, 0, 0)  # pods, containers, processes
    exported_pods_end: set[str] = field(default_factory=set)
    live_pods_end: set[str] = field(default_factory=set)
    workloads_gauge_pods: float = float("nan")
    retention_s: list[float] = field(default_factory=list)  # ended pods: last exported − removed
    ticks: int = 0
    skipped: int = 0
    tick_durations_s: list[float] = field(default_factory=list)
    scrapes: int = 0
    scrape_failures: int = 0
    exit_code: int = 0

    @property
    def rss_growth(self) -> float:
        warm, end = self.checkpoints["warm"][0], self.checkpoints["end"][0]
        return (end - warm) / warm

    @property
    def fd_delta(self) -> int:
        return self.checkpoints["end"][1] - self.checkpoints["warm"][1]

    @property
    def conserved(self) -> bool:
        return bool(self.conservation) and all(abs(c.error) <= 1e-3 for c in self.conservation)

    @property
    def ttl_honoured(self) -> bool:
        return (self.exported_pods_end == self.live_pods_end and self.workloads_gauge_pods == len(self.live_pods_end)
                and bool(self.retention_s) and max(self.retention_s) <= self.ttl + 3
                and min(self.retention_s) >= self.ttl - 2)

    def problems(self) -> list[str]:
        out = []
        if self.rss_growth > 0.05:
            out.append(f"RSS grew {self.rss_growth:.1%} after warm-up (limit 5 %)")
        if self.fd_delta > 0:
            out.append(f"fds grew by {self.fd_delta} after warm-up")
        if not self.conserved:
            errors = ", ".join(f"{c.zone} off by {c.error:.6f} J" for c in self.conservation)
            out.append(f"conservation failed: {errors}")
        if not self.ttl_honoured:
            out.append("ended pods were not dropped after the TTL as expected")
        if self.exit_code != 0:
            out.append(f"daemon exited {self.exit_code} after SIGTERM")
        return out


def _checkpoint(node: ChurnNode, daemon: DaemonProc) -> tuple[int, int]:
    node.paused.set()
    time.sleep(2.5)  # two ticks with the same live population: every removed cgroup's fd is closed by then
    return (daemon.rss_kib(), daemon.fds())


def run(seconds: float = 180, ttl: float = 5, pods: int = 8, procs: int = 20, life_s: float = 3,
        sample_s: float = 5, interval: float = 1.0, progress: bool = False) -> SoakResult:
    result = SoakResult(seconds, ttl)
    with tempfile.TemporaryDirectory(prefix="wattlens-soak-") as tmp:
        work = Path(tmp)
        node = ChurnNode(work, pods, procs, life_s).start()
        env = {"WATTLENS_WORKLOAD_TTL": str(ttl), "WATTLENS_PROCESS_METRICS": "true",
               "WATTLENS_KUBELET_LOG_PATH": str(node.logs)}
        args = ["--interval", str(interval), "--sys", str(node.rapl.root), "--proc", str(node.proc.root),
                "--cgroup-root", str(node.cgroups.root), "--meters", "rapl", "--node-name", "soak"]
        daemon = DaemonProc(args, env, work)
        tracker = Tracker(daemon)
        try:
            daemon.wait_ready()
            tracker.start()
            started = time.monotonic()
            warm_at, warmed = started + 0.2 * seconds, False
            next_sample = started
            while (now := time.monotonic()) < started + seconds:
                if not warmed and now >= warm_at:
                    result.checkpoints["warm"] = _checkpoint(node, daemon)
                    node.paused.clear()
                    warmed = True
                if now >= next_sample:
                    result.samples.append((now - started, daemon.rss_kib(), daemon.fds(), len(node.live_pods),
                                           len(node.live_procs)))
                    if progress:
                        t, rss, fds, live, live_procs = result.samples[-1]
                        print(f"  t={t:6.1f}s RSS {rss} KiB fds {fds} live pods {live} procs {live_procs}",
                              file=sys.stderr)
                    next_sample += sample_s
                time.sleep(0.1)
            result.checkpoints["end"] = _checkpoint(node, daemon)  # churn stays paused from here on
            result.created = (node.created_pods, node.created_containers, node.created_procs)
            time.sleep(ttl + 3 * interval)  # every pod removed before the pause is past its TTL now
            tracker.stop()
            final = tracker.scrape()
            result.scrapes, result.scrape_failures = tracker.scrapes, tracker.failures
            result.live_pods_end = node.live_uids()
            result.exported_pods_end = {dict(k[1])["uid"] for k in final if k[0] == TOP_FAMILIES[0]}
            result.workloads_gauge_pods = next(
                (v for k, v in final.items() if k[0] == "wattlens_workloads" and dict(k[1]).get("kind") == "pod"), 0.0)
            result.retention_s = [tracker.pod_last_seen[uid] - removed for uid, removed in node.removed_pods.items()
                                  if uid in tracker.pod_last_seen]
            result.conservation = conservation(final, tracker.top)
            result.ticks = int(next(v for k, v in final.items() if k[0] == "wattlens_ticks_total"))
            result.skipped = int(next(v for k, v in final.items() if k[0] == "wattlens_ticks_skipped_total"))
            result.exit_code = daemon.stop()
            result.tick_durations_s = list(tracker.tick_durations.values())
        finally:
            tracker.stop()
            node.stop()
            daemon.kill()
    return result


def conservation(final: dict, top: dict) -> list[Conservation]:
    """Per zone: node = idle + unattributed + Σ top-level, from one exposition plus the final values of the
    top-level series that ended (and were dropped) before it."""
    out = []
    zones = sorted({dict(k[1])["zone"] for k in final if k[0] == "wattlens_node_cpu_joules_total"})
    for zone in zones:
        def total(name: str, z: str = zone) -> float:
            return sum(v for k, v in final.items() if k[0] == name and dict(k[1]).get("zone") == z)

        tops = {k: v for k, v in top.items() if k[2] == zone}
        for k, v in final.items():  # the final exposition's values win (they are the latest)
            if k[0] in TOP_FAMILIES and dict(k[1]).get("zone") == zone:
                tops[identity(k)] = v
        out.append(Conservation(zone, total("wattlens_node_cpu_joules_total"),
                                total("wattlens_node_cpu_idle_joules_total"),
                                total("wattlens_unattributed_cpu_joules_total"), sum(tops.values()), len(tops)))
    return out


def print_report(r: SoakResult) -> None:
    pods, containers, procs = r.created
    heading(f"soak: {r.seconds:.0f} s, TTL {r.ttl:g} s; created {pods} pods, {containers} containers "
            f"({pods + containers} cgroups), {procs} processes")
    print(f"{'t (s)':>8}{'RSS KiB':>10}{'fds':>6}{'live pods':>11}{'live procs':>12}")
    for t, rss, fds, live, live_procs in r.samples:
        print(f"{t:>8.0f}{rss:>10}{fds:>6}{live:>11}{live_procs:>12}")
    print("checkpoints (churn paused 2.5 s, same live population):")
    for name, (rss, fds) in r.checkpoints.items():
        print(f"  {name:<6} RSS {rss} KiB, fds {fds}")
    post = [s[1] for s in r.samples if s[0] >= 0.2 * r.seconds]
    print(f"RSS growth after warm-up (checkpoints): {r.rss_growth:+.2%}; fd delta: {r.fd_delta:+d}; "
          f"RSS min/max of samples after warm-up: {min(post, default=0)}/{max(post, default=0)} KiB")
    heading("conservation at the end (node = idle + unattributed + Σ top-level), joules")
    print(f"{'zone':<10}{'node':>14}{'idle':>14}{'unattributed':>14}{'Σ top-level':>14}{'series':>8}{'error':>12}")
    for c in r.conservation:
        print(f"{c.zone:<10}{c.node:>14.6f}{c.idle:>14.6f}{c.unattributed:>14.6f}{c.top:>14.6f}{c.series:>8}"
              f"{c.error:>12.2e}")
    heading("TTL")
    print(f"pods exported at the end: {len(r.exported_pods_end)}; live pods: {len(r.live_pods_end)}; "
          f"wattlens_workloads{{kind=\"pod\"}}: {r.workloads_gauge_pods:g}")
    if r.retention_s:
        print(f"ended pods exported after removal for (s): min {min(r.retention_s):.2f}, "
              f"p50 {pct(r.retention_s, 50):.2f}, max {max(r.retention_s):.2f} (TTL {r.ttl:g} s, counted from the "
              f"last tick that saw the pod) over {len(r.retention_s)} pods")
    d = r.tick_durations_s
    print(f"tick duration (wattlens_tick_duration_seconds, {len(d)} ticks): p50 {pct(d, 50) * 1e3:.1f} ms, "
          f"p99 {pct(d, 99) * 1e3:.1f} ms, max {max(d, default=float('nan')) * 1e3:.1f} ms")
    print(f"ticks {r.ticks}, skipped {r.skipped}; scrapes {r.scrapes}, failed {r.scrape_failures}; "
          f"daemon exit code {r.exit_code}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the churn (default 3)")
    parser.add_argument("--ttl", type=float, default=5.0, help="WATTLENS_WORKLOAD_TTL in seconds (default 5)")
    parser.add_argument("--pods", type=int, default=8, help="pods (2 containers each) created per second (default 8)")
    parser.add_argument("--procs", type=int, default=20, help="processes created per second (default 20)")
    parser.add_argument("--life", type=float, default=3.0, help="seconds each pod and process lives (default 3)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS/fd samples (default 10)")
    return parser.parse_args(argv)


def bench(args: argparse.Namespace) -> int:
    print(machine())
    seconds = args.minutes * 60
    with hard_deadline(int(seconds) + 180):
        result = run(seconds, args.ttl, args.pods, args.procs, args.life, args.sample, progress=True)
    print_report(result)
    problems = result.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK: RSS growth ≤ 5 % and no fd growth after warm-up; conservation holds; TTL honoured")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), (Deadline, RuntimeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
