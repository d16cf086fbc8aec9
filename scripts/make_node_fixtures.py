#!/usr/bin/env python3
"""Write the generated node fixtures under fixtures/nodes/ (one node per cgroup layout family).

Each node below lists cgroups by path with the CPU time (µs) of the processes that ran directly in them, and,
for the workload cgroups, what a correct reader reports: kind, labels, parent. Everything else is derived
here, the same way for every node: hierarchical usage (a cgroup's usage is its own plus its children's, as
the kernel counts), cpu.stat or cpuacct.usage files, /proc/stat, the kubelet's log directories for names,
and expected.yaml. The layouts and their sources are in fixtures/README.md ("Layouts by family").

    python3 scripts/make_node_fixtures.py          # rewrite every generated node

The seven older nodes (docker-v1, k8s-*, kind-nested, libvirt, podman-rootless) are hand-made and not
touched. The ids are sha256 of a seed, so a rerun writes the same bytes.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

NODES = Path(__file__).resolve().parent.parent / "fixtures" / "nodes"
USER_HZ = 100


def hexid(seed: str, length: int = 64) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def uuid(seed: str) -> str:
    h = hexid(seed, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


@dataclass
class Expect:
    kind: str
    labels: dict[str, str]
    parent: str = ""
    minus: tuple[str, ...] = ()  # paths of top-level workloads nested in this one (their CPU is theirs)
    plus: tuple[str, ...] = ()  # paths of its members outside its cgroup (pods: containerd on v1)


def pod(uid: str, namespace: str = "", name: str = "", minus: tuple[str, ...] = (),
        plus: tuple[str, ...] = ()) -> Expect:
    return Expect("pod", {"namespace": namespace, "pod": name, "uid": uid}, minus=minus, plus=plus)


def ctr(cid: str = "", runtime: str = "", parent: str = "", namespace: str = "", pod: str = "", name: str = "",
        minus: tuple[str, ...] = ()) -> Expect:
    labels = {"namespace": namespace, "pod": pod, "container": name, "container_id": cid, "runtime": runtime,
              "parent_kind": parent.partition(":")[0]}
    return Expect("container", labels, parent, minus)


def svc(unit: str, minus: tuple[str, ...] = ()) -> Expect:
    return Expect("service", {"unit": unit}, minus=minus)


def vm(name: str, vm_id: str, hypervisor: str = "qemu") -> Expect:
    return Expect("vm", {"vm": name, "vm_id": vm_id, "hypervisor": hypervisor})


def user(uid: str, minus: tuple[str, ...] = ()) -> Expect:
    return Expect("user", {"user_id": uid}, minus=minus)


def job(job_id: str, user_id: str = "") -> Expect:
    return Expect("job", {"job_id": job_id, "user_id": user_id, "scheduler": "slurm"})


@dataclass
class Node:
    name: str
    version: int  # cgroup 1 (cpu,cpuacct hierarchy) or 2
    driver: str
    runtime: str
    cpus: int
    days: float  # uptime
    rules: str  # the wattlens rules this node exercises, for the expected.yaml header
    cgroups: list[tuple[str, int, Expect | None]]
    root_self: int  # CPU of kernel threads and anything outside every listed cgroup
    synthetic: list[tuple[Expect, tuple[str, ...]]] = field(default_factory=list)  # pods with no cgroup
    logs: bool = False  # write the kubelet's pods/ and containers/ log directories
    log_only: list[tuple[str, str, str]] = field(default_factory=list)  # (pod uid, container, id) with no cgroup


def write(node: Node) -> None:
    out = NODES / node.name
    shutil.rmtree(out, ignore_errors=True)
    own_ns: dict[str, int] = {"": node.root_self * 1000}
    for path, usec, _ in node.cgroups:
        # v1 counts ns: keep a few sub-µs digits so the µs values are rounded as in real cpuacct.usage.
        own_ns[path] = usec * 1000 + (int(hexid(path), 16) % 1000 if node.version == 1 else 0)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            own_ns.setdefault("/".join(parts[:depth]), 0)
    usage_ns = dict.fromkeys(own_ns, 0)
    for path, ns in own_ns.items():
        parts = path.split("/") if path else []
        for depth in range(len(parts) + 1):
            usage_ns["/".join(parts[:depth])] += ns
    usage = {path: ns // 1000 for path, ns in usage_ns.items()}

    base = out / "cgroup" / ("cpu,cpuacct" if node.version == 1 else "")
    for path in sorted(usage_ns):
        directory = base / path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").write_text("")
        user_share = usage_ns[path] * 7 // 10
        if node.version == 2:
            us = usage[path]
            (directory / "cpu.stat").write_text(
                f"usage_usec {us}\nuser_usec {us * 7 // 10}\nsystem_usec {us - us * 7 // 10}\n")
        else:
            (directory / "cpuacct.usage").write_text(f"{usage_ns[path]}\n")
            ticks = 1_000_000_000 // USER_HZ
            (directory / "cpuacct.stat").write_text(
                f"user {user_share // ticks}\nsystem {(usage_ns[path] - user_share) // ticks}\n")
            (directory / "tasks").write_text("")
    if node.version == 2:
        (out / "cgroup" / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    else:
        for link in ("cpu", "cpuacct"):
            (out / "cgroup" / link).symlink_to("cpu,cpuacct")

    busy_ticks = usage[""] * USER_HZ // 1_000_000
    _write_proc_stat(out, node, busy_ticks)
    if node.logs:
        _write_logs(out, node)

    expected_workloads = []
    top_level = 0
    for path, _, expect in node.cgroups:
        if expect is None:
            continue
        own = usage[path] - sum(usage[p] for p in expect.minus) + sum(usage[p] for p in expect.plus)
        entry: dict[str, object] = {"kind": expect.kind, "labels": expect.labels}
        if expect.parent:
            entry["parent"] = expect.parent
        entry |= {"path": path, "usage_usec": usage[path]}
        if own != usage[path]:
            entry["own_usec"] = own
        expected_workloads.append(entry)
        top_level += own if not expect.parent else 0
    for expect, members in node.synthetic:
        total = sum(usage[p] for p in members)
        expected_workloads.append({"kind": "pod", "labels": expect.labels, "path": "", "usage_usec": total})
        top_level += total
    facts = {
        "name": node.name,
        "cgroup_version": node.version,
        "cgroup_driver": node.driver,
        "container_runtime": node.runtime,
        "cpus": node.cpus,
        "user_hz": USER_HZ,
        "proc_stat_busy_usec": busy_ticks * 1_000_000 // USER_HZ,
        "root_usage_usec": usage[""],
        "top_level_workloads_usage_usec": top_level,
    }
    header = (
        f"# Expected workloads for fixtures/nodes/{node.name}/ (see fixtures/README.md, section `nodes/`).\n"
        "# Generated by scripts/make_node_fixtures.py from the node's spec there; edit the spec, not this file.\n"
        "# kind/labels/parent: what a correct reader reports. parent = identity key of the enclosing workload.\n"
        "# path: the workload's cgroup directory relative to cgroup/ ('' for a pod that has no cgroup).\n"
        "# usage_usec: the value written in that directory (for a pod without a cgroup, its containers' sum).\n"
        "# own_usec, where given: the CPU of the workload's own series (usage_usec less the top-level workloads\n"
        "# inside it, plus members outside it); otherwise the same as usage_usec.\n"
        f"# wattlens rules exercised: {node.rules}\n"
    )
    body = yaml.safe_dump({"node": facts, "workloads": expected_workloads}, sort_keys=False, width=200)
    (out / "expected.yaml").write_text(header + body)


def _write_proc_stat(out: Path, node: Node, busy: int) -> None:
    total = int(node.days * 86400 * USER_HZ) * node.cpus
    user_t, nice, system, irq = busy * 70 // 100, busy // 500, busy * 26 // 100, busy // 100
    softirq = busy - user_t - nice - system - irq
    iowait = total // 400
    idle = total - busy - iowait
    assert idle > 0, node.name
    fields = [user_t, nice, system, idle, iowait, irq, softirq, 0, 0, 0]
    lines = ["cpu  " + " ".join(map(str, fields))]
    for cpu in range(node.cpus):
        share = [f // node.cpus + (f % node.cpus if cpu == 0 else 0) for f in fields]
        lines.append(f"cpu{cpu} " + " ".join(map(str, share)))
    lines += ["intr 0", "ctxt 0", f"btime {1_760_000_000 - int(node.days * 86400)}", "processes 0",
              "procs_running 1", "procs_blocked 0", "softirq 0"]
    (out / "proc").mkdir(parents=True)
    (out / "proc" / "stat").write_text("\n".join(lines) + "\n")


def _write_logs(out: Path, node: Node) -> None:
    """/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log and the /var/log/containers links the kubelet keeps,
    for every named pod and named container of the spec."""
    expects = [e for _, _, e in node.cgroups if e] + [e for e, _ in node.synthetic]
    pods = {e.labels["uid"]: e.labels for e in expects if e.kind == "pod" and e.labels["pod"]}
    (out / "log" / "pods").mkdir(parents=True)
    (out / "log" / "containers").mkdir(parents=True)
    for labels in pods.values():
        (out / "log" / "pods" / f"{labels['namespace']}_{labels['pod']}_{labels['uid']}").mkdir()
    named = [(e.parent.removeprefix("pod:"), e.labels["container"], e.labels["container_id"]) for e in expects
             if e.kind == "container" and e.labels["container"] and e.parent.startswith("pod:")]
    for uid, container, container_id in named + node.log_only:
        p = pods[uid]
        pod_dir = f"{p['namespace']}_{p['pod']}_{p['uid']}"
        log_dir = out / "log" / "pods" / pod_dir / container
        log_dir.mkdir()
        (log_dir / "0.log").write_text("")
        link = f"{p['pod']}_{p['namespace']}_{container}-{container_id}.log"
        (out / "log" / "containers" / link).symlink_to(f"../pods/{pod_dir}/{container}/0.log")


# --- the nodes ------------------------------------------------------------------------------------------------

def k8s_crio_cgroupfs() -> Node:
    db, ing, batch = uuid("crio-db"), uuid("crio-ingress"), uuid("crio-batch")
    pg, infra, ctl, rep = hexid("crio-pg"), hexid("crio-infra"), hexid("crio-ctl"), hexid("crio-report")
    g, b, e = f"kubepods/pod{db}", f"kubepods/burstable/pod{ing}", f"kubepods/besteffort/pod{batch}"
    return Node(
        "k8s-crio-cgroupfs", 2, "cgroupfs", "cri-o", 8, 12.0,
        "CRI-O's cgroupfs names (crio-<id> without .scope) are containers; crio-conmon-<id> stays in the pod",
        [
            ("init.scope", 41_203_118, None),
            ("system.slice/crio.service", 2_310_554_201, svc("crio.service")),
            ("system.slice/kubelet.service", 3_905_118_442, svc("kubelet.service")),
            ("system.slice/sshd.service", 12_337_001, svc("sshd.service")),
            (g, 0, pod(db, "db", "postgres-0")),
            (f"{g}/crio-{pg}", 55_120_993_514, ctr(pg, "cri-o", f"pod:{db}", "db", "postgres-0", "postgres")),
            (f"{g}/crio-conmon-{pg}", 61_204_337, None),
            ("kubepods/burstable", 0, None),
            (b, 1_203_441, pod(ing, "ingress-nginx", "ingress-nginx-controller-7d9c8f5b6-x2kqp")),
            (f"{b}/crio-{infra}", 8_221_007, ctr(infra, "cri-o", f"pod:{ing}", "ingress-nginx",
                                                 "ingress-nginx-controller-7d9c8f5b6-x2kqp")),
            (f"{b}/crio-conmon-{infra}", 3_112_904, None),
            (f"{b}/crio-{ctl}", 9_338_712_055, ctr(ctl, "cri-o", f"pod:{ing}", "ingress-nginx",
                                                   "ingress-nginx-controller-7d9c8f5b6-x2kqp", "controller")),
            (f"{b}/crio-conmon-{ctl}", 40_551_223, None),
            (e, 0, pod(batch, "reports", "nightly-report-29184960-qz7wd")),
            (f"{e}/crio-{rep}", 611_004_203, ctr(rep, "cri-o", f"pod:{batch}", "reports",
                                                 "nightly-report-29184960-qz7wd", "report")),
            (f"{e}/crio-conmon-{rep}", 2_003_117, None),
            ("user.slice/user-1000.slice/session-3.scope", 88_410_553, None),
            ("user.slice/user-1000.slice", 0, user("1000")),
        ],
        root_self=6_402_551_229, logs=True,
    )


def k8s_containerd_v1_root() -> Node:
    """kubelet with the systemd driver, runc with cgroupfs: the pod slices exist (kubelet made them), but runc
    took `<pod slice>:cri-containerd:<id>` as a directory relative to its own cgroup, the cpuacct root."""
    web, dns = uuid("v1root-web"), uuid("v1root-dns")
    web_, dns_ = web.replace("-", "_"), dns.replace("-", "_")
    pause1, app, pause2, coredns = (hexid(f"v1root-{x}") for x in ("pause1", "app", "pause2", "coredns"))
    web_slice = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{web_}.slice"
    dns_slice = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{dns_}.slice"
    c1 = f"kubepods-burstable-pod{web_}.slice:cri-containerd:{pause1}"
    c2 = f"kubepods-burstable-pod{web_}.slice:cri-containerd:{app}"
    c3 = f"kubepods-burstable-pod{dns_}.slice:cri-containerd:{pause2}"
    c4 = f"kubepods-burstable-pod{dns_}.slice:cri-containerd:{coredns}"
    return Node(
        "k8s-containerd-v1-root", 1, "systemd (kubelet), cgroupfs (runc)", "containerd", 4, 30.0,
        "a container named `<pod slice>:cri-containerd:<id>` outside its pod's cgroup is still that pod's (its CPU "
        "is added to the pod's)",
        [
            ("system.slice/kubelet.service", 1_804_311_977, svc("kubelet.service")),
            (web_slice, 0, pod(web, "shop", "web-5c8d7b9f4-n7xkq", plus=(c1, c2))),
            (dns_slice, 0, pod(dns, "kube-system", "coredns-76f75df574-9wq5l", plus=(c3, c4))),
            (c1, 31_005, ctr(pause1, "containerd", f"pod:{web}", "shop", "web-5c8d7b9f4-n7xkq")),
            (c2, 7_203_998_115, ctr(app, "containerd", f"pod:{web}", "shop", "web-5c8d7b9f4-n7xkq", "web")),
            (c3, 29_877, ctr(pause2, "containerd", f"pod:{dns}", "kube-system", "coredns-76f75df574-9wq5l")),
            (c4, 933_120_446, ctr(coredns, "containerd", f"pod:{dns}", "kube-system", "coredns-76f75df574-9wq5l",
                                   "coredns")),
        ],
        root_self=2_113_004_981, logs=True,
    )


def k8s_containerd_v1_in_service() -> Node:
    """The Kepler-documented variant: runc's relative directories land below containerd.service, and this
    cpuacct hierarchy has no kubepods.slice (the kubelet's slices exist only in other controllers)."""
    api, pause, app = uuid("v1svc-api"), hexid("v1svc-pause"), hexid("v1svc-app")
    api_ = api.replace("-", "_")
    base = "system.slice/containerd.service"
    c1 = f"{base}/kubepods-besteffort-pod{api_}.slice:cri-containerd:{pause}"
    c2 = f"{base}/kubepods-besteffort-pod{api_}.slice:cri-containerd:{app}"
    return Node(
        "k8s-containerd-v1-in-service", 1, "systemd (kubelet), cgroupfs (runc)", "containerd", 4, 9.0,
        "containers below containerd.service that name a pod with no cgroup form that pod; their CPU is taken "
        "out of containerd.service",
        [
            (base, 903_211_874, svc("containerd.service", minus=(c1, c2))),
            (c1, 18_220, ctr(pause, "containerd", f"pod:{api}", "payments", "api-0")),
            (c2, 2_601_877_309, ctr(app, "containerd", f"pod:{api}", "payments", "api-0", "api")),
            ("system.slice/kubelet.service", 744_129_001, svc("kubelet.service")),
        ],
        root_self=805_330_117,
        synthetic=[(pod(api, "payments", "api-0"), (c1, c2))],
        logs=True,
    )


def k8s_sandboxed() -> Node:
    """Kata (sandbox_cgroup_only=false, the default: vCPU threads in kata_<sandbox>, the VMM, shim and I/O
    threads in /kata_overhead/<sandbox>) and gVisor (runsc runs the whole sandbox in the pause container's
    cgroup; the app container's cgroup is created empty) next to a runc pod, containerd with cgroupfs."""
    kp, gp, rp = uuid("sandbox-kata"), uuid("sandbox-gvisor"), uuid("sandbox-runc")
    ksb, gsb, gapp, rpause, rapp = (hexid(f"sandbox-{x}") for x in ("ksb", "gsb", "gapp", "rpause", "rapp"))
    k, g, r = f"kubepods/burstable/pod{kp}", f"kubepods/besteffort/pod{gp}", f"kubepods/besteffort/pod{rp}"
    return Node(
        "k8s-sandboxed", 2, "cgroupfs", "containerd (runc, kata, runsc)", 16, 3.5,
        "a Kata sandbox (kata_<id>) is the pod's one visible container; /kata_overhead is unattributed; gVisor's "
        "sandbox is its pause container",
        [
            ("system.slice/containerd.service", 401_998_230, svc("containerd.service")),
            ("system.slice/kubelet.service", 620_544_187, svc("kubelet.service")),
            (k, 0, pod(kp, "ci", "build-7f6c9d-kata")),
            (f"{k}/kata_{ksb}", 4_880_120_556, ctr(ksb, "kata", f"pod:{kp}", "ci", "build-7f6c9d-kata")),
            (f"kata_overhead/{ksb}", 702_445_019, None),
            (g, 0, pod(gp, "sandbox", "untrusted-0")),
            (f"{g}/{gsb}", 2_240_873_331, ctr(gsb, "", f"pod:{gp}", "sandbox", "untrusted-0")),
            (f"{g}/{gapp}", 0, ctr(gapp, "", f"pod:{gp}", "sandbox", "untrusted-0", "app")),
            (r, 0, pod(rp, "web", "static-66b8d-x4d2c")),
            (f"{r}/{rpause}", 20_115, ctr(rpause, "", f"pod:{rp}", "web", "static-66b8d-x4d2c")),
            (f"{r}/{rapp}", 390_227_846, ctr(rapp, "", f"pod:{rp}", "web", "static-66b8d-x4d2c", "nginx")),
        ],
        root_self=1_004_332_871, logs=True,
        # The Kata pod's container runs in the guest: the kubelet logs it, the host has no cgroup for it.
        log_only=[(kp, "compile", hexid("sandbox-kbuild"))],
    )


def k3s_v1_cgroupfs() -> Node:
    """k3s with its embedded containerd on a cgroup v1 host, cgroupfs (k3s turns the systemd driver on only
    under systemd with cpuset delegated); containerd's shims stay in k3s.service."""
    sv, lb = uuid("k3s-traefik"), uuid("k3s-svclb")
    t_pause, t_app, l_pause, l_app = (hexid(f"k3s-{x}") for x in ("tpause", "tapp", "lpause", "lapp"))
    t, lb_path = f"kubepods/burstable/pod{sv}", f"kubepods/besteffort/pod{lb}"
    return Node(
        "k3s-v1-cgroupfs", 1, "cgroupfs", "containerd (k3s)", 2, 64.0,
        "cgroupfs pods on v1 (bare <64hex> containers, runtime \"\"); k3s.service is a service",
        [
            ("system.slice/k3s.service", 3_320_541_876, svc("k3s.service")),
            ("kubepods/burstable", 0, None),
            (t, 0, pod(sv, "kube-system", "traefik-7d5f6474df-9xq2m")),
            (f"{t}/{t_pause}", 12_004, ctr(t_pause, "", f"pod:{sv}", "kube-system", "traefik-7d5f6474df-9xq2m")),
            (f"{t}/{t_app}", 870_117_329, ctr(t_app, "", f"pod:{sv}", "kube-system", "traefik-7d5f6474df-9xq2m",
                                               "traefik")),
            (lb_path, 0, pod(lb, "kube-system", "svclb-traefik-5b2d0c1e-mh7rt")),
            (f"{lb_path}/{l_pause}", 9_871, ctr(l_pause, "", f"pod:{lb}", "kube-system",
                                                 "svclb-traefik-5b2d0c1e-mh7rt")),
            (f"{lb_path}/{l_app}", 44_120_310, ctr(l_app, "", f"pod:{lb}", "kube-system",
                                                    "svclb-traefik-5b2d0c1e-mh7rt", "lb-tcp-80")),
        ],
        root_self=901_004_112, logs=True,
    )


def microk8s_v2() -> Node:
    """MicroK8s: the kubelet's default cgroupfs driver (no --cgroup-driver in default-args/kubelet) on a v2
    host; the snap's daemons are services."""
    hp = uuid("mk8s-hostpath")
    pause, app = hexid("mk8s-pause"), hexid("mk8s-app")
    p, name = f"kubepods/besteffort/pod{hp}", "hostpath-provisioner-7df77bc496-kq5l8"
    return Node(
        "microk8s-v2-cgroupfs", 2, "cgroupfs", "containerd (MicroK8s snap)", 4, 5.0,
        "snap services (snap.microk8s.daemon-*.service) are services; cgroupfs pods",
        [
            ("system.slice/snap.microk8s.daemon-kubelite.service", 1_540_227_908,
             svc("snap.microk8s.daemon-kubelite.service")),
            ("system.slice/snap.microk8s.daemon-containerd.service", 330_118_442,
             svc("snap.microk8s.daemon-containerd.service")),
            ("system.slice/snap.microk8s.daemon-k8s-dqlite.service", 402_993_100,
             svc("snap.microk8s.daemon-k8s-dqlite.service")),
            (p, 0, pod(hp, "kube-system", name)),
            (f"{p}/{pause}", 8_004, ctr(pause, "", f"pod:{hp}", "kube-system", name)),
            (f"{p}/{app}", 31_887_210, ctr(app, "", f"pod:{hp}", "kube-system", name, "hostpath-provisioner")),
        ],
        root_self=288_410_006, logs=True,
    )


def k8s_cri_dockerd_v1() -> Node:
    """Kubernetes with Docker through cri-dockerd, systemd driver, cgroup v1 (CJLove/rt-operator notes)."""
    g = uuid("dockerd-guaranteed")
    g_ = g.replace("-", "_")
    pause, app = hexid("dockerd-pause"), hexid("dockerd-app")
    p = f"kubepods.slice/kubepods-pod{g_}.slice"
    return Node(
        "k8s-cri-dockerd-v1", 1, "systemd", "docker (cri-dockerd)", 4, 20.0,
        "docker-<id>.scope under a pod slice is a pod container with runtime docker",
        [
            ("system.slice/docker.service", 1_201_773_650, svc("docker.service")),
            ("system.slice/cri-docker.service", 310_442_918, svc("cri-docker.service")),
            ("system.slice/kubelet.service", 904_118_337, svc("kubelet.service")),
            (p, 0, pod(g, "rt", "rt-app-0")),
            (f"{p}/docker-{pause}.scope", 14_002, ctr(pause, "docker", f"pod:{g}", "rt", "rt-app-0")),
            (f"{p}/docker-{app}.scope", 19_220_874_101, ctr(app, "docker", f"pod:{g}", "rt", "rt-app-0", "rt-app")),
        ],
        root_self=1_870_224_019, logs=True,
    )


def podman_cgroupfs() -> Node:
    """Podman with cgroup_manager = "cgroupfs": containers in /libpod_parent/libpod-<id>, conmon of them all
    in /libpod_parent/conmon; a pod is /libpod_parent/<pod id> with its own conmon directory."""
    web, cache, pod_id, infra, app = (hexid(f"pcgfs-{x}") for x in ("web", "cache", "pod", "infra", "app"))
    base, p = "libpod_parent", f"libpod_parent/{pod_id}"
    return Node(
        "podman-cgroupfs", 2, "cgroupfs", "podman (rootful)", 4, 40.0,
        "libpod-<id> without .scope is a Podman container; /libpod_parent/<pod id> is a pod; conmon is not a "
        "workload (unattributed at the top, the pod's residual inside a pod)",
        [
            ("system.slice/sshd.service", 20_113_004, svc("sshd.service")),
            (f"{base}/conmon", 150_229_117, None),
            (f"{base}/libpod-{web}", 3_840_552_871, ctr(web, "podman")),
            (f"{base}/libpod-{cache}", 611_024_338, ctr(cache, "podman")),
            (p, 0, pod(pod_id)),
            (f"{p}/conmon", 20_118_774, None),
            (f"{p}/libpod-{infra}", 1_044_207, ctr(infra, "podman", f"pod:{pod_id}")),
            (f"{p}/libpod-{app}", 1_402_338_619, ctr(app, "podman", f"pod:{pod_id}")),
        ],
        root_self=300_118_224,
    )


def podman_pods_quadlet() -> Node:
    """Podman with systemd: a rootful pod slice, a Quadlet unit (--cgroups=split: the payload beside conmon's
    `runtime` directory), and a user's rootless Quadlet unit, rootless pod, and a rootless container with a
    cgroupfs parent (no .scope)."""
    rpod, rinfra, rapp, quad = (hexid(f"pq-{x}") for x in ("rpod", "rinfra", "rapp", "quad"))
    upod, uinfra, uapp, uquad, ucg = (hexid(f"pq-{x}") for x in ("upod", "uinfra", "uapp", "uquad", "ucg"))
    rp = f"machine.slice/machine-libpod_pod_{rpod}.slice"
    u = "user.slice/user-1000.slice"
    svc_dir = f"{u}/user@1000.service"
    up = f"{svc_dir}/user.slice/user-libpod_pod_{upod}.slice"
    return Node(
        "podman-pods-quadlet", 2, "systemd", "podman (rootful and rootless)", 8, 6.0,
        "Podman pods are pods; Quadlet payloads (libpod-payload-<id>) are containers of their service (or of "
        "the user, rootless); a rootless pod is taken out of its user",
        [
            (rp, 0, pod(rpod)),
            (f"{rp}/libpod-{rinfra}.scope/container", 902_117, None),
            (f"{rp}/libpod-{rinfra}.scope", 0, ctr(rinfra, "podman", f"pod:{rpod}")),
            (f"{rp}/libpod-conmon-{rinfra}.scope", 3_004_229, None),
            (f"{rp}/libpod-{rapp}.scope/container", 4_411_203_358, None),
            (f"{rp}/libpod-{rapp}.scope", 0, ctr(rapp, "podman", f"pod:{rpod}")),
            (f"{rp}/libpod-conmon-{rapp}.scope", 22_187_305, None),
            ("system.slice/webapp.service", 0, svc("webapp.service")),
            ("system.slice/webapp.service/runtime", 17_662_904, None),
            (f"system.slice/webapp.service/libpod-payload-{quad}", 2_209_318_446,
             ctr(quad, "podman", "service:webapp.service")),
            (f"{u}/session-2.scope", 40_221_873, None),
            (f"{svc_dir}/init.scope", 3_118_002, None),
            (f"{svc_dir}/app.slice/api.service/runtime", 6_004_112, None),
            (f"{svc_dir}/app.slice/api.service/libpod-payload-{uquad}", 880_420_017, ctr(uquad, "podman", "user:1000")),
            (up, 0, pod(upod)),
            (f"{up}/libpod-{uinfra}.scope/container", 400_188, None),
            (f"{up}/libpod-{uinfra}.scope", 0, ctr(uinfra, "podman", f"pod:{upod}")),
            (f"{up}/libpod-conmon-{uinfra}.scope", 1_118_004, None),
            (f"{up}/libpod-{uapp}.scope/container", 1_550_003_947, None),
            (f"{up}/libpod-{uapp}.scope", 0, ctr(uapp, "podman", f"pod:{upod}")),
            (f"{up}/libpod-conmon-{uapp}.scope", 9_337_118, None),
            (f"{svc_dir}/podman-cgroupfs/libpod-{ucg}", 120_774_015, ctr(ucg, "podman", "user:1000")),
            (u, 0, user("1000", minus=(up,))),
        ],
        root_self=512_330_114,
    )


def nerdctl_containerd() -> Node:
    """nerdctl (systemd driver by default on v2: `system.slice/nerdctl-<id>.scope`, rootless under the user's
    user.slice), and a `ctr run` container at containerd's default `/<namespace>/<id>`."""
    n1, n2, rl, ctr_default, ctr_other = (hexid(f"nerd-{x}") for x in ("n1", "n2", "rootless", "ctr", "other"))
    u = "user.slice/user-1000.slice"
    return Node(
        "nerdctl-containerd", 2, "systemd (nerdctl), cgroupfs (ctr)", "containerd", 4, 2.0,
        "nerdctl-<id>.scope and /default/<id> are containerd containers; /<other namespace>/<id> has runtime \"\"",
        [
            ("system.slice/containerd.service", 120_552_091, svc("containerd.service")),
            (f"system.slice/nerdctl-{n1}.scope", 2_410_002_378, ctr(n1, "containerd")),
            (f"system.slice/nerdctl-{n2}.scope", 75_330_412, ctr(n2, "containerd")),
            (f"default/{ctr_default}", 402_117_905, ctr(ctr_default, "containerd")),
            (f"ci/{ctr_other}", 98_004_316, ctr(ctr_other, "")),
            (f"{u}/user@1000.service/app.slice/containerd.service", 30_228_417, None),
            (f"{u}/user@1000.service/user.slice/nerdctl-{rl}.scope", 610_337_048, ctr(rl, "containerd", "user:1000")),
            (f"{u}/session-1.scope", 11_402_006, None),
            (u, 0, user("1000")),
        ],
        root_self=180_774_331,
    )


def isulad_v1() -> Node:
    """iSulad with its default cgroupfs parent /isulad (openEuler), cgroup v1."""
    a, b = hexid("isulad-a"), hexid("isulad-b")
    return Node(
        "isulad-v1", 1, "cgroupfs", "isulad", 8, 11.0,
        "/isulad/<id> is an iSulad container",
        [
            ("system.slice/isulad.service", 330_871_002, svc("isulad.service")),
            (f"isulad/{a}", 5_120_448_993, ctr(a, "isulad")),
            (f"isulad/{b}", 804_113_276, ctr(b, "isulad")),
        ],
        root_self=700_229_348,
    )


def ecs_v1() -> Node:
    """Amazon ECS on cgroup v1 (Amazon Linux 2): task cgroups /ecs/<task id> with Docker's containers inside,
    the agent itself a Docker container at /docker/<id>. A task from before the long ARN format has a UUID."""
    t1, t2 = hexid("ecs1-task1", 32), uuid("ecs1-task2")
    app, envoy, worker, agent = (hexid(f"ecs1-{x}") for x in ("app", "envoy", "worker", "agent"))
    return Node(
        "ecs-ec2-v1", 1, "cgroupfs", "docker (ECS agent)", 2, 17.0,
        "ECS tasks are pods (uid = task id) with their Docker containers; the agent is a standalone container",
        [
            ("system.slice/docker.service", 250_447_338, svc("docker.service")),
            ("system.slice/ecs.service", 11_204_006, svc("ecs.service")),
            (f"docker/{agent}", 420_118_775, ctr(agent, "docker")),
            (f"ecs/{t1}", 0, pod(t1)),
            (f"ecs/{t1}/{app}", 3_002_447_219, ctr(app, "docker", f"pod:{t1}")),
            (f"ecs/{t1}/{envoy}", 440_003_127, ctr(envoy, "docker", f"pod:{t1}")),
            (f"ecs/{t2}", 0, pod(t2)),
            (f"ecs/{t2}/{worker}", 1_208_774_016, ctr(worker, "docker", f"pod:{t2}")),
        ],
        root_self=620_114_802,
    )


def ecs_v2() -> Node:
    """Amazon ECS on cgroup v2 (Amazon Linux 2023): ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope."""
    t1, t2 = hexid("ecs2-task1", 32), hexid("ecs2-task2", 32)
    app, sidecar, job_ctr, agent = (hexid(f"ecs2-{x}") for x in ("app", "sidecar", "job", "agent"))
    s1, s2 = f"ecstasks.slice/ecstasks-{t1}.slice", f"ecstasks.slice/ecstasks-{t2}.slice"
    return Node(
        "ecs-ec2-v2", 2, "systemd", "docker (ECS agent)", 4, 8.0,
        "ecstasks-<task>.slice is a pod; its docker-<id>.scope containers are its children",
        [
            ("system.slice/docker.service", 301_227_560, svc("docker.service")),
            ("system.slice/ecs.service", 14_887_120, svc("ecs.service")),
            (f"system.slice/docker-{agent}.scope", 388_004_721, ctr(agent, "docker")),
            (s1, 0, pod(t1)),
            (f"{s1}/docker-{app}.scope", 6_604_112_987, ctr(app, "docker", f"pod:{t1}")),
            (f"{s1}/docker-{sidecar}.scope", 220_301_845, ctr(sidecar, "docker", f"pod:{t1}")),
            (s2, 0, pod(t2)),
            (f"{s2}/docker-{job_ctr}.scope", 912_004_338, ctr(job_ctr, "docker", f"pod:{t2}")),
        ],
        root_self=840_229_117,
    )


def docker_cgroupfs_v2() -> Node:
    """Docker with the cgroupfs driver on cgroup v2: containers at /docker/<id>; a Docker-in-Docker container
    (its entrypoint moves itself to /init, its dockerd puts containers in its /docker); gVisor's runsc run
    directly, which defaults to /<id>; and a user's rootless Docker (systemd driver)."""
    web, db, dind, in1, in2, runsc, rl = (
        hexid(f"dcg-{x}") for x in ("web", "db", "dind", "inner1", "inner2", "runsc", "rootless")
    )
    u = "user.slice/user-1000.slice"
    return Node(
        "docker-cgroupfs-v2", 2, "cgroupfs (rootful), systemd (rootless)", "docker", 8, 25.0,
        "/docker/<id> at the root, /<id> and Docker-in-Docker (inner containers are the outer one's children)",
        [
            ("system.slice/docker.service", 702_441_339, svc("docker.service")),
            ("system.slice/containerd.service", 288_120_774, svc("containerd.service")),
            (f"docker/{web}", 2_880_113_904, ctr(web, "docker")),
            (f"docker/{db}", 7_330_552_118, ctr(db, "docker")),
            (f"docker/{dind}/init", 402_118_339, None),
            (f"docker/{dind}/docker/{in1}", 1_120_006_447, ctr(in1, "docker", f"container:{dind}")),
            (f"docker/{dind}/docker/{in2}", 60_227_119, ctr(in2, "docker", f"container:{dind}")),
            (f"docker/{dind}", 0, ctr(dind, "docker")),
            (runsc, 330_887_016, ctr(runsc, "")),
            (f"{u}/user@1000.service/app.slice/docker.service", 40_118_220, None),
            (f"{u}/user@1000.service/user.slice/docker-{rl}.scope", 510_004_338, ctr(rl, "docker", "user:1000")),
            (u, 0, user("1000")),
        ],
        root_self=1_002_774_118,
    )


def lxc_incus() -> Node:
    """Incus (liblxc defaults, cgroup v2): lxc.payload.<name> per container, lxc.monitor.<name> for its
    monitor, lxc.pivot; a container of project "shop" is named shop_<name>. Docker runs inside one."""
    inner = hexid("incus-inner")
    web = "lxc.payload.web"
    return Node(
        "lxc-incus", 2, "cgroupfs (liblxc)", "lxc (Incus)", 16, 33.0,
        "lxc.payload.<name> is a container (runtime lxc, container=<name>); lxc.monitor.* and lxc.pivot are not "
        "workloads; Docker inside an LXC container is its child; units inside it are not host services",
        [
            ("system.slice/incus.service", 880_447_120, svc("incus.service")),
            ("system.slice/incus-lxcfs.service", 120_004_118, svc("incus-lxcfs.service")),
            (f"{web}/init.scope", 20_118_004, None),
            (f"{web}/system.slice/sshd.service", 3_004_117, None),
            (f"{web}/system.slice/docker.service", 180_227_448, None),
            (f"{web}/system.slice/docker-{inner}.scope", 2_401_338_915, ctr(inner, "docker", "container:lxc:web")),
            (web, 0, Expect("container", {"namespace": "", "pod": "", "container": "web", "container_id": "",
                                          "runtime": "lxc", "parent_kind": ""})),
            ("lxc.monitor.web", 4_118_203, None),
            ("lxc.payload.shop_db/system.slice/postgresql.service", 6_120_448_775, None),
            ("lxc.payload.shop_db", 0, Expect("container", {"namespace": "", "pod": "", "container": "shop_db",
                                                            "container_id": "", "runtime": "lxc", "parent_kind": ""})),
            ("lxc.monitor.shop_db", 3_877_014, None),
            ("lxc.pivot", 0, None),
        ],
        root_self=1_400_227_339,
    )


def proxmox() -> Node:
    """Proxmox VE 8 (cgroup v2): a CT's payload in lxc/<vmid> with its processes in lxc/<vmid>/ns, its
    monitor in lxc.monitor/<vmid>; VMs in qemu.slice/<vmid>.scope. CT 102 runs k3s (cgroupfs) inside."""
    k3s_pod, pause, app = uuid("pve-k3s-pod"), hexid("pve-pause"), hexid("pve-app")
    inner_pod = f"lxc/102/ns/kubepods/besteffort/pod{k3s_pod}"

    def ct(vmid: str) -> Expect:
        return Expect("container", {"namespace": "", "pod": "", "container": vmid, "container_id": "",
                                    "runtime": "lxc", "parent_kind": ""}, minus=(inner_pod,) if vmid == "102" else ())

    return Node(
        "proxmox", 2, "systemd (host), cgroupfs (liblxc, k3s in CT 102)", "lxc, qemu (Proxmox VE)", 32, 120.0,
        "lxc/<vmid> is an LXC container, lxc.monitor/<vmid> is not a workload, qemu.slice/<vmid>.scope is a VM; a "
        "pod inside a CT is top-level and taken out of the CT",
        [
            ("system.slice/pvedaemon.service", 904_337_118, svc("pvedaemon.service")),
            ("system.slice/pveproxy.service", 1_220_448_093, svc("pveproxy.service")),
            ("system.slice/pve-cluster.service", 2_330_118_774, svc("pve-cluster.service")),
            ("system.slice/pvestatd.service", 3_102_994_207, svc("pvestatd.service")),
            ("lxc/101/ns/init.scope", 110_227_004, None),
            ("lxc/101/ns/system.slice/nginx.service", 2_804_117_339, None),
            ("lxc/101", 0, ct("101")),
            ("lxc.monitor/101", 8_004_227, None),
            ("lxc/102/ns/init.scope", 60_112_775, None),
            ("lxc/102/ns/system.slice/k3s.service", 5_330_118_774, None),
            (inner_pod, 0, pod(k3s_pod)),
            (f"{inner_pod}/{pause}", 11_204, ctr(pause, "", f"pod:{k3s_pod}")),
            (f"{inner_pod}/{app}", 903_448_117, ctr(app, "", f"pod:{k3s_pod}")),
            ("lxc/102", 0, ct("102")),
            ("lxc.monitor/102", 7_118_446, None),
            ("qemu.slice/100.scope", 88_003_447_219, vm("", "100")),
            ("qemu.slice/103.scope", 12_447_118_006, vm("", "103")),
        ],
        root_self=9_004_227_118,
    )


def libvirt_lxc_partitions() -> Node:
    """libvirt >= 7.1 with systemd: a libvirt-lxc container and a VM in a custom partition (machine slices
    below machine.slice), as in libvirt's docs/cgroups.rst."""
    part = "machine.slice/machine-engineering.slice/machine-engineering-testing.slice"
    c1 = "machine.slice/machine-lxc\\x2d11111\\x2dcontainer1.scope"
    ci = f"{part}/machine-qemu\\x2d4\\x2dci.scope"
    return Node(
        "libvirt-lxc-partitions", 2, "systemd", "libvirt (qemu, lxc)", 24, 14.0,
        "machine-lxc\\x2d<id>\\x2d<name>.scope is a container (runtime libvirt-lxc), not a VM; VMs in partition "
        "slices are VMs",
        [
            ("system.slice/virtqemud.service", 402_118_774, svc("virtqemud.service")),
            ("system.slice/virtlxcd.service", 90_227_003, svc("virtlxcd.service")),
            (c1, 1_804_446_117, Expect("container", {"namespace": "", "pod": "", "container": "container1",
                                                     "container_id": "11111", "runtime": "libvirt-lxc",
                                                     "parent_kind": ""})),
            (f"{ci}/libvirt/emulator", 330_118_004, None),
            (f"{ci}/libvirt/vcpu0", 18_447_220_337, None),
            (f"{ci}/libvirt/vcpu1", 17_902_118_448, None),
            (ci, 0, vm("ci", "4")),
        ],
        root_self=2_004_118_337,
    )


def libvirt_v1_pre13() -> Node:
    """libvirt 1.1.1–1.2.x with systemd on cgroup v1: machine scopes named without the domain id
    (`machine-qemu\\x2d<name>.scope`, `machine-lxc\\x2d<name>.scope`) and no `libvirt` level."""
    f20 = "machine.slice/machine-qemu\\x2df20.scope"
    return Node(
        "libvirt-v1-pre-1.3", 1, "systemd", "libvirt (qemu, lxc)", 8, 70.0,
        "machine names without an id: vm_id \"\"",
        [
            ("system.slice/libvirtd.service", 550_227_118, svc("libvirtd.service")),
            (f"{f20}/emulator", 902_118_446, None),
            (f"{f20}/vcpu0", 33_880_117_204, None),
            (f"{f20}/vcpu1", 29_004_337_118, None),
            (f20, 0, vm("f20", "")),
            ("machine.slice/machine-lxc\\x2dsandbox.scope", 4_120_337_004,
             Expect("container", {"namespace": "", "pod": "", "container": "sandbox", "container_id": "",
                                  "runtime": "libvirt-lxc", "parent_kind": ""})),
        ],
        root_self=3_118_004_227,
    )


def libvirt_non_systemd() -> Node:
    """libvirt >= 1.0.5 on a host without systemd (OpenRC), cgroup v1: /machine/<name>.libvirt-{qemu,lxc}, a
    custom partition /machine/<part>.partition, as in libvirt's docs/cgroups.rst."""
    vm1, db = "machine/qemu-1-vm1.libvirt-qemu", "machine/prod.partition/qemu-2-db.libvirt-qemu"
    return Node(
        "libvirt-non-systemd", 1, "cgroupfs (libvirt)", "libvirt (qemu, lxc)", 8, 45.0,
        "<name>.libvirt-qemu is a VM and <name>.libvirt-lxc a container, also in *.partition directories",
        [
            (f"{vm1}/emulator", 120_337_004, None),
            (f"{vm1}/vcpu0", 9_447_118_227, None),
            (vm1, 0, vm("vm1", "1")),
            (f"{db}/emulator", 402_118_774, None),
            (f"{db}/vcpu0", 30_118_004_337, None),
            (f"{db}/vcpu1", 28_775_004_118, None),
            (db, 0, vm("db", "2")),
            ("machine/lxc-3-c3.libvirt-lxc", 1_204_118_227,
             Expect("container", {"namespace": "", "pod": "", "container": "c3", "container_id": "3",
                                  "runtime": "libvirt-lxc", "parent_kind": ""})),
        ],
        root_self=2_330_004_117,
    )


def nspawn() -> Node:
    """systemd-nspawn: a machine started as systemd-nspawn@<name>.service (machinectl start; the payload and
    supervisor sub-cgroups are nspawn's), and one run directly, which machined registers as
    machine-<name>.scope."""
    unit = "machine.slice/systemd-nspawn@debian\\x2dbuild.service"
    return Node(
        "nspawn", 2, "systemd", "systemd-nspawn", 8, 4.0,
        "systemd-nspawn@<name>.service below machine.slice and a machine-<name>.scope without a libvirt driver "
        "prefix are containers (runtime systemd-nspawn); their inner units are not host services",
        [
            ("system.slice/systemd-machined.service", 2_004_117, svc("systemd-machined.service")),
            (f"{unit}/supervisor", 30_118_004, None),
            (f"{unit}/payload/init.scope", 40_227_118, None),
            (f"{unit}/payload/system.slice/postgresql.service", 3_304_118_227, None),
            (unit, 0, Expect("container", {"namespace": "", "pod": "", "container": "debian-build",
                                          "container_id": "", "runtime": "systemd-nspawn", "parent_kind": ""})),
            ("machine.slice/machine-arch.scope/payload", 770_448_116, None),
            ("machine.slice/machine-arch.scope", 0, Expect(
                "container", {"namespace": "", "pod": "", "container": "arch", "container_id": "",
                              "runtime": "systemd-nspawn", "parent_kind": ""})),
        ],
        root_self=402_118_337,
    )


def _slurm_v2(name: str, jobs: list[tuple[str, str]], note: str) -> Node:
    scope = "system.slice/slurmstepd.scope"
    cgroups: list[tuple[str, int, Expect | None]] = [
        ("system.slice/slurmd.service", 120_447_118, svc("slurmd.service")),
        ("system.slice/munge.service", 8_227_004, svc("munge.service")),
        (f"{scope}/system", 2_118_004, None),
    ]
    for n, (directory, job_id) in enumerate(jobs):
        cpu = 10_000_000_000 * (n + 1) + 118_337_004
        cgroups += [
            (f"{scope}/{directory}/step_extern/slurm", 3_004_117, None),
            (f"{scope}/{directory}/step_extern/user/task_special", 1_002_118, None),
            (f"{scope}/{directory}/step_batch/slurm", 20_117_004, None),
            (f"{scope}/{directory}/step_batch/user/task_0", 40_227_118, None),
            (f"{scope}/{directory}/step_0/slurm", 11_004_227, None),
            (f"{scope}/{directory}/step_0/user/task_0", cpu, None),
            (f"{scope}/{directory}/step_0/user/task_1", cpu - 4_117_004, None),
            (f"{scope}/{directory}", 0, job(job_id)),
        ]
    return Node(name, 2, "systemd (slurmstepd.scope delegated)", "slurm cgroup/v2", 64, 3.0,
                note, cgroups, root_self=1_204_227_118)


def slurm_v2() -> Node:
    """Slurm's cgroup/v2 plugin before 26.05 (and with CgroupJobIdPaths=yes): job_<id> directories."""
    return _slurm_v2("slurm-v2", [("job_1234", "1234"), ("job_1240", "1240")],
                     "job_<id> below slurmstepd.scope is a job (user_id \"\": v2 paths do not say); steps are in it")


def slurm_v2_sluid() -> Node:
    """Slurm 26.05's cgroup/v2 default: job directories named by the job's SLUID."""
    return _slurm_v2("slurm-v2-sluid", [("sEKNKTV3WPV500", "sEKNKTV3WPV500")],
                     "a SLUID directory (s + 13 Crockford base32) below slurmstepd.scope is a job, job_id = the SLUID")


def slurm_v1() -> Node:
    """Slurm's cgroup/v1 plugin with jobacct_gather/cgroup (the cpuacct controller): slurm/uid_<u>/job_<id>."""
    j42, j43 = "slurm/uid_1000/job_42", "slurm/uid_1001/job_43"
    return Node(
        "slurm-v1", 1, "cgroupfs (slurm cgroup/v1)", "slurm cgroup/v1", 32, 90.0,
        "slurm/uid_<u>/job_<id> is a job with user_id <u>",
        [
            ("system.slice/slurmd.service", 304_118_227, svc("slurmd.service")),
            (f"{j42}/step_batch/task_0", 44_118_004, None),
            (f"{j42}/step_0/task_0", 70_227_118_004, None),
            (f"{j42}/step_0/task_1", 70_004_337_118, None),
            (j42, 0, job("42", "1000")),
            (f"{j43}/step_extern/task_0", 1_004_227, None),
            (f"{j43}/step_batch/task_0", 18_337_004_118, None),
            (j43, 0, job("43", "1001")),
        ],
        root_self=2_004_118_774,
    )


ALL = [
    k8s_crio_cgroupfs, k8s_containerd_v1_root, k8s_containerd_v1_in_service, k8s_sandboxed, k3s_v1_cgroupfs,
    microk8s_v2, k8s_cri_dockerd_v1, podman_cgroupfs, podman_pods_quadlet, nerdctl_containerd, isulad_v1, ecs_v1,
    ecs_v2, docker_cgroupfs_v2, lxc_incus, proxmox, libvirt_lxc_partitions, libvirt_v1_pre13, libvirt_non_systemd,
    nspawn, slurm_v2, slurm_v2_sluid, slurm_v1,
]

if __name__ == "__main__":
    for make in ALL:
        node = make()
        write(node)
        print(f"wrote fixtures/nodes/{node.name}")
