"""Real processes in real cgroups laid out as the newer families, attributed by the real daemon.

On this machine's cgroup2 mount: Docker inside an LXC container (`lxc.payload.web/system.slice/docker-<id>.scope`),
a k3s pod inside another LXC container (`lxc.payload.k3s/kubepods/besteffort/pod<uid>/<id>`) and a Slurm task
(`system.slice/slurmstepd.scope/job_42/step_0/user/task_0`), each running a CPU burner. The energy must follow
their real CPU time: the job and the two top-level containers by their share, the nested Docker container as its
LXC container's child, and the pod taken out of the k3s container (which then has next to nothing of its own).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Daemon, RaplTree, cgroup2_mount, require
from test_real_cgroups import BURNER, RaplDriver, _start_in, _usage_usec

DOCKER_ID, CONTAINER_ID, POD_UID = "d0" * 32, "c1" * 32, "5c0e1d2a-6b7f-4c3d-9e8f-0a1b2c3d4e5f"
CGROUPS = {  # name → (path below the test root, duty cycle of its burner)
    "web": (f"lxc.payload.web/system.slice/docker-{DOCKER_ID}.scope", 0.4),
    "pod": (f"lxc.payload.k3s/kubepods/besteffort/pod{POD_UID}/{CONTAINER_ID}", 0.3),
    "job": ("system.slice/slurmstepd.scope/job_42/step_0/user/task_0", 0.3),
}
WORKLOADS = {  # name → (cgroup whose CPU the series should follow, exposition family, labels that pick it)
    "web": ("lxc.payload.web", "wattlens_container_cpu_joules_total", {"container": "web", "runtime": "lxc"}),
    "pod": (f"lxc.payload.k3s/kubepods/besteffort/pod{POD_UID}", "wattlens_pod_cpu_joules_total",
            {"uid": POD_UID}),
    "job": ("system.slice/slurmstepd.scope/job_42", "wattlens_job_cpu_joules_total", {"job_id": "42"}),
}
_SAMPLE = re.compile(r"^(?P<name>\w+)\{(?P<labels>.*)\}$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    require(os.geteuid() == 0, "creating cgroups needs root (CI runs as root)")
    root = cgroup2_mount() / f"wattlens-layouts-{os.getpid()}"
    for path, _ in CGROUPS.values():
        (root / path).mkdir(parents=True)
    yield root
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        directory.rmdir()
    root.rmdir()


def _joules(samples: dict[str, float], family: str, **labels: str) -> float:
    """The package joules of the one series of `family` whose labels include `labels`."""
    found = []
    for key, value in samples.items():
        match = _SAMPLE.match(key)
        if match and match["name"] == family:
            have = dict(_LABEL.findall(match["labels"]))
            if have.get("zone") == "package" and labels.items() <= have.items():
                found.append(value)
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0.0


@pytest.mark.slow
def test_nested_system_containers_pods_and_jobs_get_their_real_cpu(cgroup_root: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="wattlens-layouts-"))
    tree = RaplTree.copy("near-wrap", base)
    tree.set("intel-rapl:0", 1_000_000)
    driver = RaplDriver(tree)
    driver.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with Daemon("--sys", str(tree.root), "--cgroup-root", str(cgroup_root), "--interval", "1",
                    "--idle-watts", "package=0", "--node-name", "real") as daemon:
            daemon.wait_ready()
            start = daemon.wait_ticks(1)
            cpu_start = {name: _usage_usec(cgroup_root / path) for name, (path, _, _) in WORKLOADS.items()}
            k3s_start = _usage_usec(cgroup_root / "lxc.payload.k3s")
            for path, duty in CGROUPS.values():
                processes.append(_start_in(cgroup_root / path, BURNER, str(duty)))
            time.sleep(6)
            for process in processes:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
            end = daemon.wait_ticks(2)  # everything has stopped: the last ticks see all of it
            cpu = {name: _usage_usec(cgroup_root / path) - cpu_start[name] for name, (path, _, _) in WORKLOADS.items()}
            k3s_cpu = _usage_usec(cgroup_root / "lxc.payload.k3s") - k3s_start
            assert daemon.stop()[0] == 0
    finally:
        driver.stop.set()
        driver.join(timeout=10)
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(base)

    def delta(family: str, **labels: str) -> float:
        return _joules(end, family, **labels) - _joules(start, family, **labels)

    joules = {name: delta(family, **labels) for name, (_, family, labels) in WORKLOADS.items()}
    total_cpu, total_joules = sum(cpu.values()), sum(joules.values())
    print("\nworkload: CPU share among the three / energy share")
    for name in WORKLOADS:
        print(f"  {name:4} {cpu[name] / total_cpu:7.1%} {joules[name] / total_joules:7.1%}")
    for name in WORKLOADS:
        assert cpu[name] > 0.1 * total_cpu, f"{name} did not run enough to test anything"
        share_cpu, share_energy = cpu[name] / total_cpu, joules[name] / total_joules
        assert abs(share_energy - share_cpu) <= 0.05 * share_cpu, (name, share_cpu, share_energy)
    # Docker inside the LXC container is its child: all of the container's CPU was the Docker container's.
    docker = delta("wattlens_container_cpu_joules_total", container_id=DOCKER_ID, runtime="docker",
                   parent_kind="container")
    assert docker >= 0.95 * joules["web"]
    assert docker <= joules["web"] + 1e-6
    # The pod is top-level, out of the k3s container: that container keeps only what is not the pod's.
    k3s = delta("wattlens_container_cpu_joules_total", container="k3s", runtime="lxc", parent_kind="")
    assert k3s_cpu >= cpu["pod"]
    assert k3s <= 0.05 * joules["pod"], (k3s, joules["pod"])
    child = delta("wattlens_container_cpu_joules_total", container_id=CONTAINER_ID, parent_kind="pod")
    assert 0.95 * joules["pod"] <= child <= joules["pod"] + 1e-6
