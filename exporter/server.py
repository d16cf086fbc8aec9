"""HTTP on asyncio: /metrics (cached bytes), /healthz, /readyz.

h11 parses the protocol (a small, well-tested HTTP/1.1 state machine) so malformed requests get a 400 from
a real parser instead of a hand-rolled one. Every request has a deadline, heads and bodies are bounded, and
the number of open connections is capped, so slow or hostile clients cannot pile up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import h11

from exporter.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Exposition
from exporter.webconfig import BasicAuth

log = logging.getLogger(__name__)

OPENMETRICS_TYPE = "application/openmetrics-text"
INDEX = (
    b"<html><head><title>wattlens</title></head><body><h1>wattlens</h1>"
    b'<p><a href="/metrics">metrics</a> &middot; <a href="/healthz">healthz</a> &middot; '
    b'<a href="/readyz">readyz</a></p></body></html>\n'
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = 8192  # request line + headers, and any body
    request_timeout_s: float = 10.0  # from waiting for a request to having all of it
    write_timeout_s: float = 30.0
    max_connections: int = 256


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


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain; charset=utf-8"),)


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
        self.extra_headers = extra_headers
        self._auth_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wattlens-auth")
        self.scrapes: Counter[tuple[str, str]] = Counter()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None]] = set()  # waiting for a request, none of it received yet
        self._closing = False

    async def start(self, host: str | None, port: int, tls: ssl.SSLContext | None = None) -> list[tuple[str, int]]:
        """Bind and listen (TLS when given a context); returns the bound (host, port) pairs (port 0: a free one)."""
        self._server = await asyncio.start_server(
            self._accept,
            host=host,
            port=port,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=self.limits.request_timeout_s if tls else None,
        )
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def close(self) -> None:
        """Stop accepting, drop idle connections, let in-flight requests finish briefly, then drop the rest."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in self._idle:
            task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        self._auth_worker.shutdown(wait=False, cancel_futures=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._closing or len(self._connections) >= self.limits.max_connections or task is None:
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, task)
        finally:
            self._connections.discard(task)
            self._idle.discard(task)
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_request_bytes)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                request = await asyncio.wait_for(self._read_request(conn, reader, task), self.limits.request_timeout_s)
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, writer, exc.error_status_hint, "bad request\n")
                return
            except (TimeoutError, ConnectionError):
                return
            if request is None:
                return
            reply = await self._authorized_route(request)
            try:
                await self._send(conn, writer, reply, head_only=request.method == b"HEAD")
            except (TimeoutError, ConnectionError):
                return
            if self._closing or conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, task: asyncio.Task[None]
    ) -> h11.Request | None:
        """The next complete request (body read and discarded), or None if the client went away.

        h11 bounds only a head that arrives in pieces (max_incomplete_event_size); one that arrives whole in
        a single read is parsed at any size, so the head's length is checked here too: the bytes h11 took
        from its buffer to produce the Request event.
        """
        request: h11.Request | None = None
        received = len(conn.trailing_data[0])  # pipelined bytes already buffered
        body_bytes = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if request is None and received == 0:
                    if self._closing:
                        return None
                    self._idle.add(task)  # close() may drop it: nothing of a request has arrived
                try:
                    data = await reader.read(65536)
                finally:
                    self._idle.discard(task)
                received += len(data)
                conn.receive_data(data)  # b"" tells h11 the peer closed
                continue
            if isinstance(event, h11.Request):
                if received - len(conn.trailing_data[0]) > self.limits.max_request_bytes:
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                request = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > self.limits.max_request_bytes:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _authorized_route(self, request: h11.Request) -> Reply:
        if self.auth is not None:
            header = next((v.decode("latin-1") for k, v in request.headers if k == b"authorization"), "")
            allowed = self.auth.cached(header)
            if allowed is None:  # bcrypt is slow by design: one worker thread, never the event loop
                allowed = await asyncio.get_running_loop().run_in_executor(self._auth_worker, self.auth.check, header)
            if not allowed:
                return Reply(
                    401,
                    b"Unauthorized\n",
                    (("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", 'Basic realm="wattlens"')),
                )
        return await self._route(request)

    async def _route(self, request: h11.Request) -> Reply:
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return Reply(
                405, b"method not allowed\n", (("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET, HEAD"))
            )
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
        # The first scrape of a tick for this variant renders it, off the event loop; later ones get its bytes.
        return Reply(200, await exposition.body_async(openmetrics, gzipped), tuple(reply_headers))

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply, head_only: bool = False
    ) -> None:
        headers = [
            *reply.headers,
            *self.extra_headers,
            ("Content-Length", str(len(reply.body))),
            ("Server", "wattlens"),
        ]
        if self._closing and not any(name == "Connection" for name, _ in reply.headers):
            headers.append(("Connection", "close"))
        writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        if not head_only:
            writer.write(conn.send(h11.Data(data=reply.body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout_s)

    async def _send_error(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(TimeoutError, ConnectionError, h11.LocalProtocolError):
            await self._send(
                conn,
                writer,
                Reply(
                    status, message.encode(), (("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close"))
                ),
            )
