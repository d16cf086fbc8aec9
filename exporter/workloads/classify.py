"""Which workload a cgroup is, from its path alone (pure).

Paths are matched component by component, relative to the hierarchy root, so cgroup-namespace-relative paths
and nested layouts (kind nodes inside a Docker container, Docker inside an LXC container) work. Every pattern
follows the naming code or documentation of the runtime that creates the cgroup; fixtures/README.md cites
each one (section "Layouts by family").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["pod", "container", "service", "vm", "user", "job"]

_UID = r"(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})"
_ID = r"(?P<id>[0-9a-f]{64})"
# Kubernetes pods: the kubelet's systemd driver (`kubepods-burstable-pod<uid_>.slice`) and cgroupfs driver.
_POD_SYSTEMD = re.compile(rf"^(?:[a-z]+-)*pod{_UID}\.slice$")
_POD_CGROUPFS = re.compile(rf"^pod{_UID}$")
# Other groups of containers sharing a sandbox, exported as pods: Podman pods (systemd and cgroupfs managers)
# and Amazon ECS tasks (cgroup v2 slice; the v1 `/ecs/<task>` directory is matched by its parent).
_PODMAN_POD = re.compile(r"^(?:[a-z]+-)?libpod_pod_(?P<uid>[0-9a-f]{64})\.slice$")
_ECS_TASK_V2 = re.compile(r"^ecstasks-(?P<uid>[0-9a-f]{32})\.slice$")
_ECS_TASK_V1 = re.compile(rf"^{_UID}$")  # 32 hex, or a UUID (task ARNs of the old format)
# `<prefix>-<id>.scope` (systemd drivers) and `<prefix>-<id>` (CRI-O and Podman with cgroupfs).
_PREFIXED = re.compile(
    rf"^(?P<prefix>cri-containerd|crio|docker|libpod|libpod-payload|nerdctl|isulad)-{_ID}(?:\.scope)?$"
)
_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "libpod-payload": "podman",  # `--cgroups=split`, the default of Quadlet units
    "nerdctl": "containerd",
    "isulad": "isulad",
}
# A systemd-driver `slice:prefix:id` path taken literally by a cgroupfs manager, one directory for the pod and
# the container (containerd on cgroup v1 when runc and the kubelet disagree on the driver).
_SLICE_PREFIX_ID = re.compile(rf"^(?P<slice>[^:]+\.slice):(?P<prefix>[a-z-]+):{_ID}$")
_BARE_ID = re.compile(rf"^{_ID}$")
# Kata's sandbox cgroup under the pod with cgroupfs drivers: `kata_` before the base of the sandbox's path.
_KATA = re.compile(rf"^kata_(?:crio-)?{_ID}$")
_LXC_PAYLOAD = re.compile(r"^lxc\.payload\.(?P<name>.+)$", re.DOTALL)  # LXC >= 4.0, LXD, Incus
_NSPAWN_UNIT = re.compile(r"^systemd-nspawn@(?P<name>.+)\.service$", re.DOTALL)
_MACHINE = re.compile(r"^machine-(?P<name>.+)\.scope$", re.DOTALL)
_LIBVIRT_NON_SYSTEMD = re.compile(r"^(?P<name>.+)\.libvirt-(?P<driver>qemu|lxc)$", re.DOTALL)
# libvirt machine names: `<driver>-[<user>-|embed-<hash>-]<id>-<name>`, or `<driver>-<name>` before 1.3.
_LIBVIRT_NAME = re.compile(r"^(?P<driver>qemu|lxc|ch)-(?:(?P<owner>.+?)-)??(?P<id>\d+)-(?P<name>.+)$", re.DOTALL)
_LIBVIRT_OLD_NAME = re.compile(r"^(?P<driver>qemu|lxc|ch)-(?P<name>.+)$", re.DOTALL)
_HYPERVISORS = {"qemu": "qemu", "ch": "cloud-hypervisor"}
_PROXMOX_VM = re.compile(r"^(?P<vmid>\d+)\.scope$")
# Slurm: cgroup/v2 `[<node>_]slurmstepd.scope/job_<id>` (or the job's SLUID since 26.05), cgroup/v1
# `slurm[_<node>]/uid_<uid>/job_<id>`.
_SLURM_STEPD = re.compile(r"^(?:.+_)?slurmstepd\.scope$", re.DOTALL)
_SLURM_JOB = re.compile(r"^(?:job_(?P<id>\d+)|(?P<sluid>s[0-9A-HJKMNP-TV-Z]{13}))$")
_SLURM_V1_ROOT = re.compile(r"^slurm(?:_.+)?$", re.DOTALL)
_SLURM_V1_USER = re.compile(r"^uid_(?P<uid>\d+)$")
# Runtime helpers: not workloads, and nothing below them is one. conmon's CPU stays in the pod around it;
# LXC's monitor and pivot cgroups and Kata's overhead cgroup sit outside any workload (unattributed).
_HELPERS = re.compile(
    r"^(?:(?:crio-conmon|libpod-conmon)-[0-9a-f]{64}(?:\.scope)?|lxc\.monitor(?:\..*)?|lxc\.pivot|kata_overhead)$",
    re.DOTALL,
)
_USER = re.compile(r"^user-(?P<uid>\d+)\.slice$")
_SERVICE = re.compile(r"^(?P<unit>.+\.service)$", re.DOTALL)  # any name: labels are escaped
# Kata sandboxes never hold workloads on the host: their containers run inside the guest.
_LEAF_RUNTIMES = frozenset({"kata"})


@dataclass(frozen=True, slots=True)
class Classified:
    """A workload cgroup. `key` is its identity; the other fields feed its labels."""

    kind: Kind
    key: str
    uid: str = ""  # pod UID (dashed), Podman pod id or ECS task id; the user id of a user or a job
    container_id: str = ""
    runtime: str = ""
    pod_uid: str = ""  # for a container: the pod its path names, if any
    unit: str = ""
    vm: str = ""
    vm_id: str = ""
    hypervisor: str = ""
    container: str = ""  # a system container's name (LXC, systemd-nspawn, libvirt-lxc)
    job_id: str = ""
    scheduler: str = ""


def _pod_uid(raw: str) -> str:
    return raw.replace("_", "-")


def unescape_systemd(name: str) -> str:
    r"""systemd unit-name escaping: `\x2d` → `-` and so on."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def is_helper(component: str) -> bool:
    """Runtime helpers (conmon, LXC monitors, Kata overhead): not workloads, and nothing below them is either."""
    return _HELPERS.match(component) is not None


def classify(components: tuple[str, ...]) -> Classified | None:
    """Classify the cgroup at `components` (path parts below the hierarchy root), or None."""
    if not components:
        return None
    return (
        _as_pod(components)
        or _as_job(components)
        or _as_container(components)
        or _as_system_container(components)
        or _as_host_unit(components)
    )


def may_hold_workloads(components: tuple[str, ...], workload: Classified | None) -> bool:
    """Whether the walk goes below a cgroup. VMs (vCPU threads), jobs (steps and tasks) and Kata sandboxes hold
    no workloads, and nothing inside a Kubernetes pod's container would be exported (it is that container's
    CPU); most cgroups are such containers, each with dozens of interface files to list. Other containers are
    walked: a kind node is a Docker container with pods inside, and an LXC container may run Docker or k3s."""
    if workload is None:
        return True
    if workload.kind in ("vm", "job"):
        return False
    if workload.kind != "container":
        return True
    return workload.runtime not in _LEAF_RUNTIMES and not any("kubepods" in part for part in components)


def _as_pod(components: tuple[str, ...]) -> Classified | None:
    name = components[-1]
    parent = components[-2] if len(components) >= 2 else ""
    match = _POD_SYSTEMD.match(name) if "kubepods" in name else None
    if match is None and any("kubepods" in part for part in components[:-1]):
        match = _POD_CGROUPFS.match(name)
    if match is None:
        match = _PODMAN_POD.match(name) or _ECS_TASK_V2.match(name)
    if match is None and parent in ("libpod_parent", "ecs"):
        match = (_BARE_ID if parent == "libpod_parent" else _ECS_TASK_V1).match(name)
        if match is not None:
            return _pod(match[0])
    return _pod(_pod_uid(match["uid"])) if match is not None else None


def _pod(uid: str) -> Classified:
    return Classified("pod", f"pod:{uid}", uid=uid)


def _as_job(components: tuple[str, ...]) -> Classified | None:
    if len(components) < 2:
        return None
    match = _SLURM_JOB.match(components[-1])
    if match is None:
        return None
    user_id = ""
    if not _SLURM_STEPD.match(components[-2]):
        user = _SLURM_V1_USER.match(components[-2])
        if user is None or len(components) < 3 or not _SLURM_V1_ROOT.match(components[-3]):
            return None
        user_id = user["uid"]
    job_id = match["id"] or match["sluid"]
    return Classified("job", f"job:slurm:{job_id}", uid=user_id, job_id=job_id, scheduler="slurm")


def _as_container(components: tuple[str, ...]) -> Classified | None:
    name = components[-1]
    parent = components[-2] if len(components) >= 2 else ""
    match = _PREFIXED.match(name)
    if match:
        return _container(match["id"], _RUNTIMES[match["prefix"]])
    match = _SLICE_PREFIX_ID.match(name)
    if match:
        pod = _POD_SYSTEMD.match(match["slice"])
        runtime = _RUNTIMES.get(match["prefix"], "")
        return _container(match["id"], runtime, _pod_uid(pod["uid"]) if pod else "")
    match = _KATA.match(name)
    if match:
        return _container(match["id"], "kata")
    match = _BARE_ID.match(name)
    if match is None or parent in ("libpod_parent", "kata_overhead"):
        return None
    if parent == "docker" or (len(components) >= 3 and components[-3] == "ecs"):
        runtime = "docker"  # moby's cgroupfs parent /docker; the ECS agent runs its tasks with Docker
    elif parent == "isulad":
        runtime = "isulad"
    elif len(components) == 2 and parent == "default":
        runtime = "containerd"  # containerd's default /<namespace>/<id>, namespace "default" (ctr, nerdctl)
    else:
        runtime = ""  # cgroupfs Kubernetes drivers, other parents: the path does not say which runtime
    return _container(match["id"], runtime)


def _as_system_container(components: tuple[str, ...]) -> Classified | None:
    """LXC/LXD/Incus (also Proxmox's `/lxc/<vmid>`), systemd-nspawn units and libvirt-lxc under a cgroupfs
    layout. libvirt-lxc and nspawn machine scopes (`machine-*.scope`) are told apart from VMs in _as_machine."""
    name = components[-1]
    match = _LXC_PAYLOAD.match(name)
    if match:
        return _named_container("lxc", match["name"])
    if len(components) >= 2 and components[-2] == "lxc.payload":
        return _named_container("lxc", name)  # LXC 3.1 and 3.2: lxc.payload/<name>
    if len(components) == 2 and components[0] == "lxc":
        return _named_container("lxc", name)  # Proxmox VE (`lxc.cgroup.dir.container`), LXC <= 3.0
    match = _NSPAWN_UNIT.match(name)
    if match and components[0] == "machine.slice":
        return _named_container("systemd-nspawn", unescape_systemd(match["name"]))
    return None


def _as_host_unit(components: tuple[str, ...]) -> Classified | None:
    """Services, user sessions and machines count only in the host's own slices: a unit inside a container is
    that container's. A service may sit in nested slices (`system.slice/system-getty.slice/getty@tty1.service`)
    and a machine in libvirt partitions (`machine.slice/machine-prod.slice/machine-….scope`)."""
    first, name = components[0], components[-1]
    nested_in_slices = len(components) >= 2 and all(c.endswith(".slice") for c in components[1:-1])
    if first == "system.slice" and nested_in_slices and (service := _SERVICE.match(name)):
        return Classified("service", f"service:{service['unit']}", unit=service["unit"])
    if first == "machine.slice" and nested_in_slices and (scope := _MACHINE.match(name)):
        return _as_machine(unescape_systemd(scope["name"]))
    if len(components) == 2 and first == "user.slice" and (user := _USER.match(name)):
        return Classified("user", f"user:{user['uid']}", uid=user["uid"])
    if len(components) == 2 and first == "qemu.slice" and (vm := _PROXMOX_VM.match(name)):
        return Classified("vm", f"vm:qemu.slice:{vm['vmid']}", vm_id=vm["vmid"], hypervisor="qemu")
    return _as_libvirt_without_systemd(components)


def _as_libvirt_without_systemd(components: tuple[str, ...]) -> Classified | None:
    """libvirt >= 1.0.5 on hosts without systemd: `/machine[/*.partition]/<name>.libvirt-{qemu,lxc}`; before
    1.0.5: `libvirt/{qemu,lxc}/<name>` below wherever libvirtd itself ran."""
    name = components[-1]
    guest = _LIBVIRT_NON_SYSTEMD.match(name)
    if components[0] == "machine" and guest and all(c.endswith(".partition") for c in components[1:-1]):
        driver, machine = guest["driver"], guest["name"]
        return _as_machine(machine if machine.startswith(f"{driver}-") else f"{driver}-{machine}")
    if len(components) >= 3 and components[-3] == "libvirt" and components[-2] in ("qemu", "lxc"):
        return _as_machine(f"{components[-2]}-{name}")
    return None


def _as_machine(machine: str) -> Classified:
    """A systemd-machined or libvirt machine name: a libvirt guest (`qemu-1-ubuntu22` → VM ubuntu22, id 1;
    `lxc-…` → a libvirt-lxc container), else a systemd-nspawn container (its machine name, kept whole)."""
    match = _LIBVIRT_NAME.match(machine) or _LIBVIRT_OLD_NAME.match(machine)
    if match is None:
        return _named_container("systemd-nspawn", machine)
    guest_id = match.groupdict().get("id") or ""
    if match["driver"] == "lxc":
        return Classified(
            "container",
            f"container:libvirt-lxc:{machine}",
            container_id=guest_id,
            runtime="libvirt-lxc",
            container=match["name"],
        )
    return Classified("vm", f"vm:{machine}", vm=match["name"], vm_id=guest_id, hypervisor=_HYPERVISORS[match["driver"]])


def _container(container_id: str, runtime: str, pod_uid: str = "") -> Classified:
    return Classified(
        "container", f"container:{container_id}", container_id=container_id, runtime=runtime, pod_uid=pod_uid
    )


def _named_container(runtime: str, name: str) -> Classified:
    return Classified("container", f"container:{runtime}:{name}", runtime=runtime, container=name)
