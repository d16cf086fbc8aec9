"""Per-process CPU time, for the opt-in process metrics only (workloads never depend on it).

This is a sweep of /proc — the method wattlens avoids for attribution because processes that end between two
ticks are lost — made as cheap as it can be: one fd per process held across ticks and read with pread (a held
fd fails with ESRCH once its task is reaped, so a reused PID is never mistaken for the old process), and
/proc/<pid>/cgroup read once per process to name its container or service.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from exporter.sysfs import UNLIMITED, FdBudget, HeldFile
from exporter.workloads.classify import classify

MAX_PROCESSES = 20_000


@dataclass(frozen=True, slots=True)
class ProcessStat:
    comm: str
    cpu_ticks: int  # utime + stime
    start_ticks: int  # start time since boot: with the pid, the process's identity


def parse_pid_stat(data: bytes) -> ProcessStat:
    """/proc/<pid>/stat; comm may hold spaces and ')', so fields are counted from the last ')'."""
    open_paren, close_paren = data.find(b"("), data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError("no (comm) in /proc/<pid>/stat")
    fields = data[close_paren + 2 :].split()
    if len(fields) < 20:
        raise ValueError("/proc/<pid>/stat is truncated")
    utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    if min(utime, stime, start) < 0:
        raise ValueError("negative times in /proc/<pid>/stat")
    comm = data[open_paren + 1 : close_paren].decode("utf-8", "replace")
    return ProcessStat(comm, utime + stime, start)


def cgroup_path(data: bytes, v1: bool = False) -> tuple[str, ...]:
    """The path components of a /proc/<pid>/cgroup: the v2 line (`0::/path`), or with `v1` the cpuacct line
    (where v1 and hybrid hosts account CPU); leading `/..` parts of a namespace-relative path are dropped."""
    v2_path, v1_path = "", ""
    for line in data.decode("utf-8", "replace").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2_path = v2_path or path
        elif "cpuacct" in controllers.split(","):
            v1_path = path
    path = (v1_path or v2_path) if v1 else (v2_path or v1_path)
    return tuple(p for p in path.split("/") if p and p != "..")


def parse_pid_cgroup(data: bytes) -> tuple[str, str]:
    """(container_id, unit) of the workload a /proc/<pid>/cgroup names, '' where none: the deepest container,
    else the service. Hybrid hosts name the cgroup in both hierarchies; the one that says more wins."""
    best = ("", "")
    for v1 in (False, True):
        parts = cgroup_path(data, v1=v1)
        container, unit = "", ""
        for depth in range(1, len(parts) + 1):
            found = classify(parts[:depth])
            if found is not None and found.kind == "container":
                container = found.container_id
            elif found is not None and found.kind == "service":
                unit = found.unit
        if container or (unit and not best[0]):
            best = (container or best[0], unit or best[1])
    return best


@dataclass(frozen=True, slots=True)
class ProcessKey:
    pid: int
    start_ticks: int
    comm: str
    container_id: str
    unit: str


@dataclass(slots=True)
class _Tracked:
    stat: HeldFile
    key: ProcessKey
    cpu_ticks: int


class ProcessTable:
    """Every process's CPU time; `read()` returns each live process's ticks since the last read."""

    def __init__(self, proc_path: Path, budget: FdBudget = UNLIMITED) -> None:
        self.proc_path = proc_path
        self.budget = budget
        self._tracked: dict[int, _Tracked] = {}
        self._walked = False

    def read(self) -> dict[ProcessKey, int]:
        try:
            pids = {int(name) for name in os.listdir(self.proc_path) if name.isdigit()}
        except OSError:
            return {}
        for pid in self._tracked.keys() - pids:
            self._tracked.pop(pid).stat.close()
        deltas: dict[ProcessKey, int] = {}
        for pid in sorted(pids)[:MAX_PROCESSES]:
            tracked = self._tracked.get(pid)
            try:
                if tracked is None:
                    tracked = self._track(pid)
                    if tracked is None:
                        continue
                    # Born since the last read: all its CPU time is this tick's. On the first read: a baseline.
                    deltas[tracked.key] = tracked.cpu_ticks if self._walked else 0
                    continue
                stat = parse_pid_stat(tracked.stat.read())
            except (OSError, ValueError):
                self._forget(pid)  # ended (ESRCH on the held fd), or unreadable
                continue
            deltas[tracked.key] = max(0, stat.cpu_ticks - tracked.cpu_ticks)
            tracked.cpu_ticks = stat.cpu_ticks
        self._walked = True
        return deltas

    def _track(self, pid: int) -> _Tracked | None:
        base = self.proc_path / str(pid)
        held = HeldFile(base / "stat", self.budget, "processes")
        if not held.held:  # over the fd budget: this process gets no series (the process view is partial anyway)
            held.close()
            return None
        try:
            stat = parse_pid_stat(held.read())
            try:
                with open(base / "cgroup", "rb") as handle:
                    container, unit = parse_pid_cgroup(handle.read(65536))
            except OSError:
                container, unit = "", ""
        except (OSError, ValueError):
            held.close()
            raise
        tracked = _Tracked(held, ProcessKey(pid, stat.start_ticks, stat.comm, container, unit), stat.cpu_ticks)
        self._tracked[pid] = tracked
        return tracked

    def _forget(self, pid: int) -> None:
        tracked = self._tracked.pop(pid, None)
        if tracked is not None:
            tracked.stat.close()

    def __len__(self) -> int:
        return len(self._tracked)

    def close(self) -> None:
        for tracked in self._tracked.values():
            tracked.stat.close()
        self._tracked.clear()
