#!/usr/bin/env python3
"""wattlens benchmarks: per-tick cost (engine + render), scrape latency of the daemon, exposition size.

Run from the repository root:  .venv/bin/python benchmarks/run.py   (see benchmarks/README.md)

Everything runs against a temporary copy of fixtures/sysfs/intel-2socket-server (the RAPL meter) or the
real /proc (the model meter); the HTTP part starts the real `wattlens` daemon on 127.0.0.1 with a free port
and stops it with SIGTERM, then does the same again with TLS and basic auth (a web-config.yml, a throwaway CA
and server certificate made with the openssl CLI, bcrypt hashes). Nothing outside 127.0.0.1 is contacted,
and nothing in the checkout is written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import http.client
import logging
import os
import random
import re
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import psutil
from common import (  # benchmarks/common.py; it also puts the repository root on sys.path
    Deadline,
    add_energy,
    copy_rapl_fixture,
    hard_deadline,
    heading,
    machine,
    ms,
    pct,
    positive,
    run_bench,
    timed,
)

from exporter import deflate
from exporter.config import Config, load_config
from exporter.engine import Engine
from exporter.exposition import EndpointStats, Exposition, Renderer, families, standard_families
from exporter.idle import IdleBaseline
from exporter.snapshot import Snapshot

TICK_STEP_S = 5.0  # synthetic monotonic clock advance per tick
# Plausible draw of a 2-socket Xeon under mixed load: package ~95-165 W per socket, DRAM ~8-22 W.
WATTS = {"package": (95.0, 165.0), "dram": (8.0, 22.0), "core": (30.0, 120.0), "uncore": (5.0, 15.0)}
HARD_TIMEOUT_S = 170  # the whole run; normally well under 60 s
HTTP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENSSL_TIMEOUT_S = 30.0  # each openssl CLI call (an RSA 2048 key takes well under a second)
BCRYPT_ROUNDS = 10  # the cost `htpasswd -B` uses by default
FRESH_USERS = 10  # users whose first request (an uncached bcrypt check) row (e) times, one each


# --- small helpers ------------------------------------------------------------------------------------


def us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


def series_count(text: bytes) -> tuple[int, int, int]:
    """(samples, samples named wattlens_*, families) of a text 0.0.4 exposition."""
    samples = ours = families = 0
    for line in text.decode("utf-8").splitlines():
        if line.startswith("# TYPE "):
            families += 1
        elif line and not line.startswith("#"):
            samples += 1
            ours += line.startswith("wattlens_")
    return samples, ours, families


# --- 1. per-tick cost --------------------------------------------------------------------------------


@dataclass
class TickRun:
    name: str
    tick_cpu: list[float] = field(default_factory=list)
    render_cpu: list[float] = field(default_factory=list)
    tick_wall: list[float] = field(default_factory=list)
    render_wall: list[float] = field(default_factory=list)
    loop_wall_s: float = 0.0
    loop_cpu_s: float = 0.0
    gc_collections: int = 0
    exposition: Exposition | None = None
    check: str = ""
    window_ticks: int = 0


@dataclass
class RaplFixture:
    """The copied sysfs tree, advanced between ticks as a running machine would."""

    root: Path
    rng: random.Random
    zones: list[tuple[Path, str, int]] = field(default_factory=list)  # (energy_uj file, zone name, max)
    written_uj: dict[str, int] = field(default_factory=dict)  # per zone name, what we added in total

    @classmethod
    def copy(cls, into: Path, seed: int) -> RaplFixture:
        root = into / "sys"
        return cls(root, random.Random(seed), copy_rapl_fixture(root))

    def advance(self, seconds: float, count: bool) -> None:
        """Add a plausible amount of energy to every counter, wrapping like the hardware does."""
        for path, zone, top in self.zones:
            low, high = WATTS.get(zone, (10.0, 50.0))
            step = int(self.rng.uniform(low, high) * seconds * 1_000_000)
            add_energy(path, step, top)
            if count:
                self.written_uj[zone] = self.written_uj.get(zone, 0) + step


def bench_ticks(name: str, config: Config, ticks: int, warmup: int, fixture: RaplFixture | None) -> TickRun:
    run = TickRun(name, window_ticks=int(config.idle_window // TICK_STEP_S))
    engine = Engine.start(config)
    renderer = Renderer()
    now = 1_000_000.0  # synthetic monotonic clock
    scrapes = {("text", "identity"): 0, ("text", "gzip"): 0}
    try:
        for _ in range(warmup):  # first tick (baseline), first render, warm caches; not measured or counted
            if fixture is not None:
                fixture.advance(TICK_STEP_S, count=False)
            renderer.render(engine.tick(now), EndpointStats(scrapes=dict(scrapes))).body(True, True)
            now += TICK_STEP_S
        # Energy written from here on must show up exactly in the zone counters (checked below).
        base = engine.snapshot()
        start_uj = {z.zone: z.joules_uj for z in base.zones}
        if fixture is not None:
            fixture.written_uj.clear()
        gc_before = sum(s["collections"] for s in gc.get_stats())
        loop_wall, loop_cpu = time.perf_counter(), time.thread_time()
        thread_time, perf = time.thread_time, time.perf_counter
        for i in range(ticks):
            if fixture is not None:
                fixture.advance(TICK_STEP_S, count=True)  # outside the timed region
            c0, w0 = thread_time(), perf()
            snap = engine.tick(now)
            c1, w1 = thread_time(), perf()
            exposition = renderer.render(snap, EndpointStats(scrapes=dict(scrapes)))
            exposition.body(True, True)  # one scrape, as Prometheus asks: OpenMetrics, gzip
            c2, w2 = thread_time(), perf()
            run.tick_cpu.append(c1 - c0)
            run.render_cpu.append(c2 - c1)
            run.tick_wall.append(w1 - w0)
            run.render_wall.append(w2 - w1)
            scrapes[("text", "identity" if i % 2 else "gzip")] += 1
            now += TICK_STEP_S
        run.loop_wall_s = time.perf_counter() - loop_wall
        run.loop_cpu_s = time.thread_time() - loop_cpu
        run.gc_collections = sum(s["collections"] for s in gc.get_stats()) - gc_before
        run.exposition = exposition
        if fixture is not None:
            got: dict[str, int] = {}
            wraps = 0
            for z in snap.zones:
                got[z.zone.zone] = got.get(z.zone.zone, 0) + z.joules_uj - start_uj.get(z.zone, 0)
                wraps += z.wraps
            ok = got == fixture.written_uj and all(z.resets == 0 and z.up for z in snap.zones)
            run.check = (
                f"energy check {'OK' if ok else 'MISMATCH'}: accounted "
                + ", ".join(f"{k} {v / 1e6:,.0f} J" for k, v in sorted(got.items()))
                + f" (written {', '.join(f'{k} {v / 1e6:,.0f} J' for k, v in sorted(fixture.written_uj.items()))})"
                + f"; {wraps} wraps, {sum(z.resets for z in snap.zones)} resets, ready={snap.ready}"
            )
        else:
            run.check = (
                "model meter: "
                + ", ".join(f"{z.zone.zone} {z.joules_uj / 1e6:,.0f} J" for z in snap.zones)
                + f" over {ticks * TICK_STEP_S:,.0f} synthetic s; ready={snap.ready}"
            )
    finally:
        engine.close()
    return run


def tick_breakdown(engine: Engine, reps: int) -> list[tuple[str, float]]:
    """Mean CPU per call of the main pieces of Engine.tick, measured through their public entry points."""
    config = engine.config
    full = IdleBaseline(config.idle_window, config.idle_quantile)
    rng = random.Random(2)
    for i in range(int(config.idle_window // TICK_STEP_S) + 10):
        full.observe(i * TICK_STEP_S, rng.uniform(500.0, 800.0), TICK_STEP_S)
    meter = engine.meter
    pieces: list[tuple[str, Callable[[], object]]] = [
        (f"meter.read ({meter.name}, {len(meter.zones())} zones)", lambda: meter.read(0.0, None))
        if meter is not None
        else ("meter.read (no meter)", lambda: None),
        ("/proc/stat read + parse", engine.cpu.read),
        ("IdleBaseline.watts(), full window, x1 zone", full.watts),
        ("Engine.snapshot()", engine.snapshot),
    ]
    return timed(pieces, reps)


def render_breakdown(renderer: Renderer, snap: Snapshot, reps: int) -> list[tuple[str, float]]:
    """Mean CPU per call of the pieces a render is made of, on the last snapshot (label text cached)."""
    text = renderer.render(snap).text
    om = renderer.render(snap).openmetrics
    pieces: list[tuple[str, Callable[[], object]]] = [
        ("families() (snapshot -> rows)", lambda: families(snap, EndpointStats(), 0.0)),
        ("text 0.0.4 (incl. families)", lambda: renderer.render(snap).text),
        ("OpenMetrics (incl. families)", lambda: renderer.render(snap).openmetrics),
        (f"gzip text ({deflate.LIBRARY} level {deflate.LEVEL})", lambda: deflate.gzip_bytes(text)),
        (f"gzip OpenMetrics ({deflate.LIBRARY} level {deflate.LEVEL})", lambda: deflate.gzip_bytes(om)),
        ("  of which process_*/python_info (x1)", standard_families),
    ]
    return timed(pieces, reps)


def print_tick_table(runs: Sequence[TickRun]) -> None:
    print(
        f"{'meter / phase':29} {'cpu p50':>9} {'cpu p99':>9} {'cpu mean':>9} {'cpu max':>9}"
        f" {'wall p50':>9} {'wall p99':>9} {'wall mean':>9}   (µs per tick)"
    )
    for run in runs:
        both_cpu = [a + b for a, b in zip(run.tick_cpu, run.render_cpu, strict=True)]
        both_wall = [a + b for a, b in zip(run.tick_wall, run.render_wall, strict=True)]
        for phase, cpu, wall in (
            ("Engine.tick", run.tick_cpu, run.tick_wall),
            ("Renderer.render", run.render_cpu, run.render_wall),
            ("tick + render", both_cpu, both_wall),
        ):
            print(
                f"{run.name + ' ' + phase:29} {us(pct(cpu, 50))} {us(pct(cpu, 99))} {us(statistics.fmean(cpu))}"
                f" {us(max(cpu))} {us(pct(wall, 50))} {us(pct(wall, 99))} {us(statistics.fmean(wall))}"
            )
    for run in runs:
        n = len(run.tick_cpu)
        share = sum(run.render_cpu) / max(1e-12, sum(run.tick_cpu) + sum(run.render_cpu))
        print(
            f"  {run.name}: {n} ticks in {run.loop_wall_s:.2f} s wall, {run.loop_cpu_s:.2f} s CPU (loop incl. fixture"
            f" writes); render = {share:.0%} of tick+render CPU; {run.gc_collections} GC passes"
        )
        head, tail = run.tick_cpu[:100], run.tick_cpu[-100:]
        print(
            f"  {run.name}: Engine.tick CPU p50 of the first 100 ticks {pct(head, 50) * 1e6:.1f} µs,"
            f" of the last 100 {pct(tail, 50) * 1e6:.1f} µs (a learned idle baseline, where used, fills its"
            f" window over the first {run.window_ticks} ticks)"
        )
        print(f"  {run.name}: {run.check}")


# --- 2. scrape latency against the real daemon --------------------------------------------------------


@dataclass
class ScrapeResult:
    name: str
    latencies: list[float]
    wall_s: float
    errors: int
    body_bytes: int
    server_cpu_s: float
    client_cpu_s: float


def openssl(*args: str, cwd: Path) -> None:
    """Run the openssl CLI (bounded); a failure becomes one RuntimeError line."""
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
        raise RuntimeError(f"openssl {args[0]} failed: {detail[0]}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"openssl {args[0]} took more than {OPENSSL_TIMEOUT_S:.0f} s") from None


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class TlsSetup:
    """A web-config.yml with TLS and bcrypt users, and what a client needs to get through both."""

    web_config: Path
    context: ssl.SSLContext  # trusts only the throwaway CA and checks the certificate's IP SAN
    auth: dict[str, str]  # Authorization header of the user every row but (e) uses
    fresh: list[dict[str, str]]  # one header per further user, each first used in row (e)
    setup_s: float

    @classmethod
    def make(cls, into: Path, fresh_users: int) -> TlsSetup:
        """A CA and a server certificate for IP 127.0.0.1 (RSA 2048, valid 1 day), users hashed like htpasswd -B."""
        t0 = time.perf_counter()
        into.mkdir()
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
                "-subj", "/CN=wattlens-bench-ca", cwd=into)  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=127.0.0.1", cwd=into)  # fmt: skip
        (into / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "1", "-extfile", "server.ext", cwd=into)  # fmt: skip
        users = {"prometheus": secrets.token_urlsafe(18)}
        users |= {f"scraper{i:02d}": secrets.token_urlsafe(18) for i in range(fresh_users)}
        lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key", "basic_auth_users:"]
        for user, password in users.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
            lines.append(f"  {user}: '{hashed}'")
        web_config = into / "web-config.yml"  # relative paths in it resolve against its directory
        web_config.write_text("\n".join(lines) + "\n")
        context = ssl.create_default_context(cafile=str(into / "ca.crt"))
        headers = [basic_auth(user, password) for user, password in users.items()]
        return cls(web_config, context, headers[0], headers[1:], time.perf_counter() - t0)


class DaemonProcess:
    """`wattlens serve` on 127.0.0.1:0 against the copied fixture; the port is read from its log. With `tls`,
    the daemon gets its web-config.yml (WATTLENS_WEB_CONFIG_FILE) and every request here goes over TLS with the
    benchmark user's credentials."""

    def __init__(self, sys_path: Path, workdir: Path, tls: TlsSetup | None = None) -> None:
        self.log_path = workdir / ("wattlens-tls.log" if tls else "wattlens.log")
        self.context = tls.context if tls else None
        self.headers: dict[str, str] = dict(tls.auth) if tls else {}
        self.scheme = "https" if tls else "http"
        exe = Path(sys.executable).with_name("wattlens")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "exporter"]
        cmd += [
            "serve",
            "--sys",
            str(sys_path),
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1",
            "--meters",
            "rapl",
            "--node-name",
            "bench-node",
            "--log-level",
            "info",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLENS_")}
        if tls is not None:
            env["WATTLENS_WEB_CONFIG_FILE"] = str(tls.web_config)
        self._log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.ps = psutil.Process(self.proc.pid)
        self.port = 0

    def connect(self, timeout: float = HTTP_TIMEOUT_S) -> http.client.HTTPConnection:
        """A new, not yet connected client connection (it connects, and shakes hands, on the first request)."""
        if self.context is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def wait_ready(self) -> float:
        """Port from the 'serving http(s)://127.0.0.1:PORT/metrics' line, then poll /readyz; seconds taken."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        pattern = re.compile(rb"serving " + self.scheme.encode() + rb"://127\.0\.0\.1:(\d+)/metrics")
        while not self.port:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not report its port: {self.log_tail()}")
            match = pattern.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
            else:
                time.sleep(0.02)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = self.connect(timeout=2)
                conn.request("GET", "/readyz", headers=self.headers)  # with auth on, /readyz needs it too
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - self.started
                conn.close()
            time.sleep(0.05)
        raise RuntimeError(f"/readyz not 200 within {READY_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM; (exit code or None if it had to be killed, seconds to exit)."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            code = None
        return code, time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._log.close()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-600:].strip()
        except OSError:
            return "(no log)"

    def tls_session(self) -> str:
        """Protocol version and cipher a client connection here negotiates ('' without TLS)."""
        if self.context is None:
            return ""
        conn = self.connect()
        try:
            conn.connect()
            sock = conn.sock
            assert isinstance(sock, ssl.SSLSocket)
            cipher = sock.cipher()
            return f"{sock.version()} {cipher[0] if cipher else '?'}"
        finally:
            conn.close()


def _get(conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, int, str]:
    conn.request("GET", "/metrics", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, len(body), resp.getheader("Content-Encoding", "")


def scrape_sequential(daemon: DaemonProcess, name: str, n: int, headers: dict[str, str]) -> ScrapeResult:
    wanted_gzip = "gzip" in headers.get("Accept-Encoding", "")
    headers = {**daemon.headers, **headers}
    conn = daemon.connect()
    try:
        for _ in range(50):  # warm-up: connection set-up (and TLS handshake), first-use paths
            _get(conn, headers)
        lat: list[float] = []
        errors = size = 0
        cpu0, client0, t0 = daemon.cpu_s(), time.process_time(), time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            status, size, encoding = _get(conn, headers)
            lat.append(time.perf_counter() - s)
            errors += status != 200 or (encoding == "gzip") != wanted_gzip
        wall = time.perf_counter() - t0
        return ScrapeResult(name, lat, wall, errors, size, daemon.cpu_s() - cpu0, time.process_time() - client0)
    finally:
        conn.close()


def scrape_new_connections(
    daemon: DaemonProcess, name: str, auths: Sequence[Mapping[str, str]], warmup: int
) -> ScrapeResult:
    """One request per connection, in sequence: connect (TCP, plus the TLS handshake with TLS on), GET /metrics,
    read the body, close. The latency counts from before the connect. `auths`: the extra headers of each request."""

    def once(headers: Mapping[str, str]) -> tuple[int, int]:
        conn = daemon.connect()
        try:
            status, got, _ = _get(conn, dict(headers))
        finally:
            conn.close()
        return status, got

    for _ in range(warmup):
        once(daemon.headers)
    lat: list[float] = []
    errors = size = 0
    cpu0, client0, t0 = daemon.cpu_s(), time.process_time(), time.perf_counter()
    for headers in auths:
        s = time.perf_counter()
        try:
            status, size = once(headers)
        except (OSError, http.client.HTTPException):
            errors += 1
            continue
        lat.append(time.perf_counter() - s)
        errors += status != 200
    wall = time.perf_counter() - t0
    return ScrapeResult(name, lat, wall, errors, size, daemon.cpu_s() - cpu0, time.process_time() - client0)


def scrape_threads(daemon: DaemonProcess, name: str, clients: int, each: int) -> ScrapeResult:
    lat: list[float] = []
    errors = [0]
    size = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1, timeout=HTTP_TIMEOUT_S)
    headers = daemon.headers

    def client() -> None:
        mine: list[float] = []
        bad = 0
        conn = daemon.connect()
        try:
            _get(conn, headers)  # connect (and shake hands) and warm up before the clock starts
            barrier.wait()
            for _ in range(each):
                s = time.perf_counter()
                try:
                    status, got, _ = _get(conn, headers)
                except (OSError, http.client.HTTPException):
                    bad += 1
                    conn.close()
                    conn = daemon.connect()
                    continue
                mine.append(time.perf_counter() - s)
                bad += status != 200
                size[0] = got
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError):
            bad += each
            barrier.abort()  # a client that could not warm up: the others (and the main thread) stop waiting
        finally:
            conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    cpu0, client0, t0 = daemon.cpu_s(), time.process_time(), time.perf_counter()
    for t in threads:
        t.join(HTTP_TIMEOUT_S * each)
    wall = time.perf_counter() - t0
    return ScrapeResult(name, lat, wall, errors[0], size[0], daemon.cpu_s() - cpu0, time.process_time() - client0)


async def _async_clients(daemon: DaemonProcess, name: str, clients: int, each: int) -> ScrapeResult:
    auth = "".join(f"{k}: {v}\r\n" for k, v in daemon.headers.items()).encode("latin-1")
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n" + auth + b"\r\n"
    start = asyncio.Event()
    warmed = asyncio.Event()
    settled = 0
    lat: list[float] = []
    errors = 0
    size = 0

    async def one() -> None:
        nonlocal errors, size, settled
        writer: asyncio.StreamWriter | None = None
        try:
            reader, stream = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", daemon.port, ssl=daemon.context), HTTP_TIMEOUT_S
            )
            writer = stream

            async def get() -> int:
                nonlocal size
                stream.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                size = length
                return status

            await asyncio.wait_for(get(), HTTP_TIMEOUT_S)  # connect (and shake hands) and warm up
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        finally:
            settled += 1
            if settled == clients:
                warmed.set()
        try:
            await start.wait()
            for _ in range(each):
                s = time.perf_counter()
                status = await asyncio.wait_for(get(), HTTP_TIMEOUT_S)
                lat.append(time.perf_counter() - s)
                errors += status != 200
        finally:
            stream.close()

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.wait_for(warmed.wait(), HTTP_TIMEOUT_S * 2)  # every client connected and warmed up (or failed)
    cpu0, client0, t0 = daemon.cpu_s(), time.process_time(), time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    errors += sum(each for r in results if isinstance(r, BaseException))
    return ScrapeResult(name, lat, wall, errors, size, daemon.cpu_s() - cpu0, time.process_time() - client0)


def scrape_asyncio(daemon: DaemonProcess, name: str, clients: int, each: int) -> ScrapeResult:
    return asyncio.run(asyncio.wait_for(_async_clients(daemon, name, clients, each), HTTP_TIMEOUT_S * 3))


def print_scrape_table(results: Sequence[ScrapeResult]) -> None:
    print(
        f"{'scrape':38} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>8}"
        f" {'srv µs/req':>10} {'cli µs/req':>10} {'body B':>7} {'err':>3}"
    )
    for r in results:
        n = max(1, len(r.latencies))
        print(
            f"{r.name:38} {len(r.latencies):5d} {ms(pct(r.latencies, 50), 3)} {ms(pct(r.latencies, 90), 3)}"
            f" {ms(pct(r.latencies, 99), 3)} {ms(max(r.latencies, default=float('nan')), 3)} {n / r.wall_s:8.0f}"
            f" {r.server_cpu_s / n * 1e6:10.1f} {r.client_cpu_s / n * 1e6:10.1f} {r.body_bytes:7d} {r.errors:3d}"
        )


def scrape_daemon(
    daemon: DaemonProcess, args: argparse.Namespace, fresh: Sequence[Mapping[str, str]], note: str = ""
) -> dict[str, ScrapeResult]:
    """Wait for the daemon, run rows (a)-(d) (and (e) for the `fresh` users), print them, stop it; rows by letter."""
    ready_s = daemon.wait_ready()
    print(
        f"daemon pid {daemon.proc.pid} on {daemon.scheme}://127.0.0.1:{daemon.port}; /readyz 200 after {ready_s:.2f} s"
    )
    if daemon.context is not None:
        conn = daemon.connect()
        try:
            refused = _get(conn, {})[0]  # the same request without credentials: must be 401
        finally:
            conn.close()
        print(f"{daemon.tls_session()}, {note}; without credentials: HTTP {refused}")
    rows = {
        "a": scrape_sequential(daemon, f"(a) sequential text x{args.requests}", args.requests, {}),
        "b": scrape_sequential(
            daemon,
            f"(b) sequential OpenMetrics+gzip x{args.requests}",
            args.requests,
            {"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"},
        ),
        "c": scrape_threads(
            daemon, f"(c) {args.clients} threads x{args.per_client} text", args.clients, args.per_client
        ),
        "c'": scrape_asyncio(
            daemon, f"(c') {args.clients} asyncio x{args.per_client} text", args.clients, args.per_client
        ),
        "d": scrape_new_connections(
            daemon,
            f"(d) new connection per request x{args.new_connections}",
            [daemon.headers] * args.new_connections,
            warmup=20,
        ),
    }
    if fresh:
        rows["e"] = scrape_new_connections(daemon, f"(e) new conn, user's 1st request x{len(fresh)}", fresh, 0)
    print_scrape_table(list(rows.values()))
    print(
        "  latency = request sent to body read, client side ((a)-(c') keep-alive; (d), (e) from connect to"
        " close); srv/cli µs/req = CPU of the daemon / of this process per request"
    )
    rss = daemon.ps.memory_info().rss
    code, stop_s = daemon.stop()
    verdict = "killed after timeout" if code is None else f"exit code {code}"
    print(f"daemon RSS {rss / 2**20:.1f} MiB; SIGTERM -> {verdict} in {stop_s * 1e3:.0f} ms")
    if code != 0:
        print("  daemon log tail: " + daemon.log_tail().replace("\n", "\n    "))
    return rows


def bcrypt_check_s(rounds: int, reps: int = 3) -> float:
    """Median seconds of one bcrypt.checkpw at cost `rounds` in this process, for scale."""
    hashed = bcrypt.hashpw(b"benchmark", bcrypt.gensalt(rounds=rounds))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        bcrypt.checkpw(b"benchmark", hashed)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def compare_rows(plain: Mapping[str, ScrapeResult], tls: Mapping[str, ScrapeResult]) -> None:
    """What TLS + basic auth add, row by row: p50 and server CPU per request against the plain daemon."""

    def srv(r: ScrapeResult) -> float:
        return r.server_cpu_s / max(1, len(r.latencies)) * 1e6

    keys = [k for k in plain if k in tls]
    print(
        "  vs plain HTTP, p50 ms: "
        + ", ".join(
            f"({k}) {pct(plain[k].latencies, 50) * 1e3:.3f} -> {pct(tls[k].latencies, 50) * 1e3:.3f}" for k in keys
        )
    )
    print(
        "  vs plain HTTP, srv µs/req: "
        + ", ".join(
            f"({k}) {srv(plain[k]):.0f} -> {srv(tls[k]):.0f} (x{srv(tls[k]) / max(srv(plain[k]), 1e-9):.1f})"
            for k in keys
        )
    )


def scrape_tls(sys_path: Path, work: Path, args: argparse.Namespace, plain: Mapping[str, ScrapeResult]) -> None:
    """Section 2 again, against a daemon with a web-config.yml (TLS + basic auth), compared with `plain`."""
    if shutil.which("openssl") is None:
        print("\nTLS + basic auth run skipped: no openssl on PATH to make its certificates (--skip-tls)")
        return
    heading("2. scrape latency, the same daemon with TLS + basic auth (web-config.yml)")
    tls = TlsSetup.make(work / "pki", FRESH_USERS)
    note = (
        f"server key RSA 2048 from a throwaway CA, no session resumption; {1 + len(tls.fresh)} basic-auth users,"
        f" bcrypt cost {BCRYPT_ROUNDS} (CA, certificate and hashes made in {tls.setup_s:.2f} s)"
    )
    daemon = DaemonProcess(sys_path, work, tls)
    try:
        rows = scrape_daemon(daemon, args, tls.fresh, note)
    finally:
        daemon.kill()
    compare_rows(plain, rows)

    def p50_ms(r: ScrapeResult) -> float:
        return pct(r.latencies, 50) * 1e3

    new_conn = p50_ms(rows["d"]) - p50_ms(rows["a"])
    handshake = p50_ms(rows["d"]) - p50_ms(plain["d"])
    first_check = p50_ms(rows["e"]) - p50_ms(rows["d"])
    print(
        f"  p50 (d) - (a), a new connection against keep-alive: {new_conn:.2f} ms; (d) - plain (d), the TLS"
        f" handshake: {handshake:.2f} ms; (e) - (d), a user's first, uncached bcrypt check: {first_check:.2f} ms"
        f" (bcrypt.checkpw at cost {BCRYPT_ROUNDS} in this process: {bcrypt_check_s(BCRYPT_ROUNDS) * 1e3:.1f} ms)"
    )


# --- main ----------------------------------------------------------------------------------------------


def cpu_counters() -> tuple[int, int] | None:
    """(steal, total) jiffies of the whole node from /proc/stat, or None where it cannot be read."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ticks", type=positive, default=2000, help="measured ticks per meter (default 2000)")
    p.add_argument("--requests", type=positive, default=2000, help="sequential scrapes per format (default 2000)")
    p.add_argument("--clients", type=positive, default=50, help="concurrent scrape clients (default 50)")
    p.add_argument("--per-client", type=positive, default=100, help="scrapes per concurrent client (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fixture's energy steps (default 1)")
    p.add_argument(
        "--new-connections",
        type=positive,
        default=500,
        help="scrapes on a new connection each, row (d) (default 500)",
    )
    p.add_argument("--skip-http", action="store_true", help="only the in-process tick benchmark")
    p.add_argument("--skip-tls", action="store_true", help="no second daemon run with TLS + basic auth")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), (Deadline, RuntimeError, OSError, http.client.HTTPException))


def bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)  # Engine.start logs meter choices at info/warning
    started, counters = time.perf_counter(), cpu_counters()
    print(f"wattlens benchmark: {machine()}")
    with hard_deadline(HARD_TIMEOUT_S), tempfile.TemporaryDirectory(prefix="wattlens-bench-") as tmp:
        work = Path(tmp)
        fixture = RaplFixture.copy(work, args.seed)

        heading(f"1. per-tick cost, in process ({args.ticks} ticks, synthetic clock +{TICK_STEP_S:g} s per tick)")
        rapl_cfg = load_config({"sys_path": str(fixture.root), "meters": "rapl", "node_name": "bench-node"}, None, {})
        model_cfg = load_config({"meters": "model", "proc_path": "/proc", "node_name": "bench-node"}, None, {})
        rapl = bench_ticks("rapl", rapl_cfg, args.ticks, 20, fixture)
        # The same RAPL run with idle power configured: no learned-baseline quantile per zone per tick.
        fixed_cfg = rapl_cfg.model_copy(update={"idle_watts": {"package": 100.0, "dram": 10.0}})
        fixed = bench_ticks("rapl,idle-cfg", fixed_cfg, args.ticks, 20, fixture)
        model = bench_ticks("model", model_cfg, args.ticks, 20, None)
        print_tick_table([rapl, fixed, model])

        renderer = Renderer()
        engine = Engine.start(rapl_cfg)
        try:
            engine.tick(0.0)
            fixture.advance(TICK_STEP_S, count=False)
            last = engine.tick(TICK_STEP_S)
            exposition = renderer.render(last)
            print("  where the time goes (mean CPU µs per call, 500 calls each; rapl engine and snapshot):")
            for label, cpu in tick_breakdown(engine, 500):
                print(f"    tick:   {label:44} {cpu * 1e6:8.1f}")
        finally:
            engine.close()
        for label, cpu in render_breakdown(renderer, last, 500):
            print(f"    render: {label:44} {cpu * 1e6:8.1f}")

        if not args.skip_http:
            heading("2. scrape latency, real daemon (wattlens serve --interval 1 --meters rapl on 127.0.0.1)")
            daemon = DaemonProcess(fixture.root, work)
            try:
                plain = scrape_daemon(daemon, args, [])
            finally:
                daemon.kill()
            if not args.skip_tls:
                scrape_tls(fixture.root, work, args, plain)
    heading("3. exposition size (rapl meter, intel-2socket-server fixture)")
    final = rapl.exposition or exposition
    samples, ours, families = series_count(final.text)
    print(f"{'variant':22} {'bytes':>8} {'gzip bytes':>11} {'ratio':>6}")
    for label, raw, packed in (
        ("text 0.0.4", final.text, final.text_gzip),
        ("OpenMetrics", final.openmetrics, final.openmetrics_gzip),
    ):
        print(f"{label:22} {len(raw):8d} {len(packed):11d} {len(packed) / len(raw):6.2f}")
    print(
        f"series (sample lines): {samples} in {families} families; {ours} wattlens_*,"
        f" {samples - ours} from process/platform/python collectors"
    )
    if model.exposition is not None:
        m_samples, m_ours, _ = series_count(model.exposition.text)
        print(f"model meter exposition: {len(model.exposition.text)} B text, {m_samples} series ({m_ours} wattlens_*)")

    after = cpu_counters()
    steal = ""
    if counters is not None and after is not None and after[1] > counters[1]:
        steal = f"; node CPU steal during the run {(after[0] - counters[0]) / (after[1] - counters[1]):.1%}"
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s{steal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
