"""Random cgroup trees mixing every layout family at random depths: classification and the workload tree.

Each tree is built from families with a known truth (what kind of workload a directory is, whether it is
top-level wherever it is, which pod a container's name points at). The tree walk is the one wattlens does
(skip helpers, descend where `may_hold_workloads` says), over an in-memory tree, so that hypothesis can try
thousands of shapes quickly. Checked, exactly, in integer µs:
- every directory the walk reaches is classified as its family says, in any context;
- Σ top-level CPU + unattributed = node busy, where unattributed is the CPU of no workload's cgroup;
- every exported workload's CPU is its cgroup's, less the top-level workloads nested in it (which have their
  own series), plus the containers of its pod that live outside its cgroup; nothing reached is lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.attribution import attribute
from exporter.workloads.cgroups import CgroupUsage
from exporter.workloads.classify import classify, is_helper, may_hold_workloads
from exporter.workloads.tree import build_tree, owner_of


def _hex(seed: str, length: int = 64) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def _uuid(seed: str) -> str:
    h = _hex(seed, 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Made:
    """Directories a family adds below a parent; the truth is about the last one."""

    components: tuple[str, ...]
    kind: str | None = None
    pod_uid: str = ""  # a pod's uid, or the pod a container's name points at
    helper: bool = False


Family = Callable[[int, list[str]], Made]  # (a unique number, uids of Kubernetes pods made so far) → directories


def _container(name: str) -> Family:
    return lambda n, _: Made((name.format(id=_hex(f"c{n}"), n=n),), "container")


NESTABLE: dict[str, Family] = {
    "k8s pod (systemd)": lambda n, _: Made(
        (f"kubepods-besteffort-pod{_uuid(f'p{n}').replace('-', '_')}.slice",), "pod", _uuid(f"p{n}")),
    "k8s pod (cgroupfs)": lambda n, _: Made(("kubepods", f"pod{_uuid(f'p{n}')}"), "pod", _uuid(f"p{n}")),
    "Podman pod": lambda n, _: Made((f"machine-libpod_pod_{_hex(f'p{n}')}.slice",), "pod", _hex(f"p{n}")),
    "ECS task (v1)": lambda n, _: Made(("ecs", _hex(f"p{n}", 32)), "pod", _hex(f"p{n}", 32)),
    "ECS task (v2)": lambda n, _: Made((f"ecstasks-{_hex(f'p{n}', 32)}.slice",), "pod", _hex(f"p{n}", 32)),
    "containerd scope": _container("cri-containerd-{id}.scope"),
    "CRI-O scope": _container("crio-{id}.scope"),
    "CRI-O cgroupfs": _container("crio-{id}"),
    "Docker scope": _container("docker-{id}.scope"),
    "Podman scope": _container("libpod-{id}.scope"),
    "Podman cgroupfs": _container("libpod-{id}"),
    "Quadlet payload": _container("libpod-payload-{id}"),
    "nerdctl": _container("nerdctl-{id}.scope"),
    "iSulad scope": _container("isulad-{id}.scope"),
    "Kata sandbox": _container("kata_{id}"),
    "Kata sandbox (CRI-O)": _container("kata_crio-{id}"),
    "LXC >= 4 / LXD / Incus": _container("lxc.payload.ct{n}"),
    "LXC 3.1 and 3.2": lambda n, _: Made(("lxc.payload", f"ct{n}"), "container"),
    "Docker cgroupfs": lambda n, _: Made(("docker", _hex(f"c{n}")), "container"),
    "iSulad cgroupfs": lambda n, _: Made(("isulad", _hex(f"c{n}")), "container"),
    # containerd on v1: the name points at a pod, made before (its cgroup elsewhere) or not at all.
    "containerd v1 name": lambda n, pods: Made(
        (f"kubepods-besteffort-pod{(pods[n % len(pods)] if pods and n % 3 else _uuid(f'q{n}')).replace('-', '_')}"
         f".slice:cri-containerd:{_hex(f'c{n}')}",),
        "container",
        pods[n % len(pods)] if pods and n % 3 else _uuid(f"q{n}"),
    ),
    "Slurm job (v2)": lambda n, _: Made(("slurmstepd.scope", f"job_{n}"), "job"),
    "Slurm job (v2, SLUID)": lambda n, _: Made(("n1_slurmstepd.scope", f"s{n:013d}"), "job"),
    "Slurm job (v1)": lambda n, _: Made(("slurm", f"uid_{1000 + n}", f"job_{n}"), "job"),
    "libvirt < 1.0.5 VM": lambda n, _: Made(("libvirt", "qemu", f"vm{n}"), "vm"),
    "plain directory": lambda n, _: Made((f"misc{n}.slice",)),
    "unit inside a container": lambda n, _: Made(("system.slice", f"inner{n}.service")),
    "steps": lambda n, _: Made((f"step_{n}", "user", "task_0")),
    "conmon": lambda n, _: Made((f"crio-conmon-{_hex(f'c{n}')}.scope",), helper=True),
    "LXC monitor": lambda n, _: Made((f"lxc.monitor.ct{n}",), helper=True),
}
NOT_AT_ROOT = {"unit inside a container"}  # at the root, system.slice/<x>.service is a host service
ROOT_ONLY: dict[str, Family] = {
    "service": lambda n, _: Made(("system.slice", f"svc{n}.service"), "service"),
    "user": lambda n, _: Made(("user.slice", f"user-{1000 + n}.slice"), "user"),
    "libvirt VM": lambda n, _: Made(("machine.slice", f"machine-qemu\\x2d{n}\\x2dvm{n}.scope"), "vm"),
    "Proxmox VM": lambda n, _: Made(("qemu.slice", f"{100 + n}.scope"), "vm"),
    "Proxmox CT": lambda n, _: Made(("lxc", f"{200 + n}"), "container"),
    "systemd-nspawn unit": lambda n, _: Made(("machine.slice", f"systemd-nspawn@box{n}.service"), "container"),
    "nspawn scope": lambda n, _: Made(("machine.slice", f"machine-box{n}.scope"), "container"),
    "libvirt-lxc": lambda n, _: Made(("machine.slice", f"machine-lxc\\x2d{n}\\x2dct{n}.scope"), "container"),
}
HOISTED_KINDS = {"pod", "vm", "job"}


@dataclass
class Node:
    own_us: dict[str, int]  # path → CPU of processes directly in it ('' is the root)
    truth: dict[str, Made]  # path → the family's truth for the directory it named


@st.composite
def nodes(draw: st.DrawFn) -> Node:
    own_us: dict[str, int] = {"": draw(st.integers(0, 10**7))}
    truth: dict[str, Made] = {}
    k8s_pods: list[str] = []
    for n in range(draw(st.integers(1, 30))):
        # Families go below the root or below what another family made (not inside its scaffolding: nothing
        # but VMs lives in libvirt/qemu/); units of a container's own systemd only inside a container.
        parent = draw(st.sampled_from(["", *sorted(truth)]))
        if parent == "":
            names = set(NESTABLE) - NOT_AT_ROOT | set(ROOT_ONLY)
        else:
            names = set(NESTABLE) - (set() if truth[parent].kind == "container" else NOT_AT_ROOT)
        name = draw(st.sampled_from(sorted(names)))
        made = {**NESTABLE, **ROOT_ONLY}[name](n, k8s_pods)
        path = parent
        for component in made.components:
            path = f"{path}/{component}" if path else component
            own_us.setdefault(path, draw(st.integers(0, 10**7)))
        truth[path] = made
        if name.startswith("k8s pod"):
            k8s_pods.append(made.pod_uid)
    return Node(own_us, truth)


def _usage(node: Node) -> dict[str, int]:
    """Hierarchical CPU, as the kernel counts it: a cgroup's own plus all its descendants'."""
    usage = dict.fromkeys(node.own_us, 0)
    for path, us in node.own_us.items():
        parts = path.split("/") if path else []
        for depth in range(len(parts) + 1):
            usage["/".join(parts[:depth])] += us
    return usage


def _walk(node: Node, usage: dict[str, int]) -> list[CgroupUsage]:
    """What CgroupTree's walk reads: helpers skipped, descending only where may_hold_workloads says."""
    children: dict[str, list[str]] = {}
    for path in node.own_us:
        if path:
            children.setdefault(path.rpartition("/")[0], []).append(path)
    found, stack = [], [""]
    while stack:
        for path in children.get(stack.pop(), []):
            components = tuple(path.split("/"))
            if is_helper(components[-1]):
                continue
            workload = classify(components)
            made = node.truth.get(path)
            assert (workload.kind if workload else None) == (made.kind if made else None), (path, workload)
            if workload is not None:
                found.append(CgroupUsage(path, components, workload, usage[path]))
            if may_hold_workloads(components, workload):
                stack.append(path)
    return found


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:depth]) for depth in range(len(parts) - 1, 0, -1)]  # nearest first


@settings(max_examples=300, deadline=None)
@given(nodes(), st.integers(0, 10**9))
def test_any_mix_of_families_keeps_cpu_exact(node: Node, delta_uj: int) -> None:
    usage = _usage(node)
    usages = _walk(node, usage)
    tree = build_tree(usages, {u.path: u.usage_us for u in usages})
    reached = {u.path: u for u in usages}
    key_of = {path: u.workload.key for path, u in reached.items()}
    pod_paths = {u.workload.uid: path for path, u in reached.items() if u.workload.kind == "pod"}

    def nearest(path: str) -> str | None:
        return next((a for a in _ancestors(path) if a in reached), None)

    strays = {
        p for p in reached
        if node.truth[p].kind == "container" and node.truth[p].pod_uid
        and pod_paths.get(node.truth[p].pod_uid) not in _ancestors(p)
    }
    hoisted = {p for p in reached if node.truth[p].kind in HOISTED_KINDS} | strays
    tops = {p for p in reached if p not in strays and (nearest(p) is None or p in hoisted)}
    children = {p for p in reached if p not in hoisted and nearest(p) in tops}
    synthetic = {node.truth[p].pod_uid for p in strays} - set(pod_paths)

    # Which workloads are top-level, which are children of which: as the rules say.
    assert {t.key for t in tree.top} == {key_of[p] for p in tops} | {f"pod:{uid}" for uid in synthetic}
    exported_children = {c.key for t in tree.top for c in t.children}
    assert exported_children == {key_of[p] for p in children | strays}
    for p in children:
        assert tree.parents[key_of[p]] == key_of[nearest(p)]  # type: ignore[index]
    for p in strays:
        assert tree.parents[key_of[p]] == f"pod:{node.truth[p].pod_uid}"
    # Nothing reached is lost: a workload that is not exported lies inside an exported child's cgroup.
    for p in set(reached) - tops - children - strays:
        assert any(a in children for a in _ancestors(p)), p

    # Each exported workload's CPU: its cgroup's, less the top-level ones nested in it (down to the next such
    # one), plus its pod members that live outside it.
    own = {t.key: t.cpu_us for t in tree.top} | {c.key: c.cpu_us for t in tree.top for c in t.children}
    for p in tops | children | strays:
        nested = [h for h in hoisted if p in _ancestors(h)
                  and not any(g in hoisted and p in _ancestors(g) for g in _ancestors(h))]
        outside = [s for s in strays if node.truth[s].pod_uid == reached[p].workload.uid
                   and reached[p].workload.kind == "pod"]
        assert own[key_of[p]] == usage[p] - sum(usage[h] for h in nested) + sum(usage[s] for s in outside), p
    for uid in synthetic:
        assert own[f"pod:{uid}"] == sum(usage[s] for s in strays if node.truth[s].pod_uid == uid)

    # Σ top-level + unattributed = node busy, exactly: unattributed is the CPU outside every workload cgroup.
    outermost = [p for p in reached if nearest(p) is None]
    unattributed = usage[""] - sum(usage[p] for p in outermost)
    assert unattributed >= 0
    assert sum(t.cpu_us for t in tree.top) + unattributed == usage[""]

    # And the energy split that follows conserves every µJ: node = unattributed + Σ top, top = Σ children + rest.
    shares = attribute(delta_uj, 0, usage[""], tree.top)
    assert shares.unattributed_uj + sum(shares.workloads[t.key] for t in tree.top) == delta_uj
    for t in tree.top:
        if t.children:
            total = sum(shares.workloads[c.key] for c in t.children) + shares.residual_uj[t.key]
            assert total == shares.workloads[t.key]


def test_every_family_is_drawn() -> None:
    """The families above are the issue's list; each is classified as its truth says at the root or nested."""
    for name, family in {**NESTABLE, **ROOT_ONLY}.items():
        made = family(7, [])
        prefix = () if name in ROOT_ONLY else ("lxc.payload.host",)
        workload = classify((*prefix, *made.components))
        assert (workload.kind if workload else None) == made.kind or made.helper, name
        if made.helper:
            assert is_helper(made.components[-1]), name


def test_a_process_deep_in_a_job_or_a_stray_container_is_owned_by_its_workload() -> None:
    """GPU users are resolved through /proc/<pid>/cgroup against the tree: a task of a Slurm step belongs to
    its job, a process of a containerd-on-v1 container to its pod (which has no cgroup) and that container."""
    job = ("system.slice", "slurmstepd.scope", "job_77")
    uid = _uuid("stray")
    stray = (f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice:cri-containerd:{_hex('stray')}",)
    usages = []
    for components in (job, stray):
        workload = classify(components)
        assert workload is not None
        usages.append(CgroupUsage("/".join(components), components, workload, 1_000))
    tree = build_tree(usages, {u.path: u.usage_us for u in usages})
    assert owner_of((*job, "step_0", "user", "task_1"), tree) == ("job:slurm:77", None)
    assert owner_of(stray, tree) == (f"pod:{uid}", f"container:{_hex('stray')}")
