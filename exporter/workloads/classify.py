"""Which workload a cgroup is, from its path alone (pure).

Paths are matched component by component, relative to the hierarchy root, so cgroup-namespace-relative paths
and nested layouts (kind nodes inside a Docker container) work. Patterns follow the kubelet's cgroup manager
(systemd `-`→`_` escaping of pod UIDs), containerd, CRI-O, Docker, Podman and libvirt naming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["pod", "container", "service", "vm", "user"]

_UID = r"(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})"
_POD_SYSTEMD = re.compile(rf"^(?:[a-z]+-)*pod{_UID}\.slice$")
_POD_CGROUPFS = re.compile(rf"^pod{_UID}$")
_ID = r"(?P<id>[0-9a-f]{64})"
_CONTAINERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^cri-containerd-{_ID}\.scope$"), "containerd"),
    (re.compile(rf"^crio-{_ID}\.scope$"), "cri-o"),
    (re.compile(rf"^docker-{_ID}\.scope$"), "docker"),
    (re.compile(rf"^libpod-{_ID}\.scope$"), "podman"),
)
# containerd under cgroup v1 with the systemd driver: one component names both the pod and the container.
_CONTAINERD_V1 = re.compile(rf"^(?P<pod>[^:]+):cri-containerd:{_ID}$")
_BARE_ID = re.compile(rf"^{_ID}$")
# Runtime helpers whose CPU belongs to the pod or user around them, not to a workload of their own.
_HELPERS = re.compile(r"^(?:crio-conmon|libpod-conmon)-[0-9a-f]{64}\.scope$")
_USER = re.compile(r"^user-(?P<uid>\d+)\.slice$")
_MACHINE = re.compile(r"^machine-(?P<name>.+)\.scope$", re.DOTALL)
_SERVICE = re.compile(r"^(?P<unit>.+\.service)$", re.DOTALL)  # any name: labels are escaped


@dataclass(frozen=True, slots=True)
class Classified:
    """A workload cgroup. `key` is its identity; the other fields feed its labels."""

    kind: Kind
    key: str
    uid: str = ""  # pod UID (dashed) or user id
    container_id: str = ""
    runtime: str = ""
    pod_uid: str = ""  # for a container: the pod its path names, if any
    unit: str = ""
    vm: str = ""
    vm_id: str = ""
    hypervisor: str = ""


def _pod_uid(raw: str) -> str:
    return raw.replace("_", "-")


def unescape_systemd(name: str) -> str:
    r"""systemd unit-name escaping: `\x2d` → `-` and so on."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def is_helper(component: str) -> bool:
    """conmon scopes: not workloads, and nothing below them is either."""
    return _HELPERS.match(component) is not None


def classify(components: tuple[str, ...]) -> Classified | None:
    """Classify the cgroup at `components` (path parts below the hierarchy root), or None."""
    if not components:
        return None
    return _as_pod(components) or _as_container(components) or _as_top_level_unit(components)


def _as_pod(components: tuple[str, ...]) -> Classified | None:
    name = components[-1]
    match = _POD_SYSTEMD.match(name) if "kubepods" in name else None
    if match is None and any("kubepods" in part for part in components[:-1]):
        match = _POD_CGROUPFS.match(name)
    if match is None:
        return None
    uid = _pod_uid(match["uid"])
    return Classified("pod", f"pod:{uid}", uid=uid)


def _as_container(components: tuple[str, ...]) -> Classified | None:
    name = components[-1]
    for pattern, runtime in _CONTAINERS:
        match = pattern.match(name)
        if match:
            return _container(match["id"], runtime)
    match = _CONTAINERD_V1.match(name)
    if match:
        inner = _POD_SYSTEMD.match(match["pod"])
        return _container(match["id"], "containerd", _pod_uid(inner["uid"]) if inner else "")
    match = _BARE_ID.match(name)
    if match is None or len(components) < 2:
        return None
    if components[-2] == "docker":
        return _container(match["id"], "docker")
    if any("kubepods" in part for part in components[:-1]):
        return _container(match["id"], "")  # cgroupfs driver: the path does not say which runtime
    return None


def _as_top_level_unit(components: tuple[str, ...]) -> Classified | None:
    """Services, user sessions and VMs count only under the host's own slices: a service may sit in nested
    slices (`system.slice/system-getty.slice/getty@tty1.service` for template instances)."""
    if components[0] == "system.slice" and all(c.endswith(".slice") for c in components[1:-1]):
        service = _SERVICE.match(components[-1]) if len(components) >= 2 else None
        if service:
            return Classified("service", f"service:{service['unit']}", unit=service["unit"])
    if len(components) != 2:
        return None
    slice_name, name = components
    if slice_name == "user.slice" and (user := _USER.match(name)):
        return Classified("user", f"user:{user['uid']}", uid=user["uid"])
    if slice_name == "machine.slice" and (machine := _MACHINE.match(name)):
        return _vm(unescape_systemd(machine["name"]))
    return None


def _container(container_id: str, runtime: str, pod_uid: str = "") -> Classified:
    return Classified(
        "container", f"container:{container_id}", container_id=container_id, runtime=runtime, pod_uid=pod_uid
    )


def _vm(machine: str) -> Classified:
    """`qemu-1-ubuntu22` → hypervisor qemu, id 1, name ubuntu22; other machine names are kept whole."""
    hypervisor, _, rest = machine.partition("-")
    vm_id, _, name = rest.partition("-")
    if not (hypervisor and vm_id.isdigit() and name):
        hypervisor, vm_id, name = "", "", machine
    return Classified("vm", f"vm:{machine}", vm=name, vm_id=vm_id, hypervisor=hypervisor)
