"""What each energy zone measures, which zones contain which, and which may be added.

One table for every meter (RAPL, hwmon, the model, the platform meters and accelerators), so that discovery
maps sensors to zones, the accounting knows which energy to attribute, and dashboards know what to add, from the
same facts (docs/domains.md; sources in docs/research/hwmon.md and redfish.md). Pure: no I/O.

A zone's *role* says how its energy is treated:

- ``cpu``: split among workloads by their cgroup CPU time (RAPL zones, Grace rails, amd_energy, Altra rails,
  the model);
- ``accelerator``: split by per-process accelerator use (a GPU);
- ``module``: a superchip module (GH200: Grace + Hopper + memory), kept at node level;
- ``platform``: the whole node (an ACPI power meter, the BMC's chassis), kept at node level; what the other
  domains do not explain is the *rest of the node*.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Role = Literal["cpu", "accelerator", "module", "platform"]
ROLES: tuple[Role, ...] = ("cpu", "accelerator", "module", "platform")


@dataclass(frozen=True, slots=True)
class ZoneKind:
    """One zone name: its role, the zones that physically contain it, and what it measures."""

    name: str
    role: Role
    inside: tuple[str, ...]  # zone names that contain this one (same socket, or a node-wide container)
    what: str
    sources: str


ZONES: dict[str, ZoneKind] = {
    z.name: z
    for z in (
        ZoneKind(
            "psys",
            "cpu",
            ("platform",),
            "Intel platform (PSys): the SoC's package and DRAM power and more, node-wide",
            "rapl",
        ),
        ZoneKind("package", "cpu", ("psys", "platform"), "one CPU socket: cores, caches, uncore", "rapl, hwmon, model"),
        ZoneKind("core", "cpu", ("package", "psys", "platform"), "the cores of a socket (PP0)", "rapl, hwmon"),
        ZoneKind("uncore", "cpu", ("package", "psys", "platform"), "a socket's uncore or integrated GPU (PP1)", "rapl"),
        ZoneKind("dram", "cpu", ("psys", "platform"), "the DRAM attached to a socket", "rapl"),
        ZoneKind(
            "grace",
            "cpu",
            ("module", "platform"),
            "an NVIDIA Grace socket: CPU rail + SoC rail + LPDDR5X + regulator loss",
            "hwmon",
        ),
        ZoneKind(
            "cpu",
            "cpu",
            ("grace", "module", "platform"),
            "a CPU rail: Grace cores and caches, or an Ampere Altra's PMD rails",
            "hwmon",
        ),
        ZoneKind(
            "sysio",
            "cpu",
            ("grace", "module", "platform"),
            "the Grace SoC rail: fabric, memory controllers, NVLink-C2C, PCIe",
            "hwmon",
        ),
        ZoneKind("io", "cpu", ("platform",), "an Ampere Altra's IO rail: mesh, memory controllers, PCIe", "hwmon"),
        ZoneKind(
            "module",
            "module",
            ("platform",),
            "an NVIDIA superchip module (GH200): Grace + GPU + LPDDR5X + HBM + regulator loss",
            "hwmon",
        ),
        ZoneKind("gpu", "accelerator", ("platform",), "one accelerator board", "nvml"),
        ZoneKind(
            "platform",
            "platform",
            (),
            "the whole node as its firmware meters it (typically PSU input): an ACPI power meter or the BMC",
            "hwmon, redfish",
        ),
    )
}


def role_of(zone: str) -> Role:
    """The role of a zone name; an unknown name is an error in the caller (meters only emit known zones)."""
    return ZONES[zone].role


@dataclass(frozen=True, slots=True, order=True)
class Place:
    """A measured domain as containment sees it: a zone on a socket ("" = node-wide or not per socket).

    `within` names a zone this domain also counts although its own zone does not say so: a GH200's GPU
    counter is module-scope (`within="module"`), so it contains that socket's Grace zones.
    """

    zone: str
    socket: str = ""
    within: str = ""


def _outer_zones(zone: str) -> set[str]:
    """Every zone name that contains `zone`, transitively."""
    seen: set[str] = set()
    stack = list(ZONES[zone].inside)
    while stack:
        outer = stack.pop()
        if outer not in seen:
            seen.add(outer)
            stack.extend(ZONES[outer].inside)
    return seen


def _scope(place: Place) -> str:
    return place.within or place.zone


def contains(outer: Place, inner: Place) -> bool:
    """True when every joule of `inner` is also in `outer` (so the two must never be added).

    A node-wide container (no socket, e.g. psys or the platform) holds every socket's zones; a per-socket one
    only its own socket's. Two places of the same scope are the same quantity: the one that is not
    module-scope by `within` contains the other (the hwmon Module channel is preferred to the GPU's
    module-scope counter)."""
    if outer == inner:
        return False
    if outer.socket and inner.socket and outer.socket != inner.socket:
        return False
    if outer.socket and not inner.socket:
        return False
    outer_scope, inner_scope = _scope(outer), _scope(inner)
    if outer_scope == inner_scope:
        return outer.zone == outer_scope and inner.zone != inner_scope
    return outer_scope in _outer_zones(inner_scope)


def top_level(places: Iterable[Place]) -> list[Place]:
    """The measured places no other measured place contains, platform excluded: they add up without double
    counting, and their sum is the node's total wherever no platform meter measures it."""
    measured = sorted(set(places))
    return [
        p
        for p in measured
        if ZONES[p.zone].role != "platform" and not any(contains(o, p) for o in measured if o.zone != "platform")
    ]


def parent_of(place: Place, places: Iterable[Place]) -> Place | None:
    """The smallest measured place that contains `place` (None: it is top-level, or the platform)."""
    outers = [o for o in places if contains(o, place)]
    if not outers:
        return None
    # The innermost container is the one contained by every other container.
    return min(outers, key=lambda o: (-sum(contains(x, o) for x in outers), o))


def rest_of_node(platform_uj: int, top_level_uj: Iterable[int]) -> int:
    """The platform's energy the measured domains do not explain (fans, disks, NICs, PSU loss, other
    components), never negative: sensors are read at slightly different moments and with different accuracy."""
    return max(0, platform_uj - sum(top_level_uj))


def table_markdown() -> str:
    """The zone table of docs/domains.md (a test keeps the two equal)."""
    lines = ["| zone | role | inside | what it measures | meters |", "|---|---|---|---|---|"]
    for z in ZONES.values():
        inside = ", ".join(f"`{i}`" for i in z.inside) or "—"
        lines.append(f"| `{z.name}` | {z.role} | {inside} | {z.what} | {z.sources} |")
    return "\n".join(lines) + "\n"
