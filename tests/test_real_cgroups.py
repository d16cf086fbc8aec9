"""Real processes in real cgroups on this machine, attributed by the real daemon.

Three cgroups are made on the machine's cgroup2 mount, laid out as systemd services: two run CPU-bound
processes with known duty cycles, the third a spawner of short-lived processes (each ~40 ms, far under one
tick). A driver thread advances a fixture RAPL counter in proportion to the machine's real CPU use. The
daemon's service joules must follow the services' real CPU time, including the short-lived processes, which a
sweep of surviving processes (Kepler's method, sampled alongside at the same cadence) mostly misses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Daemon, RaplTree, cgroup2_mount, require

from exporter.workloads.procfs import ProcStat

UJ_PER_BUSY_USEC = 10  # the fixture "hardware" draws 10 W per busy CPU
DUTY = {"steady-a": 0.6, "steady-b": 0.3}
CLK_TCK = os.sysconf("SC_CLK_TCK")

BURNER = """
import sys, time
duty = float(sys.argv[1])
while True:
    start = time.monotonic()
    while time.monotonic() - start < 0.1 * duty:
        pass
    time.sleep(0.1 * (1 - duty))
"""

SPAWNER = """
import os, time
while True:
    pid = os.fork()
    if pid == 0:
        end = time.process_time() + 0.04
        while time.process_time() < end:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.01)
"""


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    require(os.geteuid() == 0, "creating cgroups needs root (CI runs as root)")
    root = cgroup2_mount() / f"wattlens-test-{os.getpid()}"
    for name in (*DUTY, "spawner"):
        (root / "system.slice" / f"{name}.service").mkdir(parents=True)
    yield root
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        directory.rmdir()
    (root / "system.slice").rmdir() if (root / "system.slice").exists() else None
    root.rmdir()


def _usage_usec(cgroup: Path) -> int:
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise AssertionError(f"no usage_usec in {cgroup}")


def _start_in(cgroup: Path, script: str, *args: str) -> subprocess.Popen[bytes]:
    procs = cgroup / "cgroup.procs"

    def enter() -> None:  # runs in the child before exec: it is in its cgroup from its first instruction
        procs.write_text(str(os.getpid()))

    return subprocess.Popen([sys.executable, "-c", script, *args], preexec_fn=enter)  # noqa: PLW1509


class RaplDriver(threading.Thread):
    """Advances the fixture package counter by UJ_PER_BUSY_USEC for every µs of real node CPU time."""

    def __init__(self, tree: RaplTree) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.stop = threading.Event()

    def run(self) -> None:
        stat = ProcStat(Path("/proc"))
        before = stat.read().busy
        while not self.stop.wait(0.05):
            now = stat.read().busy
            self.tree.advance("intel-rapl:0", (now - before) * 1_000_000 // CLK_TCK * UJ_PER_BUSY_USEC)
            before = now
        stat.close()


class SurvivorSweep(threading.Thread):
    """What a per-surviving-process sweep sees: CPU deltas of PIDs present at two consecutive samples."""

    def __init__(self, cgroups: dict[str, Path], period: float) -> None:
        super().__init__(daemon=True)
        self.cgroups = cgroups
        self.period = period
        self.totals = dict.fromkeys(cgroups, 0)
        self.stop = threading.Event()

    @staticmethod
    def _cpu_ticks(pid: str) -> int | None:
        try:
            data = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            return None
        fields = data[data.rfind(b")") + 2:].split()
        return int(fields[11]) + int(fields[12])

    def run(self) -> None:
        previous: dict[str, dict[str, int]] = {name: {} for name in self.cgroups}
        while not self.stop.wait(self.period):
            for name, cgroup in self.cgroups.items():
                current = {}
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    ticks = self._cpu_ticks(pid)
                    if ticks is not None:
                        current[pid] = ticks
                self.totals[name] += sum(t - previous[name][p] for p, t in current.items() if p in previous[name])
                previous[name] = current


def _service_joules(samples: dict[str, float], name: str) -> float:
    key = f'wattlens_service_cpu_joules_total{{node="real",source="rapl",unit="{name}.service",zone="package"}}'
    return samples.get(key, 0.0)


@pytest.mark.slow
def test_real_processes_get_their_cpu_share_and_short_lived_ones_are_not_lost(cgroup_root: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="wattlens-real-"))
    tree = RaplTree.copy("near-wrap", base)
    tree.set("intel-rapl:0", 1_000_000)  # far from the wrap: this test is about shares
    services = {name: cgroup_root / "system.slice" / f"{name}.service" for name in (*DUTY, "spawner")}
    driver = RaplDriver(tree)
    driver.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with Daemon("--sys", str(tree.root), "--cgroup-root", str(cgroup_root), "--interval", "1",
                    "--idle-watts", "package=0", "--node-name", "real") as daemon:
            daemon.wait_ready()
            start = daemon.wait_ticks(1)
            cpu_start = {name: _usage_usec(path) for name, path in services.items()}
            sweep = SurvivorSweep(services, period=1.0)
            sweep.start()
            for name, duty in DUTY.items():
                processes.append(_start_in(services[name], BURNER, str(duty)))
            processes.append(_start_in(services["spawner"], SPAWNER))
            time.sleep(8)
            for process in processes:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
            sweep.stop.set()
            sweep.join(timeout=10)
            end = daemon.wait_ticks(2)  # everything has stopped: the last ticks see all of it
            cpu = {name: _usage_usec(path) - cpu_start[name] for name, path in services.items()}
            joules = {name: _service_joules(end, name) - _service_joules(start, name) for name in services}
            node_active = (end['wattlens_node_cpu_active_joules_total{node="real",source="rapl",zone="package"}']
                           - start['wattlens_node_cpu_active_joules_total{node="real",source="rapl",zone="package"}'])
            assert daemon.stop()[0] == 0
    finally:
        driver.stop.set()
        driver.join(timeout=10)
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(base)

    total_cpu, total_joules = sum(cpu.values()), sum(joules.values())
    report = {name: (cpu[name] / total_cpu, joules[name] / total_joules) for name in services}
    print("\nservice: CPU share among the three / energy share / per-survivor sweep share")
    sweep_total = sum(sweep.totals.values()) or 1
    for name, (cpu_share, energy_share) in report.items():
        print(f"  {name:9} {cpu_share:7.1%} {energy_share:7.1%} {sweep.totals[name] / sweep_total:7.1%}")
    assert cpu["spawner"] > 0.1 * total_cpu, "the spawner did not run enough to test anything"
    for name, (cpu_share, energy_share) in report.items():
        assert abs(energy_share - cpu_share) <= 0.05 * cpu_share, (name, cpu_share, energy_share)

    # True share of the short-lived cgroup: the node's active energy times its share of the node's CPU time.
    # The fixture draws UJ_PER_BUSY_USEC per busy µs, so its CPU time in µs × that is its true energy.
    true_spawner_joules = cpu["spawner"] * UJ_PER_BUSY_USEC / 1e6
    assert joules["spawner"] >= 0.9 * true_spawner_joules, (joules["spawner"], true_spawner_joules)
    assert joules["spawner"] <= node_active
    # A sweep of surviving processes credits the spawner with almost none of its CPU.
    spawner_sweep_usec = sweep.totals["spawner"] * 1_000_000 / CLK_TCK
    print(f"  spawner: cgroup CPU {cpu['spawner'] / 1e6:.2f} s, survivor sweep {spawner_sweep_usec / 1e6:.2f} s, "
          f"wattlens {joules['spawner']:.2f} J of a true {true_spawner_joules:.2f} J")
    assert spawner_sweep_usec < 0.5 * cpu["spawner"]
