"""HTTP on asyncio: /metrics (cached bytes), /healthz, /readyz — built to survive hostile and careless clients.

h11 parses the protocol (a small, well-tested HTTP/1.1 state machine) so malformed requests get a 400 from
a real parser instead of a hand-rolled one. Around it, admission control that counts what costs:

- Every socket is counted from accept() to connection_lost (TLS handshakes included), against the cap of its
  pool. TLS handshakes have a smaller cap of their own and a short timeout; a new one beyond the cap evicts
  the oldest unfinished one.
- When the cap is reached, a connection that holds no request in progress is closed to make room, as nginx
  does (silent ones first, then the longest-idle keep-alive one), so idle sockets cannot lock anyone out:
  the newcomer's own address's first, then the address holding the most; a newcomer from another address
  may also take the oldest connection of an address holding more than its share, whatever it is doing.
- If every connection is busy (mid-request or being written to), the newcomer lands in a small reserve that
  answers only /healthz and /readyz, so probes still get through; when the reserve is full it evicts the
  oldest connection of the address that holds most of it.
- Deadlines: the first request of a connection must arrive whole within a few seconds, later ones within
  `request_timeout_s` of their first byte; a response not taken by the client within `write_timeout_s` is
  aborted (RST, send buffer discarded) rather than closed, which would wait for a peer that never reads.
- TCP_USER_TIMEOUT lets the kernel drop a peer that stopped acknowledging; an optional per-peer cap.
- Basic-auth checks (bcrypt) run on one thread, from a bounded queue that serves peers already known to
  authenticate first.

Optionally a second, plain listener (`health_listen`) answers /healthz and /readyz only, for probes that
cannot do TLS or basic auth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import enum
import functools
import itertools
import logging
import socket
import ssl
import struct
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from exporter.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Exposition
from exporter.webconfig import BasicAuth, Credentials, Verdict

log = logging.getLogger(__name__)

OPENMETRICS_TYPE = "application/openmetrics-text"
INDEX = (
    b"<html><head><title>wattlens</title></head><body><h1>wattlens</h1>"
    b'<p><a href="/metrics">metrics</a> &middot; <a href="/healthz">healthz</a> &middot; '
    b'<a href="/readyz">readyz</a></p></body></html>\n'
)
HEALTH_PATHS = (b"/healthz", b"/readyz")
TEXT = ("Content-Type", "text/plain; charset=utf-8")
CLOSE = ("Connection", "close")
TLS_RECORD_HANDSHAKE = 0x16
PLAIN_HTTP_LOG_EVERY_S = 60.0
AUTH_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = 8192  # request line + headers, and any body
    first_request_timeout_s: float = 5.0  # from a connection being ready (after TLS) to its first whole request
    request_timeout_s: float = 10.0  # from a later request's first byte to all of it
    keep_alive_timeout_s: float = 330.0  # idle between requests (Prometheus keeps connections 5 min)
    write_timeout_s: float = 30.0  # for the client to take a whole response
    max_connections: int = 256  # sockets, accept() to close, handshakes included
    reserve_connections: int = 8  # beyond max_connections, for /healthz and /readyz only
    max_handshakes: int = 64  # TLS handshakes in progress
    handshake_timeout_s: float = 3.0
    max_connections_per_peer: int = 0  # 0: no per-peer cap
    max_pending_auth: int = 32  # queued bcrypt checks in all; an eighth of that per client address
    health_connections: int = 16  # the optional plain health listener's cap
    tcp_user_timeout_s: float = 30.0
    # Kernel send buffer per connection (the kernel doubles it). Autotuning would let each client that never
    # reads pin up to tcp_wmem's max (4 MiB) of memory charged to this cgroup; 128 KiB still fills a
    # 100 Mbit/s, 10 ms path.
    send_buffer_bytes: int = 128 * 1024


class State(enum.Enum):
    HANDSHAKE = "handshake"  # TLS handshake in progress
    FRESH = "fresh"  # ready, no byte of the first request yet
    READING = "reading"  # part of a request received
    BUSY = "busy"  # answering: auth, routing, writing
    IDLE = "idle"  # keep-alive, waiting for the next request


REUSABLE = (State.FRESH, State.IDLE)  # what may be closed to make room


@dataclass(eq=False)
class Conn:
    """One accepted socket, from accept() until the transport reports connection_lost."""

    id: int
    peer: str
    pool: Pool
    sock: socket.socket
    health_only: bool
    state: State = State.FRESH
    idle_since: float = 0.0  # loop time it last became reusable (connected, or answered a request)
    task: asyncio.Task[None] | None = None
    transport: asyncio.BaseTransport | None = None

    def drop(self, reason: str, stats: Counter[str]) -> None:
        """Make room: abort the connection, or cancel its TLS handshake."""
        stats[reason] += 1
        if self.transport is None:
            if self.task is not None:
                self.task.cancel()
            return
        # Abort, even an idle connection: a FIN would leave an orphan socket until the peer answers it, and
        # clients that reconnect as fast as they are evicted would pile those up. HTTP clients retry a request
        # on a kept-alive connection that was reset, as on one that was closed.
        abort(self.transport)


@dataclass(eq=False)
class Pool:
    name: str
    cap: int
    conns: OrderedDict[int, Conn] = field(default_factory=OrderedDict)  # oldest first
    per_peer: Counter[str] = field(default_factory=Counter)

    def oldest(self, where: Callable[[Conn], bool]) -> Conn | None:
        return next((c for c in self.conns.values() if where(c)), None)

    def reusable(self, peer: str | None = None) -> Conn | None:
        """The connection to close first to make room: a silent one (connected, nothing sent) before an idle
        keep-alive one (it has made requests: more likely a real client), and of those the longest idle."""
        candidates = [c for c in self.conns.values() if c.state in REUSABLE and (peer is None or c.peer == peer)]
        return min(candidates, key=lambda c: (c.state is State.IDLE, c.idle_since), default=None)

    def greediest(self) -> Conn | None:
        """The oldest connection of the address holding the most here: a probe from an address of its own
        is not pushed out by a crowd from another."""
        if not self.per_peer:
            return None
        peer = max(self.per_peer, key=lambda p: self.per_peer[p])
        return self.oldest(lambda c: c.peer == peer)


def abort(transport: asyncio.BaseTransport) -> None:
    """Drop a connection now: RST, and the kernel discards what the peer never took (a plain close keeps it)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # ValueError: uvloop's stand-in socket of a transport the client already reset has no fd left (-1).
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # uvloop's transports do not subclass asyncio.Transport, but have abort(); a close() here would wait forever.
    abort_now: Callable[[], None] | None = getattr(transport, "abort", None)
    if abort_now is not None:
        abort_now()
    else:
        transport.close()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)  # glibc only
    return trim


def release_free_memory() -> None:
    """Give freed heap back to the system (glibc's malloc_trim). TLS handshakes allocate and free many small
    buffers; glibc keeps them, so RSS after a burst of handshakes would stay at its peak. No-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _weights(header: str) -> dict[str, float]:
    """'a;q=0.5, b' → {'a': 0.5, 'b': 1.0}; an unparsable or out-of-range q (inf, nan, 2, -1) counts as 0."""
    weights: dict[str, float] = {}
    for part in header.split(","):
        token, *params = (p.strip() for p in part.split(";"))
        if not token:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also false for nan
                    q = 0.0
        weights[token.lower()] = max(weights.get(token.lower(), 0.0), q)
    return weights


def wants_openmetrics(accept: str) -> bool:
    weights = _weights(accept)
    om = weights.get(OPENMETRICS_TYPE, 0.0)
    text = max(weights.get("text/plain", 0.0), weights.get("*/*", 0.0), weights.get("text/*", 0.0))
    return om > 0 and om >= text


def wants_gzip(accept_encoding: str) -> bool:
    weights = _weights(accept_encoding)
    return weights.get("gzip", weights.get("*", 0.0)) > 0


async def metrics_body(exposition: Exposition, openmetrics: bool, gzipped: bool) -> bytes:
    """The one place the server takes exposition bytes. The first scrape of a tick for a variant has it rendered,
    off the event loop; later ones get its bytes."""
    return await exposition.body_async(openmetrics, gzipped)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (TEXT,)
    close: bool = False  # end the connection after this reply


UNAUTHORIZED = Reply(401, b"Unauthorized\n", (TEXT, ("WWW-Authenticate", 'Basic realm="wattlens"')))
BUSY = Reply(
    503, b"too many connections: only /healthz and /readyz are served now\n", (TEXT, ("Retry-After", "1")), close=True
)
HEALTH_ONLY = Reply(404, b"this listener serves /healthz and /readyz only\n", close=True)
AUTH_BUSY = Reply(503, b"too many logins in progress: retry in a second\n", (TEXT, ("Retry-After", "1")))


class _ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def bind(host: str | None, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for every address of `host` (None: all interfaces, IPv4 and IPv6), as asyncio would."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # a family this host does not have (IPv6 disabled)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(frozen=True, slots=True)
class Listener:
    sockets: tuple[socket.socket, ...]
    tls: ssl.SSLContext | None
    health: bool  # the plain health-only listener


Pending = tuple[Credentials, "asyncio.Future[Verdict]"]


class AuthQueue:
    """Pending bcrypt checks for one worker thread, bounded in total (`limit`) and per client address (an
    eighth of it). Addresses take turns, so one address cannot starve another however much it sends; addresses
    that logged in before (known) get two turns for every one of the rest, and a check whose client gave up is
    skipped."""

    def __init__(self, auth: BasicAuth, limit: int) -> None:
        self.auth = auth
        self.limit = limit
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wattlens-auth")
        self._known: OrderedDict[str, deque[Pending]] = OrderedDict()  # address → its checks, in turn order
        self._other: OrderedDict[str, deque[Pending]] = OrderedDict()
        self._good_peers: OrderedDict[str, None] = OrderedDict()
        self._pending = 0
        self._known_turns = 0  # known turns in a row; the others get the next one after two
        self._running = False

    def submit(self, credentials: Credentials, peer: str) -> asyncio.Future[Verdict] | None:
        """A future for the verdict, or None if the queue (or this peer's share of it) is full."""
        turns = self._known if peer in self._good_peers else self._other
        mine = turns.get(peer)
        if self._pending >= self.limit or (mine is not None and len(mine) >= max(1, self.limit // 8)):
            return None
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        turns.setdefault(peer, deque()).append((credentials, future))
        self._pending += 1
        self._pump()
        return future

    def passed(self, peer: str) -> None:
        self._good_peers[peer] = None
        self._good_peers.move_to_end(peer)
        while len(self._good_peers) > 256:
            self._good_peers.popitem(last=False)

    def _next(self) -> Pending | None:
        use_known = bool(self._known) and (not self._other or self._known_turns < 2)
        turns = self._known if use_known else self._other
        if not turns:
            return None
        self._known_turns = self._known_turns + 1 if use_known else 0
        peer, checks = next(iter(turns.items()))
        pending = checks.popleft()
        del turns[peer]
        if checks:
            turns[peer] = checks  # to the back of the line
        self._pending -= 1
        return pending

    def _pump(self) -> None:
        while not self._running and (pending := self._next()) is not None:
            credentials, future = pending
            if future.done():
                continue  # the client went away or timed out
            self._running = True
            checking = asyncio.get_running_loop().run_in_executor(self._worker, self.auth.check, credentials)
            checking.add_done_callback(functools.partial(self._finished, future))

    def _finished(self, future: asyncio.Future[Verdict], done: asyncio.Future[Verdict]) -> None:
        self._running = False
        if not future.done():
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._pump()

    def close(self) -> None:
        for turns in (self._known, self._other):
            for checks in turns.values():
                for _, future in checks:
                    future.cancel()
            turns.clear()
        self._worker.shutdown(wait=False, cancel_futures=True)


def _ssl_shutdown_timeout(loop: asyncio.AbstractEventLoop, seconds: float) -> dict[str, Any]:
    """uvloop and asyncio from 3.11 bound the TLS close_notify exchange; 3.10's own loop has no such argument."""
    if sys.version_info >= (3, 11) or type(loop).__module__.startswith("uvloop"):
        return {"ssl_shutdown_timeout": seconds}
    return {}


class MetricsServer:
    def __init__(
        self,
        current: Callable[[], Exposition | None],
        healthy: Callable[[], bool],
        limits: Limits | None = None,
        auth: BasicAuth | None = None,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._current = current
        self._healthy = healthy
        self.limits = limits or Limits()
        self.auth = auth
        self._auth_queue = AuthQueue(auth, self.limits.max_pending_auth) if auth is not None else None
        self.extra_headers = extra_headers
        self.scrapes: Counter[tuple[str, str]] = Counter()
        self.dropped: Counter[str] = Counter()  # connections ended by the server, by reason
        self.accepted = 0
        self._ids = itertools.count()
        self._main = Pool("main", self.limits.max_connections)
        self._reserve = Pool("reserve", self.limits.reserve_connections)
        self._health = Pool("health", self.limits.health_connections)
        self._handshakes: OrderedDict[int, Conn] = OrderedDict()
        self._listeners: list[Listener] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._closing = False
        self._plain_http_logged = -PLAIN_HTTP_LOG_EVERY_S
        self._accept_errors_logged = -60.0

    # --- listening ---------------------------------------------------------------------------------------

    async def start(self, host: str | None, port: int, tls: ssl.SSLContext | None = None) -> list[tuple[str, int]]:
        """Listen (TLS when given a context); returns the bound (host, port) pairs (port 0: a free one)."""
        return await self._listen(host, port, tls, health=False)

    async def start_health(self, host: str | None, port: int) -> list[tuple[str, int]]:
        """A second, plain listener that answers only /healthz and /readyz (for probes)."""
        return await self._listen(host, port, None, health=True)

    async def _listen(
        self, host: str | None, port: int, tls: ssl.SSLContext | None, health: bool
    ) -> list[tuple[str, int]]:
        sockets = tuple(bind(host, port))
        listener = Listener(sockets, tls, health)
        self._listeners.append(listener)
        for sock in sockets:
            self._accepting.append(asyncio.create_task(self._accept_loop(listener, sock)))
        return [sock.getsockname()[:2] for sock in sockets]

    async def _accept_loop(self, listener: Listener, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                accepted, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: wait for fds to come back instead of spinning
                self.dropped["accept_error"] += 1
                if self._accept_errors_logged + 60.0 <= time.monotonic():
                    self._accept_errors_logged = time.monotonic()
                    log.warning(
                        "accept failed: %s (logged once a minute; counted in wattlens_http_rejections_total)", exc
                    )
                await asyncio.sleep(0.1)
                continue
            self.accepted += 1
            self._admit(listener, accepted, str(address[0]) if isinstance(address, tuple) else "local")

    def _admit(self, listener: Listener, sock: socket.socket, peer: str) -> None:
        if self._closing:
            sock.close()
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.limits.tcp_user_timeout_s * 1000))
                if self.limits.send_buffer_bytes:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_buffer_bytes)
        pool = self._health if listener.health else self._place(peer)
        health_only = pool is not self._main
        if len(pool.conns) >= pool.cap:
            victim = pool.greediest()
            if victim is not None:
                self._evict(victim, f"evicted_{pool.name}")
        conn = Conn(next(self._ids), peer, pool, sock, health_only, idle_since=asyncio.get_running_loop().time())
        pool.conns[conn.id] = conn
        pool.per_peer[peer] += 1
        if listener.tls is not None:
            conn.state = State.HANDSHAKE
            self._handshakes[conn.id] = conn
            if len(self._handshakes) > self.limits.max_handshakes:
                oldest = next(iter(self._handshakes.values()))
                oldest.drop("evicted_handshake", self.dropped)
                self._handshakes.pop(oldest.id, None)
        conn.task = asyncio.create_task(self._connection(conn, listener))

    def _place(self, peer: str) -> Pool:
        """Main pool if there is, or can be made, room for this peer; else the reserve.

        Room is made, in this order, from: the newcomer's own address's reusable connections (silent ones
        first, then the longest idle); those of the address holding the most; and, for a newcomer from another
        address, the oldest
        connection (whatever it is doing) of an address holding more than its share. So a crowd from one address
        cannot push out the idle keep-alive connection of a scraper elsewhere, nor lock that scraper out.
        """
        main = self._main
        per_peer = self.limits.max_connections_per_peer
        if per_peer and main.per_peer[peer] >= per_peer:
            victim = main.reusable(peer)
            if victim is None:
                self.dropped["peer_limit"] += 1
                return self._reserve
            self._evict(victim, "evicted_idle")
        if len(main.conns) < main.cap:
            return main
        greediest = max(main.per_peer, key=lambda p: main.per_peer[p])
        victim = main.reusable(peer) or main.reusable(greediest)
        if victim is not None:
            self._evict(victim, "evicted_idle")
            return main
        if greediest != peer and main.per_peer[greediest] > main.per_peer[peer] + 1:
            victim = main.oldest(lambda c: c.peer == greediest)
            if victim is not None:
                self._evict(victim, "evicted_share")
                return main
        return self._reserve

    def _evict(self, victim: Conn, reason: str) -> None:
        victim.drop(reason, self.dropped)
        self._forget(victim)  # its slot is free now; its socket is gone within a loop iteration

    def _forget(self, conn: Conn) -> None:
        """Free the connection's slot (its pool entry); idempotent."""
        if conn.pool.conns.pop(conn.id, None) is not None:
            conn.pool.per_peer[conn.peer] -= 1
            if conn.pool.per_peer[conn.peer] <= 0:
                del conn.pool.per_peer[conn.peer]
        self._handshakes.pop(conn.id, None)

    def connection_states(self) -> Counter[str]:
        """Open connections by state (handshake, fresh, reading, busy, idle)."""
        pools = (self._main, self._reserve, self._health)
        return Counter(c.state.value for pool in pools for c in pool.conns.values())

    def open_connections(self) -> dict[str, int]:
        """Sockets per pool, and TLS handshakes in progress."""
        counts = {pool.name: len(pool.conns) for pool in (self._main, self._reserve, self._health)}
        counts["handshakes"] = len(self._handshakes)
        return counts

    # --- one connection ----------------------------------------------------------------------------------

    async def _connection(self, conn: Conn, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.limits.max_request_bytes, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                if listener.tls is not None:
                    if not await self._looks_like_tls(conn):
                        return
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol,
                        conn.sock,
                        ssl=listener.tls,
                        ssl_handshake_timeout=self.limits.handshake_timeout_s,
                        **_ssl_shutdown_timeout(loop, self.limits.write_timeout_s),
                    )
                    self._handshakes.pop(conn.id, None)
                else:
                    transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn.sock)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                self.dropped["handshake_failed"] += 1
                return
            conn.transport = transport
            conn.state = State.FRESH
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            if conn.transport is None:  # evicted mid-handshake: the loop closed the socket
                return
            raise
        finally:
            await self._release(conn, writer)

    async def _looks_like_tls(self, conn: Conn) -> bool:
        """Wait (within the handshake timeout) for the first byte; plain HTTP on the TLS port gets a plain 400."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = conn.sock.fileno()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await asyncio.wait_for(readable, self.limits.handshake_timeout_s)
        except asyncio.TimeoutError:
            self.dropped["handshake_timeout"] += 1
            return False
        finally:
            loop.remove_reader(fd)
        try:
            first = conn.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return False
        if not first or first[0] == TLS_RECORD_HANDSHAKE:
            return bool(first)
        self.dropped["plain_http_on_tls"] += 1
        now = time.monotonic()
        if now - self._plain_http_logged >= PLAIN_HTTP_LOG_EVERY_S:
            self._plain_http_logged = now
            log.warning(
                "plain HTTP from %s on the TLS port: answered 400 (scrape with https://); further ones in the "
                "next %.0f s are only counted",
                conn.peer,
                PLAIN_HTTP_LOG_EVERY_S,
            )
        with contextlib.suppress(OSError):
            conn.sock.recv(self.limits.max_request_bytes)  # take the request, or closing would reset the reply
            conn.sock.send(
                b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
                b"Client sent an HTTP request to an HTTPS server.\n"
            )
        return False

    async def _release(self, conn: Conn, writer: asyncio.StreamWriter | None) -> None:
        """Close (or abort, if the client is not taking what was written) and wait for connection_lost."""
        try:
            if writer is None:
                if conn.transport is None:
                    conn.sock.close()
                return
            transport = writer.transport
            if not transport.is_closing():
                if transport.get_write_buffer_size() == 0:
                    transport.close()
                else:
                    abort(transport)
            try:
                await asyncio.wait_for(writer.wait_closed(), self.limits.write_timeout_s)
            except asyncio.TimeoutError:
                abort(transport)
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            pass
        finally:
            self._forget(conn)

    async def _serve(self, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_request_bytes)
        first = True
        while (request := await self._next_request(conn, h, reader, writer, first)) is not None:
            first = False
            conn.state = State.BUSY
            reply = await self._answer(conn, request)
            last = self._closing or conn.health_only or reply.close
            try:
                await self._send(h, writer, reply, head_only=request.method == b"HEAD", close=last)
            except asyncio.TimeoutError:
                self.dropped["write_timeout"] += 1
                abort(writer.transport)
                return
            except ConnectionError:
                return
            if last or h.our_state is h11.MUST_CLOSE or h.their_state is not h11.DONE:
                return
            h.start_next_cycle()

    async def _next_request(
        self,
        conn: Conn,
        h: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bool,
    ) -> h11.Request | None:
        """The next request, or None when the connection should end (a bad request is answered here)."""
        try:
            return await self._read_request(conn, h, reader, writer, first)
        except (_ClientError, h11.RemoteProtocolError) as exc:
            conn.state = State.BUSY
            status = exc.status if isinstance(exc, _ClientError) else exc.error_status_hint
            message = str(exc) if isinstance(exc, _ClientError) else "bad request"
            await self._send_error(h, writer, status, message + "\n")
        except asyncio.TimeoutError:
            self.dropped["request_timeout" if conn.state is State.READING else "idle_timeout"] += 1
        except ConnectionError:
            pass
        return None

    def _deadline(self, conn: Conn, first: bool) -> float:
        now = asyncio.get_running_loop().time()
        if conn.health_only:
            return now + min(self.limits.first_request_timeout_s, 2.0)
        if first:
            return now + self.limits.first_request_timeout_s
        return now + self.limits.keep_alive_timeout_s

    async def _read_request(
        self,
        conn: Conn,
        h: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bool,
    ) -> h11.Request | None:
        """The next complete request (body read and discarded), or None if the client went away.

        h11 bounds only a head that arrives in pieces (max_incomplete_event_size); one that arrives whole in
        a single read is parsed at any size, so the head's length is checked here too: the bytes h11 took
        from its buffer to produce the Request event.
        """
        loop = asyncio.get_running_loop()
        deadline = self._deadline(conn, first)
        request: h11.Request | None = None
        received = len(h.trailing_data[0])  # pipelined bytes already buffered
        conn.state = State.READING if received else (State.FRESH if first else State.IDLE)
        conn.idle_since = loop.time()
        body_bytes = 0
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                if self._closing and conn.state in REUSABLE:
                    return None
                data = await asyncio.wait_for(reader.read(65536), max(0.0, deadline - loop.time()))
                if data and conn.state in REUSABLE:
                    conn.state = State.READING
                    if not first and not conn.health_only:  # a later request: its own deadline from now on
                        deadline = loop.time() + self.limits.request_timeout_s
                received += len(data)
                h.receive_data(data)  # b"" tells h11 the peer closed
                continue
            if isinstance(event, h11.Request):
                if received - len(h.trailing_data[0]) > self.limits.max_request_bytes:
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                request = event
                self._check_framing(request)
                if h.they_are_waiting_for_100_continue:
                    writer.write(h.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > self.limits.max_request_bytes:
                    raise _ClientError(413, "request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    def _check_framing(self, request: h11.Request) -> None:
        lengths = [v for k, v in request.headers if k == b"content-length"]
        if lengths and any(k == b"transfer-encoding" for k, _ in request.headers):
            # RFC 9112 §6.1: a server may reject this, and must close the connection either way (smuggling).
            raise _ClientError(400, "both Content-Length and Transfer-Encoding")
        if lengths and int(lengths[0]) > self.limits.max_request_bytes:
            raise _ClientError(413, "request body too large")  # at once, without waiting for the body

    async def _answer(self, conn: Conn, request: h11.Request) -> Reply:
        path = request.target.split(b"?", 1)[0]
        if conn.health_only and path not in HEALTH_PATHS:
            if conn.pool is self._health:
                return HEALTH_ONLY
            self.dropped["busy"] += 1
            return BUSY
        if self._auth_queue is not None and conn.pool is not self._health:
            refusal = await self._authorize(conn, request)
            if refusal is not None:
                return refusal
        return await self._route(request, path)

    async def _authorize(self, conn: Conn, request: h11.Request) -> Reply | None:
        """None if the request may go on, else the reply that refuses it."""
        queue = self._auth_queue
        assert queue is not None
        header = next((v.decode("latin-1") for k, v in request.headers if k == b"authorization"), "")
        credentials = queue.auth.credentials(header)
        known = queue.auth.cached(credentials) if credentials is not None else False
        if conn.pool is self._reserve and not known:
            return BUSY  # the reserve is for probes that logged in before: no bcrypt for newcomers now
        if known is None and credentials is not None:
            known = await self._check(queue, credentials, conn.peer)
            if known is None:
                return AUTH_BUSY
        return None if known else UNAUTHORIZED

    async def _check(self, queue: AuthQueue, credentials: Credentials, peer: str) -> bool | None:
        """bcrypt through the queue: the verdict, or None when the queue turned it away or it took too long."""
        pending = queue.submit(credentials, peer)
        if pending is None:
            self.dropped["auth_queue_full"] += 1
            # Not at once: a client turned away would come straight back, and a flood of them would keep the
            # event loop busy answering. A second's wait is what Retry-After asks for anyway.
            await asyncio.sleep(AUTH_RETRY_S)
            return None
        try:
            verdict = await asyncio.wait_for(asyncio.shield(pending), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            pending.cancel()
            return None
        if verdict.ok:
            queue.passed(peer)
        else:
            await asyncio.sleep(verdict.pad_s)  # every failure as slow as the costliest user's
        return verdict.ok

    async def _route(self, request: h11.Request, path: bytes) -> Reply:
        if request.method not in (b"GET", b"HEAD"):
            return Reply(405, b"method not allowed\n", (TEXT, ("Allow", "GET, HEAD")))
        if path == b"/metrics":
            return await self._metrics(request)
        if path == b"/healthz":
            return Reply(200, b"ok\n") if self._healthy() else Reply(503, b"tick loop stalled\n")
        if path == b"/readyz":
            current = self._current()
            ready = current is not None and current.ready
            return Reply(200, b"ready\n") if ready else Reply(503, b"waiting for the first complete tick\n")
        if path == b"/":
            return Reply(200, INDEX, (("Content-Type", "text/html; charset=utf-8"),))
        return Reply(404, b"not found\n")

    async def _metrics(self, request: h11.Request) -> Reply:
        exposition = self._current()
        if exposition is None:
            return Reply(503, b"no metrics yet: the first tick has not finished\n")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        openmetrics = wants_openmetrics(headers.get("accept", ""))
        gzipped = wants_gzip(headers.get("accept-encoding", ""))
        self.scrapes[("openmetrics" if openmetrics else "text", "gzip" if gzipped else "identity")] += 1
        reply_headers = [
            ("Content-Type", CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT),
            ("Vary", "Accept, Accept-Encoding"),
        ]
        if gzipped:
            reply_headers.append(("Content-Encoding", "gzip"))
        return Reply(200, await metrics_body(exposition, openmetrics, gzipped), tuple(reply_headers))

    async def _send(
        self,
        h: h11.Connection,
        writer: asyncio.StreamWriter,
        reply: Reply,
        head_only: bool = False,
        close: bool = False,
    ) -> None:
        headers = [
            *reply.headers,
            *self.extra_headers,
            ("Content-Length", str(len(reply.body))),
            ("Server", "wattlens"),
        ]
        if close or self._closing or reply.close:
            headers.append(CLOSE)
        if writer.transport.is_closing():  # evicted or reset while the reply was being made
            raise ConnectionResetError("connection closed before the reply")
        writer.write(h.send(h11.Response(status_code=reply.status, headers=headers)))
        if not head_only:
            writer.write(h.send(h11.Data(data=reply.body)))
        writer.write(h.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout_s)

    async def _send_error(self, h: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, h11.LocalProtocolError):
            await self._send(h, writer, Reply(status, message.encode(), (TEXT,), close=True))

    # --- shutting down -----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop accepting, drop idle connections, let in-flight requests finish briefly, then drop the rest."""
        self._closing = True
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for listener in self._listeners:
            for sock in listener.sockets:
                sock.close()
        conns = [c for pool in (self._main, self._reserve, self._health) for c in pool.conns.values()]
        for conn in conns:
            if conn.state in REUSABLE or conn.state is State.HANDSHAKE:
                conn.drop("shutdown", self.dropped)
        tasks = {c.task for c in conns if c.task is not None and not c.task.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for conn in conns:
                if conn.task in pending and conn.transport is not None:
                    abort(conn.transport)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._auth_queue is not None:
            self._auth_queue.close()
