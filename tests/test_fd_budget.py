"""The fd budget: with `ulimit -n` small, the real daemon keeps serving /healthz and /metrics, says once why it
degrades, and wattlens_fd_degraded shows it; every cgroup is still measured (open-read-close past the budget)."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

from helpers import CgroupFixture, Daemon, ProcTree, RaplTree

from exporter.sysfs import FdBudget, HeldFile

SERVICES = 150
PROCESSES = 100
NOFILE = 128


def make_node(tmp_path: Path) -> tuple[RaplTree, ProcTree, CgroupFixture]:
    rapl = RaplTree.copy("intel-laptop", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    proc.advance(1000, 1000)
    cgroups = CgroupFixture(tmp_path / "cgroup")
    for i in range(SERVICES):
        cgroups.add(f"system.slice/s{i}.service")
        cgroups.burn(f"system.slice/s{i}.service", 1000 + i)
    for pid in range(1000, 1000 + PROCESSES):
        directory = proc.root / str(pid)
        directory.mkdir()
        (directory / "stat").write_text(f"{pid} (p{pid}) S 1 1 1 0 -1 0 0 0 0 0 {pid} 3 0 0 20 0 1 0 {pid} 0 0\n")
        (directory / "cgroup").write_text(f"0::/system.slice/s{pid % SERVICES}.service\n")
    return rapl, proc, cgroups


def test_a_small_fd_limit_degrades_and_keeps_serving(tmp_path: Path) -> None:
    rapl, proc, cgroups = make_node(tmp_path)
    args = ("--sys", str(rapl.root), "--proc", str(proc.root), "--cgroup-root", str(cgroups.root),
            "--meters", "rapl", "--interval", "0.5", "--node-name", "fd")
    env = {"WATTLENS_PROCESS_METRICS": "true", "WATTLENS_KUBELET_LOG_PATH": str(tmp_path / "log")}
    with Daemon(*args, env=env, nofile=NOFILE) as daemon:
        daemon.wait_ready()
        for i in range(SERVICES):  # the node keeps working
            cgroups.burn(f"system.slice/s{i}.service", 5000)
        proc.advance(2000, 2000)
        samples = daemon.wait_ticks(4)
        budget = FdBudget(NOFILE)
        assert samples['wattlens_fd_budget{node="fd"}'] == budget.budget
        assert samples['wattlens_fds_held{node="fd"}'] <= budget.budget
        assert samples['wattlens_fd_degraded{node="fd",reader="cgroups"}'] == 1.0
        assert samples['wattlens_fd_degraded{node="fd",reader="processes"}'] == 1.0
        services = [k for k in samples if k.startswith("wattlens_service_cpu_joules_total{") and 'zone="package"' in k]
        assert len(services) == SERVICES  # measured all the same, past the budget by open-read-close
        fds = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
        assert fds < NOFILE - 32, fds

        def probe(path: str) -> int:
            return daemon.get(path)[0]

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(probe, ["/healthz", "/metrics", "/readyz"] * 20))
        assert statuses == [200] * 60
        time.sleep(1.0)  # more ticks: the warning is not repeated
        assert daemon.get("/healthz")[0] == 200
        code, log = daemon.stop()
    assert code == 0
    spent = [line for line in log.splitlines() if "fd budget" in line]
    assert len(spent) == 2, spent  # once for the cgroup reader, once for the processes
    assert any("opened, read and closed" in line for line in spent)
    assert any("processes beyond it get no series" in line for line in spent)
    assert all("Fix: raise the open-files limit" in line for line in spent)


def test_held_files_past_the_budget_read_the_same(tmp_path: Path) -> None:
    budget = FdBudget(4)  # reserve 2, budget 2
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_text(f"value {i}\n")
    files = [HeldFile(p, budget, "test") for p in paths]
    assert [f.held for f in files] == [True, True, False, False]
    assert budget.held == 2 and budget.degraded == {"test"}
    paths[3].write_text("value 33\n")
    assert [f.read() for f in files] == [b"value 0\n", b"value 1\n", b"value 2\n", b"value 33\n"]
    for f in files:
        f.close()
    assert budget.held == 0
