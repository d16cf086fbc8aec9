"""hwmon power and energy sensors: ACPI power meters, NVIDIA Grace / GH200 / GB200 rails, amd_energy, Ampere Altra.

Discovery runs once: every `class/hwmon/hwmonN` (attributes on hwmonN, or on `hwmonN/device` for drivers
registered without a name, such as acpi_power_meter before 2025), every `energyN_input` (µJ counter) and
`powerN_average` / `powerN_input` (µW) channel. A channel becomes a zone only through `ZONE_TABLE`, by chip name
and label (`powerN_label`, `energyN_label`, or the ACPI meter's `power1_oem_info`): a chip or label the table does
not know is reported by `wattlens check` as found and unused, never guessed at. Zone semantics and containment
are in exporter/zones.py (docs/domains.md); the facts behind the table in docs/research/hwmon.md.

Each tick reads held fds with pread. Energy channels pass their raw counter on (a decrease is a reset: hwmon
publishes no counter range). Power channels are integrated into a µJ counter (`method="power_integration"`): an
`average` reading covers the interval that just ended, so it is held over the tick; an instantaneous `input`
reading is integrated by the trapezoid rule. Readings the firmware marks invalid (ENODATA, EIO, the ACPI error
value 0xFFFFFFFF mW) make the zone down for that tick, not 0 W.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from exporter.meters.base import ENERGY_COUNTER, POWER_INTEGRATION, CounterSample, MeterUnavailable, ZoneId
from exporter.sysfs import HeldFile, read_small
from exporter.workloads.procfs import CpuTimes

if TYPE_CHECKING:
    from exporter.config import Config

SOURCE = "hwmon"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
# acpi_power_meter reports the firmware's 0xFFFFFFFF "no reading" as 4 294 967 295 000 µW on older kernels.
ACPI_NO_READING_UW = 0xFFFF_FFFF * 1000
MIRROR_TOLERANCE_UJ = 1_000_000  # NPS2/NPS4 Esocket channels read one package MSR microseconds apart
_VALUE_FILE = re.compile(r"^(power|energy)(\d+)_(input|average)$")
_HWMON_DIR = re.compile(r"^hwmon(\d+)$")
_ACPI_INSTANCE = re.compile(r":([0-9a-fA-F]+)$")
# Chips whose power belongs to an accelerator meter (NVML, AMD SMI, …): never a node zone.
ACCELERATOR_CHIPS = frozenset({"amdgpu", "radeon", "nouveau", "i915", "xe", "habanalabs"})

Kind = Literal["energy", "power"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the zone table: a chip's channel whose label matches `label` is zone `zone`.

    `socket` says where the socket comes from: "label" (the first group of the label match), "acpi" (the
    instance number of the chip's ACPI device), "numa" (the label's group is a NUMA node), "cpu" (the label's group
    is a CPU number) or "" (node-wide)."""

    chip: str
    label: re.Pattern[str]
    zone: str
    socket: Literal["label", "acpi", "numa", "cpu", ""]
    why: str


def _rule(chip: str, label: str, zone: str, socket: Literal["label", "acpi", "numa", "cpu", ""], why: str) -> Rule:
    return Rule(chip, re.compile(label), zone, socket, why)


# The explicit map from sensors to zones. Rows are tried in order; the first match wins.
ZONE_TABLE: tuple[Rule, ...] = (
    # NVIDIA Grace, GH200, GB200: four ACPI power meters per socket, named by power1_oem_info (edk2-nvidia
    # BpmpSsdtSocket*.asl). The Module meter is absent on Grace CPU Superchips and on GH200 firmware from Oct 2024.
    _rule("power_meter", r"Module Power Socket (\d+)", "module", "label", "GH200/GB200 module: CPU + GPU + memory"),
    _rule("power_meter", r"Grace Power Socket (\d+)", "grace", "label", "Grace socket: CPU + SoC rails + LPDDR5X"),
    _rule("power_meter", r"CPU Power Socket (\d+)", "cpu", "label", "Grace CPU rail"),
    _rule("power_meter", r"SysIO Power Socket (\d+)", "sysio", "label", "Grace SoC rail"),
    # An ACPI 4.0 power meter with no OEM string is the system meter (x86 servers: PSU input).
    _rule("power_meter", r"", "platform", "", "ACPI power meter of the whole system"),
    # amd_energy (mainline 5.8-5.12, out of tree since): one counter per NUMA node, one per physical core.
    _rule("amd_energy", r"Esocket(\d+)", "package", "numa", "AMD package energy (per NUMA node)"),
    _rule("amd_energy", r"Ecore(\d+)", "core", "cpu", "AMD core energy (channel N reads CPU N)"),
    # Ampere Altra / eMAG, mainline xgene-hwmon (ACPI APMC0D29): SoC rails from the SLIMpro.
    _rule("apm_xgene", r"CPU power", "cpu", "acpi", "Altra CPU (PMD) rails"),
    _rule("apm_xgene", r"IO power", "io", "acpi", "Altra IO (SoC) rail"),
)


@dataclass(frozen=True, slots=True)
class Channel:
    """One sensor file: `hwmonN/<kind><index>`, its chip, label and value file."""

    hwmon: str
    chip: str
    kind: Kind
    index: int
    attribute: Literal["input", "average"]
    path: Path
    label: str
    device_name: str  # the parent device's directory name (e.g. ACPI000D:00, APMC0D29:00, amd_energy.0)

    @property
    def id(self) -> str:
        return f"{self.hwmon}/{self.kind}{self.index}"


@dataclass(frozen=True, slots=True)
class HwmonZone:
    """A zone this meter reads: one channel, or (amd_energy cores) the sum of a socket's channels."""

    zone: ZoneId
    channels: tuple[Channel, ...]
    method: str
    rule: Rule


@dataclass(slots=True)
class _ChannelReader:
    channel: Channel
    file: HeldFile | None = None
    last_raw: int | None = None  # previous energy value (summed zones) or power (µW)
    last_at: float | None = None


@dataclass(slots=True)
class _ZoneReader:
    info: HwmonZone
    channels: list[_ChannelReader]
    counter_uj: int = 0  # integrated power, or the sum of a multi-channel zone's deltas
    fraction_uj: float = 0.0
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST_S
    error: str = ""
    down: bool = False
    resets: int = field(default=0)


def _hwmon_dirs(base: Path) -> list[Path]:
    try:
        names = [e.name for e in os.scandir(base) if _HWMON_DIR.match(e.name)]
    except OSError:
        return []
    return [base / n for n in sorted(names, key=lambda n: int(n[5:]))]


def _attribute_dir(hwmon: Path) -> Path:
    """hwmonN itself, or its device/ for a legacy registration (no `name` on hwmonN: acpi_power_meter < 2025)."""
    return hwmon if (hwmon / "name").exists() else hwmon / "device"


def _label(directory: Path, chip: str, kind: str, index: int) -> str:
    for name in (f"{kind}{index}_label", *([f"{kind}{index}_oem_info"] if chip == "power_meter" else [])):
        try:
            return read_small(directory / name, 256)
        except FileNotFoundError:
            continue
    return ""


def scan(sys_path: Path, notes: list[str]) -> tuple[list[Channel], list[str]]:
    """Every power/energy channel of every chip (power: `average` before `input`); and the chips whose labels
    could not be read (permissions)."""
    channels: list[Channel] = []
    denied: list[str] = []
    for hwmon in _hwmon_dirs(sys_path / "class" / "hwmon"):
        directory = _attribute_dir(hwmon)
        try:
            chip = read_small(directory / "name", 64)
            entries = sorted(os.listdir(directory))
        except OSError:
            continue  # a chip without a name, or gone: nothing to read
        found: dict[tuple[str, int], tuple[str, Path]] = {}
        for entry in entries:
            match = _VALUE_FILE.match(entry)
            if match is None:
                continue
            key = (match[1], int(match[2]))
            if key not in found or match[3] == "average":
                found[key] = (match[3], directory / entry)
        if chip in ACCELERATOR_CHIPS:
            if found:
                notes.append(f"{hwmon.name} {chip}: an accelerator's sensor, left to the accelerator meters")
            continue
        try:
            device_name = os.path.basename(os.path.realpath(hwmon / "device"))
        except OSError:
            device_name = ""
        for (kind, index), (attribute, path) in sorted(found.items()):
            try:
                label = _label(directory, chip, kind, index)
            except PermissionError:
                denied.append(f"{hwmon.name}/{kind}{index} ({chip})")
                continue
            except OSError:
                label = ""
            channels.append(
                Channel(hwmon.name, chip, kind, index, attribute, path, label, device_name)  # type: ignore[arg-type]
            )
    return channels, denied


def _match(channel: Channel) -> tuple[Rule, str] | None:
    for rule in ZONE_TABLE:
        if rule.chip == channel.chip:
            match = rule.label.fullmatch(channel.label)
            if match is not None:
                return rule, (match[1] if match.groups() else "")
    return None


def _cpu_package(sys_path: Path, cpu: int) -> str | None:
    try:
        return str(int(read_small(sys_path / f"devices/system/cpu/cpu{cpu}/topology/physical_package_id", 32)))
    except (OSError, ValueError):
        return None


def _numa_package(sys_path: Path, node: int) -> str | None:
    try:
        first = read_small(sys_path / f"devices/system/node/node{node}/cpulist", 4096).split(",")[0].split("-")[0]
        return _cpu_package(sys_path, int(first))
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int:
    return int(read_small(path, 64))


def _numa_sockets(sys_path: Path, channels: list[Channel], notes: list[str]) -> dict[str, str]:
    """Socket of each amd_energy Esocket channel (by channel id); mirrors (NPS2/NPS4: several NUMA nodes of one
    socket read the same package MSR) are left out. The socket is the NUMA node's CPU package when sysfs says
    it; else mirrors are recognised by their values (equal within 1 J at discovery, as for RAPL die mirrors) and
    the groups are numbered in order."""
    sockets: dict[str, str] = {}
    groups: list[tuple[int, Channel]] = []
    for channel in channels:
        try:
            value = _read_int(channel.path)
        except (OSError, ValueError):
            notes.append(f"{channel.id} ({channel.chip} {channel.label}): unreadable at discovery; skipped")
            continue
        node = int(_match(channel)[1])  # type: ignore[index]
        package = _numa_package(sys_path, node)
        kept = next((c for v, c in groups if abs(v - value) <= MIRROR_TOLERANCE_UJ), None)
        if kept is not None and (package is None or sockets.get(kept.id) == package):
            notes.append(f"{channel.id} ({channel.label}) mirrors {kept.id} ({kept.label}): one package counter")
            continue
        groups.append((value, channel))
        sockets[channel.id] = package if package is not None else str(len(groups) - 1)
    return sockets


def _socket(sys_path: Path, channel: Channel, rule: Rule, group: str, numa: dict[str, str]) -> str | None:
    """The socket label of a matched channel, as its rule says to find it; None when it cannot be told."""
    if rule.socket == "label":
        return str(int(group))
    if rule.socket == "numa":
        return numa.get(channel.id)
    if rule.socket == "cpu":
        return _cpu_package(sys_path, int(group))
    if rule.socket == "acpi":
        instance = _ACPI_INSTANCE.search(channel.device_name)
        return str(int(instance[1], 16)) if instance else "0"
    return ""


def discover(sys_path: Path) -> tuple[list[HwmonZone], list[str], list[str]]:
    """Map every channel to a zone through ZONE_TABLE. Returns (zones, notes, channels denied by permissions)."""
    notes: list[str] = []
    channels, denied = scan(sys_path, notes)
    matched: list[tuple[Channel, Rule, str]] = []
    for channel in channels:
        found = _match(channel)
        if found is None:
            label = f" '{channel.label}'" if channel.label else ""
            notes.append(
                f"{channel.id} ({channel.chip}{label}): found, not used: no zone is known for this chip and label"
            )
            continue
        matched.append((channel, *found))
    numa = _numa_sockets(sys_path, [c for c, rule, _ in matched if rule.socket == "numa"], notes)
    by_key: dict[tuple[str, str], list[tuple[Channel, Rule]]] = {}
    no_topology: list[str] = []
    for channel, rule, group in matched:
        socket = _socket(sys_path, channel, rule, group, numa)
        if socket is None:
            if rule.socket == "cpu":
                no_topology.append(channel.id)
            continue  # an Esocket mirror (noted), or a core whose package sysfs does not say
        by_key.setdefault((rule.zone, socket), []).append((channel, rule))
    if no_topology:
        notes.append(
            f"{len(no_topology)} per-core channels ({no_topology[0]}, …) skipped: their CPUs' packages are unknown "
            "(no devices/system/cpu/cpuN/topology/physical_package_id)"
        )
    zones: list[HwmonZone] = []
    for (zone, socket), candidates in sorted(by_key.items()):
        members = _one_kind(candidates, notes)
        rule = members[0][1]
        if rule.socket != "cpu" and len(members) > 1:
            notes.append(
                f"{', '.join(c.id for c, _ in members[1:])} also measure {zone}"
                f"{f' socket {socket}' if socket else ''}; reading {members[0][0].id} only"
            )
        chans = tuple(c for c, _ in (members if rule.socket == "cpu" else members[:1]))
        device = chans[0].id if len(chans) == 1 else f"{chans[0].hwmon}/{zone}-socket{socket}"
        method = ENERGY_COUNTER if chans[0].kind == "energy" else POWER_INTEGRATION
        zones.append(HwmonZone(ZoneId(zone, socket, "", SOURCE, device), chans, method, rule))
        what = chans[0].label or "no label"
        count = f"{len(chans)} channels" if len(chans) > 1 else f"{chans[0].id} ({chans[0].chip} '{what}')"
        notes.append(f"{zone}{f' socket {socket}' if socket else ''}: {count}, {method}")
    return zones, notes, denied


def _one_kind(members: list[tuple[Channel, Rule]], notes: list[str]) -> list[tuple[Channel, Rule]]:
    """A zone measured both as a counter and as power is read from the counter (the hardware's own joules)."""
    energy = [m for m in members if m[0].kind == "energy"]
    if energy and len(energy) < len(members):
        dropped = ", ".join(c.id for c, _ in members if c.kind == "power")
        notes.append(f"{dropped}: power of a zone that has an energy counter; reading the counter")
        return energy
    return members


class HwmonMeter:
    """Reads the discovered zones each tick; a zone whose read fails is retried with backoff."""

    name = SOURCE

    def __init__(self, readers: list[_ZoneReader], notes: list[str]) -> None:
        self._readers = readers
        self.notes = notes

    @classmethod
    def open(cls, sys_path: Path) -> HwmonMeter:
        """Discover and open every zone; MeterUnavailable (with the reason) when none can be read."""
        base = sys_path / "class" / "hwmon"
        zones, notes, denied = discover(sys_path)
        readers: list[_ZoneReader] = []
        for zone in zones:
            channels = [_ChannelReader(c) for c in zone.channels]
            try:
                for reader in channels:
                    reader.file = HeldFile(reader.channel.path)
            except PermissionError:
                denied.extend(c.id for c in zone.channels)
                _close(channels)
                continue
            except OSError as exc:
                notes.append(f"{zone.zone.device}: cannot be opened ({exc.strerror}); skipped")
                _close(channels)
                continue
            readers.append(_ZoneReader(zone, channels))
        if denied:
            notes.append("not readable (root only): " + ", ".join(denied))
        if not readers:
            if denied:
                raise MeterUnavailable(
                    f"hwmon energy/power channels under {base} are readable by root only ({', '.join(denied[:3])}"
                    f"{', …' if len(denied) > 3 else ''})",
                    "run wattlens as UID 0 with read-only host mounts (it needs no capability); amd_energy and "
                    "Ampere's kernels make these files 0440/0400 against power side channels (docs/permissions.md)",
                )
            raise MeterUnavailable(
                f"no hwmon power or energy sensor wattlens knows under {base}",
                "hwmon is read on ACPI power meters, NVIDIA Grace, amd_energy and Ampere Altra; elsewhere another "
                "meter measures (wattlens check lists the sensors found)",
            )
        return cls(readers, notes)

    def zones(self) -> Sequence[ZoneId]:
        return [r.info.zone for r in self._readers]

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]:  # noqa: ARG002
        return [self._read_zone(reader, now) for reader in self._readers]

    def _read_zone(self, reader: _ZoneReader, now: float) -> CounterSample:
        info = reader.info
        if reader.down and now < reader.retry_at:
            return self._sample(reader, None, reader.error)
        try:
            values = [self._read_channel(c) for c in reader.channels]
        except (OSError, ValueError) as exc:
            return self._failed(reader, now, exc)
        reader.down, reader.backoff, reader.error = False, RETRY_FIRST_S, ""
        if info.method == POWER_INTEGRATION:
            return self._sample(reader, self._integrate(reader, values, now), watts=sum(values) / 1e6)
        if len(values) == 1:
            return self._sample(reader, values[0])  # the raw counter: the accounting sees resets itself
        for channel, value in zip(reader.channels, values, strict=True):
            if channel.last_raw is not None:
                if value >= channel.last_raw:
                    reader.counter_uj += value - channel.last_raw
                else:
                    reader.resets += 1  # one core's counter restarted: its interval adds nothing
            channel.last_raw = value
        return self._sample(reader, reader.counter_uj)

    @staticmethod
    def _read_channel(reader: _ChannelReader) -> int:
        if reader.file is None:
            reader.file = HeldFile(reader.channel.path)
        raw = reader.file.read()
        value = int(raw)
        if value < 0:
            raise ValueError(f"negative reading {value}")
        if reader.channel.kind == "power" and value >= ACPI_NO_READING_UW:
            raise ValueError("the firmware reports no reading (0xFFFFFFFF mW)")
        return value

    @staticmethod
    def _integrate(reader: _ZoneReader, values: list[int], now: float) -> int:
        """Add the energy since the last reading: an `average` reading is the mean power of the interval that just
        ended (held over it); an `input` reading is instantaneous (trapezoid between readings)."""
        microwatts = sum(values)
        channel = reader.channels[0]
        if channel.last_at is not None and channel.last_raw is not None:
            seconds = max(0.0, now - channel.last_at)
            watts_uw = microwatts if channel.channel.attribute == "average" else (channel.last_raw + microwatts) / 2
            exact = watts_uw * seconds + reader.fraction_uj  # µW × s = µJ
            whole = int(exact)
            reader.fraction_uj = exact - whole
            reader.counter_uj += whole
        channel.last_raw, channel.last_at = microwatts, now
        return reader.counter_uj

    @staticmethod
    def _sample(reader: _ZoneReader, value: int | None, error: str = "", watts: float | None = None) -> CounterSample:
        return CounterSample(reader.info.zone, value, 0, error, reader.info.method, watts=watts)

    def _failed(self, reader: _ZoneReader, now: float, exc: Exception) -> CounterSample:
        reason = str(exc)
        if isinstance(exc, OSError):
            reason = exc.strerror or reason
            if exc.errno == errno.ENODATA:
                reason = f"the sensor has no valid reading ({reason})"
            elif exc.errno in (errno.ENOENT, errno.ENODEV):
                reason = f"sensor vanished ({reason})"
            _close(reader.channels)  # reopened at the retry: the device may have been re-registered
        elif isinstance(exc, ValueError) and "invalid literal" in reason:
            reason = "unparsable reading"
        for channel in reader.channels:
            channel.last_raw, channel.last_at = None, None  # re-baseline: the gap's energy is not guessed
        reader.fraction_uj = 0.0
        reader.down, reader.error = True, reason
        reader.retry_at = now + reader.backoff
        reader.backoff = min(reader.backoff * 2, RETRY_MAX_S)
        return self._sample(reader, None, reason)

    def idle_watts(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        for reader in self._readers:
            _close(reader.channels)


def _close(channels: list[_ChannelReader]) -> None:
    for channel in channels:
        if channel.file is not None:
            channel.file.close()
            channel.file = None


def open_meter(config: Config, cpus: int) -> HwmonMeter:  # noqa: ARG001
    return HwmonMeter.open(config.sys_path)
