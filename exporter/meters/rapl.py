"""RAPL energy counters from the powercap class in sysfs.

Discovery runs once at start: every `<type>:<hex>[:<hex>…]` zone under `<sys>/class/powercap` (flat symlinks
as the kernel makes them, or nested directories), named package-N, package-N-die-M, psys[-N], core, uncore or
dram. Subzones take their package's socket. Two kinds of duplicate are dropped: the intel-rapl-mmio copy of
an intel-rapl package (same physical counter), and mirrored package-N-die-M zones that older kernels exposed
on AMD multi-CCD parts (all dies of a socket reading the same value). Each tick reads held fds with pread.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.meters.base import CounterSample, MeterUnavailable, ZoneId
from exporter.sysfs import HeldFile, read_small
from exporter.workloads.procfs import CpuTimes

if TYPE_CHECKING:
    from exporter.config import Config

SOURCE = "rapl"
PREFERRED_CONTROL_TYPE = "intel-rapl"
_ZONE_DIR = re.compile(r"^(?P<ctype>[a-z][a-z0-9-]*):(?P<ids>[0-9a-f]+(?::[0-9a-f]+)*)$")
_ZONE_NAME = re.compile(r"^(?P<zone>package|core|uncore|dram|psys)(?:-(?P<index>\d+)(?:-die-(?P<die>\d+))?)?$")
# Mirrored die zones read the same MSR microseconds apart; distinct dies differ by far more than this.
MIRROR_TOLERANCE_UJ = 1_000_000
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0

PERMISSION_REASON = (
    "RAPL energy counters under {path} are readable by root only: since Linux 5.10 energy_uj is mode 0400 "
    "(CVE-2020-8694, PLATYPUS)"
)
PERMISSION_FIX = (
    "run wattlens as UID 0 with read-only host mounts (it needs no capability), or grant its group read "
    "access with the shipped rule systemd/wattlens-powercap.conf (docs/permissions.md weighs the trade-off)"
)


@dataclass(frozen=True, slots=True)
class RaplZone:
    """A discovered zone: its identity, where it lives and the counter's range."""

    zone: ZoneId
    path: Path
    sysfs_id: str
    control_type: str
    max_range_uj: int


@dataclass(slots=True)
class _Reader:
    info: RaplZone
    file: HeldFile | None
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST_S
    last_error: str = field(default="")


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: Path
    sysfs_id: str
    control_type: str
    zone: str
    index: str
    die: str


def _candidates(base: Path) -> list[_Candidate]:
    """Every zone directory below `base`, once each even when reachable flat and nested."""
    found: dict[str, _Candidate] = {}
    stack = [base]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            match = _ZONE_DIR.match(entry.name)
            if not match or not entry.is_dir():
                continue
            real = os.path.realpath(entry.path)
            if real in found:
                continue
            path = Path(entry.path)
            stack.append(path)
            try:
                name = read_small(path / "name")
            except OSError:
                continue
            parsed = _ZONE_NAME.match(name)
            if parsed is None:
                continue  # a domain we do not know: better unexported than misread
            found[real] = _Candidate(
                path=path,
                sysfs_id=entry.name,
                control_type=match["ctype"],
                zone=parsed["zone"],
                index=parsed["index"] or "",
                die=parsed["die"] or "",
            )
    return sorted(found.values(), key=lambda c: (c.control_type, [int(p, 16) for p in c.sysfs_id.split(":")[1:]]))


def _placed(candidates: list[_Candidate]) -> list[tuple[_Candidate, str, str]]:
    """Give each zone its socket and die: top-level zones from their name, subzones from their parent."""
    by_id = {c.sysfs_id: c for c in candidates}
    placed: list[tuple[_Candidate, str, str]] = []
    for cand in candidates:
        parent_id = cand.sysfs_id.rpartition(":")[0]
        parent = by_id.get(parent_id) if ":" in parent_id else None
        if parent is not None:
            placed.append((cand, parent.index, parent.die))
        else:
            placed.append((cand, cand.index, cand.die))
    return placed


def _read_uj(path: Path) -> int:
    return int(read_small(path))


def discover(sys_path: Path) -> tuple[list[RaplZone], list[str]]:
    """Find RAPL zones. Returns the zones to read and notes about what was dropped and why."""
    base = sys_path / "class" / "powercap"
    notes: list[str] = []
    chosen: dict[tuple[str, str, str], RaplZone] = {}
    for cand, socket, die in _placed(_candidates(base)):
        try:
            max_range = _read_uj(cand.path / "max_energy_range_uj")
        except (OSError, ValueError):
            max_range = 0  # unknown range: a decrease will be treated as a reset
        key = (cand.zone, socket, die)
        zone = RaplZone(
            zone=ZoneId(cand.zone, socket, die, SOURCE, cand.sysfs_id),
            path=cand.path,
            sysfs_id=cand.sysfs_id,
            control_type=cand.control_type,
            max_range_uj=max_range,
        )
        held = chosen.get(key)
        if held is None:
            chosen[key] = zone
        elif held.control_type != PREFERRED_CONTROL_TYPE and cand.control_type == PREFERRED_CONTROL_TYPE:
            notes.append(f"{held.sysfs_id} duplicates {cand.sysfs_id}; reading {cand.sysfs_id}")
            chosen[key] = zone
        else:
            notes.append(f"{cand.sysfs_id} duplicates {held.sysfs_id}; reading {held.sysfs_id}")
    zones = _drop_die_mirrors(list(chosen.values()), notes)
    return sorted(zones, key=lambda z: z.zone), notes


def _drop_die_mirrors(zones: list[RaplZone], notes: list[str]) -> list[RaplZone]:
    """Keep one package zone per socket when every die of that socket reads the same counter.

    The zone kept stands for the whole socket, so its die is cleared. The `core` subzones of a mirrored
    socket go too: each read one core of its CCD, not the package (kernel commit 26096aed255f).
    """
    by_socket: dict[str, list[RaplZone]] = {}
    for zone in zones:
        if zone.zone.die and zone.zone.zone == "package":
            by_socket.setdefault(zone.zone.socket, []).append(zone)
    keepers: dict[str, RaplZone] = {}
    for socket, dies in by_socket.items():
        try:
            values = [_read_uj(z.path / "energy_uj") for z in dies]
        except (OSError, ValueError):
            continue
        if len(dies) < 2 or max(values) - min(values) > MIRROR_TOLERANCE_UJ:
            continue  # distinct dies (Intel multi-die packages): each one is real energy
        keep = keepers[socket] = min(dies, key=lambda z: int(z.zone.die))
        mirrors = ", ".join(z.sysfs_id for z in dies if z is not keep)
        notes.append(f"socket {socket}: {mirrors} mirror {keep.sysfs_id} (one counter per socket); reading it once")
    kept: list[RaplZone] = []
    single_core: list[str] = []
    for zone in zones:
        keeper = keepers.get(zone.zone.socket)
        if keeper is None:
            kept.append(zone)
        elif zone is keeper:
            kept.append(replace(zone, zone=replace(zone.zone, die="")))
        elif zone.zone.zone != "package":
            single_core.append(zone.sysfs_id)
    if single_core:
        notes.append(f"{', '.join(single_core)}: core zones of mirrored dies read one core each; skipped")
    return kept


class RaplMeter:
    """Reads discovered zones each tick; a zone whose read fails is reopened later with backoff."""

    name = SOURCE

    def __init__(self, readers: list[_Reader], notes: list[str]) -> None:
        self._readers = readers
        self.notes = notes

    @classmethod
    def open(cls, sys_path: Path) -> RaplMeter:
        """Discover and open every zone; MeterUnavailable when none can be read."""
        base = sys_path / "class" / "powercap"
        zones, notes = discover(sys_path)
        if not zones:
            raise MeterUnavailable(
                f"no RAPL zones under {base} (no powercap driver, or a virtual machine without RAPL)",
                "on bare metal load intel_rapl_msr (Intel, AMD Zen); in a container mount the host's /sys "
                "and pass it as --sys /host/sys",
            )
        readers: list[_Reader] = []
        denied: list[str] = []
        for zone in zones:
            try:
                readers.append(_Reader(zone, HeldFile(zone.path / "energy_uj")))
            except PermissionError:
                denied.append(zone.sysfs_id)
            except OSError as exc:
                notes.append(f"{zone.sysfs_id}: energy_uj cannot be opened ({exc.strerror}); skipped")
        if not readers:
            if denied:
                raise MeterUnavailable(PERMISSION_REASON.format(path=base), PERMISSION_FIX)
            raise MeterUnavailable(f"no readable RAPL energy_uj under {base}", "check the powercap driver")
        if denied:
            notes.append("not readable (root only): " + ", ".join(denied))
        return cls(readers, notes)

    def zones(self) -> Sequence[ZoneId]:
        return [r.info.zone for r in self._readers]

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]:  # noqa: ARG002
        return [self._read_one(reader, now) for reader in self._readers]

    def _read_one(self, reader: _Reader, now: float) -> CounterSample:
        info = reader.info
        if reader.file is None:
            if now < reader.retry_at:
                return CounterSample(info.zone, None, info.max_range_uj, reader.last_error)
            try:
                reader.file = HeldFile(info.path / "energy_uj")
            except OSError as exc:
                return self._failed(reader, now, exc)
        try:
            raw = reader.file.read()
        except OSError as exc:
            return self._failed(reader, now, exc)
        try:
            value = int(raw)
        except ValueError:
            return CounterSample(info.zone, None, info.max_range_uj, f"unparsable energy_uj {raw[:32]!r}")
        if value < 0 or (info.max_range_uj and value > info.max_range_uj):
            return CounterSample(info.zone, None, info.max_range_uj, f"energy_uj {value} outside its range")
        reader.backoff = RETRY_FIRST_S
        reader.last_error = ""
        return CounterSample(info.zone, value, info.max_range_uj)

    @staticmethod
    def _failed(reader: _Reader, now: float, exc: OSError) -> CounterSample:
        if reader.file is not None:
            reader.file.close()
            reader.file = None
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            reason = f"zone vanished ({reason})"
        reader.last_error = reason
        reader.retry_at = now + reader.backoff
        reader.backoff = min(reader.backoff * 2, RETRY_MAX_S)
        return CounterSample(reader.info.zone, None, reader.info.max_range_uj, reason)

    def idle_watts(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        for reader in self._readers:
            if reader.file is not None:
                reader.file.close()
                reader.file = None


def open_meter(config: Config, cpus: int) -> RaplMeter:  # noqa: ARG001
    return RaplMeter.open(config.sys_path)
