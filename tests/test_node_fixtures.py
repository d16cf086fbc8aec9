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
        given = dict(w["labels"])
        if w["kind"] == "container":
            # What the expected parent says: a pod's container carries the pod's UID, and every container
            # the kind of the workload it is counted in ("" when it is top-level itself).
            parent_kind, _, parent_id = w.get("parent", "").partition(":")
            given.setdefault("uid", parent_id if parent_kind == "pod" else "")
            given.setdefault("parent_kind", parent_kind)
        labels = tuple((name, str(given[name])) for name in LABELS[w["kind"]])
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
        values = label_values(workload, parent, kubelet.pod(pod_uid) if pod_uid else None,
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


@pytest.mark.parametrize(("name", "container_id", "want"), [
    # A pod whose name the node does not know (no log directory): its containers still say they are inside it.
    ("k8s-systemd-containerd", "ad02f17e", {"pod": "", "uid": "88c0a391-5884-44e6-935f-73140830b057",
                                            "parent_kind": "pod"}),
    ("k8s-systemd-containerd", "80e6b5d0", {"pod": "ledger-0", "uid": "e88b7591-31db-4e32-98dc-b35f94c662cd",
                                            "parent_kind": "pod"}),
    # Rootless Podman: inside the user's series.
    ("podman-rootless", "59a89cd5", {"pod": "", "uid": "", "parent_kind": "user"}),
    # Docker outside Kubernetes: top-level, the only containers the node total adds.
    ("docker-v1", "78656416", {"pod": "", "uid": "", "parent_kind": ""}),
])
def test_container_series_say_what_contains_them(name: str, container_id: str, want: dict[str, str]) -> None:
    """What the recording rules select standalone containers by (`parent_kind=""`), on real layouts."""
    [labels] = [dict(labels) for kind, labels, _ in found(NODES / name)
                if kind == "container" and dict(labels)["container_id"].startswith(container_id)]
    assert {key: labels[key] for key in want} == want
