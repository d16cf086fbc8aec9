"""Writable copies of the hwmon fixture trees (fixtures/sysfs/hwmon-*), for meter tests.

A tree is a sysfs root: `class/hwmon/hwmonN` links into `devices/...`, as the kernel lays it out. Each tree has an
expected.yaml naming every power/energy channel a correct meter finds (see fixtures/README.md). Channels are
addressed by their expected.yaml id, e.g. "hwmon1/power1".
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"
HWMON_FIXTURES = sorted(p.name for p in FIXTURES.glob("hwmon-*"))


@dataclass(frozen=True)
class Channel:
    """One expected.yaml channel: the file a meter reads and what it must make of it."""

    id: str
    file: str
    kind: str  # "energy" (µJ counter) or "power" (µW)
    zone: str
    socket: int | None
    label: str
    value: int
    mode: str


def expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((FIXTURES / name / "expected.yaml").read_text())
    return data


def channels(name: str) -> list[Channel]:
    return [
        Channel(
            id=c["id"],
            file=c["file"],
            kind=c["kind"],
            zone=c["zone"],
            socket=c["socket"],
            label=c["label"],
            value=int(c["value"]),
            mode=c["mode"],
        )
        for c in expected(name)["channels"]
    ]


class HwmonTree:
    """A copy of one fixture whose channel values a test can change between ticks."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.channels = {c.id: c for c in channels(name)}

    @classmethod
    def copy(cls, name: str, dest: Path) -> HwmonTree:
        target = dest / name
        shutil.copytree(FIXTURES / name, target, symlinks=True)
        (target / "expected.yaml").unlink()  # a meter must not be able to peek at the answers
        return cls(target, name)

    def path(self, channel_id: str) -> Path:
        return self.root / self.channels[channel_id].file

    def read(self, channel_id: str) -> int:
        return int(self.path(channel_id).read_text())

    def set(self, channel_id: str, value: int) -> None:
        """Rewrite in place (same inode, as sysfs) in one pwrite padded with spaces to the old length, so a
        reader holding the fd open never sees a half-written number."""
        fd = os.open(self.path(channel_id), os.O_WRONLY)
        try:
            text = f"{value}\n".encode()
            os.pwrite(fd, text.ljust(os.fstat(fd).st_size, b" "), 0)
        finally:
            os.close(fd)

    def advance(self, channel_id: str, amount: int) -> None:
        """Add µJ to an energy counter (power channels are set, not advanced)."""
        assert self.channels[channel_id].kind == "energy", f"{channel_id} is a power channel: use set()"
        self.set(channel_id, self.read(channel_id) + amount)

    def apply_kernel_modes(self) -> None:
        """Give every regular file the mode the kernel gives it (git checks out 0644): 0444 unless expected.yaml's
        kernel_modes says otherwise (0440/0400 root-only counters, 0644 writable knobs). Only root (or a test that
        chowns the tree) can then still rewrite the values."""
        special = expected(self.name).get("kernel_modes") or {}
        for directory, _, files in os.walk(self.root):
            for file in files:
                path = Path(directory) / file
                if path.is_symlink():
                    continue
                rel = path.relative_to(self.root).as_posix()
                path.chmod(int(special.get(rel, "0444"), 8))
