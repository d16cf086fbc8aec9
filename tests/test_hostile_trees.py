"""Hostile cgroup trees on tmpfs: a delegated subtree flooded with empty container scopes (and churning), 50,001
directories trying to push kubepods past the directory limit, and a cgroup missed by one read: series and fds
stay bounded, pods are never hidden, and equal pods get equal energy."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CgroupFixture, ProcTree, RaplTree, make_config

from exporter import sysfs
from exporter.engine import Engine
from exporter.snapshot import Snapshot
from exporter.workloads import cgroups as cgroups_module
from exporter.workloads.cgroups import MAX_DELEGATED_DIRS, MAX_DELEGATED_WORKLOADS

USER = "user.slice/user-1000.slice/user@1000.service"


@pytest.fixture(autouse=True)
def _close_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every engine a test starts is closed after it, fds and all."""
    started: list[Engine] = []
    real = Engine.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[Engine], config: object) -> Engine:
        engine = real(cls, config)
        started.append(engine)
        return engine

    monkeypatch.setattr(Engine, "start", classmethod(start))
    yield
    for engine in started:
        engine.close()


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm) where there is one, else the test's temporary directory."""
    base = Path("/dev/shm")
    if base.is_dir() and os.access(base, os.W_OK):
        path = base / f"wattlens-hostile-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        yield path
        shutil.rmtree(path)
    else:
        yield tmp_path


def pod_path(i: int) -> str:
    return f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{i:08x}_0000_4000_8000_{i:012x}.slice"


class Node:
    """A cgroup tree with pods that use CPU, a fake /proc and RAPL, and an engine on them."""

    def __init__(self, root: Path, pods: int = 10, **config: str) -> None:
        self.cgroups = CgroupFixture(root / "cgroup")
        self.proc = ProcTree(root / "proc")
        self.rapl = RaplTree.copy("unreadable", root)
        self.pods = [pod_path(i) for i in range(pods)]
        for pod in self.pods:
            self.cgroups.add(f"{pod}/cri-containerd-{'c' * 63}{pod[-7]}.scope")
            self.cgroups.burn(pod, 10**9)  # a long life before wattlens started
        self.cgroups.add("system.slice/big.service")
        self.config = make_config(sys_path=self.rapl.root, proc_path=self.proc.root, cgroup_root=self.cgroups.root,
                                  kubelet_log_path=root / "log", meters="rapl", idle_watts="package=0", **config)
        self.engine: Engine | None = None
        self.now = 0.0

    def start(self) -> Engine:
        self.engine = Engine.start(self.config)
        self.engine.tick(self.now)
        return self.engine

    def tick(self, burn: dict[str, int] | None = None) -> Snapshot:
        assert self.engine is not None
        busy = 0
        for path, usec in (burn or {}).items():
            self.cgroups.burn(path, usec)
            busy += usec
        self.proc.advance_usec(busy, 0)
        self.rapl.advance("intel-rapl:0", 10_000_000)
        self.now += 5.0
        return self.engine.tick(self.now)


def pods_of(snap: Snapshot) -> dict[str, int]:
    return {w.label("uid"): dict(w.energy_uj).get("package", 0) for w in snap.workloads if w.kind == "pod"}


def flood(cgroups: CgroupFixture, under: str, count: int, used: int = 0, prefix: str = "") -> list[str]:
    """`count` empty container scopes (the first `used` have used CPU) made with mkdir alone, as a user can."""
    base = cgroups.root / under
    names = []
    for i in range(count):
        name = f"libpod-{prefix}{i:0{64 - len(prefix)}x}.scope"
        os.mkdir(base / name)
        (base / name / "cpu.stat").write_text(f"usage_usec {1000 if i < used else 0}\n")
        names.append(name)
    return names


def test_a_delegated_subtree_flooded_with_empty_scopes_stays_bounded(shm: Path) -> None:
    node = Node(shm)
    node.cgroups.add(f"{USER}/user.slice")
    os.chown(node.cgroups.root / USER, 1000, 1000)  # systemd delegates user@UID.service to the user
    os.chown(node.cgroups.root / USER / "user.slice", 1000, 1000)
    node.cgroups.burn(USER, 10**6)
    flood(node.cgroups, f"{USER}/user.slice", 10_000, used=300)
    engine = node.start()
    burn = dict.fromkeys(node.pods, 100000)
    snap = node.tick(burn)
    users_children = [w for w in snap.workloads if w.kind == "container" and w.label("runtime") == "podman"]
    assert len(pods_of(snap)) == 10
    assert len(users_children) <= MAX_DELEGATED_WORKLOADS
    assert len(snap.workloads) <= 10 + 10 + 1 + 1 + MAX_DELEGATED_WORKLOADS  # pods, containers, service, user
    assert snap.fds_held <= 10 + 10 + 2 + MAX_DELEGATED_WORKLOADS
    assert engine.workloads.cgroups is not None
    delegated = [n for n in engine.workloads.cgroups._walked() if n.delegation is not None]
    assert len(delegated) <= MAX_DELEGATED_DIRS
    assert snap.cgroup_walks_truncated >= 1

    # Churn: 1,000 scopes go and 1,000 new ones (which use CPU) come, every tick; the series stay bounded,
    # because a gone workload's slot is held for the workload TTL while its series is still exported.
    alive = [n for n in os.listdir(node.cgroups.root / USER / "user.slice") if n.startswith("libpod-")]
    for round_ in range(4):
        for name in alive[:1000]:
            shutil.rmtree(node.cgroups.root / USER / "user.slice" / name)
        alive = alive[1000:] + flood(node.cgroups, f"{USER}/user.slice", 1000, used=1000, prefix=f"f{round_}")
        snap = node.tick(burn)
        podman = [w for w in snap.workloads if w.kind == "container" and w.label("runtime") == "podman"]
        assert len(podman) <= MAX_DELEGATED_WORKLOADS
        assert len(pods_of(snap)) == 10
    assert len(snap.workloads) <= 10 + 10 + 1 + 1 + MAX_DELEGATED_WORKLOADS
    engine.close()


def test_a_users_own_rootless_containers_are_measured(shm: Path) -> None:
    node = Node(shm)
    node.cgroups.add(f"{USER}/user.slice")
    os.chown(node.cgroups.root / USER, 1000, 1000)
    scopes = [f"{USER}/user.slice/libpod-{i:064x}.scope" for i in range(5)]
    for scope in scopes:
        node.cgroups.add(scope)
    node.start()
    snap = node.tick(dict.fromkeys(scopes, 50_000))
    podman = {w.label("container_id"): dict(w.energy_uj)["package"] for w in snap.workloads
              if w.kind == "container" and w.label("runtime") == "podman"}
    assert len(podman) == 5 and all(v > 0 for v in podman.values())
    users = [w for w in snap.workloads if w.kind == "user"]
    assert len(users) == 1 and dict(users[0].energy_uj)["package"] >= sum(podman.values())


@pytest.mark.parametrize("delegated", [False, True])
def test_50001_directories_elsewhere_never_hide_the_pods(shm: Path, delegated: bool) -> None:
    node = Node(shm)
    where = f"{USER}/flood" if delegated else "user.slice/flood"
    node.cgroups.add(where)
    if delegated:
        os.chown(node.cgroups.root / USER, 1000, 1000)
    for i in range(50_001):
        os.mkdir(node.cgroups.root / where / f"d{i}")
    node.start()
    snap = node.tick(dict.fromkeys(node.pods, 100000))
    assert len(pods_of(snap)) == 10
    assert all(v > 0 for v in pods_of(snap).values())
    assert snap.cgroup_walks_truncated >= 1
    # And a pod born after the flood is found too (by its inotify event).
    late = pod_path(99)
    node.cgroups.add(f"{late}/cri-containerd-{'e' * 64}.scope")
    snap = node.tick({late: 50_000})
    assert len(pods_of(snap)) == 11


def test_a_cgroup_missed_by_one_read_is_not_a_newborn(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two equal pods (each with 1,000 s of CPU before wattlens started) use equal CPU every tick; one read of
    pod A fails (EMFILE). When A is read again it continues from its last reading, so the two end equal
    within one tick's share, not with A's lifetime of CPU in one tick."""
    node = Node(shm, pods=2)
    a, b = node.pods
    engine = node.start()
    burn = {a: 100_000, b: 100_000, "system.slice/big.service": 1_000_000}
    node.tick(burn)
    assert engine.workloads.cgroups is not None
    pod_a = next(n for n in engine.workloads.cgroups._workloads.values() if n.path.endswith(a.rsplit("/", 1)[-1]))
    assert pod_a.stat is not None
    pod_a.stat.close()
    pod_a.stat, pod_a.fd = None, -1
    real = sysfs.HeldFile

    def emfile(path: Path | str, *args: object) -> sysfs.HeldFile:
        if str(path).startswith(pod_a.path + "/cpu.stat"):
            raise OSError(24, "Too many open files")
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(cgroups_module, "HeldFile", emfile)
    missed = node.tick(burn)
    assert set(pods_of(missed)) == {a.rsplit("pod", 1)[-1].removesuffix(".slice").replace("_", "-"),
                                    b.rsplit("pod", 1)[-1].removesuffix(".slice").replace("_", "-")}
    monkeypatch.setattr(cgroups_module, "HeldFile", real)
    for _ in range(6):
        snap = node.tick(burn)
    energy = sorted(pods_of(snap).values())
    per_tick = 10_000_000 * 100_000 // 1_200_000  # one pod's share of one tick's 10 J
    assert energy[1] - energy[0] <= per_tick
    assert energy[0] >= 6 * per_tick


def test_a_pod_listed_late_after_truncation_starts_from_a_baseline(shm: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(shm, pods=2)
    monkeypatch.setattr(cgroups_module, "MAX_DIRS", 5)  # the first listing leaves a pod out
    engine = node.start()
    burn = dict.fromkeys(node.pods, 100000)
    first = node.tick(burn)
    assert len(pods_of(first)) < 2
    monkeypatch.setattr(cgroups_module, "MAX_DIRS", 50_000)
    assert engine.workloads.cgroups is not None
    engine.workloads.cgroups._workload_dirs.limit = 50_000
    engine.workloads.cgroups._last_full = -1e9  # the next read is the periodic full rescan
    node.tick(burn)
    snap = node.tick(burn)
    energy = pods_of(snap)
    assert len(energy) == 2
    late = min(energy.values())
    assert late <= 10_000_000  # at most the ticks since it was listed, never its 1,000 s of earlier CPU
