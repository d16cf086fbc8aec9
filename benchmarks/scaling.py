#!/usr/bin/env python3
"""wattlens scaling: what a tick and its exposition cost at 10, 100, 300 and 1,000 pods, against floors measured
in the same run.

Run from the repository root:  .venv/bin/python benchmarks/scaling.py   (see benchmarks/README.md)

Each size is a node from the attribution benchmark's generator (3 containers, ~30 processes per pod; cgroup v2
tree with every interface file, kubelet logs, fake /proc, RAPL fixture) on tmpfs. The table gives, per tick,
CPU medians of: Engine.tick; the render of each exposition variant a scrape can ask for; the tick plus the
render of one Prometheus scrape (OpenMetrics + gzip); GC time inside them; series; and the RSS of the real
daemon serving that node. Floors, measured on the same node: reading every workload cgroup's cpu.stat through
held fds (pread, no parsing), and a per-process sweep (open/read/close every /proc/<pid>/stat and
/proc/<pid>/cgroup). Nothing outside the temporary directory is written; the daemon listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attribution import TICK_S, GcTimer, Node, sweep, temp_parent
from common import REPO, Deadline, hard_deadline, heading, machine, run_bench

from exporter.config import load_config
from exporter.daemon import settle_heap
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.workloads.classify import classify

SIZES = (10, 100, 300, 1000)
VARIANTS = (("text", False, False), ("text+gz", False, True), ("OM", True, False), ("OM+gz", True, True))
SCRAPE = ("OM+gz", True, True)  # what Prometheus asks for
OTHERS = tuple(v for v in VARIANTS if v != SCRAPE)
HARD_TIMEOUT_S = 900
# Goals of issue 12 (benchmarks, not timed tests).
GOAL_100_MS = 5.0
GOAL_1000_MS = 50.0
GOAL_FLOOR_RATIO = 10.0
GOAL_SWEEP_RATIO = 10.0
GOAL_GC_MS = 2.0
GOAL_IDLE_RSS_MIB = 35.0


@dataclass
class Size:
    pods: int
    cgroups: int = 0
    workload_cgroups: int = 0
    processes: int = 0
    tick: list[float] = field(default_factory=list)
    render: dict[str, list[float]] = field(default_factory=dict)
    scrape: list[float] = field(default_factory=list)  # tick + the render of one Prometheus scrape
    gc_ms: list[float] = field(default_factory=list)  # GC CPU per tick (inside tick + renders)
    series: int = 0
    workload_series: int = 0  # after the series budget (max_series)
    max_series: int = 0
    folded: dict[str, int] = field(default_factory=dict)
    floor: float = 0.0  # pread of every workload cpu.stat through held fds, right after the node moved on
    floor_parse: float = 0.0  # the same, with usage_usec parsed
    floor_hot: float = 0.0  # the same, repeated back to back (caches hot)
    floors: list[tuple[float, bool]] = field(default_factory=list)  # (CPU s, parsed too)
    sweep: float = 0.0
    rss_kib: int = 0
    held_fds: int = 0


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """p10–p90 around the median, as a percentage of it: how noisy the figure is."""
    if len(values) < 5:
        return "   -"
    ordered = sorted(values)
    lo, hi = ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]
    return f"±{(hi - lo) / 2 / med(values):4.0%}"


def read_floor(fds: list[int], parse: bool) -> float:
    """CPU seconds to pread every file once through fds held open (with `parse`, and take usage_usec from it):
    what reading the cgroup tree costs at the least, in Python."""
    pread, thread_time = os.pread, time.thread_time
    t0 = thread_time()
    if parse:
        for fd in fds:
            data = pread(fd, 4096, 0)
            int(data[11 : data.index(b"\n")])
    else:
        for fd in fds:
            pread(fd, 4096, 0)
    return thread_time() - t0


def _is_workload(path: str) -> bool:
    return classify(tuple(path.split("/"))) is not None


def sweep_cost(proc: Path, reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.thread_time()
        sweep(proc, with_cgroup=True)
        samples.append(time.thread_time() - t0)
    return med(samples)


# Carbon accounting (docs/carbon.md): as shipped (embodied only), off, or with a grid intensity (operational too).
CARBON_FLAGS = {"embodied": {}, "off": {"carbon.embodied": False}, "all": {"carbon_intensity": 300.0}}


def measure(size: Size, node: Node, ticks: int, warmup: int, reps: int, max_series: str | None = None,
            carbon: str = "embodied") -> None:
    flags = {**CARBON_FLAGS[carbon], **node.engine_flags()}
    if max_series is not None:
        flags["max_series"] = max_series
    engine = Engine.start(load_config(flags, None, environ={}))
    renderer = Renderer()
    now = 1_000_000.0
    timer = GcTimer()
    gc.callbacks.append(timer)
    stat = [f"{node.cgroup}/{path}/cpu.stat" for path, _ in sorted(node.usage.items()) if path and _is_workload(path)]
    fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in stat]
    try:
        for n in range(warmup + ticks):
            node.advance(TICK_S, False, 0)
            timed = n >= warmup
            if timed:  # the floor, as the tick finds the tree: just after the node moved on (caches cold)
                parse = n % 2 == 0
                size.floors.append((read_floor(fds, parse), parse))
            if n == warmup:
                settle_heap()  # as the daemon does after its first tick (here it also takes the generator's heap)
            timer.active, timer.cpu_s = timed, 0.0
            t0 = time.thread_time()
            snap = engine.tick(now)
            tick = time.thread_time() - t0
            # One scrape per tick, as one Prometheus makes: OpenMetrics + gzip every other tick, the other
            # variants in turn between. The time includes wrapping the snapshot, which lets go of the previous
            # exposition (freeing a big node's strings is not free).
            label, openmetrics, gzipped = SCRAPE if n % 2 == 0 else OTHERS[n // 2 % len(OTHERS)]
            t0 = time.thread_time()
            renderer.render(snap).body(openmetrics, gzipped)
            render = time.thread_time() - t0
            timer.active = False
            now += TICK_S
            if timed:
                size.tick.append(tick)
                size.render.setdefault(label, []).append(render)
                if label == SCRAPE[0]:  # GC is counted in the ticks one Prometheus scrape follows
                    size.scrape.append(tick + render)
                    size.gc_ms.append(timer.cpu_s * 1e3)
        text = renderer.render(snap).body(False, False)
        size.series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        if snap.budget is not None:
            size.workload_series, size.max_series = snap.budget.series, snap.budget.max_series
            size.folded = dict(snap.budget.folded)
        size.workload_cgroups = len(fds)
        size.floor = med([f for f, parse in size.floors if not parse])
        size.floor_parse = med([f for f, parse in size.floors if parse])
        size.floor_hot = med([read_floor(fds, False) for _ in range(reps)])
    finally:
        gc.callbacks.remove(timer)
        gc.unfreeze()
        engine.close()
        for fd in fds:
            os.close(fd)
    size.sweep = sweep_cost(node.proc, max(3, reps // 5))
    size.cgroups, size.processes = len(node.usage), len(node.procs)


@dataclass(frozen=True)
class Rss:
    """Resident memory in KiB: all of it, anonymous (heap, Python objects) and file-backed (the interpreter,
    shared libraries and extension modules, the pages of them that were touched)."""

    total: int
    anon: int
    file: int

    @classmethod
    def of(cls, status: str) -> Rss:
        def kib(key: str) -> int:
            return int(status.split(f"{key}:")[1].split(maxsplit=1)[0])

        return cls(kib("VmRSS"), kib("RssAnon"), kib("RssFile"))

    def __str__(self) -> str:
        return f"{self.total / 1024:.1f} MiB (anon {self.anon / 1024:.1f}, file {self.file / 1024:.1f})"


@dataclass(frozen=True)
class Served:
    rss: Rss
    fds: int
    startup_s: float  # from spawning `python -m exporter` to its "serving http://..." line


def daemon_rss(node: Node | None, seconds: float) -> Served:
    """RSS and open fds of the real daemon after `seconds` of serving `node` (or this machine) and one scrape of
    each format; and how long it took to start serving. The PID started is the PID serving: the CLI validates,
    then exec()s into the daemon (docs/architecture.md, "Process model")."""
    args = [sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", "--interval", "1", "--node-name", "bench"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "WATTLENS_GPUS": "false"}
    if node is not None:
        args += [
            "--sys",
            str(node.sys),
            "--proc",
            str(node.proc),
            "--cgroup-root",
            str(node.cgroup),
            "--meters",
            "rapl",
        ]
        env["WATTLENS_KUBELET_LOG_PATH"] = str(node.log)
    else:
        args += ["--meters", "model"]
    started = time.perf_counter()
    daemon = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    try:
        assert daemon.stderr is not None
        port = 0
        deadline = time.monotonic() + 60
        while not port and time.monotonic() < deadline:
            match = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", daemon.stderr.readline())
            port = int(match.group(1)) if match else 0
        if not port:
            raise RuntimeError("the daemon did not start")
        startup = time.perf_counter() - started
        time.sleep(seconds)
        for accept in ("text/plain", "application/openmetrics-text"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"})
            conn.getresponse().read()
            conn.close()
        time.sleep(1.5)
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        return Served(Rss.of(status), len(os.listdir(f"/proc/{daemon.pid}/fd")), startup)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def import_rss(module: str) -> Rss:
    code = f"import {module}; print(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return Rss.of(out.stdout)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f}"


def print_table(sizes: list[Size]) -> None:
    print(
        f"{'pods':>5} {'cgroups':>7} {'procs':>6} {'tick':>7} {'noise':>5}"
        + "".join(f" {label:>7}" for label, _, _ in VARIANTS)
        + f" {'tick+OMgz':>9} {'noise':>5} {'GC p50':>6} {'GC max':>6} {'series':>6} {'RSS MiB':>7}"
    )
    for s in sizes:
        print(
            f"{s.pods:5d} {s.cgroups:7d} {s.processes:6d} {ms(med(s.tick))} {spread(s.tick)}"
            + "".join(f" {ms(med(s.render[label]))}" for label, _, _ in VARIANTS)
            + f" {ms(med(s.scrape)):>9} {spread(s.scrape)} {med(s.gc_ms):6.2f} {max(s.gc_ms):6.2f} {s.series:6d}"
            + f" {s.rss_kib / 1024:7.1f}"
        )
    print(
        "  CPU ms per tick (thread_time medians; noise = half the p10-p90 range over the timed ticks). Each tick\n"
        "  is scraped once, as by one Prometheus: OpenMetrics + gzip every other tick, the other variants in turn\n"
        "  between (label text cached across ticks). tick+OMgz = a tick with its OpenMetrics + gzip scrape.\n"
        "  GC = collector CPU inside those ticks and renders.\n"
        "  RSS = the real daemon serving the node."
    )
    print(
        f"\n{'pods':>5} {'read':>5} {'floor':>7} {'+parse':>7} {'hot':>7} {'x floor':>8} {'x +parse':>8}"
        f" {'sweep':>8} {'sweep/tick':>10}"
    )
    for s in sizes:
        scrape = med(s.scrape)
        print(
            f"{s.pods:5d} {s.workload_cgroups:5d} {ms(s.floor)} {ms(s.floor_parse)} {ms(s.floor_hot)}"
            f" {scrape / s.floor:8.1f} {scrape / s.floor_parse:8.1f} {ms(s.sweep):>8} {s.sweep / scrape:10.1f}"
        )
    print(
        "  floor = pread of every workload cgroup's cpu.stat through held fds, just after the node moved on (as the\n"
        "  tick finds it; alternate ticks); +parse = with usage_usec parsed; hot = repeated back to back.\n"
        "  x = tick+OMgz / floor.\n"
        "  sweep = a per-process sweep of the same node: open/read/close every /proc/<pid>/stat and /proc/<pid>/cgroup."
    )


def verdicts(sizes: list[Size], idle_rss: int) -> list[str]:
    by = {s.pods: s for s in sizes}
    lines = []

    def goal(ok: bool, text: str) -> None:
        lines.append(f"GOAL {'MET   ' if ok else 'MISSED'} {text}")

    if 100 in by:
        s = by[100]
        scrape = med(s.scrape)
        goal(scrape * 1e3 <= GOAL_100_MS, f"100 pods: tick + scrape render {ms(scrape)} ms <= {GOAL_100_MS} ms")
        ratio = scrape / s.floor_parse
        goal(ratio <= GOAL_FLOOR_RATIO, f"100 pods: {ratio:.1f}x reading the cgroups' CPU (pread + parse) <= 10x")
        goal(
            s.sweep / scrape >= GOAL_SWEEP_RATIO, f"100 pods: a per-process sweep costs {s.sweep / scrape:.1f}x >= 10x"
        )
    if 1000 in by:
        s = by[1000]
        goal(med(s.scrape) * 1e3 <= GOAL_1000_MS, f"1000 pods: tick + scrape render {ms(med(s.scrape))} ms <= 50 ms")
        goal(
            max(s.gc_ms) <= GOAL_GC_MS,
            f"1000 pods: GC per tick p50 {med(s.gc_ms):.2f} ms, max {max(s.gc_ms):.2f} ms <= 2 ms",
        )
    for s in sizes:  # the series budget (max_series; 0: none): workload series after it, what it folded
        folded = ", ".join(f"{n} {kind}s" for kind, n in sorted(s.folded.items())) or "nothing"
        text = f"{s.pods} pods: {s.workload_series:,} workload series ({s.series:,} in all), folded {folded}"
        if s.max_series:
            goal(s.workload_series <= s.max_series, f"{text}; within max_series {s.max_series:,}")
        else:
            lines.append(f"INFO {text}; no budget (max_series 0)")
    for s in sizes:  # as shipped: ticks every 5 s, the ServiceMonitor scrapes every 30 s (two replicas at most)
        deployed = med(s.tick) + med(s.render[SCRAPE[0]]) * 2 / 6
        lines.append(f"INFO {s.pods} pods as deployed (1 tick in 3 rendered, at most): {ms(deployed)} ms per tick")
    if len(sizes) > 1:
        per_pod = [med(s.scrape) / s.pods for s in sizes if s.pods >= 100]
        if len(per_pod) > 1:
            growth = max(per_pod) / min(per_pod)
            goal(growth <= 1.5, f"linear: per-pod cost from 100 pods up varies {growth:.2f}x (<= 1.5x)")
    if idle_rss:
        goal(
            idle_rss / 1024 <= GOAL_IDLE_RSS_MIB,
            f"import + idle RSS {idle_rss / 1024:.1f} MiB <= {GOAL_IDLE_RSS_MIB:g} MiB",
        )
    else:
        lines.append("INFO import + idle RSS not measured (--no-daemon)")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", default=",".join(map(str, SIZES)), help="node sizes (default 10,100,300,1000)")
    p.add_argument("--ticks", type=int, default=60, help="timed ticks per size (default 60)")
    p.add_argument(
        "--warmup", type=int, default=30, help="untimed ticks first (default 30: 150 s, past start-up rescans)"
    )
    p.add_argument("--reps", type=int, default=30, help="repetitions of the floor measurements (default 30)")
    p.add_argument("--no-daemon", action="store_true", help="skip the real daemon's RSS")
    p.add_argument("--max-series", help="the series budget (default: the default max_series; 0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--carbon", choices=sorted(CARBON_FLAGS), default="embodied",
                   help="carbon accounting: embodied (as shipped), off, or all (with a grid intensity)")
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    load = os.getloadavg()
    print(f"wattlens scaling benchmark: {machine()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    sizes = []
    with hard_deadline(HARD_TIMEOUT_S):
        for pods in (int(p) for p in args.pods.split(",")):
            with tempfile.TemporaryDirectory(prefix="wattlens-scale-", dir=temp_parent()) as tmp:
                t0 = time.perf_counter()
                node = Node(Path(tmp), args.seed, pods=pods)
                built = time.perf_counter() - t0
                size = Size(pods)
                measure(size, node, args.ticks, args.warmup, args.reps, args.max_series, args.carbon)
                if not args.no_daemon:
                    served = daemon_rss(node, 3.0)
                    size.rss_kib, size.held_fds = served.rss.total, served.fds
                sizes.append(size)
                print(
                    f"  {pods} pods: node built in {built:.1f} s; {size.workload_cgroups} workload cgroups read;"
                    f" daemon holds {size.held_fds} fds",
                    flush=True,
                )
        idle_rss = 0
        if not args.no_daemon:
            heading("RSS: import, and the idle daemon on this machine (model meter, its real cgroups)")
            imported = import_rss("exporter.__main__, exporter.runtime")
            cli = import_rss("exporter.cli")
            idle = daemon_rss(None, 3.0)
            idle_rss = max(imported.total, idle.rss.total)
            print(
                f"  import of the daemon (exporter.runtime): {imported}\n"
                f"  idle daemon:                             {idle.rss}, {idle.fds} fds;"
                f" serving {idle.startup_s * 1e3:.0f} ms after start\n"
                f"  import of the CLI (exporter.cli):        {cli}  (transient: validates, then exec()s the daemon)"
            )
    heading("per tick, by node size")
    print_table(sizes)
    for line in verdicts(sizes, max(idle_rss, 0) if not args.no_daemon else 0):
        print(line)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f}; total wall time {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), (Deadline, OSError, RuntimeError, AssertionError))


if __name__ == "__main__":
    sys.exit(main())
