"""From cumulative cgroup CPU time to this tick's workload tree (pure: no I/O).

Top-level workloads are the outermost workload cgroups, except that pods, VMs and jobs are top-level wherever
they are: one inside something else (the pods of a kind node's Docker container, a k3s pod inside an LXC
container, a VM below libvirtd.service on old libvirt) is taken out of it, and its CPU is subtracted from
every exported workload around it, so no CPU is counted twice. The children of a top-level workload are the
workload cgroups nearest below it (containers of a pod, rootless containers of a user, a Quadlet unit's
container, Docker inside an LXC container); anything deeper is already inside a child's hierarchical CPU time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.attribution import Usage
from exporter.workloads.cgroups import CgroupUsage
from exporter.workloads.classify import Classified


@dataclass(frozen=True, slots=True)
class WorkloadTree:
    top: tuple[Usage[str], ...]
    workloads: dict[str, Classified]  # every workload present this tick, by key
    parents: dict[str, str]  # child key → its top-level workload's key
    paths: dict[str, str] = field(default_factory=dict)  # cgroup path → key, for top-level workloads and children


@dataclass
class UsageTracker:
    """Remembers each cgroup's last cumulative CPU time to turn readings into per-tick deltas."""

    _previous: dict[str, int] = field(default_factory=dict)
    _walked: bool = False

    def deltas(self, usages: list[CgroupUsage]) -> dict[str, int]:
        """Per path: CPU µs since the last tick. A cgroup born since then counts all of its CPU time; on the
        first walk everything is a baseline; a decrease is a cgroup recreated under the same path."""
        out: dict[str, int] = {}
        for usage in usages:
            before = self._previous.get(usage.path)
            if before is None:
                out[usage.path] = usage.usage_us if self._walked else 0
            else:
                out[usage.path] = usage.usage_us - before if usage.usage_us >= before else usage.usage_us
        self._previous = {u.path: u.usage_us for u in usages}
        self._walked = True
        return out


# Kinds that are top-level wherever they are found; their CPU is taken out of the workloads around them.
ALWAYS_TOP: frozenset[str] = frozenset({"pod", "vm", "job"})


def build_tree(usages: list[CgroupUsage], deltas: dict[str, int]) -> WorkloadTree:
    by_path: dict[str, CgroupUsage] = {}
    workloads: dict[str, Classified] = {}
    for usage in sorted(usages, key=lambda u: u.components):
        if usage.workload.key not in workloads:  # the same workload twice: keep the outermost path
            by_path[usage.path] = usage
            workloads[usage.workload.key] = usage.workload
    path_of = {usage.workload.key: path for path, usage in by_path.items()}
    enclosing = {path: _nearest(u.components, by_path) for path, u in by_path.items()}
    # Containers outside the pod their path names (containerd on v1: `<pod slice>:cri-containerd:<id>` below
    # containerd.service or at the hierarchy root) join that pod, or form it when it has no cgroup.
    orphans = {
        path
        for path, u in by_path.items()
        if u.workload.pod_uid and f"pod:{u.workload.pod_uid}" not in _around(path, enclosing, by_path)
    }
    hoisted = {p for p, u in by_path.items() if u.workload.kind in ALWAYS_TOP} | orphans
    tops = {p for p in by_path if p not in orphans and (enclosing[p] is None or p in hoisted)}
    children = {p for p in by_path if p not in hoisted and enclosing[p] in tops}
    own = _own_cpu({path: deltas.get(path, 0) for path in by_path}, tops | children | orphans, hoisted, enclosing)

    members: dict[str, list[Usage[str]]] = {path: [] for path in tops}
    parents: dict[str, str] = {}
    paths = {path: by_path[path].workload.key for path in tops | children | orphans}
    synthetic: dict[str, list[Usage[str]]] = {}  # pod uid → containers naming a pod with no cgroup
    for path, usage in by_path.items():  # in path order, outermost first
        if path not in children and path not in orphans:
            continue
        workload = usage.workload
        member = Usage(workload.key, max(0, own[path]))
        parent = enclosing[path] if path in children else path_of.get(f"pod:{workload.pod_uid}")
        if parent is None:
            synthetic.setdefault(workload.pod_uid, []).append(member)
            parents[workload.key] = f"pod:{workload.pod_uid}"
            continue
        members[parent].append(member)
        parents[workload.key] = by_path[parent].workload.key
        if path in orphans:  # the pod's cgroup is elsewhere: its member's CPU is added to it
            own[parent] += member.cpu_us

    top: list[Usage[str]] = []
    for uid, pod_members in synthetic.items():
        key = f"pod:{uid}"
        workloads[key] = Classified("pod", key, uid=uid)
        top.append(Usage(key, sum(m.cpu_us for m in pod_members), tuple(pod_members)))
    for path in sorted(tops):
        top.append(Usage(by_path[path].workload.key, max(0, own[path]), tuple(members[path])))
    return WorkloadTree(tuple(top), workloads, parents, paths)


def _own_cpu(
    cpu: dict[str, int], exported: set[str], hoisted: set[str], enclosing: dict[str, str | None]
) -> dict[str, int]:
    """Each exported workload's CPU less that of the top-level workloads nested in it, which have their own
    series (down to the next hoisted one: its CPU already excludes what is nested in it)."""
    own = {path: cpu[path] for path in exported}
    for path in hoisted:
        around = enclosing[path]
        while around is not None:
            if around in own:
                own[around] -= cpu[path]
            if around in hoisted:
                break
            around = enclosing[around]
    return own


def _around(path: str, enclosing: dict[str, str | None], by_path: dict[str, CgroupUsage]) -> set[str]:
    """The keys of the workloads whose cgroups contain `path`'s."""
    keys = set()
    around = enclosing[path]
    while around is not None:
        keys.add(by_path[around].workload.key)
        around = enclosing[around]
    return keys


def _nearest(components: tuple[str, ...], among: dict[str, CgroupUsage]) -> str | None:
    """The path of the nearest workload cgroup strictly above `components`."""
    for depth in range(len(components) - 1, 0, -1):
        path = "/".join(components[:depth])
        if path in among:
            return path
    return None


def owner_of(components: tuple[str, ...], tree: WorkloadTree) -> tuple[str, str | None] | None:
    """(top-level key, child key or None) of the deepest workload cgroup at or above `components`."""
    for depth in range(len(components), 0, -1):
        key = tree.paths.get("/".join(components[:depth]))
        if key is not None:
            top = tree.parents.get(key)
            return (top, key) if top is not None else (key, None)
    return None
