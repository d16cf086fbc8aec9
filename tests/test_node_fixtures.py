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
        given = dict(w["labels"])
        if w["kind"] == "container":
            # What the expected parent says: a pod's container carries the pod's UID, and every container
            # the kind of the workload it is counted in ("" when it is top-level itself).
            parent_kind, _, parent_id = w.get("parent", "").partition(":")
            given.setdefault("uid", parent_id if parent_kind == "pod" else "")
            given.setdefault("parent_kind", parent_kind)
        labels = tuple((name, str(given[name])) for name in LABELS[w["kind"]])
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


# Each layout family → (node, kind, runtime or other label that shows it): fixtures/README.md has the sources.
FAMILIES: dict[str, tuple[str, str, dict[str, str]]] = {
    "Kubernetes, containerd, systemd driver": ("k8s-systemd-containerd", "container", {"runtime": "containerd"}),
    "Kubernetes, CRI-O, systemd driver (conmon)": ("k8s-systemd-crio", "container", {"runtime": "cri-o"}),
    "Kubernetes, CRI-O, cgroupfs driver (conmon)": ("k8s-crio-cgroupfs", "container", {"runtime": "cri-o"}),
    "Kubernetes, cgroupfs driver (containerd)": ("k8s-cgroupfs", "container", {"runtime": ""}),
    "containerd names at the v1 hierarchy root": ("k8s-containerd-v1-root", "container", {"runtime": "containerd"}),
    "containerd names below containerd.service": ("k8s-containerd-v1-in-service", "pod", {"pod": "api-0"}),
    "cri-dockerd": ("k8s-cri-dockerd-v1", "container", {"runtime": "docker", "parent_kind": "pod"}),
    "Kata sandbox": ("k8s-sandboxed", "container", {"runtime": "kata"}),
    "gVisor sandbox": ("k8s-sandboxed", "pod", {"pod": "untrusted-0"}),
    "k3s / RKE2 (cgroupfs, v1)": ("k3s-v1-cgroupfs", "service", {"unit": "k3s.service"}),
    "MicroK8s": ("microk8s-v2-cgroupfs", "service", {"unit": "snap.microk8s.daemon-kubelite.service"}),
    "kind / minikube (Kubernetes in Docker)": ("kind-nested", "container", {"runtime": "docker", "parent_kind": ""}),
    "k3s inside an LXC container": ("proxmox", "container", {"runtime": "", "parent_kind": "pod"}),
    "Docker, systemd driver (v2)": ("kind-nested", "container", {"runtime": "docker"}),
    "Docker, cgroupfs driver (v1)": ("docker-v1", "container", {"runtime": "docker"}),
    "Docker at the root, /<id>, Docker-in-Docker": ("docker-cgroupfs-v2", "container", {"parent_kind": "container"}),
    "rootless Docker": ("docker-cgroupfs-v2", "container", {"runtime": "docker", "parent_kind": "user"}),
    "runsc (gVisor) without a cgroup path": ("docker-cgroupfs-v2", "container", {"runtime": ""}),
    "Podman rootless and rootful, systemd": ("podman-rootless", "container", {"runtime": "podman"}),
    "Podman, cgroupfs manager": ("podman-cgroupfs", "container", {"runtime": "podman"}),
    "Podman pods": ("podman-pods-quadlet", "container", {"runtime": "podman", "parent_kind": "pod"}),
    "Quadlet units (libpod-payload)": ("podman-pods-quadlet", "container", {"parent_kind": "service"}),
    "nerdctl and containerd namespaces": ("nerdctl-containerd", "container", {"runtime": "containerd"}),
    "iSulad": ("isulad-v1", "container", {"runtime": "isulad"}),
    "Amazon ECS, cgroup v1": ("ecs-ec2-v1", "container", {"runtime": "docker", "parent_kind": "pod"}),
    "Amazon ECS, cgroup v2": ("ecs-ec2-v2", "container", {"runtime": "docker", "parent_kind": "pod"}),
    "LXC / Incus / LXD": ("lxc-incus", "container", {"runtime": "lxc", "container": "web"}),
    "Proxmox VE containers": ("proxmox", "container", {"runtime": "lxc", "container": "101"}),
    "Proxmox VE VMs": ("proxmox", "vm", {"vm_id": "100"}),
    "libvirt QEMU (>= 7.1)": ("libvirt", "vm", {"hypervisor": "qemu"}),
    "libvirt QEMU in partitions, libvirt-lxc": ("libvirt-lxc-partitions", "container", {"runtime": "libvirt-lxc"}),
    "libvirt before 1.3 (no id)": ("libvirt-v1-pre-1.3", "vm", {"vm": "f20", "vm_id": ""}),
    "libvirt without systemd": ("libvirt-non-systemd", "vm", {"vm": "db"}),
    "systemd-nspawn / machined": ("nspawn", "container", {"runtime": "systemd-nspawn"}),
    "Slurm, cgroup/v2": ("slurm-v2", "job", {"job_id": "1234"}),
    "Slurm, cgroup/v2 with SLUIDs": ("slurm-v2-sluid", "job", {"job_id": "sEKNKTV3WPV500"}),
    "Slurm, cgroup/v1": ("slurm-v1", "job", {"job_id": "42", "user_id": "1000"}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_layout_family_has_a_node(family: str) -> None:
    node, kind, labels = FAMILIES[family]
    workloads = yaml.safe_load((NODES / node / "expected.yaml").read_text())["workloads"]
    assert any(w["kind"] == kind and labels.items() <= w["labels"].items() for w in workloads), family


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
    [labels] = [dict(labels) for kind, labels, _ in found(NODES / name)[0]
                if kind == "container" and dict(labels)["container_id"].startswith(container_id)]
    assert {key: labels[key] for key in want} == want
