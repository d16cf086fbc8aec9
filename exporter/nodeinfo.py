"""Facts about the node read once at start: CPU model, sockets, kernel, cgroup layout."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from exporter import __version__


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node: str
    cpu_model: str
    cpus: int
    sockets: int
    kernel: str
    cgroup_version: str
    version: str = __version__
    python_version: str = platform.python_version()


def _cpuinfo(proc_path: Path) -> tuple[str, int, int]:
    model, processors, sockets = "", 0, set()
    try:
        text = (proc_path / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown", os.cpu_count() or 1, 1
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "Hardware", "cpu model") and not model:
            model = value
        elif key == "physical id":
            sockets.add(value)
    return model or "unknown", processors or (os.cpu_count() or 1), max(1, len(sockets))


def cgroup_version(cgroup_root: Path) -> str:
    """'v2' (unified), 'hybrid' (v1 controllers plus a unified mount) or 'v1'; 'none' if absent."""
    if (cgroup_root / "cgroup.controllers").exists():
        return "v2"
    if (cgroup_root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    if cgroup_root.is_dir() and any(cgroup_root.iterdir()):
        return "v1"
    return "none"


def read_node_info(node: str, proc_path: Path, cgroup_root: Path) -> NodeInfo:
    model, cpus, sockets = _cpuinfo(proc_path)
    return NodeInfo(
        node=node,
        cpu_model=model,
        cpus=cpus,
        sockets=sockets,
        kernel=platform.release(),
        cgroup_version=cgroup_version(cgroup_root),
    )
