"""A small Kubernetes API server for tests: pods list and watch on loopback, with the behaviours a real one
has that clients get wrong — field selectors, resourceVersions, bookmarks, 410 Gone for expired versions,
watches that end, and bearer tokens that rotate. Bounded: it serves on a daemon thread and stops by itself.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def pod(name: str, node: str, uid: str, namespace: str = "default", labels: dict[str, str] | None = None,
        owner: tuple[str, str] | None = None, containers: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": {"nodeName": node},
        "status": {"containerStatuses": [{"name": n, "containerID": f"containerd://{cid}"}
                                         for n, cid in (containers or {}).items()]},
    }


class FakeApiServer:
    def __init__(self, token: str, lifetime_s: float = 120.0) -> None:
        self.token = token
        self.version = 100
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.expired_below = 0
        self.lists = 0
        self.watches = 0
        self.unauthorized = 0
        self._changed = threading.Condition()
        self._generation = 0  # bumped to end every open watch ("dropped connections")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        self._timer.cancel()
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- what tests do --------------------------------------------------------------------------

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        with self._changed:
            self.version += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.version)
            if kind == "DELETED":
                self.pods.pop(obj["metadata"]["uid"], None)
            elif kind != "BOOKMARK":
                self.pods[obj["metadata"]["uid"]] = obj
            self.events.append((self.version, kind, obj))
            self._changed.notify_all()

    def put(self, obj: dict[str, Any]) -> None:
        self._record("MODIFIED" if obj["metadata"]["uid"] in self.pods else "ADDED", obj)

    def delete(self, uid: str) -> None:
        self._record("DELETED", self.pods[uid])

    def bookmark(self) -> None:
        self._record("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {}})

    def expire_history(self) -> None:
        """Compaction: history moves on (another node's pod changes) and every earlier resourceVersion is too
        old to watch from; a fresh list gets the current one, which is watchable."""
        self.put(pod("compaction", "node-z", "ffffffff-0000-4000-8000-000000000000"))
        with self._changed:
            self.expired_below = self.version

    def drop_watches(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    # --- serving ----------------------------------------------------------------------------------

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized += 1
            self._reply(handler, 401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
            return
        if url.path != "/api/v1/pods":
            self._reply(handler, 404, {"kind": "Status", "code": 404})
            return
        node = query.get("fieldSelector", "").removeprefix("spec.nodeName=")
        if query.get("watch") in ("true", "1", "True"):
            self._watch(handler, node, int(query.get("resourceVersion") or 0), float(query.get("timeoutSeconds", 30)),
                        query.get("allowWatchBookmarks") in ("true", "True"))
            return
        with self._changed:
            self.lists += 1
            items = [p for p in self.pods.values() if p["spec"]["nodeName"] == node]
            version = self.version
        self._reply(handler, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)},
                                   "items": items})

    def _watch(self, handler: BaseHTTPRequestHandler, node: str, since: int, timeout: float, bookmarks: bool) -> None:
        with self._changed:
            self.watches += 1
            generation = self._generation
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()

        def send(event: dict[str, Any]) -> None:
            handler.wfile.write(json.dumps(event).encode() + b"\n")
            handler.wfile.flush()

        if since < self.expired_below:
            send({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                              "message": f"too old resource version: {since}"}})
            return
        deadline = time.monotonic() + timeout
        sent = since
        while True:
            with self._changed:
                pending = [e for e in self.events if e[0] > sent]
                if not pending:
                    self._changed.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                if self._generation != generation or time.monotonic() >= deadline:
                    return  # connection dropped, or the server-side timeout
            for version, kind, obj in pending:
                sent = version
                if kind == "BOOKMARK" and not bookmarks:
                    continue
                if kind != "BOOKMARK" and obj["spec"]["nodeName"] != node:
                    continue
                try:
                    send({"type": kind, "object": obj})
                except OSError:
                    return
