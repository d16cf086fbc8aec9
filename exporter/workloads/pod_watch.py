"""Optional: this node's pods from the Kubernetes API, for pod labels and owners (`kubernetes_api: true`).

One list of `spec.nodeName=<node>` pods, then a watch from its resourceVersion with bookmarks. A watch that
ends (server timeout, dropped connection) resumes from the last resourceVersion it saw, without listing again;
only a 410 Gone (the resourceVersion is too old) leads to a new list. Errors back off exponentially. The
service-account token is re-read on every request, so a rotated token is used as soon as it is on disk.

A watch that cannot work (not in a pod, no token, unreachable server, 401, 403) never stops the exporter: it
logs one line with the reason and the fix when the failure starts (and again only if the reason changes),
keeps `up` False (wattlens_source_up{source="kubernetes-api"} 0) and retries with backoff. Readiness does
not depend on it: energy is measured and attributed without it, only pod labels and owners are missing.

kubernetes_asyncio (an optional dependency: `pip install 'wattlens[kubernetes]'`) supplies configuration,
TLS, auth and HTTP; the list/watch protocol is driven here so every relist is deliberate and counted.
Kepler's cluster-wide pod informer OOMed a large control plane (kepler#2366); a node-scoped watch costs the
API server one watch per node, served from its watch cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.files import CREDENTIAL_FILE_LIMIT, read_operator_text

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the kubernetes extra is installed (without importing it: it costs ~45 MB of memory)."""
    return importlib.util.find_spec("kubernetes_asyncio") is not None


def _client() -> Any:
    """kubernetes_asyncio.client, imported only when the watch runs."""
    return importlib.import_module("kubernetes_asyncio.client")


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_S = 300  # the server closes the watch after this; we resume from the last resourceVersion
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class PodMeta:
    namespace: str
    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    owner_kind: str
    owner_name: str
    containers: tuple[tuple[str, str], ...]  # (container id without the runtime:// scheme, name)


def pod_meta(raw: Mapping[str, Any]) -> PodMeta | None:
    """PodMeta from a Pod object as JSON; None if it lacks identity."""
    metadata = raw.get("metadata") or {}
    uid, name, namespace = metadata.get("uid"), metadata.get("name"), metadata.get("namespace")
    if not (isinstance(uid, str) and isinstance(name, str) and isinstance(namespace, str)):
        return None
    owners = [o for o in metadata.get("ownerReferences") or [] if isinstance(o, dict)]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else {})
    # Static pods' cgroups use the kubelet's config hash, not the mirror pod's uid.
    annotations = metadata.get("annotations") or {}
    cgroup_uid = annotations.get("kubernetes.io/config.hash") or uid
    containers = []
    status = raw.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or []:
            container_id = str(entry.get("containerID") or "")
            if "://" in container_id and entry.get("name"):
                containers.append((container_id.split("://", 1)[1], str(entry["name"])))
    labels = metadata.get("labels") or {}
    return PodMeta(
        namespace=namespace,
        name=name,
        uid=str(cgroup_uid),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        owner_kind=str(owner.get("kind", "")),
        owner_name=str(owner.get("name", "")),
        containers=tuple(containers),
    )


class Gone(Exception):
    """410: the resourceVersion is too old to watch from; list again."""


class Unusable(Exception):
    """The watch cannot start with this configuration; the message says why."""


@dataclass
class PodWatch:
    """Keeps `pods` (by cgroup pod uid) current. `pods` is replaced, never mutated, so the tick thread can
    read it while the event loop updates it."""

    node_name: str
    retain_s: float = 600.0  # how long a deleted pod's metadata stays (its series outlive it by the TTL)
    api_server: str = ""  # empty: in-cluster (KUBERNETES_SERVICE_HOST/PORT)
    token_file: Path = SERVICE_ACCOUNT / "token"
    ca_file: Path = SERVICE_ACCOUNT / "ca.crt"
    pods: Mapping[str, PodMeta] = field(default_factory=dict)
    lists: int = 0
    watches: int = 0
    errors: int = 0
    synced: bool = False  # listed at least once
    up: bool = False  # the last request succeeded
    _resource_version: str = ""
    _deleted: dict[str, float] = field(default_factory=dict)  # uid → monotonic time of deletion
    _failure: str = ""  # the reason of the failure being reported, "" while working
    _host: str = ""

    def _configuration(self) -> Any:
        configuration = _client().Configuration()
        if self.api_server:
            configuration.host = self.api_server
        else:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
            if not host or not port:
                raise Unusable(
                    "not in a pod (KUBERNETES_SERVICE_HOST is unset) and kubernetes_api_server is empty. Fix: run "
                    "wattlens in a pod, set kubernetes_api_server, or set kubernetes_api to false"
                )
            if not self.token_file.exists():
                raise Unusable(
                    f"no service-account token at {self.token_file}. Fix: mount it (automountServiceAccountToken: "
                    "true, as components/api-watch does) or set kubernetes_token_file"
                )
            configuration.host = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self._host = configuration.host
        if self.ca_file.exists():
            configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key_prefix["BearerToken"] = "Bearer"
        configuration.api_key["BearerToken"] = ""

        def reread_token(config: Any) -> None:
            try:
                config.api_key["BearerToken"] = read_operator_text(self.token_file, CREDENTIAL_FILE_LIMIT).strip()
            except OSError:
                config.api_key["BearerToken"] = ""

        configuration.refresh_api_key_hook = reread_token
        return configuration

    async def run(self, stop: asyncio.Event) -> None:
        """List and watch until `stop` is set; never raises (but CancelledError)."""
        backoff = BACKOFF_FIRST_S
        while not stop.is_set():
            try:
                configuration = self._configuration()
                client_module = _client()
                async with client_module.ApiClient(configuration) as client:
                    await self._session(client_module.CoreV1Api(client), stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # bad configuration, network, TLS, 401/403, 5xx: keep serving, retry
                if self.up:  # it worked until now: a new run of failures starts with a short wait
                    backoff = BACKOFF_FIRST_S
                self._failed(exc, backoff)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _session(self, api: Any, stop: asyncio.Event) -> None:
        """Lists and watches through one client; an error other than 410 Gone ends it."""
        backoff = BACKOFF_FIRST_S
        while not stop.is_set():
            listed = False
            try:
                if not self._resource_version:
                    await self._list(api)
                    listed = True
                await self._watch(api, stop)
                backoff = BACKOFF_FIRST_S
            except Gone:
                log.info("pod watch: resourceVersion %s expired (410 Gone); listing again", self._resource_version)
                self._resource_version = ""
                if listed:  # Gone straight after a fresh list: a confused server; do not hammer it
                    self.errors += 1
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _failed(self, exc: Exception, backoff: float) -> None:
        """Count a failure; log it when a failure starts or its reason changes, not on every retry."""
        self.errors += 1
        self.up = False
        reason = _reason(exc, self._host, self.token_file)
        if reason != self._failure:
            log.warning(
                "pod watch: cannot use the Kubernetes API: %s. Pod labels and owners are missing meanwhile "
                "(energy is measured and attributed as usual); retrying with backoff (%.0f s, up to %.0f s)",
                reason,
                backoff,
                BACKOFF_MAX_S,
            )
        else:
            log.debug("pod watch: still failing (%s); retrying in %.0f s", reason, backoff)
        self._failure = reason

    def _working(self) -> None:
        self.up = True
        if self._failure:
            log.info("pod watch: the Kubernetes API at %s works again", self._host)
        self._failure = ""

    async def _list(self, api: Any) -> None:
        self.lists += 1
        response = await api.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", _preload_content=False
        )
        await _check(response)
        body = json.loads(await response.read())
        pods = {uid: self.pods[uid] for uid in self._deleted if uid in self.pods}  # still within retain_s
        for item in body.get("items") or []:
            meta = pod_meta(item)
            if meta is not None:
                pods[meta.uid] = meta
                self._deleted.pop(meta.uid, None)
        self.pods = pods
        self._resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.synced = True
        self._working()
        log.info(
            "pod watch: listed %d pods on %s at resourceVersion %s", len(pods), self.node_name, self._resource_version
        )

    async def _watch(self, api: Any, stop: asyncio.Event) -> None:
        self.watches += 1
        try:
            response = await api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node_name}",
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=self._resource_version,
                timeout_seconds=WATCH_TIMEOUT_S,
                _preload_content=False,
            )
        except _client().exceptions.ApiException as exc:
            if exc.status == 410:
                raise Gone from None
            raise
        await _check(response)
        self._working()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                reading = asyncio.ensure_future(response.content.readline())
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()  # stopping: the line stays unread, nothing is lost that matters
                    return
                line = reading.result()
                if not line:
                    return  # the server ended the watch: resume from the last resourceVersion
                self._apply(json.loads(line))
        finally:
            stopping.cancel()
            response.release()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, raw = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if raw.get("code") == 410:
                raise Gone
            raise RuntimeError(f"watch error {raw.get('code')}: {raw.get('message')}")
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if kind == "BOOKMARK":
            return
        meta = pod_meta(raw)
        if meta is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        now = time.monotonic()
        if kind == "DELETED":
            self._deleted[meta.uid] = now  # its series live on for the workload TTL: keep its labels as long
        expired = {uid for uid, at in self._deleted.items() if now - at > self.retain_s}
        for uid in expired:
            del self._deleted[uid]
        self.pods = {**{u: m for u, m in self.pods.items() if u not in expired}, meta.uid: meta}


class HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def _check(response: Any) -> None:
    """Without preloading, the client does not raise on an error status: a 401 must not read as an empty list."""
    status = int(response.status)
    if 200 <= status < 300:
        return
    response.release()
    if status == 410:
        raise Gone
    raise HttpError(status)


_HTTP_REASONS = {
    401: "HTTP 401 Unauthorized from {host}: the token in {token_file} is not accepted. Fix: check that the "
    "service-account token is mounted and belongs to this cluster",
    403: "HTTP 403 Forbidden from {host}: the service account may not list and watch pods. Fix: bind it to a role "
    "allowing get, list and watch on pods (components/api-watch/rbac.yaml)",
}


def _reason(exc: BaseException, host: str, token_file: Path) -> str:
    """Why the watch failed and how to fix it, as one sentence."""
    status = getattr(exc, "status", None)
    if isinstance(exc, Unusable):
        reason = str(exc)
    elif status:
        default = "HTTP {status} from {host}. Fix: check the API server's health; wattlens retries by itself"
        reason = _HTTP_REASONS.get(status, default).format(status=status, host=host, token_file=token_file)
    elif isinstance(exc, ssl.SSLError):
        reason = f"TLS with {host} failed ({exc}). Fix: set kubernetes_ca_file to the API server's CA bundle"
    elif isinstance(exc, OSError):
        reason = (
            f"cannot connect to {host} ({exc.strerror or exc}). Fix: check kubernetes_api_server and that the API "
            "server is reachable from this node"
        )
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return reason
