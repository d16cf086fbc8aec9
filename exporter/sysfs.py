"""Held file descriptors for pseudo-files (sysfs, procfs, cgroupfs) read with os.pread each tick.

A held fd costs ~2 µs per read against ~21 µs for open/read/close, and a held /proc/<pid> fd fails once its
task is gone instead of silently reading a reused PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from pathlib import Path

# Pseudo-files we read are small; anything larger than this is not what we expect and is cut off.
log = logging.getLogger(__name__)

MAX_PSEUDO_FILE_BYTES = 1 << 20
_CHUNK = 1 << 16


class FdBudget:
    """How many fds wattlens may hold across ticks: the open-files limit less a reserve for the HTTP server (its
    connections), the meters and the rest, so that a node with more cgroups or processes than fds degrades
    (open-read-close, fewer process series) instead of leaving no fd to accept a scrape or a health check."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserve = min(limit // 2, 512)  # 256 HTTP connections, listeners, meters, NVML, logs, imports
        self.budget = max(0, limit - self.reserve)
        self.held = 0
        self.degraded: set[str] = set()  # readers that have been refused an fd
        self._warned: set[str] = set()

    @classmethod
    def from_process_limit(cls) -> FdBudget:
        return cls(raise_fd_limit())

    def take(self, reader: str) -> bool:
        """One more held fd for `reader`, if the budget allows; False marks that reader as degraded."""
        if self.held >= self.budget:
            self.degraded.add(reader)
            return False
        self.held += 1
        return True

    def give_back(self) -> None:
        self.held = max(0, self.held - 1)

    def say_degradation(self) -> None:
        """Log once per reader that it has been refused an fd, with the effect and the fix."""
        for reader in sorted(self.degraded - self._warned):
            self._warned.add(reader)
            effect = (
                "cgroup CPU files beyond it are opened, read and closed each tick"
                if reader == "cgroups"
                else "processes beyond it get no series"
            )
            log.warning(
                "the fd budget (%d of the %d open files allowed; %d held) is spent: %s. Fix: raise the open-files "
                "limit (LimitNOFILE= in the unit, ulimit -n)",
                self.budget,
                self.limit,
                self.held,
                effect,
            )


UNLIMITED = FdBudget(1 << 62)  # for tools and tests that read a few files


class HeldFile:
    """An fd opened once, read from offset 0 each time. Raises OSError like os.open/os.pread.

    With a budget and a reader name, the fd counts against the budget; when the budget is spent the file is
    opened, read and closed on each read instead (slower, same answers)."""

    def __init__(self, path: Path | str, budget: FdBudget | None = None, reader: str = "") -> None:
        self.path = path
        self._budget = budget if budget is not None and budget.take(reader) else None
        self._held = budget is None or self._budget is not None
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if self._budget is not None:
                self._budget.give_back()
            raise
        if not self._held:  # over budget: the open above checked the file exists; read it afresh each time
            os.close(self._fd)
            self._fd = -1

    @property
    def held(self) -> bool:
        return self._held

    @property
    def fd(self) -> int:
        """The held fd, for callers that pread it themselves; -1 when the file is read open-read-close."""
        return self._fd if self._fd is not None else -1

    def read(self) -> bytes:
        if self._fd is None:
            raise OSError(f"{self.path} is closed")
        if self._fd < 0:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return self._read(fd)
            finally:
                os.close(fd)
        return self._read(self._fd)

    @staticmethod
    def _read(fd: int) -> bytes:
        data = os.pread(fd, _CHUNK, 0)
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        offset = len(data)
        while offset < MAX_PSEUDO_FILE_BYTES:
            more = os.pread(fd, _CHUNK, offset)
            if not more:
                break
            chunks.append(more)
            offset += len(more)
        return b"".join(chunks)

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            if fd >= 0:
                os.close(fd)
            if self._budget is not None:
                self._budget.give_back()

    def __del__(self) -> None:
        # A reader dropped without close() (a tool, a test, an engine nobody closed) must not keep its fd.
        with contextlib.suppress(Exception):  # at interpreter exit, modules may already be gone
            self.close()


def read_small(path: Path, limit: int = 4096) -> str:
    """Read a small attribute file once (discovery time only), stripped."""
    with open(path, "rb") as handle:
        return handle.read(limit).decode("utf-8", "replace").strip()


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (held fds scale with cgroups and, opt-in, processes);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = (1 << 20) if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
