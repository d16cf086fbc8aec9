"""Hostile and careless HTTP clients, and a kubelet-like prober, for the attack tests and benchmarks/load.py.

Every client talks only to the loopback address it is given, and every loop is bounded in time (and the
prober in count): `until` is a time.monotonic() deadline. The clients run on one asyncio loop (a thousand
sockets cost one thread); the prober runs in a thread with blocking sockets, as a kubelet would probe.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import resource
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
TCP_STATE_ESTABLISHED = 1


def raise_nofile(wanted: int = 65536) -> None:
    """Room for thousands of client sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _rst_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port)), 5)
    except BaseException:
        sock.close()
        raise
    return sock


def _established(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (the first byte of struct tcp_info is the TCP state)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_STATE_ESTABLISHED
    except OSError:
        return False


async def _until_cut_off(sock: socket.socket, until: float, read: bool) -> bool:
    """Hold the connection until the server ends it (True) or `until` passes (False).

    A reading client sees EOF or a reset; one that never reads watches the TCP state instead.
    """
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        if read:
            try:
                wait = min(0.25, max(0.01, until - time.monotonic()))
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
            except TimeoutError:
                continue
            except OSError:
                return True
            if not data:
                return True
        else:
            if not _established(sock):
                return True
            await asyncio.sleep(0.1)
    return False


@dataclass
class AttackStats:
    connections: int = 0
    cut_off: int = 0  # connections the server ended (deadline, eviction, abort)
    connect_errors: int = 0
    responses: Counter[int] = field(default_factory=Counter)


async def idle_sockets(port: int, clients: int, until: float, stats: AttackStats) -> None:
    """Clients that connect, send nothing, and reconnect as soon as the server drops them."""

    async def one() -> None:
        while time.monotonic() < until:
            try:
                sock = await _connect(port)
            except (OSError, TimeoutError):
                stats.connect_errors += 1
                await asyncio.sleep(0.05)
                continue
            stats.connections += 1
            try:
                if await _until_cut_off(sock, until, read=True):
                    stats.cut_off += 1
            finally:
                sock.close()

    await asyncio.gather(*(one() for _ in range(clients)))


async def slow_readers(port: int, clients: int, until: float, stats: AttackStats, path: str = "/metrics",
                       pipelined: int = 64) -> None:
    """Clients that send many pipelined requests and never read a byte (a zero receive window)."""
    request = f"GET {path} HTTP/1.1\r\nHost: l\r\n\r\n".encode() * pipelined

    async def one() -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < until:
            try:
                sock = await _connect(port, rcvbuf=4096)
                await asyncio.wait_for(loop.sock_sendall(sock, request), 5)
            except (OSError, TimeoutError):
                stats.connect_errors += 1
                await asyncio.sleep(0.05)
                continue
            stats.connections += 1
            try:
                if await _until_cut_off(sock, until, read=False):
                    stats.cut_off += 1
            finally:
                _rst_close(sock)

    await asyncio.gather(*(one() for _ in range(clients)))


async def slowloris(port: int, clients: int, until: float, stats: AttackStats) -> None:
    """Clients that send a request head one byte every 0.5 s, reconnecting when cut off."""

    async def one() -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < until:
            try:
                sock = await _connect(port)
                await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: l\r\nX-Slow: ")
            except (OSError, TimeoutError):
                stats.connect_errors += 1
                await asyncio.sleep(0.05)
                continue
            stats.connections += 1
            try:
                while time.monotonic() < until:
                    try:
                        await loop.sock_sendall(sock, b"a")
                    except OSError:
                        stats.cut_off += 1
                        break
                    if await _until_cut_off(sock, min(until, time.monotonic() + 0.5), read=True):
                        stats.cut_off += 1
                        break
            finally:
                sock.close()

    await asyncio.gather(*(one() for _ in range(clients)))


def client_hello() -> bytes:
    """A real TLS ClientHello (TLS 1.2 and 1.3 offered), made once and replayed by every half-open client."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def tls_half_open(port: int, total: int, seconds: float, stats: AttackStats, hold_s: float = 2.0,
                        concurrency: int = 1000) -> None:
    """`total` connections spread over `seconds`, each sending a ClientHello and never finishing the handshake;
    each is held `hold_s` (or until the server drops it), then reset."""
    hello = client_hello()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one() -> None:
        async with gate:
            try:
                sock = await _connect(port)
                await loop.sock_sendall(sock, hello)
            except (OSError, TimeoutError):
                stats.connect_errors += 1
                return
            stats.connections += 1
            try:
                if await _until_cut_off(sock, time.monotonic() + hold_s, read=True):
                    stats.cut_off += 1
            finally:
                _rst_close(sock)

    tasks = []
    for i in range(total):
        due = started + seconds * i / total
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def wrong_passwords(port: int, clients: int, until: float, stats: AttackStats, user: str,
                          context: ssl.SSLContext | None = None) -> None:
    """Keep-alive clients that send a new wrong password in every request (no two alike, so no cache helps)."""
    counter = iter(range(10**9))

    async def one() -> None:
        while time.monotonic() < until:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, port, ssl=context), 5)
                while time.monotonic() < until:
                    header = basic(user, f"wrong-{os.getpid()}-{next(counter)}")
                    writer.write(f"GET /metrics HTTP/1.1\r\nHost: l\r\nAuthorization: {header}\r\n\r\n".encode())
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.1, until - time.monotonic()))
                    status = int(head.split(b" ", 2)[1])
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    await reader.readexactly(length)
                    stats.responses[status] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
                stats.cut_off += 1
                await asyncio.sleep(0.02)
            finally:
                if writer is not None:
                    writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(clients)))


class Attack:
    """Runs attack coroutines on a loop in a background thread until their deadline; `join()` waits for it."""

    def __init__(self, *coroutines: object) -> None:
        raise_nofile()
        self._coroutines = coroutines
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="attack", daemon=True)

    def _run(self) -> None:
        async def all_of() -> None:
            await asyncio.gather(*self._coroutines)  # type: ignore[arg-type]

        try:
            asyncio.run(all_of())
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Attack:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the attack did not stop by its deadline"
        if self.error is not None:
            raise self.error


@dataclass
class ProbeResult:
    sent: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ok / self.sent if self.sent else 0.0


def probe_once(port: int, path: str = "/healthz", timeout: float = 2.0, context: ssl.SSLContext | None = None,
               headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int, str]:
    """One kubelet-style probe: a new connection, one GET, the status (0 and why on failure)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None)
    try:
        stream = context.wrap_socket(sock, server_hostname=LOOPBACK) if context is not None else sock
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        stream.sendall(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{extra}Connection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = stream.recv(4096)
            if not chunk:
                return 0, "EOF"
            head += chunk
        return int(head.split(b" ", 2)[1]), ""
    finally:
        sock.close()


class Prober:
    """Probes `path` every `period` s on a new connection, like the kubelet, until stopped (at most `count`)."""

    def __init__(self, port: int, path: str = "/healthz", period: float = 0.1, timeout: float = 2.0,
                 count: int = 1000, context: ssl.SSLContext | None = None,
                 headers: dict[str, str] | None = None, expect: int = 200, source: str | None = None) -> None:
        self.port, self.path, self.period, self.timeout, self.count = port, path, period, timeout, count
        self.context, self.headers, self.expect, self.source = context, headers, expect, source
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.result.sent < self.count:
            started = time.monotonic()
            self.result.sent += 1
            try:
                status, why = probe_once(self.port, self.path, self.timeout, self.context, self.headers, self.source)
            except (OSError, ssl.SSLError) as exc:
                status, why = 0, type(exc).__name__
            if status == self.expect:
                self.result.ok += 1
                self.result.latencies_s.append(time.monotonic() - started)
            else:
                self.result.failures[why or str(status)] += 1
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> ProbeResult:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.result


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def server_sockets(port: int) -> Counter[str]:
    """Server-side TCP sockets of local port `port` by state, from /proc/net/tcp. Those no fd holds (inode 0) are
    "queued" (ESTABLISHED: completed by the kernel, waiting in the listen backlog for accept()) or "orphan"
    (closed by the server, the kernel still finishing; "with data" if it still holds unsent bytes: what a plain
    close of a never-reading client leaves behind)."""
    found: Counter[str] = Counter()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) != port:
                continue
            state = _TCP_STATES.get(fields[3], fields[3])
            if fields[9] == "0" and state not in ("TIME_WAIT", "SYN_RECV"):
                unsent = int(fields[4].split(":")[0], 16)
                state = "queued" if state == "ESTABLISHED" else f"orphan {state}" + (" with data" if unsent else "")
            found[state] += 1
    return found


def held_server_sockets(port: int, orphans_only: bool = False) -> int:
    """Server-side sockets the server holds or left behind: those with an fd and orphans. Not TIME_WAIT (no
    buffers), the listener, or connections the kernel queued that the server has not accepted yet."""
    found = server_sockets(port)
    if orphans_only:  # those that still hold unsent data: an orphan that only waits for the peer's FIN holds none
        return sum(n for state, n in found.items() if state.startswith("orphan") and state.endswith("with data"))
    return sum(n for state, n in found.items() if state not in ("TIME_WAIT", "LISTEN", "queued", "SYN_RECV"))


def process_sockets(pid: int) -> int:
    """Sockets a process holds open (its fds that are sockets, listeners included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def process_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tcp_memory_pages() -> int:
    """Pages of kernel memory held by TCP socket buffers on this machine (/proc/net/sockstat 'mem')."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


class Scraper:
    """A Prometheus-like scraper: one keep-alive connection, GET every `period` s; like Go's HTTP client it
    retries once on a fresh connection when the kept one was closed under it. Records each scrape's status."""

    def __init__(self, port: int, path: str = "/metrics", period: float = 0.5, timeout: float = 2.0,
                 context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
                 source: str | None = None) -> None:
        self.port, self.path, self.period, self.timeout = port, path, period, timeout
        self.context, self.headers, self.source = context, headers or {}, source
        self.statuses: list[int] = []
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def _connect(self) -> http.client.HTTPConnection:
        source = (self.source, 0) if self.source else None
        if self.context is not None:
            return http.client.HTTPSConnection(LOOPBACK, self.port, timeout=self.timeout, context=self.context,
                                               source_address=source)
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout, source_address=source)

    def _scrape(self, conn: http.client.HTTPConnection) -> int:
        conn.request("GET", self.path, headers=self.headers)
        response = conn.getresponse()
        response.read()
        return response.status

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            status = 0
            for _attempt in range(2):
                try:
                    conn = conn or self._connect()
                    status = self._scrape(conn)
                    break
                except (OSError, http.client.HTTPException, ssl.SSLError):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if time.monotonic() - started > self.timeout:
                        break  # a timeout is a failed scrape, not a closed connection to retry
            self.statuses.append(status)
            self.latencies_s.append(time.monotonic() - started)
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(self.timeout * 2 + 5)
        return self.statuses


class Sampler:
    """Samples a value every `period` s in a thread and keeps the maximum (sockets, fds, RSS under attack)."""

    def __init__(self, read: Callable[[], int], period: float = 0.2) -> None:
        self.read, self.period = read, period
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.read())

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak
