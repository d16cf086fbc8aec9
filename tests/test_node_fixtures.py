"""Every fixture node yields exactly the expected workloads: kind, labels, parent, cgroup CPU and own CPU.

The nodes and their expected.yaml are described, with sources, in fixtures/README.md (section nodes/). The
hand-made nodes and those written by scripts/make_node_fixtures.py are checked the same way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURES, make_config, tool

from exporter import metrics
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.kubernetes import KubeletLogs
from exporter.workloads.labels import LABELS, label_values
from exporter.workloads.tree import build_tree

NODES = FIXTURES.parent / "nodes"
ALL = sorted(p.name for p in NODES.iterdir() if p.is_dir())
Identity = tuple[str, tuple[tuple[str, str], ...], str]
CpuTimes = tuple[int, int]  # (cgroup usage_usec, CPU of the workload's own series)


def expected(node: Path) -> tuple[dict[Identity, CpuTimes], dict]:
    data = yaml.safe_load((node / "expected.yaml").read_text())
    table = {}
    for w in data["workloads"]:
        labels = tuple((name, str(w["labels"][name])) for name in LABELS[w["kind"]])
        usage = int(w["usage_usec"])
        table[(w["kind"], labels, w.get("parent", ""))] = (usage, int(w.get("own_usec", usage)))
    assert len(table) == len(data["workloads"]), "two expected workloads share an identity"
    return table, data["node"]


def found(node: Path) -> tuple[dict[Identity, CpuTimes], int]:
    """What wattlens makes of the node: each exported workload's identity, its cgroup's CPU, and the CPU its
    own series is given by the tree, as if all CPU so far had been used in one tick."""
    walker = CgroupTree(node / "cgroup")
    usages = walker.read()
    walker.close()
    tree = build_tree(usages, {u.path: u.usage_us for u in usages})
    usage = {u.workload.key: u.usage_us for u in usages}
    own = {t.key: t.cpu_us for t in tree.top} | {c.key: c.cpu_us for t in tree.top for c in t.children}
    for top in tree.top:  # a pod that only its containers' paths name has no cgroup: it is their sum
        usage.setdefault(top.key, sum(usage[c.key] for c in top.children))
    kubelet = KubeletLogs(node / "log")
    workloads = [tree.workloads[k] for k in own]
    kubelet.refresh(0.0, [w.uid for w in workloads if w.kind == "pod"],
                    [w.container_id for w in workloads if w.kind == "container"])
    table = {}
    for key in own:
        workload, parent = tree.workloads[key], tree.parents.get(key, "")
        pod_uid = workload.uid if workload.kind == "pod" else parent.removeprefix("pod:") * parent.startswith("pod:")
        values = label_values(workload, kubelet.pod(pod_uid) if pod_uid else None,
                              kubelet.container(workload.container_id) if workload.container_id else None, parent)
        identity = (workload.kind, tuple(zip(LABELS[workload.kind], values, strict=True)), parent)
        assert identity not in table, identity
        table[identity] = (usage[key], own[key])
    return table, sum(t.cpu_us for t in tree.top)


def test_every_new_layout_family_has_a_node() -> None:
    """The families of issue 13, each with at least one node (and the seven hand-made ones kept)."""
    assert len(ALL) >= 7 + 17, ALL


@pytest.mark.parametrize("name", ALL)
def test_node_yields_the_expected_workloads(name: str) -> None:
    want, facts = expected(NODES / name)
    got, top_level = found(NODES / name)
    assert sorted(got) == sorted(want)
    for identity, cpu in want.items():
        assert got[identity] == cpu, identity
    # The top-level workloads' own CPU adds up to what the node's workloads used, nothing counted twice, and
    # never to more than the node was busy.
    assert top_level == facts["top_level_workloads_usage_usec"]
    assert top_level <= facts["proc_stat_busy_usec"]


@pytest.mark.parametrize("name", ALL)
def test_node_exposition_is_clean(name: str) -> None:
    node = NODES / name
    engine = Engine.start(make_config(meters="model", proc_path=node / "proc", cgroup_root=node / "cgroup",
                                      kubelet_log_path=node / "log", node_name=name))
    engine.tick(0.0)
    snap = engine.tick(5.0)
    assert len(snap.workloads) == len(expected(node)[0])
    text = Renderer().render(snap).text
    promtool = tool("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert lint.returncode == 0, lint.stderr.decode()


def test_workload_families_carry_the_labels_of_their_kind() -> None:
    for kind, labels in LABELS.items():
        assert metrics.WORKLOAD_FAMILIES[kind].labels == ("node", *labels, "zone", "source"), kind
        assert metrics.WORKLOAD_GPU_FAMILIES[kind].labels == ("node", *labels, "gpu", "gpu_uuid"), kind
