"""Births, deaths and renames of cgroups between ticks are all seen: through inotify on the real cgroupfs (cgroup
v2, and the v1 cpuacct hierarchy for renames, which v2 does not allow), including a burst of 500 births in one
tick, and through a full rescan when inotify is unavailable or its queue overflows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CgroupFixture, cgroup2_mount, require

from exporter.workloads import cgroups as cgroups_module
from exporter.workloads import inotify
from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.tree import UsageTracker


def tracked(tree: CgroupTree) -> set[str]:
    """The workload cgroups the tree knows (used CPU or not), by path relative to the hierarchy."""
    return {"/".join(n.components) for n in tree._workloads.values()}


def _rmtree(root: Path) -> None:
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        directory.rmdir()
    root.rmdir()


@pytest.fixture
def v2_root() -> Iterator[Path]:
    require(os.geteuid() == 0, "creating cgroups needs root (CI runs as root)")
    root = cgroup2_mount() / f"wattlens-watch-{os.getpid()}"
    (root / "system.slice").mkdir(parents=True)
    yield root
    _rmtree(root)


def _burn_in(cgroup: Path, loops: int = 10**6) -> None:
    """A short process that runs inside `cgroup`, so the cgroup has used CPU."""
    procs = cgroup / "cgroup.procs"
    subprocess.run([sys.executable, "-c", f"sum(range({loops}))"], check=True,
                   preexec_fn=lambda: procs.write_text(str(os.getpid())))


def test_births_and_deaths_on_real_cgroupfs_including_500_in_one_tick(v2_root: Path) -> None:
    tree = CgroupTree(v2_root)
    assert tree.watching
    walks = tree.full_walks
    assert tree.read(0.0) == []
    services = v2_root / "system.slice"
    for i in range(500):  # a burst: all born between two reads
        (services / f"burst-{i}.service").mkdir()
    usages = tree.read(1.0)
    assert {u.path for u in usages} == {f"system.slice/burst-{i}.service" for i in range(500)}
    assert all(u.born and u.usage_us == 0 for u in usages)  # all born since the last read
    assert tracked(tree) == {u.path for u in usages}
    assert tree.full_walks == walks  # seen through events, not a rescan

    _burn_in(services / "burst-7.service")
    usages = tree.read(2.0)
    assert [u.path for u in usages if u.usage_us] == ["system.slice/burst-7.service"]

    for i in range(250):
        (services / f"burst-{i}.service").rmdir()
    tree.read(3.0)
    assert tracked(tree) == {f"system.slice/burst-{i}.service" for i in range(250, 500)}
    assert len(tree.ended) == 250  # known gone: their readings can be forgotten at once
    # A nested birth: a slice and the service inside it, both born between two reads.
    (services / "app.slice" / "inner.service").mkdir(parents=True)
    tree.read(4.0)
    assert "system.slice/app.slice/inner.service" in tracked(tree)
    assert tree.full_walks == walks
    tree.close()


def test_renames_on_the_v1_hierarchy_keep_the_cgroups_reading(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "creating cgroups needs root (CI runs as root)")
    v1 = next((Path("/sys/fs/cgroup") / n for n in ("cpu,cpuacct", "cpuacct") if (Path("/sys/fs/cgroup") / n
                                                                                  / "cpuacct.usage").exists()), None)
    require(v1 is not None, "no cgroup v1 cpuacct hierarchy on this machine (renames exist only in v1)")
    assert v1 is not None
    root = v1 / f"wattlens-rename-{os.getpid()}"
    (root / "system.slice" / "old.service").mkdir(parents=True)
    try:
        _burn_in(root / "system.slice" / "old.service")
        (tmp_path / "cpuacct").symlink_to(root)  # a cgroup root whose v1 cpuacct hierarchy is our subtree
        tree = CgroupTree(tmp_path)
        assert tree.layout.version == "v1" and tree.watching
        tracker = UsageTracker()
        first = tree.read(0.0)
        tracker.deltas(first, tree.ended, 0.0)
        (root / "system.slice" / "old.service").rename(root / "system.slice" / "new.service")
        _burn_in(root / "system.slice" / "new.service")
        after = tree.read(5.0)
        assert [u.path for u in after] == ["system.slice/new.service"]  # and not old.service
        assert after[0].identity == first[0].identity  # the same cgroup, renamed
        assert not after[0].born
        delta = tracker.deltas(after, tree.ended, 5.0)["system.slice/new.service"]
        assert 0 < delta < after[0].usage_us  # only what it used since the last read, not its lifetime
        tree.close()
    finally:
        _rmtree(root)


def test_without_inotify_every_read_rescans_and_still_sees_everything(
        v2_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(inotify.Inotify, "__init__", lambda self: unavailable())
    tree = CgroupTree(v2_root)
    assert not tree.watching
    walks = tree.full_walks
    services = v2_root / "system.slice"
    for i in range(50):
        (services / f"s{i}.service").mkdir()
    tree.read(1.0)
    assert len(tracked(tree)) == 50
    for i in range(25):
        (services / f"s{i}.service").rmdir()
    tree.read(2.0)
    assert tracked(tree) == {f"system.slice/s{i}.service" for i in range(25, 50)}
    assert tree.full_walks == walks + 2
    tree.close()


def test_an_overflowed_queue_makes_a_full_rescan(v2_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = CgroupTree(v2_root)
    walks = tree.full_walks
    services = v2_root / "system.slice"
    (services / "seen.service").mkdir()
    assert tree._inotify is not None
    real_read = tree._inotify.read

    def overflowed() -> list[inotify.Event]:
        real_read()  # the kernel dropped these: only the overflow marker is left
        return [inotify.Event(-1, inotify.IN_Q_OVERFLOW, b"")]

    monkeypatch.setattr(tree._inotify, "read", overflowed)
    tree.read(1.0)
    assert tree.full_walks == walks + 1
    assert tracked(tree) == {"system.slice/seen.service"}
    tree.close()


def test_a_real_queue_overflow_on_tmpfs_is_rescanned(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    require(limit <= 40_000, f"max_queued_events is {limit}: too many directories to make here")
    fixture = CgroupFixture(tmp_path / "cgroup")
    fixture.add("system.slice")
    tree = CgroupTree(fixture.root)
    walks = tree.full_walks
    for i in range(limit + 100):
        os.mkdir(fixture.root / "system.slice" / f"s{i}.service")
    tree.read(1.0)
    assert tree.full_walks == walks + 1  # the kernel reported the overflow
    assert len(tracked(tree)) == limit + 100
    tree.close()


def test_a_periodic_full_rescan_is_the_safety_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = CgroupFixture(tmp_path / "cgroup")
    fixture.add("system.slice")
    tree = CgroupTree(fixture.root, rescan_s=60.0)
    assert tree._inotify is not None
    monkeypatch.setattr(tree._inotify, "read", lambda: [])  # events lost, without an overflow
    os.mkdir(fixture.root / "system.slice" / "missed.service")
    tree.read(tree._last_full + 30.0)
    assert tracked(tree) == set()
    tree.read(tree._last_full + 61.0)
    assert tracked(tree) == {"system.slice/missed.service"}
    tree.close()


def test_out_of_watches_falls_back_to_rescans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    fixture = CgroupFixture(tmp_path / "cgroup")
    fixture.add("system.slice/a.service")
    tree = CgroupTree(fixture.root)

    def no_space(path: str | bytes, mask: int = 0) -> int:
        raise OSError(28, "No space left on device")

    assert tree._inotify is not None
    monkeypatch.setattr(tree._inotify, "watch", no_space)
    fixture.add("system.slice/b.slice/c.service")  # a new directory to watch: the watch fails
    tree.read(1.0)
    assert not tree.watching
    assert "rescanned every tick" in caplog.text
    walks = tree.full_walks
    fixture.add("system.slice/d.service")
    tree.read(2.0)
    assert tree.full_walks == walks + 1
    assert tracked(tree) == {"system.slice/a.service", "system.slice/b.slice/c.service", "system.slice/d.service"}
    tree.close()
    assert cgroups_module.RESCAN_S == 300.0
