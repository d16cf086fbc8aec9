#!/usr/bin/env python3
"""Tick cadence of the real daemon under hostile HTTP load.

Run from the repository root:  .venv/bin/python benchmarks/load.py [--seconds 30]   (see benchmarks/README.md)

Starts the real `wattlens` daemon (--interval 1) on 127.0.0.1 against a RAPL fixture copy that a driver thread
pushes forward (~50 W package, ~6 W dram per socket), a fake cgroup v2 tree of 25 services and 25 pods
(one container each) that burn CPU every 0.25 s, and a fake /proc/stat that counts that CPU. A separate
process then runs, for `--seconds`:

- `--scrapers` keep-alive clients, each scraping /metrics back to back (text, OpenMetrics, gzip mixed);
- `--slowloris` clients that send a request line and then one header byte every 0.5 s, reconnecting whenever
  the server cuts them off (it must, at its 10 s request deadline);
- `--disconnecters` clients that send a request, read 64 bytes of the response and drop the connection
  (RST half of the time, FIN the other half).

A well-behaved scraper in this process (one keep-alive connection, a scrape every 0.1 s) records the status
and latency of each scrape and the daemon's own wattlens_ticks_total, wattlens_last_tick_timestamp_seconds,
wattlens_ticks_skipped_total and wattlens_tick_duration_seconds. Tick lag = the gap between consecutive
last_tick timestamps minus the interval (× the ticks between them). The daemon's RSS and fd count come from
/proc/<pid>/status and /proc/<pid>/fd before, at the end of, and 3 s after the load. Exit 0 unless the run
itself breaks (the figures are judged by tests/test_reliability.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import itertools
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO, Deadline, hard_deadline, heading, machine, pct, run_bench

sys.path.insert(0, str(REPO / "tests"))  # the fixture trees tests drive: RaplTree, CgroupFixture, ProcTree
import attacks
import bcrypt
import uvloop
from aiohttp import web
from helpers import CgroupFixture, ProcTree, RaplTree

RAPL_ZONES = {"intel-rapl:0": 50.0, "intel-rapl:0:0": 6.0, "intel-rapl:1": 50.0, "intel-rapl:1:0": 6.0}
_SAMPLE = re.compile(
    rb"^wattlens_(ticks_total|last_tick_timestamp_seconds|ticks_skipped_total|tick_duration_seconds)\{[^}]*\} (\S+)$",
    re.M,
)


# --- the daemon -----------------------------------------------------------------------------------------


class DaemonProc:
    """The real daemon as a child process; its log goes to a file (a pipe nobody reads would fill up)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], workdir: Path) -> None:
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL, stderr=self._log, cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "WATTLENS_GPUS": "false", **env},
        )
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"serving https?://127\.0\.0\.1:(\d+)/metrics", self.log_path.read_text())
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("wattlens did not start:\n" + self.log_path.read_text()[-3000:])

    def get(self, path: str = "/metrics", timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("daemon never became ready")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text()[-chars:]


# --- the node the daemon sees ---------------------------------------------------------------------------


class Node:
    """RAPL counters, /proc/stat and a cgroup tree that a thread drives forward in real time."""

    def __init__(self, root: Path, services: int = 25, pods: int = 25, step_s: float = 0.25) -> None:
        self.rapl = RaplTree.copy("intel-2socket-server", root)
        self.proc = ProcTree(root / "proc", cpus=4)
        self.cgroups = CgroupFixture(root / "cgroup")
        self.step_s = step_s
        self.workloads = [f"system.slice/svc{i}.service" for i in range(services)]
        for i in range(pods):
            uid = f"{i:08x}_0000_4000_8000_{i:012x}"
            self.workloads.append(f"kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{i:064x}.scope")
        for path in self.workloads:
            self.cgroups.add(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-driver", daemon=True)
        self._rng = random.Random(1)

    def step(self, seconds: float) -> None:
        busy = 0
        for path in self.workloads:
            usec = self._rng.randrange(0, 20_000)
            self.cgroups.burn(path, usec)
            busy += usec
        self.proc.advance_usec(busy + 50_000, 200_000)
        for zone, watts in RAPL_ZONES.items():
            self.rapl.advance(zone, int(watts * seconds * 1e6))

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            self.step(self.step_s)

    def start(self) -> Node:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def daemon_args(self, interval: float) -> list[str]:
        return ["--interval", str(interval), "--sys", str(self.rapl.root), "--proc", str(self.proc.root),
                "--cgroup-root", str(self.cgroups.root), "--meters", "rapl", "--node-name", "load"]


# --- the well-behaved scraper ---------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # monotonic, when the response was complete
    status: int  # 0: connection error
    latency_s: float
    ticks: float = float("nan")
    last_tick: float = float("nan")
    skipped: float = float("nan")
    duration_s: float = float("nan")


class Sampler:
    """One keep-alive connection; a scrape every `period` s; reconnects (and records status 0) on errors."""

    def __init__(self, port: int, period: float = 0.1) -> None:
        self.port = port
        self.period = period
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _scrape(self, conn: http.client.HTTPConnection | None) -> tuple[http.client.HTTPConnection, int, bytes]:
        """One GET /metrics. Like Prometheus's HTTP client (RFC 9112 §9.3.1), a request that fails on a kept-alive
        connection (the server closed or reset it while idle) is retried once on a new one."""
        for reused in (conn is not None, False):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                return conn, response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                if not reused:
                    raise
        raise AssertionError("unreachable")

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn, status, body = self._scrape(conn)
                done = time.monotonic()
                values = {m.group(1).decode(): float(m.group(2)) for m in _SAMPLE.finditer(body)}
                self.samples.append(Sample(
                    done, status, done - started, values.get("ticks_total", float("nan")),
                    values.get("last_tick_timestamp_seconds", float("nan")),
                    values.get("ticks_skipped_total", float("nan")),
                    values.get("tick_duration_seconds", float("nan")),
                ))
            except (OSError, http.client.HTTPException):
                self.samples.append(Sample(time.monotonic(), 0, time.monotonic() - started))
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@dataclass
class Cadence:
    samples: int
    non_200: int
    latency_p50_s: float
    latency_p99_s: float
    latency_max_s: float
    ticks: int
    lags_s: list[float]
    gaps_unobserved: int  # consecutive observed ticks more than one apart (the sampler missed one)
    skipped: int
    durations_s: list[float]

    def lag(self, q: float) -> float:
        return pct(self.lags_s, q)

    @property
    def lag_max_s(self) -> float:
        return max(self.lags_s, default=float("nan"))


def cadence(samples: Sequence[Sample], interval: float) -> Cadence:
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_s for s in samples]
    ticks: dict[float, Sample] = {}
    for s in ok:
        ticks.setdefault(s.ticks, s)
    ordered = [ticks[k] for k in sorted(ticks)]
    lags, unobserved = [], 0
    for a, b in itertools.pairwise(ordered):
        between = int(b.ticks - a.ticks)
        unobserved += between > 1
        lags.append(b.last_tick - a.last_tick - between * interval)
    return Cadence(
        samples=len(samples), non_200=len(samples) - len(ok),
        latency_p50_s=pct(latencies, 50), latency_p99_s=pct(latencies, 99),
        latency_max_s=max(latencies, default=float("nan")),
        ticks=int(ordered[-1].ticks - ordered[0].ticks) if ordered else 0, lags_s=lags, gaps_unobserved=unobserved,
        skipped=int(ordered[-1].skipped - ordered[0].skipped) if ordered else 0,
        durations_s=[s.duration_s for s in ordered],
    )


# --- the hostile clients (a separate process, so they do not share this one's GIL with the sampler) --------


REQUESTS = [
    b"GET /metrics HTTP/1.1\r\nHost: l\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: l\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: l\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    if match:
        await reader.readexactly(int(match.group(1)))
    return status


async def _scraper(port: int, until: float, stats: dict[str, int], seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while time.monotonic() < until:
                writer.write(rng.choice(REQUESTS))
                status = await asyncio.wait_for(_read_response(reader), 15)
                stats["ok" if status == 200 else "bad_status"] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            stats["scrape_errors"] += 1
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()


async def _slowloris(port: int, until: float, stats: dict[str, int]) -> None:
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: l\r\nX-Slow: ")
            while time.monotonic() < until:
                writer.write(b"a")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), 0.5)
                except TimeoutError:
                    continue
                stats["slowloris_cut_off"] += 1  # the server answered (408) or closed: it did not wait forever
                del data
                break
        except OSError:
            stats["slowloris_cut_off"] += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(0.05)


async def _disconnecter(port: int, until: float, stats: dict[str, int], seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(rng.choice(REQUESTS))
            await asyncio.wait_for(reader.readexactly(64), 10)
            if rng.random() < 0.5:  # RST instead of FIN
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stats["dropped_mid_response"] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            stats["disconnect_errors"] += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(0.02)


async def _attack(port: int, seconds: float, scrapers: int, slowloris: int, disconnecters: int) -> dict[str, int]:
    stats = dict.fromkeys(("ok", "bad_status", "scrape_errors", "slowloris_cut_off", "dropped_mid_response",
                           "disconnect_errors"), 0)
    until = time.monotonic() + seconds
    tasks = [_slowloris(port, until, stats) for _ in range(slowloris)]
    tasks += [_scraper(port, until, stats, i) for i in range(scrapers)]
    tasks += [_disconnecter(port, until, stats, i) for i in range(disconnecters)]
    await asyncio.gather(*tasks)
    return stats


def _attack_process(port: int, seconds: float, counts: tuple[int, int, int], out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_attack(port, seconds, *counts)))


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    interval: float
    seconds: float
    clients: tuple[int, int, int]
    quiet: Cadence
    loaded: Cadence
    attack: dict[str, int]
    rss_kib: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    daemon_cpu_s: float = 0.0
    exit_code: int = 0


def run(seconds: float = 30, interval: float = 1.0, scrapers: int = 200, slowloris: int = 40,
        disconnecters: int = 10, quiet_s: float = 5.0) -> LoadResult:
    """The whole measurement; raises RuntimeError if the daemon or the attack process fails to run."""
    with tempfile.TemporaryDirectory(prefix="wattlens-load-") as tmp:
        work = Path(tmp)
        node = Node(work)
        node.step(1.0)
        daemon = DaemonProc(node.daemon_args(interval), {"WATTLENS_KUBELET_LOG_PATH": str(work / "log")}, work)
        try:
            node.start()
            daemon.wait_ready()
            sampler = Sampler(daemon.port).start()
            time.sleep(quiet_s)
            quiet_end = time.monotonic()
            rss = {"before": daemon.rss_kib()}
            fds = {"before": daemon.fds()}
            cpu_before = daemon.cpu_s()
            queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
            attacker = multiprocessing.get_context("spawn").Process(
                target=_attack_process, args=(daemon.port, seconds, (scrapers, slowloris, disconnecters), queue))
            load_start = time.monotonic()
            attacker.start()
            while attacker.is_alive() and time.monotonic() < load_start + seconds - 1:
                time.sleep(0.5)
                rss["peak"] = max(rss.get("peak", 0), daemon.rss_kib())
                fds["peak"] = max(fds.get("peak", 0), daemon.fds())
            rss["end of load"], fds["end of load"] = daemon.rss_kib(), daemon.fds()
            attack = queue.get(timeout=seconds + 60)
            attacker.join(timeout=30)
            load_end = time.monotonic()
            cpu_s = daemon.cpu_s() - cpu_before
            time.sleep(3)
            rss["3 s after"], fds["3 s after"] = daemon.rss_kib(), daemon.fds()
            sampler.stop()
            if attacker.exitcode != 0:
                raise RuntimeError(f"the attack process exited {attacker.exitcode}")
            quiet = cadence([s for s in sampler.samples if s.at <= quiet_end], interval)
            loaded = cadence([s for s in sampler.samples if load_start <= s.at <= load_end], interval)
            code = daemon.stop()
            return LoadResult(interval, seconds, (scrapers, slowloris, disconnecters), quiet, loaded, attack,
                              rss, fds, cpu_s, code)
        finally:
            node.stop()
            daemon.kill()


def print_report(r: LoadResult) -> None:
    heading("tick cadence from the daemon's own metrics (well-behaved scraper, one scrape every 0.1 s)")
    print(f"{'phase':<34}{'ticks':>6}{'skipped':>8}{'lag p50':>10}{'lag p99':>10}{'lag max':>10}"
          f"{'tick p50':>10}{'tick p99':>10}{'tick max':>10}{'scrape p50':>12}{'scrape p99':>12}{'non-200':>8}")
    for name, c in (("quiet (no load)", r.quiet),
                    (f"{r.clients[0]} scrapers + {r.clients[1]} slow + {r.clients[2]} drop", r.loaded)):
        print(f"{name:<34}{c.ticks:>6}{c.skipped:>8}{c.lag(50) * 1e3:>8.1f}ms{c.lag(99) * 1e3:>8.1f}ms"
              f"{c.lag_max_s * 1e3:>8.1f}ms{pct(c.durations_s, 50) * 1e3:>8.1f}ms{pct(c.durations_s, 99) * 1e3:>8.1f}ms"
              f"{max(c.durations_s, default=float('nan')) * 1e3:>8.1f}ms{c.latency_p50_s * 1e3:>10.1f}ms"
              f"{c.latency_p99_s * 1e3:>10.1f}ms{c.non_200:>8}")
    print(f"lag = gap between consecutive wattlens_last_tick_timestamp_seconds - interval ({r.interval:g} s); "
          f"ticks the sampler did not see separately: {r.loaded.gaps_unobserved}")
    heading("the hostile clients")
    for key, value in r.attack.items():
        print(f"  {key:<22}{value:>10}")
    print(f"  {'scrapes/s':<22}{r.attack['ok'] / r.seconds:>10.0f}")
    print(f"  {'daemon CPU under load':<22}{r.daemon_cpu_s / r.seconds * 100:>9.0f}% of one core")
    heading("daemon memory and file descriptors")
    print(f"{'when':<14}{'RSS KiB':>10}{'fds':>6}")
    for key in r.rss_kib:
        print(f"{key:<14}{r.rss_kib[key]:>10}{r.fds[key]:>6}")
    print(f"daemon exit code after SIGTERM: {r.exit_code}")


# --- attack modes (issue 17): one attack at a time, against wattlens and its peers --------------------------

TARGETS = ("wattlens", "node_exporter", "aiohttp")
ATTACKS = ("idle", "slow", "tls", "auth")
AUTH_USER, AUTH_PASSWORD = "prometheus", "scrape-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _aiohttp_server(port: int, body_bytes: int, cert: str, key: str) -> None:
    """The same endpoints on aiohttp (web.run_app, default settings), for the server choice."""
    body = b"wattlens_test_joules_total 1\n" * max(1, body_bytes // 29)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz)])
    context = None
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None, handle_signals=True)


@dataclass
class Target:
    name: str
    pid: int
    port: int
    health_path: str
    stop: Any


def _pki(work: Path) -> tuple[str, str, str]:
    """A CA and an RSA server certificate for 127.0.0.1 (RSA: what most operators have; the costlier handshake)."""
    run_ = functools.partial(subprocess.run, cwd=work, check=True, capture_output=True, timeout=60)
    run_(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
          "-days", "2", "-subj", "/CN=bench-ca"])
    run_(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
          "-subj", "/CN=127.0.0.1"])
    (work / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run_(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
          "-out", "server.crt", "-days", "2", "-extfile", "san.ext"])
    return str(work / "ca.crt"), str(work / "server.crt"), str(work / "server.key")


def _start_target(name: str, attack: str, work: Path, node: Node) -> Target:
    _ca, cert, key = _pki(work) if attack == "tls" else ("", "", "")
    web = work / f"web-{name}.yml"
    lines = []
    if attack == "tls":
        lines += ["tls_server_config:", f"  cert_file: {cert}", f"  key_file: {key}"]
    if attack == "auth":
        hashed = bcrypt.hashpw(AUTH_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
        lines += ["basic_auth_users:", f"  {AUTH_USER}: '{hashed}'"]
    web.write_text("\n".join(lines) + "\n")
    if name == "wattlens":
        env = {"WATTLENS_KUBELET_LOG_PATH": str(work / "log")}
        if lines:
            env["WATTLENS_WEB_CONFIG_FILE"] = str(web)
        daemon = DaemonProc(node.daemon_args(1.0), env, work)
        return Target(name, daemon.pid, daemon.port, "/healthz", daemon.stop)
    port = _free_port()
    if name == "node_exporter":
        binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if binary is None:
            raise RuntimeError("node_exporter is not installed (apt-get install prometheus-node-exporter)")
        args = [binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                "--collector.cpu", "--collector.meminfo", "--collector.loadavg"]
        if lines:
            args.append(f"--web.config.file={web}")
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid, stop = process.pid, lambda: (process.terminate(), process.wait(10))
        health = "/"  # node_exporter has no health endpoint; its probes use the landing page
    else:
        if attack == "auth":
            raise RuntimeError("aiohttp has no basic auth of its own: not compared for the auth flood")
        proc = multiprocessing.get_context("spawn").Process(target=_aiohttp_server, args=(port, 60_000, cert, key))
        proc.start()
        pid, stop = proc.pid, lambda: (proc.terminate(), proc.join(10))
        health = "/healthz"
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.1)
    return Target(name, pid, port, health, stop)


def _attack_main(kind: str, port: int, seconds: float, out: multiprocessing.Queue) -> None:
    attacks.raise_nofile()
    stats = attacks.AttackStats()

    async def go() -> None:
        until = time.monotonic() + seconds
        if kind == "idle":
            await attacks.idle_sockets(port, 300, until, stats)
        elif kind == "slow":
            await asyncio.gather(attacks.slow_readers(port, 260, until, stats),
                                 _after(seconds * 0.4, attacks.slow_readers(port, 260, until, stats)))
        elif kind == "tls":
            await attacks.tls_half_open(port, int(500 * seconds), seconds, stats, hold_s=2.0)
        else:
            await attacks.wrong_passwords(port, 200, until, stats, AUTH_USER)

    asyncio.run(go())
    out.put({"connections": stats.connections, "cut_off": stats.cut_off, "connect_errors": stats.connect_errors,
             "responses": dict(stats.responses)})


async def _after(delay: float, coroutine: Any) -> None:
    await asyncio.sleep(delay)
    await coroutine


@dataclass
class AttackResult:
    target: str
    attack: str
    probes_ok: int
    probes_sent: int
    probe_p99_ms: float
    scrapes_ok: int
    scrapes_sent: int
    peak_sockets: int
    peak_fds: int
    fds_before: int
    fds_after: int
    rss_mb: tuple[float, float, float]  # before, peak, 3 s after
    tcp_mem_peak_mb: float
    attackers: dict[str, Any]


def run_attack(target_name: str, kind: str, seconds: float) -> AttackResult:
    with tempfile.TemporaryDirectory(prefix="wattlens-attack-") as tmp:
        work = Path(tmp)
        node = Node(work)
        node.step(1.0)
        node.start()
        target = _start_target(target_name, kind, work, node)
        try:
            context = None
            if kind == "tls":
                context = ssl.create_default_context(cafile=str(work / "ca.crt"))
            headers = {"Authorization": attacks.basic(AUTH_USER, AUTH_PASSWORD)} if kind == "auth" else None
            for _ in range(40):  # warm up (and, with auth, log in once, as Prometheus would have)
                with contextlib.suppress(OSError, ssl.SSLError):
                    if attacks.probe_once(target.port, "/metrics", 5.0, context, headers)[0] == 200:
                        break
                time.sleep(0.25)
            time.sleep(1.0)
            fds_before, rss_before, tcp_before = attacks.process_fds(target.pid), attacks.process_rss_kib(target.pid), \
                attacks.tcp_memory_pages()
            sockets = attacks.Sampler(lambda: attacks.process_sockets(target.pid)
                                + attacks.held_server_sockets(target.port, orphans_only=True)).start()
            fds = attacks.Sampler(lambda: attacks.process_fds(target.pid)).start()
            rss = attacks.Sampler(lambda: attacks.process_rss_kib(target.pid)).start()
            tcp = attacks.Sampler(attacks.tcp_memory_pages).start()
            out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
            attacker = multiprocessing.get_context("spawn").Process(
                target=_attack_main, args=(kind, target.port, seconds, out))
            attacker.start()
            time.sleep(min(1.5, seconds / 5))
            prober = attacks.Prober(target.port, target.health_path, period=0.1, timeout=2.0, context=context,
                              headers=headers, source="127.0.0.2").start()
            scraper = attacks.Scraper(target.port, period=0.5, timeout=2.0, context=context, headers=headers,
                                      source="127.0.0.3").start()
            attackers = out.get(timeout=seconds + 120)
            attacker.join(30)
            probes, scrapes = prober.stop(), scraper.stop()
            time.sleep(3)
            peaks = sockets.stop(), fds.stop(), rss.stop(), tcp.stop()
            p99 = pct(probes.latencies_s, 99) * 1e3 if probes.latencies_s else float("nan")
            rss_after = attacks.process_rss_kib(target.pid)
            return AttackResult(
                target_name, kind, probes.ok, probes.sent, p99, sum(1 for s in scrapes if s == 200), len(scrapes),
                peaks[0], peaks[1], fds_before, attacks.process_fds(target.pid),
                (rss_before / 1024, peaks[2] / 1024, rss_after / 1024), (peaks[3] - tcp_before) * 4096 / 2**20,
                attackers)
        finally:
            target.stop()
            node.stop()


ATTACK_NAMES = {
    "idle": "300 idle sockets that reconnect when dropped",
    "slow": "2 waves of 260 clients that never read a response",
    "tls": "500 half-open TLS handshakes/s (RSA 2048)",
    "auth": "200 keep-alive connections, a new wrong password each request",
}


def print_attacks(results: list[AttackResult]) -> None:
    for kind in dict.fromkeys(r.attack for r in results):
        heading(f"attack: {ATTACK_NAMES[kind]}; kubelet-like probe every 0.1 s, keep-alive scrape every 0.5 s")
        print(f"{'target':<15}{'probes ok':>12}{'probe p99':>11}{'scrapes ok':>12}{'sockets':>9}{'fds':>14}"
              f"{'RSS MB before/peak/after':>27}{'TCP mem':>9}")
        for r in (r for r in results if r.attack == kind):
            print(f"{r.target:<15}{f'{r.probes_ok}/{r.probes_sent}':>12}{r.probe_p99_ms:>9.1f}ms"
                  f"{f'{r.scrapes_ok}/{r.scrapes_sent}':>12}{r.peak_sockets:>9}"
                  f"{f'{r.fds_before}>{r.peak_fds}>{r.fds_after}':>14}"
                  f"{'/'.join(f'{v:.0f}' for v in r.rss_mb):>27}{r.tcp_mem_peak_mb:>7.0f}MB")
            print(f"{'':<15}attackers: {r.attackers}")


def attack_bench(args: argparse.Namespace) -> int:
    print(machine())
    results = []
    for kind in args.attack:
        for name in args.targets:
            if name == "aiohttp" and kind == "auth":
                continue
            with hard_deadline(int(args.seconds) + 240):
                results.append(run_attack(name, kind, args.seconds))
    print_attacks(results)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of the load (default 30)")
    parser.add_argument("--interval", type=float, default=1.0, help="daemon tick interval (default 1)")
    parser.add_argument("--scrapers", type=int, default=200, help="keep-alive scrapers (default 200)")
    parser.add_argument("--slowloris", type=int, default=40, help="slow clients (default 40)")
    parser.add_argument("--disconnecters", type=int, default=10, help="clients that drop mid-response (default 10)")
    parser.add_argument("--attack", nargs="+", choices=ATTACKS,
                        help="instead: run these attacks (idle, slow, tls, auth) against --targets, one at a time")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS),
                        help="servers to attack (default: wattlens node_exporter aiohttp)")
    return parser.parse_args(argv)


def bench(args: argparse.Namespace) -> int:
    print(machine())
    with hard_deadline(int(args.seconds) + 120):
        result = run(args.seconds, args.interval, args.scrapers, args.slowloris, args.disconnecters)
    print_report(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(attack_bench if args.attack else bench, args, (Deadline, RuntimeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
