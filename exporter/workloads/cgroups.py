"""Walking the cgroup hierarchy each tick and reading the CPU time of every workload cgroup.

The kernel accounts CPU per cgroup, hierarchically and including tasks that have exited, so one read per
workload cgroup replaces a sweep of every process and catches processes shorter than a tick. cgroup v2 gives
`cpu.stat usage_usec`; v1 (and hybrid hosts, where container runtimes account in v1) gives `cpuacct.usage`
in ns. Reads go through fds held across ticks; fds of cgroups that disappear are closed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from exporter.sysfs import HeldFile
from exporter.workloads.classify import Classified, classify, is_helper, may_hold_workloads

log = logging.getLogger(__name__)

MAX_DIRS = 50_000  # a node with far more cgroups than this is not a node we can walk every tick
MAX_DEPTH = 32
_V1_CPUACCT = ("cpu,cpuacct", "cpuacct,cpu", "cpuacct")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    root: Path
    stat_file: str  # cpu.stat (µs) or cpuacct.usage (ns)


@dataclass(frozen=True, slots=True)
class Layout:
    version: str  # v2 | v1 | hybrid | none
    hierarchies: tuple[Hierarchy, ...]  # walked in this order; the first to have a path wins it

    @property
    def root(self) -> Path:
        return self.hierarchies[0].root if self.hierarchies else Path()


def detect_layout(cgroup_root: Path) -> Layout:
    """Pure v2: the root. v1: the cpuacct hierarchy. Hybrid: both the unified hierarchy (where systemd keeps
    its units) and the v1 cpuacct one (where cgroupfs-driver runtimes put containers)."""
    if (cgroup_root / "cgroup.controllers").exists():
        return Layout("v2", (Hierarchy(cgroup_root, "cpu.stat"),))
    v1 = next(
        (
            Hierarchy(cgroup_root / name, "cpuacct.usage")
            for name in _V1_CPUACCT
            if (cgroup_root / name / "cpuacct.usage").exists()
        ),
        None,
    )
    if (cgroup_root / "unified" / "cgroup.controllers").exists():
        unified = Hierarchy(cgroup_root / "unified", "cpu.stat")
        return Layout("hybrid", (unified, v1) if v1 else (unified,))
    if v1 is not None:
        return Layout("v1", (v1,))
    return Layout("none", ())


def parse_usage_us(data: bytes, stat_file: str) -> int:
    """CPU time in µs from cpu.stat (`usage_usec N` line) or cpuacct.usage (ns); ValueError if malformed."""
    if stat_file == "cpuacct.usage":
        value = int(data)
        if value < 0:
            raise ValueError("negative cpuacct.usage")
        return value // 1000
    for line in data.split(b"\n"):
        key, _, text = line.partition(b" ")
        if key == b"usage_usec":
            usage = int(text)
            if usage < 0:
                raise ValueError("negative usage_usec")
            return usage
    raise ValueError("cpu.stat has no usage_usec line")


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    path: str  # relative to the hierarchy root, '/'-joined (as label-safe text)
    components: tuple[str, ...]
    workload: Classified
    usage_us: int


def _label_safe(name: str) -> str:
    """Directory names are bytes; undecodable ones become U+FFFD rather than breaking the exposition."""
    return os.fsencode(name).decode("utf-8", "replace")


class CgroupTree:
    """The workload cgroups of one hierarchy; `read()` walks it and returns their cumulative CPU time."""

    def __init__(self, cgroup_root: Path) -> None:
        self.layout = detect_layout(cgroup_root)
        self._files: dict[str, HeldFile] = {}
        self.malformed_reads = 0
        self.truncated_walks = 0
        if self.layout.version == "none":
            log.warning("no cgroup hierarchy with CPU accounting under %s: workloads are not measured", cgroup_root)

    def read(self) -> list[CgroupUsage]:
        found = self._walk()
        for gone in self._files.keys() - found.keys():
            self._files.pop(gone).close()
        usages: list[CgroupUsage] = []
        for path, (components, workload, stat_file) in found.items():
            usage = self._read(path, stat_file)
            if usage is not None:
                usages.append(CgroupUsage("/".join(components), components, workload, usage))
        return usages

    def _read(self, path: str, stat_file: str) -> int | None:
        held = self._files.get(path)
        try:
            if held is None:
                held = self._files[path] = HeldFile(Path(path, stat_file))
            return parse_usage_us(held.read(), stat_file)
        except OSError:
            # Removed between the walk and the read: it simply is not there this tick.
            if held is not None:
                self._files.pop(path, None)
                held.close()
            return None
        except ValueError:
            self.malformed_reads += 1
            return None

    def _walk(self) -> dict[str, tuple[tuple[str, ...], Classified, str]]:
        """Every workload cgroup of every hierarchy, by filesystem path; a relative path found in an earlier
        hierarchy is not taken again from a later one (hybrid hosts mirror systemd's tree in both)."""
        found: dict[str, tuple[tuple[str, ...], Classified, str]] = {}
        taken: set[tuple[str, ...]] = set()
        visited = 0
        for hierarchy in self.layout.hierarchies:
            stack: list[tuple[str, tuple[str, ...]]] = [(str(hierarchy.root), ())]
            while stack:
                directory, components = stack.pop()
                try:
                    with os.scandir(directory) as listing:
                        entries = [e for e in listing if e.is_dir(follow_symlinks=False)]
                except OSError:
                    continue  # removed mid-walk, or unreadable: skip that subtree this tick
                for entry in entries:
                    visited += 1
                    if visited > MAX_DIRS:
                        self.truncated_walks += 1
                        return found
                    name = _label_safe(entry.name)
                    if is_helper(name):
                        continue
                    child = (*components, name)
                    workload = classify(child)
                    if workload is not None and child not in taken:
                        taken.add(child)
                        found[entry.path] = (child, workload, hierarchy.stat_file)
                    if may_hold_workloads(child, workload) and len(child) < MAX_DEPTH:
                        stack.append((entry.path, child))
        return found

    def close(self) -> None:
        for held in self._files.values():
            held.close()
        self._files.clear()
