"""Pod and container names from the kubelet's log directories: no API server, no RBAC, no network.

The kubelet keeps `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` and
`/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` on every node. Namespaces, pod names
and container names cannot contain '_' (DNS labels and subdomains), so the names split unambiguously.
The index is rebuilt only when a workload it does not know appears, at most every `rescan_s`.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 100_000
_UID = re.compile(r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$")
_CONTAINER_LOG = re.compile(r"^(?P<pod>[^_]+)_(?P<ns>[^_]+)_(?P<container>[^_]+)-(?P<id>[0-9a-f]{64})\.log$")


@dataclass(frozen=True, slots=True)
class PodName:
    namespace: str
    pod: str


@dataclass(frozen=True, slots=True)
class ContainerName:
    namespace: str
    pod: str
    container: str


def parse_pod_dir(name: str) -> tuple[str, PodName] | None:
    """`<namespace>_<pod>_<uid>` → (uid, names), or None if it is not one."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts) or not _UID.match(parts[2]):
        return None
    return parts[2], PodName(parts[0], parts[1])


def parse_container_log(name: str) -> tuple[str, ContainerName] | None:
    """`<pod>_<namespace>_<container>-<64 hex id>.log` → (id, names), or None."""
    match = _CONTAINER_LOG.match(name)
    if match is None:
        return None
    return match["id"], ContainerName(match["ns"], match["pod"], match["container"])


def _names(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [os.fsencode(e.name).decode("utf-8", "replace") for e in itertools.islice(entries, MAX_ENTRIES)]
    except OSError:
        return []


class KubeletLogs:
    def __init__(self, log_root: Path, rescan_s: float = 10.0, give_up_s: float = 120.0) -> None:
        self.log_root = log_root
        self.rescan_s = rescan_s
        self.give_up_s = give_up_s
        self._pods: dict[str, PodName] = {}
        self._containers: dict[str, ContainerName] = {}
        self._scanned_at: float | None = None
        self._unknown_since: dict[str, float] = {}

    @property
    def pods_index(self) -> dict[str, PodName]:
        """The index itself: replaced, never changed, on a rescan."""
        return self._pods

    @property
    def containers_index(self) -> dict[str, ContainerName]:
        return self._containers

    def pod(self, uid: str) -> PodName | None:
        return self._pods.get(uid)

    def container(self, container_id: str) -> ContainerName | None:
        return self._containers.get(container_id)

    def rescan_due(self, now: float) -> bool:
        """Whether a workload unknown for less than `give_up_s` waits for a rescan that the rate limit allows."""
        if self._scanned_at is not None and now - self._scanned_at < self.rescan_s:
            return False
        return any(now - first < self.give_up_s for first in self._unknown_since.values())

    def refresh(self, now: float, pod_uids: Iterable[str], container_ids: Iterable[str]) -> None:
        """Rescan if some workload is unknown, at most every `rescan_s`. A workload still unknown after
        `give_up_s` (a pause container never has logs) stops asking for rescans: on a node of pause containers,
        rescans would otherwise run every `rescan_s` for ever."""
        pods, containers, since = self._pods, self._containers, self._unknown_since
        unknown = [u for u in pod_uids if u not in pods] + [c for c in container_ids if c not in containers]
        self._unknown_since = {key: since.get(key, now) for key in unknown}
        if not self.rescan_due(now):
            return
        self._scanned_at = now
        self._pods = dict(filter(None, map(parse_pod_dir, _names(self.log_root / "pods"))))
        self._containers = dict(filter(None, map(parse_container_log, _names(self.log_root / "containers"))))
