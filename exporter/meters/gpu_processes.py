"""GPU processes by identity: a PID and its start time, with the cgroup it ran in, recorded when first seen.

NVML and AMD SMI report bare host PIDs, and a GPU's per-process samples outlive the process: the tick after a job
exits still reads its utilisation samples, when `/proc/<pid>/cgroup` is gone. So an accelerator meter records a
process the first time it sees it (it polls its running-process lists more often than the tick): its
`/proc/<pid>/stat` is held open (a held fd fails with ESRCH once the task is reaped, so a reused PID is never
taken for it), its start time is kept, and its `/proc/<pid>/cgroup` is read once. A sample is given to the
process that had its PID at the sample's time; the owner is resolved from the recorded cgroup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
SLACK_US = 50_000  # start times have a resolution of one clock tick (10 ms); samples within 50 ms are its own
MAX_PER_PID = 4  # records kept per PID (the current process and the last ones that had it)
WALL_CLOCK_TOLERANCE_US = 3600 * 1_000_000
UNKNOWN_START = 0


@dataclass(frozen=True, slots=True, order=True)
class GpuProcess:
    """One process: its PID, its start (µs since the epoch; 0 when unknown) and its /proc/<pid>/cgroup as read
    when it was first seen (b"" when it could not be read: the owner is then looked up at the tick)."""

    pid: int
    start_us: int
    cgroup: bytes = b""


NOBODY = GpuProcess(0, UNKNOWN_START)  # samples of a process that had the PID before every one we know


@dataclass(slots=True)
class _Record:
    process: GpuProcess
    fd: int | None  # the held /proc/<pid>/stat; None once the process has ended
    last_seen: float
    checked: float = -1.0  # when the fd was last found alive (once per poll is enough)


@dataclass(slots=True)
class GpuProcesses:
    """Every GPU process seen recently, by PID (newest last); ended ones are kept for `ttl_s` after last seen."""

    proc_path: Path
    ttl_s: float
    limit: int = 4096
    wall_clock: bool = True  # whether sample timestamps are µs since the epoch (see `calibrate`)
    _by_pid: dict[int, list[_Record]] = field(default_factory=dict)
    _count: int = 0

    def calibrate(self, newest_ts_us: int) -> None:
        """NVML documents its sample timestamps as "CPU timestamp in microseconds", not which clock. Samples are
        at most seconds old, so the newest one tells: within an hour of the wall clock, they are epoch times and
        can be compared with process start times; otherwise a sample goes to the newest process with its PID
        (PID reuse between two polls can then not be told apart), and that is logged once."""
        wall = abs(newest_ts_us - time.time() * 1_000_000) < WALL_CLOCK_TOLERANCE_US
        if self.wall_clock and not wall:
            log.info("GPU sample timestamps are not wall-clock times: samples go to the newest process of their PID")
        self.wall_clock = wall

    def seen(self, pid: int, now: float) -> GpuProcess:
        """The live process that has this PID (recorded now if it is new to us). A PID whose /proc entry cannot be
        read (no host PID namespace) is anonymous (start 0, no cgroup): its owner is looked up at the tick."""
        records = self._by_pid.get(pid)
        if records and self._alive(records[-1], now):
            records[-1].last_seen = now
            return records[-1].process
        return self._record(pid, now) or GpuProcess(pid, UNKNOWN_START)

    def at(self, pid: int, ts_us: int, now: float) -> GpuProcess:
        """The process that had this PID at `ts_us` (µs since the epoch): the newest record that had started by
        then. When the newest record has ended (or there is none), a process that has the PID now is recorded
        first, so a reused PID's samples go to the new process and the old one's to the old one. Samples older
        than every process known with that PID are nobody's (`NOBODY`)."""
        records = self._by_pid.get(pid)
        if not records or not self._alive(records[-1], now):
            self._record(pid, now)
            records = self._by_pid.get(pid)
        if not records:
            return GpuProcess(pid, UNKNOWN_START)
        for record in reversed(records):
            if not self.wall_clock or record.process.start_us <= ts_us + SLACK_US:
                record.last_seen = now
                return record.process
        return NOBODY

    def _alive(self, record: _Record, now: float) -> bool:
        if record.fd is None:
            return False
        if record.checked == now:
            return True
        try:
            os.pread(record.fd, 1, 0)
            # procfs answers ESRCH once the task is reaped; a /proc served from a copy (a test fixture, some
            # sandboxes) shows it by the file's removal instead
            gone = os.fstat(record.fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            self._close(record)
            return False
        record.checked = now
        return True

    def _record(self, pid: int, now: float) -> GpuProcess | None:
        fd, process = self._open(pid)
        if fd is None:
            return None
        records = self._by_pid.setdefault(pid, [])
        records.append(_Record(process, fd, now, now))
        self._count += 1
        while len(records) > MAX_PER_PID:
            self._close(records.pop(0))
            self._count -= 1
        if self._count > self.limit:
            self.expire(now, force=True)
        return process

    def _open(self, pid: int) -> tuple[int | None, GpuProcess]:
        base = self.proc_path / str(pid)
        try:
            fd = os.open(base / "stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None, GpuProcess(pid, UNKNOWN_START)
        try:
            start = _start_us(os.pread(fd, 4096, 0))
            with open(base / "cgroup", "rb") as handle:
                cgroup = handle.read(65536)
        except (OSError, ValueError, IndexError):
            os.close(fd)
            return None, GpuProcess(pid, UNKNOWN_START)
        return fd, GpuProcess(pid, start, cgroup)

    @staticmethod
    def _close(record: _Record) -> None:
        if record.fd is not None:
            with contextlib.suppress(OSError):
                os.close(record.fd)
            record.fd = None

    def expire(self, now: float, force: bool = False) -> None:
        """Forget ended processes not seen for `ttl_s` (with `force`, the oldest ended ones down to the limit)."""
        ended = [(r.last_seen, pid, r) for pid, rs in self._by_pid.items() for r in rs if r.fd is None]
        ended.sort(key=lambda item: item[0])
        excess = self._count - self.limit
        for last_seen, pid, record in ended:
            if now - last_seen <= self.ttl_s and not (force and excess > 0):
                continue
            self._by_pid[pid].remove(record)
            if not self._by_pid[pid]:
                del self._by_pid[pid]
            self._count -= 1
            excess -= 1

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        for records in self._by_pid.values():
            for record in records:
                self._close(record)
        self._by_pid.clear()
        self._count = 0


def boot_epoch_us() -> int:
    """The epoch time of boot in µs: /proc/<pid>/stat's start times count CLOCK_BOOTTIME clock ticks."""
    return int((time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)) * 1_000_000)


BOOT_US = boot_epoch_us()


def _start_us(stat: bytes) -> int:
    """Field 22 (`starttime`) of /proc/<pid>/stat as µs since the epoch; `comm` may hold spaces and parentheses."""
    fields = stat[stat.rindex(b")") + 2 :].split()
    return BOOT_US + int(fields[19]) * 1_000_000 // CLK_TCK
