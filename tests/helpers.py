"""Shared test helpers: fixture trees that tests can drive, and a config builder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from exporter.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "sysfs"


class RaplTree:
    """A writable copy of a sysfs fixture; counters are addressed by zone id (e.g. intel-rapl:0:1)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def copy(cls, name: str, dest: Path) -> RaplTree:
        target = dest / name
        shutil.copytree(FIXTURES / name, target, symlinks=True)
        return cls(target)

    def zone_dir(self, zone_id: str) -> Path:
        return (self.root / "class" / "powercap" / zone_id).resolve()

    def energy_file(self, zone_id: str) -> Path:
        return self.zone_dir(zone_id) / "energy_uj"

    def energy(self, zone_id: str) -> int:
        return int(self.energy_file(zone_id).read_text())

    def max_range(self, zone_id: str) -> int:
        return int((self.zone_dir(zone_id) / "max_energy_range_uj").read_text())

    def set(self, zone_id: str, value: int | str) -> None:
        # Rewrite in place (same inode) so a held fd sees the new value, as with sysfs.
        with open(self.energy_file(zone_id), "r+") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{value}\n")

    def advance(self, zone_id: str, microjoules: int) -> None:
        self.set(zone_id, self.energy(zone_id) + microjoules)


def make_config(**overrides: Any) -> Config:
    flags = {"node_name": "test-node", "proc_path": "/proc", "cgroup_root": "/sys/fs/cgroup"}
    flags.update({k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
    return load_config(flags, None, environ={})


def build_tree(root: Path, zones: dict[str, tuple[str, int, int]]) -> Path:
    """A synthetic powercap tree of nested directories (no symlinks): {zone id: (name, energy, max)}."""
    base = root / "class" / "powercap"
    for zone_id, (name, energy, max_range) in zones.items():
        parts = zone_id.split(":")
        control = parts[0]
        directory = base
        for depth in range(2, len(parts) + 1):
            directory = directory / f"{control}:{':'.join(parts[1:depth])}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "name").write_text(f"{name}\n")
        (directory / "energy_uj").write_text(f"{energy}\n")
        (directory / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


class ProcTree:
    """A fake /proc with a /proc/stat the test controls (cumulative USER_HZ ticks)."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = root
        self.cpus = cpus
        root.mkdir(parents=True, exist_ok=True)
        self.busy = 0
        self.idle = 0
        self.write()

    def write(self) -> None:
        lines = [f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0"]
        lines += [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(self.cpus)]
        lines += ["intr 0", "ctxt 0", "btime 0"]
        with open(self.root / "stat", "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def advance(self, busy: int, idle: int) -> None:
        self.busy += busy
        self.idle += idle
        self.write()
