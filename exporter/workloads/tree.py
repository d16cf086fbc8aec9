"""From cumulative cgroup CPU time to this tick's workload tree (pure: no I/O).

Top-level workloads are the outermost workload cgroups, except that pods, VMs and jobs are top-level wherever
they are: one inside something else (the pods of a kind node's Docker container, a k3s pod inside an LXC
container, a VM below libvirtd.service on old libvirt) is taken out of it, and its CPU is subtracted from
every exported workload around it, so no CPU is counted twice. The children of a top-level workload are the
workload cgroups nearest below it (containers of a pod, rootless containers of a user, a Quadlet unit's
container, Docker inside an LXC container); anything deeper is already inside a child's hierarchical CPU time.
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
    _previous: dict[tuple[int, int] | str, int] = field(default_factory=dict)  # by identity (by path without)
    _seen: dict[tuple[int, int] | str, float] = field(default_factory=dict)
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
            identity = usage.identity or usage.path
            before = previous.get(identity)
            if before is None:
                out[usage.path] = usage.usage_us if self._walked and usage.born else 0
            else:
                out[usage.path] = usage.usage_us - before if usage.usage_us >= before else usage.usage_us
            previous[identity] = usage.usage_us
            if now is not None:
                seen[identity] = now
        for gone in ended:
            previous.pop(gone, None)
            seen.pop(gone, None)
        if now is not None and len(seen) > len(usages):  # some missing: forget those missing for too long
            for old in [i for i, t in seen.items() if now - t > self.retain_s]:
                del previous[old], seen[old]
        if now is None:  # callers without a clock keep only this read (tests, tools)
            self._previous = {u.identity or u.path: u.usage_us for u in usages}
        self._walked = True
        return out


# Kinds that are top-level wherever they are found; their CPU is taken out of the workloads around them.
ALWAYS_TOP: frozenset[str] = frozenset({"pod", "vm", "job"})


@dataclass(frozen=True, slots=True)
class TreePlan:
    """The shape of a tree: which cgroups are top-level, children or orphans, whose CPU is subtracted from whose,
    and which pods have no cgroup. It depends only on which cgroups there are, so it is kept while they stay."""

    own: tuple[tuple[str, tuple[str, ...]], ...]  # exported path, the hoisted paths whose CPU is not its own
    steps: tuple[tuple[str, str, str | None, str, bool], ...]  # child or orphan: path, key, parent, pod uid, orphan
    synthetic: tuple[str, ...]  # uids of pods that have no cgroup, in the order their containers come
    tops: tuple[tuple[str, str], ...]  # (path, key), sorted by path
    workloads: dict[str, Classified]
    parents: dict[str, str]
    paths: dict[str, str]
    members: tuple[tuple[str, Classified, str], ...]


def plan_tree(usages: list[CgroupUsage]) -> TreePlan:
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
    own = _own_terms(tops | children | orphans, hoisted, enclosing)

    parents: dict[str, str] = {}
    paths = {path: by_path[path].workload.key for path in tops | children | orphans}
    steps = []
    synthetic: dict[str, list[str]] = {}  # pod uid → keys of the containers naming a pod with no cgroup
    members: dict[str, list[str]] = {path: [] for path in tops}
    for path, usage in by_path.items():  # in path order, outermost first
        if path not in children and path not in orphans:
            continue
        workload = usage.workload
        parent = enclosing[path] if path in children else path_of.get(f"pod:{workload.pod_uid}")
        steps.append((path, workload.key, parent, workload.pod_uid, path in orphans))
        if parent is None:
            synthetic.setdefault(workload.pod_uid, []).append(workload.key)
            parents[workload.key] = f"pod:{workload.pod_uid}"
            continue
        members[parent].append(workload.key)
        parents[workload.key] = by_path[parent].workload.key
    for uid in synthetic:
        workloads[f"pod:{uid}"] = Classified("pod", f"pod:{uid}", uid=uid)
    ordered = tuple((path, by_path[path].workload.key) for path in sorted(tops))
    present = [(f"pod:{uid}", workloads[f"pod:{uid}"], "") for uid in synthetic]
    present += [(key, workloads[key], f"pod:{uid}") for uid, keys in synthetic.items() for key in keys]
    for path, key in ordered:
        present.append((key, workloads[key], ""))
        present += [(child, workloads[child], key) for child in members[path]]
    return TreePlan(
        tuple(own.items()), tuple(steps), tuple(synthetic), ordered, workloads, parents, paths, tuple(present)
    )


def apply_plan(plan: TreePlan, deltas: dict[str, int]) -> WorkloadTree:
    """This tick's tree: the plan with each cgroup's CPU delta."""
    get = deltas.get
    own = {path: get(path, 0) - sum(get(h, 0) for h in minus) if minus else get(path, 0) for path, minus in plan.own}
    members: dict[str, list[Usage[str]]] = {path: [] for path, _ in plan.tops}
    synthetic: dict[str, list[Usage[str]]] = {uid: [] for uid in plan.synthetic}
    for path, key, parent, uid, orphan in plan.steps:
        member = Usage(key, max(0, own[path]))
        if parent is None:
            synthetic[uid].append(member)
            continue
        members[parent].append(member)
        if orphan:  # the pod's cgroup is elsewhere: its member's CPU is added to it
            own[parent] += member.cpu_us
    top = [Usage(f"pod:{uid}", sum(m.cpu_us for m in pod), tuple(pod)) for uid, pod in synthetic.items()]
    top += [Usage(key, max(0, own[path]), tuple(members[path])) for path, key in plan.tops]
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


def _own_terms(exported: set[str], hoisted: set[str], enclosing: dict[str, str | None]) -> dict[str, tuple[str, ...]]:
    """For each exported workload, the top-level workloads nested in it whose CPU is not its own, as they have
    their own series (down to the next hoisted one: its CPU already excludes what is nested in it)."""
    minus: dict[str, list[str]] = {path: [] for path in exported}
    for path in sorted(hoisted):
        around = enclosing[path]
        while around is not None:
            if around in minus:
                minus[around].append(path)
            if around in hoisted:
                break
            around = enclosing[around]
    return {path: tuple(terms) for path, terms in minus.items()}


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
