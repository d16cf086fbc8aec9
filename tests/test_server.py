"""The HTTP server, driven over real sockets on 127.0.0.1 with real clients (http.client and raw sockets).

Each server runs on its own event loop in a background thread, once on asyncio's default loop and once on
uvloop (what the daemon runs on), so blocking clients can talk to it. Every socket has a timeout and every
cross-thread wait is bounded, so a hung server fails a test instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from attacks import held_server_sockets, server_sockets
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.exposition import Exposition
from exporter.server import Limits, MetricsServer, wants_gzip, wants_openmetrics

CT_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CT_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_PROTOBUF_FIRST = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
TIMEOUT = 5.0  # the most any single client operation may take


# ---------------------------------------------------------------------------------------------------------
# Content negotiation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_2, True),
        (PROMETHEUS_3, True),
        (PROMETHEUS_PROTOBUF_FIRST, False),
        ("*/*", False),  # curl
        ("text/plain", False),
        ("text/plain;version=0.0.4", False),
        ("", False),
        ("   ", False),
        ("application/openmetrics-text", True),
        ("APPLICATION/OpenMetrics-Text; Version=1.0.0", True),
        ("application/openmetrics-text; q=0.9, text/plain; q=0.8", True),
        ("application/openmetrics-text;q=0.4,text/plain;q=0.5", False),
        ("application/openmetrics-text;q=0.5,text/plain;q=0.5", True),  # a tie goes to what was named first
        ("text/*;q=0.9,application/openmetrics-text;q=0.5", False),
        ("application/json, */*;q=0.1", False),
        # q=0 means "not acceptable"
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=0.0, text/plain", False),
        ("application/openmetrics-text;q=0, */*", False),
        ("text/plain;q=0, */*;q=0, application/openmetrics-text;q=0.1", True),
        ("application/openmetrics-text;Q=0", False),
        # Garbage q values count as 0, never as "preferred" ...
        ("application/openmetrics-text;q=abc", False),
        ("application/openmetrics-text;q=, text/plain;q=0.1", False),
        ('application/openmetrics-text;q="1"', False),
        ("application/openmetrics-text;q=nan", False),
        ("application/openmetrics-text;q=inf, text/plain", False),
        ("application/openmetrics-text;q=1e9, text/plain", False),
        ("application/openmetrics-text;q=1_0, text/plain", False),
        ("application/openmetrics-text;q=-1", False),
        # ... and cannot push the other side's weight up either.
        ("application/openmetrics-text;q=0.2, text/plain;q=bogus", True),
        ("application/openmetrics-text;q=0.9, text/plain;q=inf", True),
        ("application/openmetrics-text;q=0.9, */*;q=2", True),
        # Malformed lists do not raise.
        (",,,", False),
        (";;;q=1", False),
        ("application/openmetrics-text;;q", False),  # a bare q is an unparsable q
        ("application/openmetrics-text;;", True),
        (", application/openmetrics-text ,", True),
    ],
)
def test_wants_openmetrics(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip", True),  # Prometheus
        ("gzip, deflate, br, zstd", True),  # browsers
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        ("GZip", True),
        ("*", True),
        ("deflate, *;q=0.5", True),
        ("", False),  # curl without --compressed
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("*;q=0", False),
        ("gzip;q=0, *", False),  # an explicit refusal beats the wildcard
        ("*, gzip;q=0", False),
        ("identity, *;q=0", False),
        ("gzip;q=garbage", False),
        ("gzip;q=nan", False),
        ("gzip;q=-0.5", False),
        (",,;", False),
    ],
)
def test_wants_gzip(accept_encoding: str, expected: bool) -> None:
    assert wants_gzip(accept_encoding) is expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab/*;=,.q0123456789 -eEinfINF"\t')), max_size=60))
def test_negotiation_never_raises(header: str) -> None:
    assert isinstance(wants_openmetrics(header), bool)
    assert isinstance(wants_gzip(header), bool)


# ---------------------------------------------------------------------------------------------------------
# A server on a background event loop, and small clients
# ---------------------------------------------------------------------------------------------------------


def make_exposition(ready: bool = True, lines: int = 3) -> Exposition:
    samples = "".join(f'wattlens_test_joules_total{{zone="z{i}"}} {i}.5\n' for i in range(lines))
    text = f"# HELP wattlens_test_joules_total Test.\n# TYPE wattlens_test_joules_total counter\n{samples}".encode()
    openmetrics = (
        "# HELP wattlens_test_joules Test.\n# TYPE wattlens_test_joules counter\n" + samples + "# EOF\n"
    ).encode()
    return Exposition.of(text, openmetrics, ready)


@dataclass
class Running:
    """A MetricsServer serving on a loop in its own thread; `exposition` and `healthy` are what it sees."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    server: MetricsServer
    port: int = 0
    exposition: Exposition | None = None
    healthy: bool = True
    errors: list[dict[str, Any]] = field(default_factory=list)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connections(self) -> int:
        async def count() -> int:
            counts = self.server.open_connections()
            return counts["main"] + counts["reserve"] + counts["health"]

        return int(self.call(count()))

    def states(self) -> Counter[str]:
        async def states() -> Counter[str]:
            return self.server.connection_states()

        return Counter(self.call(states()))

    def wait_connections(self, expected: int, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.connections() != expected:
            assert time.monotonic() < deadline, f"server still holds {self.connections()} connection(s)"
            time.sleep(0.01)

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def raw(self) -> Raw:
        return Raw(self.port)

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> Reply:
        conn = self.http()
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Raw:
    """A raw TCP client with a tiny HTTP/1.1 response reader, for what http.client hides or refuses to send."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def response(self, head_only: bool = False) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ")
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(int(status), headers, body)

    def closed_within(self, seconds: float) -> bool:
        """True once the server closes (EOF or reset) within `seconds`; False if it is still open then."""
        self.sock.settimeout(seconds)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)

    def abort(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def start(request: pytest.FixtureRequest) -> Iterator[Callable[..., Running]]:
    """start(limits=None) → a Running server on the parametrised loop; torn down after the test."""
    started: list[Running] = []

    def _start(limits: Limits | None = None) -> Running:
        loop = LOOPS[request.param]()
        thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
        running: Running
        server = MetricsServer(lambda: running.exposition, lambda: running.healthy, limits)
        running = Running(loop, thread, server)
        loop.set_exception_handler(lambda _loop, context: running.errors.append(context))
        thread.start()
        started.append(running)
        bound = running.call(server.start("127.0.0.1", 0))
        running.port = bound[0][1]
        return running

    yield _start

    for running in started:
        with contextlib.suppress(Exception):
            running.call(running.server.close(), timeout=10)

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        running.call(cancel_rest())
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(TIMEOUT)
        assert not running.thread.is_alive()
        running.loop.close()
        # Nothing the clients did may surface as an unhandled error on the server's loop.
        assert running.errors == []


# ---------------------------------------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------------------------------------


def test_metrics_is_503_before_the_first_exposition(start: Callable[..., Running]) -> None:
    srv = start()
    reply = srv.get("/metrics", {"Accept": PROMETHEUS_2, "Accept-Encoding": "gzip"})
    assert reply.status == 503
    assert b"no metrics yet" in reply.body
    assert reply.headers["content-length"] == str(len(reply.body))
    assert srv.server.scrapes == Counter()  # a refused scrape is not a scrape


def test_metrics_text_for_plain_clients(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    for accept in ("*/*", "text/plain", None):
        reply = srv.get("/metrics", {"Accept": accept} if accept else {})
        assert reply.status == 200
        assert reply.headers["content-type"] == CT_TEXT
        assert reply.body == exp.text
        assert reply.headers["content-length"] == str(len(exp.text))
        assert "content-encoding" not in reply.headers
        assert "Accept-Encoding" in reply.headers["vary"]
    assert srv.server.scrapes == Counter({("text", "identity"): 3})


def test_metrics_openmetrics_for_prometheus(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    reply = srv.get("/metrics", {"Accept": PROMETHEUS_2})
    assert reply.status == 200
    assert reply.headers["content-type"] == CT_OPENMETRICS
    assert reply.body == exp.openmetrics
    assert reply.body.endswith(b"# EOF\n")
    assert reply.headers["content-length"] == str(len(exp.openmetrics))
    assert "content-encoding" not in reply.headers
    assert srv.server.scrapes == Counter({("openmetrics", "identity"): 1})


@pytest.mark.parametrize("openmetrics", [False, True])
def test_metrics_gzip_decompresses_to_the_identity_body(start: Callable[..., Running], openmetrics: bool) -> None:
    srv = start()
    srv.exposition = exp = make_exposition(lines=500)
    accept = PROMETHEUS_2 if openmetrics else "*/*"
    plain = srv.get("/metrics", {"Accept": accept})
    zipped = srv.get("/metrics", {"Accept": accept, "Accept-Encoding": "gzip"})
    assert zipped.status == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"] == (CT_OPENMETRICS if openmetrics else CT_TEXT)
    assert zipped.headers["content-length"] == str(len(zipped.body))
    assert zipped.body == exp.body(openmetrics, gzipped=True)
    assert len(zipped.body) < len(plain.body)
    assert gzip.decompress(zipped.body) == plain.body == exp.body(openmetrics, gzipped=False)
    fmt = "openmetrics" if openmetrics else "text"
    assert srv.server.scrapes == Counter({(fmt, "identity"): 1, (fmt, "gzip"): 1})


def test_scrape_counter_counts_each_format_and_encoding(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = make_exposition()
    asks = [
        ({"Accept": PROMETHEUS_2, "Accept-Encoding": "gzip"}, ("openmetrics", "gzip")),
        ({"Accept": PROMETHEUS_2, "Accept-Encoding": "gzip"}, ("openmetrics", "gzip")),
        ({"Accept": PROMETHEUS_3}, ("openmetrics", "identity")),
        ({"Accept": PROMETHEUS_PROTOBUF_FIRST, "Accept-Encoding": "gzip"}, ("text", "gzip")),
        ({"Accept": "*/*", "Accept-Encoding": "gzip;q=0"}, ("text", "identity")),
        ({"Accept": "*/*"}, ("text", "identity")),
        ({"Accept": "*/*"}, ("text", "identity")),
    ]
    expected: Counter[tuple[str, str]] = Counter()
    for headers, key in asks:
        reply = srv.get("/metrics", headers)
        assert reply.status == 200
        expected[key] += 1
        assert srv.server.scrapes == expected
    # Other paths are not scrapes.
    srv.get("/healthz")
    srv.get("/readyz")
    srv.get("/nope")
    assert srv.server.scrapes == expected


def test_head_returns_the_headers_without_a_body(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition(lines=50)
    with srv.raw() as c:
        c.send(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        head = c.response(head_only=True)
        assert head.status == 200
        assert head.headers["content-type"] == CT_TEXT
        assert head.headers["content-encoding"] == "gzip"
        assert head.headers["content-length"] == str(len(exp.text_gzip))  # what a GET would send
        # If any body had followed the head, it would be read here instead of the next status line.
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        nxt = c.response()
        assert (nxt.status, nxt.body) == (200, b"ok\n")
    conn = srv.http()
    conn.request("HEAD", "/metrics")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Content-Type"), resp.read()) == (200, CT_TEXT, b"")
    assert resp.getheader("Content-Length") == str(len(exp.text))
    conn.close()


def test_query_string_is_ignored(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    for path in ("/metrics?name[]=wattlens_node_cpu_joules_total", "/metrics?", "/metrics?a=b&c=%20d?e"):
        reply = srv.get(path)
        assert (reply.status, reply.body) == (200, exp.text)
    assert srv.get("/healthz?verbose=1").status == 200
    assert srv.get("/metricsx?a=b").status == 404


# ---------------------------------------------------------------------------------------------------------
# /healthz, /readyz, index, errors
# ---------------------------------------------------------------------------------------------------------


def test_readyz_waits_for_a_ready_exposition(start: Callable[..., Running]) -> None:
    srv = start()
    reply = srv.get("/readyz")
    assert reply.status == 503
    srv.exposition = make_exposition(ready=False)
    assert srv.get("/readyz").status == 503
    assert srv.get("/metrics").status == 200  # not ready yet, but what there is is served
    srv.exposition = make_exposition(ready=True)
    reply = srv.get("/readyz")
    assert (reply.status, reply.body) == (200, b"ready\n")


def test_healthz_follows_the_healthy_callback(start: Callable[..., Running]) -> None:
    srv = start()
    reply = srv.get("/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")
    srv.healthy = False
    reply = srv.get("/healthz")
    assert reply.status == 503
    assert reply.body == b"tick loop stalled\n"
    srv.healthy = True
    assert srv.get("/healthz").status == 200


def test_index_links_the_endpoints(start: Callable[..., Running]) -> None:
    srv = start()
    reply = srv.get("/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    for link in (b'href="/metrics"', b'href="/healthz"', b'href="/readyz"'):
        assert link in reply.body


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/metricsx", "/METRICS", "//metrics", "/favicon.ico"])
def test_unknown_path_is_404(start: Callable[..., Running], path: str) -> None:
    srv = start()
    srv.exposition = make_exposition()
    reply = srv.get(path)
    assert reply.status == 404
    assert srv.server.scrapes == Counter()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(start: Callable[..., Running], method: str) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    conn = srv.http()
    conn.request(method, "/metrics", body=b"a=b")
    resp = conn.getresponse()
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET, HEAD"
    resp.read()
    sock = conn.sock
    # The body was consumed, so the connection stays usable for the next request.
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, exp.text)
    assert conn.sock is sock
    conn.close()
    assert srv.server.scrapes == Counter({("text", "identity"): 1})


# ---------------------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------------------


def test_keep_alive_answers_requests_in_turn(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    with srv.raw() as c:
        for _ in range(3):
            c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = c.response()
            assert (reply.status, reply.body) == (200, exp.text)
        assert not c.closed_within(0.1)
    conn = srv.http()
    conn.request("GET", "/metrics", headers={"Accept": PROMETHEUS_2})
    first = conn.getresponse()
    assert first.read() == exp.openmetrics
    sock = conn.sock
    conn.request("GET", "/healthz")
    second = conn.getresponse()
    assert (second.status, second.read()) == (200, b"ok\n")
    assert conn.sock is sock  # same connection, not a silent reconnect
    conn.close()


def test_pipelined_requests_are_answered_in_order(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    with srv.raw() as c:
        c.send(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert [(r.status, r.body) for r in (c.response(), c.response(), c.response())] == [
            (200, exp.text),
            (200, b"ok\n"),
            (404, b"not found\n"),
        ]


def test_connection_close_and_http10_close_after_the_response(start: Callable[..., Running]) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    with srv.raw() as c:
        c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.response().body == exp.text
        assert c.closed_within(2.0)
    with srv.raw() as c:
        c.send(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert c.response().body == exp.text
        assert c.closed_within(2.0)
    srv.wait_connections(0)


# ---------------------------------------------------------------------------------------------------------
# Hostile input
# ---------------------------------------------------------------------------------------------------------

SMALL = Limits(
    max_request_bytes=1024,
    first_request_timeout_s=0.5,
    request_timeout_s=0.5,
    keep_alive_timeout_s=0.5,
    write_timeout_s=2.0,
    max_connections=4,
)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n",  # all in one segment
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(400)) + b"\r\n",
        b"GET /" + b"m" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000,  # still incomplete
    ],
    ids=["one-huge-header", "many-headers", "long-target", "incomplete"],
)
def test_oversized_header_block_is_refused(start: Callable[..., Running], head: bytes) -> None:
    srv = start(SMALL)
    srv.exposition = make_exposition()
    with srv.raw() as c:
        c.send(head)
        reply = c.response()
        assert reply.status in (400, 431)
        assert reply.headers.get("connection") == "close"
        assert c.closed_within(2.0)
    assert srv.server.scrapes == Counter()
    assert srv.get("/healthz").status == 200


def test_oversized_header_block_trickled_in_is_refused(start: Callable[..., Running]) -> None:
    srv = start(Limits(max_request_bytes=1024, request_timeout_s=5.0))
    with srv.raw() as c:
        c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):  # the server may refuse before all of it is sent
            for i in range(100):
                c.send(b"X-Header-%03d: %s\r\n" % (i, b"v" * 40))
                time.sleep(0.001)
        reply = c.response()
        assert reply.status in (400, 431)
        assert c.closed_within(2.0)


def test_header_block_at_the_limit_is_served(start: Callable[..., Running]) -> None:
    srv = start(SMALL)
    srv.exposition = exp = make_exposition()
    base = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    head = base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (900 - len(base)))
    assert len(head) == 900
    with srv.raw() as c:
        c.send(head)
        assert c.response().body == exp.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(start: Callable[..., Running], chunked: bool) -> None:
    srv = start(SMALL)
    body = b"x" * 3000
    if chunked:
        request = b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        request += b"".join(b"%x\r\n%s\r\n" % (500, body[i : i + 500]) for i in range(0, len(body), 500)) + b"0\r\n\r\n"
    else:
        request = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with srv.raw() as c:
        c.send(request)
        reply = c.response()
        assert reply.status == 413
        assert c.closed_within(2.0)
    assert srv.get("/healthz").status == 200


def test_body_at_the_limit_is_accepted(start: Callable[..., Running]) -> None:
    srv = start(SMALL)
    with srv.raw() as c:
        c.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024)
        assert c.response().status == 405  # read and discarded, then refused by method, not by size


def test_oversized_body_413_reaches_a_client_still_sending(start: Callable[..., Running]) -> None:
    # The client is still pushing body bytes when the server answers: the 413 must not be lost to a reset.
    srv = start(SMALL)
    body = b"x" * (1 << 20)
    with srv.raw() as c:
        c.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        with contextlib.suppress(ConnectionError):
            c.send(body)
        reply = c.response()
        assert reply.status == 413
    assert srv.get("/healthz").status == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",  # a TLS ClientHello
        b"HELLO WORLD\r\n\r\n",
        b"GET /metrics\r\n\r\n",  # HTTP/0.9
        b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",  # header without a colon
        b"GET /metrics HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"\x00\xff" * 32 + b"\r\n\r\n",
    ],
    ids=["tls", "words", "http09", "no-colon", "no-host", "bad-length", "binary"],
)
def test_garbage_gets_400_and_a_close(start: Callable[..., Running], garbage: bytes) -> None:
    srv = start(SMALL)
    srv.exposition = make_exposition()
    with srv.raw() as c:
        c.send(garbage)
        reply = c.response()
        assert reply.status == 400
        assert c.closed_within(2.0)
    assert srv.server.scrapes == Counter()
    assert srv.get("/metrics").status == 200


@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"GET /metrics HTTP/1.1\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    ],
    ids=["nothing", "request-line", "headers", "body"],
)
def test_stalled_client_is_disconnected_after_the_request_timeout(
    start: Callable[..., Running], partial: bytes
) -> None:
    srv = start(SMALL)
    with srv.raw() as c:
        c.send(partial)
        began = time.monotonic()
        assert c.closed_within(3.0)
        waited = time.monotonic() - began
    assert SMALL.request_timeout_s - 0.1 <= waited < SMALL.request_timeout_s + 1.0
    srv.wait_connections(0)


def test_trickling_client_is_held_to_the_whole_request_deadline(start: Callable[..., Running]) -> None:
    # One byte at a time never lets a read time out; the deadline covers the whole request.
    srv = start(SMALL)
    with srv.raw() as c:
        began = time.monotonic()
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
        cut_off = False
        for byte in request:
            try:
                c.send(bytes([byte]))
            except ConnectionError:
                cut_off = True
                break
            if c.closed_within(0.02):
                cut_off = True
                break
        assert cut_off
        assert time.monotonic() - began < SMALL.request_timeout_s + 1.0


def test_idle_keep_alive_connection_times_out(start: Callable[..., Running]) -> None:
    srv = start(SMALL)
    with srv.raw() as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().status == 200
        assert c.closed_within(3.0)
    srv.wait_connections(0)


@pytest.mark.parametrize("abort", [False, True], ids=["fin", "rst"])
def test_client_vanishing_mid_request_leaves_the_server_serving(start: Callable[..., Running], abort: bool) -> None:
    srv = start()
    srv.exposition = exp = make_exposition()
    for partial in (
        b"GET /metr",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    ):
        c = srv.raw()
        c.send(partial)
        time.sleep(0.02)
        if abort:
            c.abort()
        else:
            c.sock.close()
        reply = srv.get("/metrics")
        assert (reply.status, reply.body) == (200, exp.text)
    srv.wait_connections(0)


@pytest.mark.parametrize("abort", [False, True], ids=["fin", "rst"])
def test_client_vanishing_mid_response_leaves_the_server_serving(start: Callable[..., Running], abort: bool) -> None:
    srv = start()
    srv.exposition = exp = make_exposition(lines=200_000)  # ~8 MB: more than the socket buffers hold
    for _ in range(3):
        c = srv.raw()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        c.sock.recv(1024)  # the response has started
        if abort:
            c.abort()
        else:
            c.sock.close()
    reply = srv.get("/metrics")
    assert (reply.status, len(reply.body)) == (200, len(exp.text))
    srv.wait_connections(0)


def test_idle_connections_make_room_oldest_first(start: Callable[..., Running]) -> None:
    srv = start(Limits(max_connections=2))
    srv.exposition = exp = make_exposition()
    held = [srv.raw(), srv.raw()]
    for c in held:  # a completed request proves the server has taken the connection; now idle keep-alive
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().status == 200
    srv.wait_connections(2)
    # A newcomer gets in at once: the oldest idle connection is closed for it, the younger one is not.
    reply = srv.get("/metrics")
    assert (reply.status, reply.body) == (200, exp.text)
    assert held[0].closed_within(2.0)
    held[1].send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert held[1].response().body == exp.text
    # Silent connections (nothing sent yet) are reusable too: a stream of them never locks a client out.
    silent = [srv.raw() for _ in range(6)]
    assert srv.get("/metrics").status == 200
    assert srv.connections() <= 2
    for c in (*held, *silent):
        c.sock.close()
    assert srv.server.dropped["evicted_idle"] >= 2


def test_busy_connections_stay_and_newcomers_get_the_health_reserve(start: Callable[..., Running]) -> None:
    srv = start(Limits(max_connections=2, reserve_connections=2, first_request_timeout_s=30.0))
    srv.exposition = exp = make_exposition()
    busy = [srv.raw(), srv.raw()]
    for c in busy:  # mid-request: not reusable
        c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    deadline = time.monotonic() + TIMEOUT
    while srv.states() != Counter({"reading": 2}):
        assert time.monotonic() < deadline, srv.states()
        time.sleep(0.01)
    for _ in range(3):  # probes still get through, on the reserve, one request per connection
        reply = srv.get("/healthz")
        assert (reply.status, reply.body, reply.headers["connection"]) == (200, b"ok\n", "close")
        assert srv.get("/readyz").status == 200
    reply = srv.get("/metrics")  # anything else is refused with a clear answer, not a silent close
    assert reply.status == 503 and reply.headers["retry-after"] == "1" and b"too many connections" in reply.body
    # The reserve evicts its own oldest: silent clients cannot lock probes out of it either.
    squatters = [srv.raw() for _ in range(4)]
    assert srv.get("/healthz").status == 200
    for c in busy:  # the busy connections were never touched
        c.send(b"\r\n")
        assert c.response().body == exp.text
    for c in squatters:
        c.sock.close()
    assert srv.server.scrapes == Counter({("text", "identity"): 2})


def test_per_peer_cap_sends_a_greedy_address_to_the_reserve(start: Callable[..., Running]) -> None:
    srv = start(Limits(max_connections=8, max_connections_per_peer=2, first_request_timeout_s=30.0))
    srv.exposition = exp = make_exposition()
    greedy = [Raw(srv.port, source="127.0.0.2") for _ in range(2)]
    for c in greedy:
        c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # mid-request: not reusable
    deadline = time.monotonic() + TIMEOUT
    while srv.states() != Counter({"reading": 2}):
        assert time.monotonic() < deadline, srv.states()
        time.sleep(0.01)
    with Raw(srv.port, source="127.0.0.2") as third:
        third.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert third.response().status == 503  # the reserve: health only
    with Raw(srv.port, source="127.0.0.3") as other:  # another address is not affected
        other.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert other.response().body == exp.text
    assert srv.server.dropped["peer_limit"] == 1
    for c in greedy:
        c.sock.close()


def test_keep_alive_outlives_the_request_deadline(start: Callable[..., Running]) -> None:
    # Prometheus scrapes every 15-60 s on one connection: idling between requests is not a slow request.
    srv = start(Limits(request_timeout_s=0.3, first_request_timeout_s=0.3, keep_alive_timeout_s=30.0))
    srv.exposition = exp = make_exposition()
    with srv.raw() as c:
        for _ in range(2):
            c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.response().body == exp.text
            assert not c.closed_within(0.8)


def test_both_content_length_and_transfer_encoding_is_400_and_close(start: Callable[..., Running]) -> None:
    srv = start()
    with srv.raw() as c:
        c.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = c.response()
        assert reply.status == 400 and reply.headers["connection"] == "close"
        assert c.closed_within(2.0)
        assert b"HTTP/1.1" not in c.buf  # the smuggled request behind it was not answered


def test_oversized_content_length_is_413_at_once(start: Callable[..., Running]) -> None:
    srv = start(Limits(max_request_bytes=1024, request_timeout_s=10.0, first_request_timeout_s=10.0))
    with srv.raw() as c:
        began = time.monotonic()
        c.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")  # no body sent
        reply = c.response()
        assert reply.status == 413
        assert time.monotonic() - began < 2.0  # not after the 10 s deadline
        assert c.closed_within(2.0)


def test_expect_100_continue_gets_the_interim_response(start: Callable[..., Running]) -> None:
    srv = start()
    with srv.raw() as c:
        c.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.response(head_only=True)
        assert interim.status == 100
        c.send(b"hello")
        assert c.response().status == 405
    with srv.raw() as c:  # too large: refused before the client sends the body
        c.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
        assert c.response().status == 413


def test_a_client_that_never_reads_is_aborted_and_leaves_nothing_behind(start: Callable[..., Running]) -> None:
    srv = start(Limits(write_timeout_s=1.0, max_connections=8))
    srv.exposition = make_exposition(lines=200_000)  # ~8 MB: more than any socket buffer holds
    clients = []
    for _ in range(4):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(("127.0.0.1", srv.port))
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 4)  # and never read
        clients.append(c)
    deadline = time.monotonic() + 6
    while srv.server.dropped["write_timeout"] < 4:
        assert time.monotonic() < deadline, srv.server.dropped
        time.sleep(0.05)
    srv.wait_connections(0)
    # Aborted, not closed: no server-side socket is left holding the unsent response (an orphan in FIN_WAIT).
    deadline = time.monotonic() + 3
    while held_server_sockets(srv.port):
        assert time.monotonic() < deadline, server_sockets(srv.port)
        time.sleep(0.05)
    for c in clients:
        c.close()


# ---------------------------------------------------------------------------------------------------------
# close()
# ---------------------------------------------------------------------------------------------------------


def test_close_is_prompt_with_an_idle_connection_open(start: Callable[..., Running]) -> None:
    srv = start(Limits(request_timeout_s=30.0))
    srv.exposition = make_exposition()
    with srv.raw() as idle, srv.raw() as silent:
        idle.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.response().status == 200  # now idle between requests on a keep-alive connection
        srv.wait_connections(2)  # and `silent` has connected but said nothing
        began = time.monotonic()
        srv.call(srv.server.close(), timeout=10)
        took = time.monotonic() - began
        assert took < 1.0, f"close() took {took:.2f}s with idle connections open"
        assert idle.closed_within(2.0)
        assert silent.closed_within(2.0)
    assert srv.connections() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT).close()


def test_close_lets_a_request_in_progress_finish(start: Callable[..., Running]) -> None:
    srv = start(Limits(request_timeout_s=30.0))
    srv.exposition = exp = make_exposition()
    with srv.raw() as c:
        c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head is not finished yet
        srv.wait_connections(1)
        # Until the server has read those bytes the connection is idle, and close() may rightly drop it.
        deadline = time.monotonic() + TIMEOUT
        while srv.states() != Counter({"reading": 1}):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        closing = asyncio.run_coroutine_threadsafe(srv.server.close(), srv.loop)
        deadline = time.monotonic() + TIMEOUT
        while True:  # until close() has begun: the port refuses (or resets) new connections
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT).close()
            except (ConnectionRefusedError, ConnectionResetError):
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        c.send(b"\r\n")
        reply = c.response()
        assert (reply.status, reply.body) == (200, exp.text)
        assert reply.headers.get("connection") == "close"  # the client is told not to reuse it ...
        assert c.closed_within(2.0)  # ... and it is not kept alive for another
        closing.result(TIMEOUT)



def test_abort_of_a_transport_whose_socket_has_no_fd_still_aborts() -> None:
    """Seen in the slow-reader attack test: a write timeout's abort came after the connection had lost its fd, and
    uvloop's stand-in socket raised ValueError('negative file descriptor') from setsockopt (it makes a
    socket.socket of fd -1). The ValueError escaped abort() before the transport was aborted: the task died with
    "Task exception was never retrieved" and, in those runs, a socket was still held 20 s after the attack."""
    from exporter.server import abort

    class NoFd:
        def setsockopt(self, *args: object) -> None:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, -1)  # what uvloop's PseudoSocket does with fd -1

    class Transport:
        aborted = 0

        def get_extra_info(self, name: str) -> object:
            return NoFd() if name == "socket" else None

        def abort(self) -> None:
            self.aborted += 1

    with pytest.raises(ValueError, match="negative file descriptor"):
        NoFd().setsockopt()  # the stand-in fails as uvloop's does
    transport = Transport()
    abort(transport)  # type: ignore[arg-type]
    assert transport.aborted == 1
