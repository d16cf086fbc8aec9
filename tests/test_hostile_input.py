"""Malformed cgroup and proc content, directories vanishing mid-walk and hostile names never break a tick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CgroupFixture, ProcTree, RaplTree, cgroup2_mount, make_config, require
from hypothesis import given
from hypothesis import strategies as st

from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.snapshot import SourceUp
from exporter.workloads import cgroups as cgroups_module
from exporter.workloads.cgroups import CgroupTree, parse_usage_us
from exporter.workloads.classify import classify
from exporter.workloads.kubernetes import parse_container_log, parse_pod_dir

POD = "kubepods.slice/kubepods-pod0000000a_0000_4000_8000_00000000000a.slice"


def engine_on(tmp_path: Path) -> tuple[Engine, CgroupFixture, ProcTree, RaplTree]:
    rapl = RaplTree.copy("unreadable", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    engine = Engine.start(make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root,
                                      kubelet_log_path=tmp_path / "log", meters="rapl", idle_watts="package=0"))
    return engine, cgroups, proc, rapl


@pytest.mark.parametrize("content", ["", "usage_usec\n", "usage_usec abc\n", "usage_usec -5\n",
                                     "user_usec 5\n", "\x00\x01\x02", "usage_usec 99999999999999999999999999x"])
def test_malformed_cpu_stat_is_counted_and_skipped(tmp_path: Path, content: str) -> None:
    engine, cgroups, proc, rapl = engine_on(tmp_path)
    cgroups.add("system.slice/good.service")
    cgroups.add("system.slice/bad.service")
    engine.tick(0.0)
    cgroups.burn("system.slice/good.service", 100_000)
    (cgroups.root / "system.slice/bad.service/cpu.stat").write_text(content)
    proc.advance_usec(200_000, 0)
    rapl.advance("intel-rapl:0", 1_000_000)
    snap = engine.tick(5.0)
    units = {w.label("unit"): dict(w.energy_uj) for w in snap.workloads}
    assert units["good.service"]["package"] == 500_000
    assert snap.cgroup_read_errors >= 1
    Renderer().render(snap)


def test_directories_vanishing_mid_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, cgroups, proc, rapl = engine_on(tmp_path)
    cgroups.add(f"{POD}/cri-containerd-{'a' * 64}.scope")
    cgroups.add("system.slice/stays.service")
    engine.tick(0.0)
    real_scandir = os.scandir

    class StaleListing(list[os.DirEntry[str]]):
        def __enter__(self) -> StaleListing:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    def scandir_then_delete(path: os.PathLike[str] | str) -> StaleListing:
        entries = StaleListing(real_scandir(path))
        if str(path).endswith("kubepods.slice"):
            cgroups.remove(POD)  # the pod goes away between listing its parent and walking into it
        return entries

    monkeypatch.setattr(cgroups_module.os, "scandir", scandir_then_delete)
    cgroups.burn("system.slice/stays.service", 50_000)
    proc.advance_usec(100_000, 0)
    rapl.advance("intel-rapl:0", 1_000_000)
    snap = engine.tick(5.0)
    kinds = {w.kind: w for w in snap.workloads}
    assert dict(kinds["service"].energy_uj)["package"] == 500_000
    Renderer().render(snap)


def test_removed_between_walk_and_read_on_real_cgroupfs() -> None:
    """On cgroupfs a held fd of a removed cgroup fails with ENODEV: that cgroup is dropped, nothing breaks."""
    require(os.geteuid() == 0, "creating a cgroup needs root (CI runs as root)")
    root = cgroup2_mount() / f"wattlens-vanish-{os.getpid()}"
    service = root / "system.slice" / "a.service"
    service.mkdir(parents=True)
    try:
        subprocess.run([sys.executable, "-c", "sum(range(10**6))"], check=True,  # it has used CPU: a workload
                       preexec_fn=lambda: (service / "cgroup.procs").write_text(str(os.getpid())))
        walker = CgroupTree(root, watch=False)
        assert [u.path for u in walker.read()] == ["system.slice/a.service"]
        nodes = list(walker._workloads.values())
        service.rmdir()
        assert [walker._read(node, "cpu.stat") for node in nodes] == [None]
        assert walker.read() == []
        walker.close()
    finally:
        for directory in (service, root / "system.slice", root):
            if directory.exists():
                directory.rmdir()


def test_hostile_names_are_escaped_not_fatal(tmp_path: Path) -> None:
    engine, cgroups, proc, rapl = engine_on(tmp_path)
    names = ['we"ird\\name.service', "new\nline.service", "caf\u00e9 \u2603.service"]
    for name in names:
        cgroups.add(f"system.slice/{name}")
    os.mkdir(os.fsencode(cgroups.root / "system.slice") + b"/bad\xff\xfe.service")
    (Path(os.fsdecode(os.fsencode(cgroups.root / "system.slice") + b"/bad\xff\xfe.service")) / "cpu.stat").write_text(
        "usage_usec 5\n")  # it has used CPU: a workload
    engine.tick(0.0)
    for name in names:
        cgroups.burn(f"system.slice/{name}", 10_000)
    proc.advance_usec(40_000, 0)
    rapl.advance("intel-rapl:0", 1_000_000)
    snap = engine.tick(5.0)
    units = {w.label("unit") for w in snap.workloads}
    assert units == {*names, "bad\ufffd\ufffd.service"}
    text = Renderer().render(snap).text.decode()
    assert 'unit="we\\"ird\\\\name.service"' in text
    assert 'unit="new\\nline.service"' in text
    assert 'unit="caf\u00e9 \u2603.service"' in text
    assert 'unit="bad\ufffd\ufffd.service"' in text


def test_malformed_proc_stat_marks_procfs_down_and_keeps_going(tmp_path: Path) -> None:
    engine, _, proc, rapl = engine_on(tmp_path)
    engine.tick(0.0)
    (proc.root / "stat").write_text("garbage\n")
    rapl.advance("intel-rapl:0", 1_000_000)
    snap = engine.tick(5.0)
    assert SourceUp("procfs", "stat", False) in snap.sources
    package = next(d for d in snap.domains if d.zone == "package")
    assert package.unattributed_uj == 1_000_000  # no CPU time to split by: all unattributed
    proc.write()
    assert SourceUp("procfs", "stat", True) in engine.tick(10.0).sources


@given(st.binary(max_size=200))
def test_usage_parser_only_raises_value_error(data: bytes) -> None:
    for stat_file in ("cpu.stat", "cpuacct.usage"):
        try:
            assert parse_usage_us(data, stat_file) >= 0
        except ValueError:
            pass


@given(st.lists(st.text(max_size=80), max_size=6))
def test_classifier_never_raises(components: list[str]) -> None:
    classify(tuple(components))


@given(st.text(max_size=200))
def test_kubelet_name_parsers_never_raise(name: str) -> None:
    parse_pod_dir(name)
    parse_container_log(name)


def test_hybrid_hosts_walk_both_hierarchies_without_duplicates(tmp_path: Path) -> None:
    """Hybrid: systemd's units live in the unified tree (the v1 cpuacct tree may lack them), cgroupfs Docker
    containers only in v1; a path in both is read once, from the unified tree."""
    root = tmp_path / "cgroup"
    unified = CgroupFixture(root / "unified")
    unified.add("system.slice/sshd.service")
    unified.burn("system.slice/sshd.service", 7_000)
    v1 = root / "cpu,cpuacct"
    for path, ns in (("", 90_000_000), ("system.slice/sshd.service", 6_000_000), (f"docker/{'d' * 64}", 5_000_000)):
        (v1 / path).mkdir(parents=True, exist_ok=True)
        (v1 / path / "cpuacct.usage").write_text(f"{ns}\n")
    walker = CgroupTree(root)
    assert walker.layout.version == "hybrid"
    usages = {u.path: u.usage_us for u in walker.read()}
    assert usages == {"system.slice/sshd.service": 7_000, f"docker/{'d' * 64}": 5_000}
    walker.close()


def test_this_machines_cgroups_are_walked() -> None:
    walker = CgroupTree(Path("/sys/fs/cgroup"))
    assert walker.layout.version in ("v2", "hybrid", "v1")
    walker.read()  # whatever is there, the walk and reads must not fail
    walker.close()
