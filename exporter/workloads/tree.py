"""From cumulative cgroup CPU time to this tick's workload tree (pure: no I/O).

Top-level workloads are the outermost workload cgroups, except that pods are always top-level: a pod inside
something else (the Docker container of a kind node, containerd.service on some v1 hosts) is taken out of
it, and its CPU is subtracted from the enclosing workload so no CPU is counted twice. The children of a
top-level workload are the workload cgroups nearest below it (containers of a pod, rootless containers of a
user); anything deeper is already inside a child's hierarchical CPU time.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    members: tuple[tuple[str, Classified, str], ...] = ()  # (key, workload, top-level key or "") of top and children


@dataclass
class UsageTracker:
    """Remembers each cgroup's last cumulative CPU time, by identity, to turn readings into per-tick deltas.

    A cgroup missing from one read (an fd refused, a read that failed) keeps its last reading until it is known
    to be gone, or for `retain_s`, so when it is read again it continues from there: it is never taken for a
    newborn whose whole lifetime of CPU fell into one tick."""

    retain_s: float = 900.0
    _previous: dict[tuple[int, int], int] = field(default_factory=dict)
    _seen: dict[tuple[int, int], float] = field(default_factory=dict)
    _walked: bool = False

    def deltas(
        self, usages: list[CgroupUsage], ended: Iterable[tuple[int, int]] = (), now: float | None = None
    ) -> dict[str, int]:
        """Per path: CPU µs since the last reading. A cgroup born since then counts all of its CPU time; one seen
        for the first time without being born (the first walk, a subtree listed late) is a baseline; a decrease
        is a cgroup recreated under the same identity."""
        out: dict[str, int] = {}
        previous, seen = self._previous, self._seen
        for usage in usages:
            before = previous.get(usage.identity)
            if before is None:
                out[usage.path] = usage.usage_us if self._walked and usage.born else 0
            else:
                out[usage.path] = usage.usage_us - before if usage.usage_us >= before else usage.usage_us
            previous[usage.identity] = usage.usage_us
            if now is not None:
                seen[usage.identity] = now
        for identity in ended:
            previous.pop(identity, None)
            seen.pop(identity, None)
        if now is not None and len(seen) > len(usages):  # some missing: forget those missing for too long
            for identity in [i for i, t in seen.items() if now - t > self.retain_s]:
                del previous[identity], seen[identity]
        if now is None:  # callers without a clock keep only this read (tests, tools)
            self._previous = {u.identity: u.usage_us for u in usages}
        self._walked = True
        return out


@dataclass(frozen=True, slots=True)
class TreePlan:
    """The shape of a tree: top-level workloads (with their children and the nested cgroups whose CPU is not
    theirs) and synthetic pods. It depends only on which cgroups there are, so it is kept while they stay."""

    synthetic: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (pod key, its containers' (path, key))
    tops: tuple[tuple[str, str, tuple[tuple[str, str], ...], tuple[str, ...]], ...]  # path, key, children, minus
    workloads: dict[str, Classified]
    parents: dict[str, str]
    paths: dict[str, str]
    members: tuple[tuple[str, Classified, str], ...]  # (key, workload, top-level key or "")


def plan_tree(usages: list[CgroupUsage]) -> TreePlan:
    by_path: dict[str, CgroupUsage] = {}
    workloads: dict[str, Classified] = {}
    for usage in sorted(usages, key=lambda u: u.components):
        if usage.workload.key not in workloads:  # the same workload twice: keep the outermost path
            by_path[usage.path] = usage
            workloads[usage.workload.key] = usage.workload

    def nearest(components: tuple[str, ...], among: dict[str, CgroupUsage] | set[str]) -> str | None:
        for depth in range(len(components) - 1, 0, -1):
            path = "/".join(components[:depth])
            if path in among:
                return path
        return None

    parent_path = {path: nearest(u.components, by_path) for path, u in by_path.items()}
    tops = {p for p, u in by_path.items() if parent_path[p] is None or u.workload.kind == "pod"}
    minus: dict[str, list[str]] = {path: [] for path in tops}  # cgroups whose CPU is inside, but not its
    children: dict[str, list[tuple[str, str]]] = {path: [] for path in tops}
    parents: dict[str, str] = {}
    paths = {path: by_path[path].workload.key for path in tops}
    synthetic: dict[str, list[tuple[str, str]]] = {}  # pod uid → containers naming it

    for path, usage in by_path.items():
        if path in tops:
            enclosing = nearest(usage.components, tops)
            if enclosing is not None:  # a pod inside another workload: its CPU is not that one's
                minus[enclosing].append(path)
            continue
        workload = usage.workload
        parent = parent_path[path]
        assert parent is not None  # every non-top workload has a workload above it
        pod_key = f"pod:{workload.pod_uid}" if workload.pod_uid else ""
        if pod_key and by_path[parent].workload.key != pod_key and pod_key not in workloads:
            # The path names a pod that has no cgroup of its own (containerd on v1): gather its containers.
            synthetic.setdefault(workload.pod_uid, []).append((path, workload.key))
            continue
        if parent in tops:
            children[parent].append((path, workload.key))
            parents[workload.key] = by_path[parent].workload.key
            paths[path] = workload.key

    pods = []
    for uid, members in synthetic.items():
        key = f"pod:{uid}"
        workloads[key] = Classified("pod", key, uid=uid)
        for path, member in members:
            parents[member] = key
            paths[path] = member
            enclosing = nearest(by_path[path].components, tops)
            if enclosing is not None:
                minus[enclosing].append(path)
        pods.append((key, tuple(members)))
    planned = tuple((p, by_path[p].workload.key, tuple(children[p]), tuple(minus[p])) for p in sorted(tops))
    present: list[tuple[str, Classified, str]] = [(key, workloads[key], "") for key, _ in pods]
    present += [(child, workloads[child], key) for key, kids in pods for _, child in kids]
    for _, key, kids, _ in planned:
        present.append((key, workloads[key], ""))
        present += [(child, workloads[child], key) for _, child in kids]
    return TreePlan(tuple(pods), planned, workloads, parents, paths, tuple(present))


def apply_plan(plan: TreePlan, deltas: dict[str, int]) -> WorkloadTree:
    """This tick's tree: the plan with each cgroup's CPU delta."""
    get = deltas.get
    top: list[Usage[str]] = []
    for key, members in plan.synthetic:
        kids = tuple(Usage(member, get(path, 0)) for path, member in members)
        top.append(Usage(key, sum(kid.cpu_us for kid in kids), kids))
    for path, key, children, minus in plan.tops:
        cpu = get(path, 0) - sum(get(p, 0) for p in minus) if minus else get(path, 0)
        top.append(Usage(key, max(0, cpu), tuple(Usage(child, get(p, 0)) for p, child in children)))
    return WorkloadTree(tuple(top), plan.workloads, plan.parents, plan.paths, plan.members)


def build_tree(usages: list[CgroupUsage], deltas: dict[str, int]) -> WorkloadTree:
    return apply_plan(plan_tree(usages), deltas)


class TreeBuilder:
    """build_tree, with the plan kept while the cgroups read are the same as last time (most ticks)."""

    def __init__(self) -> None:
        self._paths: tuple[str, ...] | None = None
        self._plan: TreePlan | None = None

    def build(self, usages: list[CgroupUsage], deltas: dict[str, int]) -> WorkloadTree:
        paths = tuple(u.path for u in usages)  # a path's workload never changes: classification is by path
        if self._plan is None or paths != self._paths:
            self._plan, self._paths = plan_tree(usages), paths
        return apply_plan(self._plan, deltas)


def owner_of(components: tuple[str, ...], tree: WorkloadTree) -> tuple[str, str | None] | None:
    """(top-level key, child key or None) of the deepest workload cgroup at or above `components`."""
    for depth in range(len(components), 0, -1):
        key = tree.paths.get("/".join(components[:depth]))
        if key is not None:
            top = tree.parents.get(key)
            return (top, key) if top is not None else (key, None)
    return None
