"""A fake carbon-intensity API for tests: a stdlib HTTP server on loopback whose answers the test scripts.

It logs every request (monotonic arrival time, path, query, headers), can answer with any status, body or
headers, hang (accept, read the request, never answer) until released, or trickle its answer a byte at a time.
Its life is bounded: it stops by itself after `lifetime_s` and answers at most `max_requests`, so a test that
forgets it leaves nothing behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    at: float
    path: str
    query: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    trickle_s: float | None = None  # send the answer one byte per trickle_s (a slow-loris server)

    @classmethod
    def json(cls, doc: object, status: int = 200, **headers: str) -> Reply:
        return cls(status, json.dumps(doc).encode(), {"Content-Type": "application/json", **headers})


Route = Reply | Callable[[Request], Reply]


class FakeIntensityServer:
    def __init__(self, lifetime_s: float = 30.0, max_requests: int = 500) -> None:
        self.log: list[Request] = []
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._max_requests = max_requests
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(time.monotonic(), parts.path, parts.query, headers)
                with server._lock:
                    server.log.append(request)
                    over = len(server.log) > server._max_requests
                    route = server._routes.get(parts.path)
                if over:
                    reply = Reply(429, b"request budget of the fake server spent")
                elif route is None:
                    reply = Reply(404, b"no such route")
                else:
                    reply = route(request) if callable(route) else route
                if reply.hang:
                    server._released.wait()
                    self.close_connection = True
                    return
                if reply.trickle_s is not None:
                    head = f"HTTP/1.1 {reply.status} OK\r\nContent-Length: {len(reply.body)}\r\n\r\n".encode()
                    for byte in head + reply.body:
                        if server._released.wait(reply.trickle_s):
                            break
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:
                            break
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._deadline = threading.Timer(lifetime_s, self.close)
        self._deadline.daemon = True
        self._deadline.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, reply: Route) -> None:
        with self._lock:
            self._routes[path] = reply

    def requests(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.log if path is None or r.path == path]

    def release(self) -> None:
        """Let hanging handlers finish (they close without answering)."""
        self._released.set()

    def close(self) -> None:
        self._deadline.cancel()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeIntensityServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
