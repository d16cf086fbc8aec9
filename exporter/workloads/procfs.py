"""Reading /proc: node CPU time from /proc/stat through a held file descriptor."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from exporter.sysfs import HeldFile

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative node CPU time in USER_HZ ticks, and the number of CPUs online."""

    busy: int  # user + nice + system + irq + softirq (guest time is already inside user/nice)
    idle: int  # idle + iowait
    steal: int  # time the hypervisor ran someone else: neither our work nor our idle
    cpus: int

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.steal


def parse_proc_stat(data: bytes) -> CpuTimes:
    """Parse the aggregate `cpu` line and count the `cpuN` lines; ValueError on malformed input."""
    aggregate: list[int] | None = None
    cpus = 0
    for line in data.split(b"\n"):
        if not line.startswith(b"cpu"):
            if aggregate is not None:
                break  # the cpu lines come first; stop at the first other line
            continue
        name, _, rest = line.partition(b" ")
        if name == b"cpu":
            fields = [int(f) for f in rest.split()]
            if len(fields) < 4 or min(fields) < 0:
                raise ValueError("the cpu line of /proc/stat has fewer than 4 fields")
            aggregate = (fields + [0] * 8)[:8]
        elif name[3:].isdigit():
            cpus += 1
    if aggregate is None:
        raise ValueError("/proc/stat has no aggregate cpu line")
    user, nice, system, idle, iowait, irq, softirq, steal = aggregate
    return CpuTimes(busy=user + nice + system + irq + softirq, idle=idle + iowait, steal=steal, cpus=max(cpus, 1))


def utilisation(prev: CpuTimes, cur: CpuTimes) -> float:
    """Busy share of the CPU time that passed between two readings, in [0, 1]."""
    busy = cur.busy - prev.busy
    total = busy + (cur.idle - prev.idle)
    if total <= 0 or busy < 0:
        return 0.0
    return min(1.0, busy / total)


class ProcStat:
    """`/proc/stat`, read once per tick with pread on a held fd."""

    def __init__(self, proc_path: Path) -> None:
        self.path = proc_path / "stat"
        self._file = HeldFile(self.path)

    def read(self) -> CpuTimes:
        return parse_proc_stat(self._file.read())

    def close(self) -> None:
        self._file.close()


def clock_ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


class NodeCpu:
    """The node's CPU time each tick: a failed read is logged once, counted, and the tick goes on without it."""

    def __init__(self, proc_path: Path) -> None:
        self.path = proc_path / "stat"
        self.up = True
        self.errors = 0
        self.last: CpuTimes | None = None  # the previous tick's reading
        try:
            self._stat: ProcStat | None = ProcStat(proc_path)
        except OSError as exc:
            log.warning("cannot open %s (%s): CPU utilisation unavailable", self.path, exc.strerror)
            self._stat = None

    @property
    def present(self) -> bool:
        return self._stat is not None

    def read(self) -> CpuTimes | None:
        if self._stat is None:
            return None
        try:
            cpu = self._stat.read()
        except (OSError, ValueError) as exc:
            self.errors += 1
            if self.up:
                log.warning("reading %s failed: %s", self.path, exc)
            self.up = False
            return None
        if not self.up:
            log.info("reading %s works again", self.path)
        self.up = True
        return cpu

    def busy_us(self, cpu: CpuTimes | None) -> int:
        """CPU µs the node was busy since the previous tick (0 without two readings)."""
        if cpu is None or self.last is None:
            return 0
        return max(0, cpu.busy - self.last.busy) * 1_000_000 // clock_ticks_per_second()

    def idle_share(self, cpu: CpuTimes | None) -> tuple[int, int] | None:
        """(idle, all) CPU ticks since the previous tick, for the ratio split; None without two readings."""
        if cpu is None or self.last is None:
            return None
        idle = cpu.idle - self.last.idle
        return idle, (cpu.busy - self.last.busy) + idle

    def close(self) -> None:
        if self._stat is not None:
            self._stat.close()
