"""Every fixture node yields exactly the expected workloads, identities, parents and CPU times.

The nodes and their expected.yaml are described, with sources, in fixtures/README.md (section nodes/).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURES, make_config, tool

from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.workloads.cgroups import CgroupTree
from exporter.workloads.kubernetes import KubeletLogs
from exporter.workloads.labels import LABELS, label_values
from exporter.workloads.tree import UsageTracker, build_tree

NODES = FIXTURES.parent / "nodes"
Identity = tuple[str, tuple[tuple[str, str], ...], str]


def expected(node: Path) -> tuple[dict[Identity, int], dict]:
    data = yaml.safe_load((node / "expected.yaml").read_text())
    table = {}
    for w in data["workloads"]:
        labels = tuple((name, str(w["labels"][name])) for name in LABELS[w["kind"]])
        table[(w["kind"], labels, w.get("parent", ""))] = int(w["usage_usec"])
    return table, data["node"]


def found(node: Path) -> dict[Identity, int]:
    walker = CgroupTree(node / "cgroup")
    usages = walker.read()
    walker.close()
    tree = build_tree(usages, UsageTracker().deltas(usages))
    usage_by_key = {u.workload.key: u.usage_us for u in usages}
    kubelet = KubeletLogs(node / "log")
    present = [t.key for t in tree.top] + [c.key for t in tree.top for c in t.children]
    workloads = [tree.workloads[k] for k in present]
    kubelet.refresh(0.0, [w.uid for w in workloads if w.kind == "pod"],
                    [w.container_id for w in workloads if w.kind == "container"])
    table = {}
    for key in present:
        workload, parent = tree.workloads[key], tree.parents.get(key, "")
        pod_uid = workload.uid if workload.kind == "pod" else parent.removeprefix("pod:") * parent.startswith("pod:")
        values = label_values(workload, kubelet.pod(pod_uid) if pod_uid else None,
                              kubelet.container(workload.container_id) if workload.container_id else None)
        table[(workload.kind, tuple(zip(LABELS[workload.kind], values, strict=True)), parent)] = usage_by_key[key]
    return table


@pytest.mark.parametrize("name", sorted(p.name for p in NODES.iterdir()))
def test_node_yields_the_expected_workloads(name: str) -> None:
    want, facts = expected(NODES / name)
    got = found(NODES / name)
    assert sorted(got) == sorted(want)
    for identity, usage in want.items():
        assert got[identity] == usage, identity
    # Top-level workloads never claim more CPU than the node was busy.
    assert facts["top_level_workloads_usage_usec"] <= facts["proc_stat_busy_usec"]


@pytest.mark.parametrize("name", sorted(p.name for p in NODES.iterdir()))
def test_node_exposition_is_clean(name: str, tmp_path: Path) -> None:
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
