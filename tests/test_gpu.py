"""GPU energy through the real pynvml against the stub libnvidia-ml.so.1: the split among pods, the power
fallback, counter resets, a lost GPU, MIG, NVML time limits, and a machine with no NVIDIA library at all."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, CgroupFixture, Daemon, ProcTree, RaplTree, tool
from nvml_stub.stub import StubState, build_stub, default_uuid, stub_env

from exporter.attribution import apportion

POD_A = "kubepods.slice/kubepods-pod0000000a_0000_4000_8000_00000000000a.slice"
POD_B = "kubepods.slice/kubepods-pod0000000b_0000_4000_8000_00000000000b.slice"
A1, A2, B1 = "a1" * 32, "a2" * 32, "b1" * 32
CGROUPS = {
    101: f"{POD_A}/cri-containerd-{A1}.scope",
    102: f"{POD_A}/cri-containerd-{A2}.scope",
    103: f"{POD_B}/cri-containerd-{B1}.scope",
    104: "system.slice/trainer.service",
    105: "",  # a host process outside every workload cgroup
    106: "system.slice/slurmstepd.scope/job_77/step_0/user/task_0",  # a Slurm task: its job's
}
UUID0, UUID1 = default_uuid(0), default_uuid(1)


@pytest.fixture(scope="session")
def stub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stub(tmp_path_factory.mktemp("nvml"))


class GpuNode:
    """A node (RAPL fixture, cgroups with two pods and a service, /proc with GPU processes) plus stub states."""

    def __init__(self, tmp: Path, stub_dir: Path) -> None:
        self.tmp, self.stub_dir = tmp, stub_dir
        self.rapl = RaplTree.copy("unreadable", tmp)
        self.proc = ProcTree(tmp / "proc")
        cgroups = CgroupFixture(tmp / "cgroup")
        for pid, path in CGROUPS.items():
            if path:
                cgroups.add(path)
                cgroups.burn(path, 1000)  # its processes have used some CPU: a workload
            (self.proc.root / str(pid)).mkdir()
            (self.proc.root / str(pid) / "cgroup").write_text(f"0::/{path}\n")
        self.flags = {"sys_path": str(self.rapl.root), "proc_path": str(self.proc.root),
                      "cgroup_root": str(cgroups.root), "kubelet_log_path": str(tmp / "log"), "meters": "rapl",
                      "node_name": "gpu", "idle_watts": "package=0", "gpu_poll_interval": "0"}
        self.steps: list[dict[str, Any]] = []

    def step(self, now: float, state: StubState) -> None:
        path = self.tmp / f"state{len(self.steps)}"
        state.write(path)
        self.steps.append({"now": now, "state": str(path)})

    def env(self, state: Path) -> dict[str, str]:
        """The driver's environment: the stub library that reads `state`."""
        return stub_env(self.stub_dir, state, base={"PATH": "/usr/bin:/bin"})

    def run(self, render: bool = False, document: bool = False, **flags: str) -> list[dict[str, Any]]:
        scenario = {"flags": {**self.flags, **flags}, "state_path": str(self.tmp / "gpu.state"),
                    "steps": self.steps, "render": render, "document": document}
        env = self.env(self.tmp / "gpu.state")
        result = subprocess.run([sys.executable, str(REPO / "tests" / "gpu_driver.py")], input=json.dumps(scenario),
                                capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


def gpu(tick: dict[str, Any], index: int) -> dict[str, Any]:
    return next(g for g in tick["gpus"] if g["index"] == index)


def workload_gpu_uj(tick: dict[str, Any], kind: str, label: str, uuid: str) -> int:
    for w in tick["workloads"]:
        if w["kind"] == kind and label in w["labels"]:
            return int(w["energy_uj"].get(f"gpu:{uuid}", 0))
    raise AssertionError(f"no {kind} {label}")


def two_gpus() -> StubState:
    return StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=10_000_000).device(1, "NVIDIA H100 80GB HBM3",
                                                                                     energy_mj=20_000_000)


def test_pods_get_the_exact_split_of_active_energy_by_sm_utilisation(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = two_gpus()
    for pid in (101, 102, 103):
        state.process(0, pid, mem=1 << 30)
    node.step(0.0, state)
    state.set_device(0, energy_mj=11_000_000).set_device(1, energy_mj=20_500_000)  # +1000 J and +500 J in 5 s
    state.sample(0, 101, ts=2_000_000, sm=60).sample(0, 102, ts=2_000_000, sm=10).sample(0, 103, ts=2_000_000, sm=30)
    node.step(5.0, state)
    first, tick = node.run(gpu_idle_watts="50")
    assert gpu(first, 0)["joules_uj"] == 0

    g0, g1 = gpu(tick, 0), gpu(tick, 1)
    assert g0["joules_uj"] == 1_000_000_000
    assert (g0["idle_uj"], g0["active_uj"]) == (250_000_000, 750_000_000)  # idle 50 W × 5 s stays at node level
    pod_a, pod_b, unattributed = apportion(750_000_000, [70, 30, 0])
    assert workload_gpu_uj(tick, "pod", "0000000a-0000-4000-8000-00000000000a", UUID0) == pod_a == 525_000_000
    assert workload_gpu_uj(tick, "pod", "0000000b-0000-4000-8000-00000000000b", UUID0) == pod_b == 225_000_000
    a1, a2, _residual = apportion(pod_a, [60, 10, 0])
    assert workload_gpu_uj(tick, "container", A1, UUID0) == a1 == 450_000_000
    assert workload_gpu_uj(tick, "container", A2, UUID0) == a2 == 75_000_000
    assert workload_gpu_uj(tick, "container", B1, UUID0) == 225_000_000
    assert g0["unattributed_uj"] == unattributed == 0
    assert g0["idle_uj"] + g0["unattributed_uj"] + pod_a + pod_b == g0["joules_uj"]  # exact, per GPU
    assert g0["splits"] == {"sm_util": 1}
    # GPU 1 had no users: its idle is the configured 250 J, the rest is nobody's.
    assert (g1["joules_uj"], g1["idle_uj"], g1["unattributed_uj"]) == (500_000_000, 250_000_000, 250_000_000)
    assert g1["splits"] == {"none": 1}
    assert workload_gpu_uj(tick, "pod", "0000000a-0000-4000-8000-00000000000a", UUID1) == 0


def test_equal_split_without_samples_and_host_processes_unattributed(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = StubState().device(0, energy_mj=0)
    for pid in (101, 104, 105):  # a pod's container, a service, a host process
        state.process(0, pid, list="graphics" if pid == 104 else "compute", mem=None)
    state.process(0, 101, list="mps")  # the same PID in a second list counts once
    node.step(0.0, state)
    state.set_device(0, energy_mj=300_000)  # 300 J
    node.step(5.0, state)
    tick = node.run(gpu_idle_watts="0")[-1]
    assert gpu(tick, 0)["splits"] == {"equal": 1}
    assert workload_gpu_uj(tick, "pod", "0000000a-0000-4000-8000-00000000000a", UUID0) == 100_000_000
    assert workload_gpu_uj(tick, "service", "trainer.service", UUID0) == 100_000_000
    assert gpu(tick, 0)["unattributed_uj"] == 100_000_000  # PID 105 belongs to no workload


def test_power_fallback_reset_and_a_lost_gpu(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = StubState().device(0, energy_mj=0, power_mw=200_000, energy_rc=3).device(1, energy_mj=5_000_000)
    node.step(0.0, state)
    node.rapl.advance("intel-rapl:0", 0)
    state.set_device(1, energy_mj=5_100_000)
    node.step(5.0, state)  # GPU 0 integrates 200 W × 5 s; GPU 1 +100 J
    state.set_device(1, energy_mj=1_000)
    node.step(10.0, state)  # GPU 1's counter restarted (driver reload): a reset, never negative
    state.set_device(0, lost=True).set_device(1, energy_mj=3_000)
    node.step(15.0, state)  # GPU 0 falls off the bus
    state.set_device(0, lost=False, power_mw=100_000)
    node.step(20.0, state)  # back: re-acquired by UUID, re-baselined
    node.step(25.0, state)
    ticks = node.run(gpu_idle_watts="0")

    assert gpu(ticks[1], 0)["method"] == "power_integration"
    assert gpu(ticks[1], 0)["joules_uj"] == 1_000_000_000
    assert gpu(ticks[1], 1)["joules_uj"] == 100_000_000
    assert (gpu(ticks[2], 1)["joules_uj"], gpu(ticks[2], 1)["resets"]) == (100_000_000, 1)
    lost = ticks[3]
    assert ["nvml", UUID0, False] in lost["sources"]
    assert ["nvml", UUID1, True] in lost["sources"]
    assert gpu(lost, 1)["joules_uj"] == 102_000_000  # the other GPU keeps counting
    assert ["rapl", "intel-rapl:0", True] in lost["sources"]  # and so does the CPU side
    assert gpu(lost, 0)["joules_uj"] == gpu(ticks[2], 0)["joules_uj"]  # nothing invented while lost
    assert ["nvml", UUID0, True] in ticks[4]["sources"]
    before = gpu(ticks[4], 0)["joules_uj"]
    assert gpu(ticks[5], 0)["joules_uj"] - before == (100_000 + 100_000) // 2 * 5 * 1000  # trapezoid, 100 W
    for earlier, later in itertools.pairwise(ticks):
        for index in (0, 1):
            assert gpu(later, index)["joules_uj"] >= gpu(earlier, index)["joules_uj"]


def test_mig_splits_by_memory_as_an_estimate(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = StubState().device(0, energy_mj=0, mig=True)
    state.process(0, 101, mem=30 << 30).process(0, 103, mem=10 << 30)
    node.step(0.0, state)
    state.set_device(0, energy_mj=400_000)
    node.step(5.0, state)
    tick = node.run(gpu_idle_watts="0", render=True)[-1]
    assert gpu(tick, 0)["mig"] is True
    assert gpu(tick, 0)["splits"] == {"mig_memory": 1}
    assert workload_gpu_uj(tick, "pod", "0000000a-0000-4000-8000-00000000000a", UUID0) == 300_000_000
    assert workload_gpu_uj(tick, "pod", "0000000b-0000-4000-8000-00000000000b", UUID0) == 100_000_000
    assert f'wattlens_node_gpu_info{{driver="550.54.15",gpu="0",gpu_model="NVIDIA Stub GPU 0",gpu_uuid="{UUID0}",' \
           f'mig="true",node="gpu",partition=""}} 1.0' in tick["text"]


def test_a_hanging_nvml_call_is_cut_off_by_the_time_limit(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = StubState().device(0, energy_mj=0).device(1, energy_mj=0)
    node.step(0.0, state)
    state.set_device(0, delay_ms=1500)
    node.step(5.0, state)
    state.set_device(0, delay_ms=0, energy_mj=50_000)
    node.step(10.0, state)
    ticks = node.run(nvml_timeout="0.3")
    assert ["nvml", UUID0, False] in ticks[1]["sources"]  # NVML did not answer within 0.3 s
    assert all(up is False for s, _, up in ticks[1]["sources"] if s == "nvml")  # one worker: all wait on it


def test_gpu_exposition_passes_promtool(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = two_gpus().process(0, 101, mem=1 << 30)
    node.step(0.0, state)
    state.set_device(0, energy_mj=10_500_000).sample(0, 101, ts=1_000_000, sm=50)
    node.step(5.0, state)
    text = node.run(render=True)[-1]["text"]
    for family in ("node_gpu_joules_total", "pod_gpu_joules_total", "container_gpu_joules_total",
                   "unattributed_gpu_joules_total", "gpu_attribution_ticks_total"):
        assert f"# TYPE wattlens_{family} counter" in text
    promtool = tool("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert lint.returncode == 0, lint.stderr.decode()


def test_a_slurm_job_gets_the_gpu_energy_of_its_tasks(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state = two_gpus().process(0, 106, mem=1 << 30).process(0, 101, mem=1 << 30)
    node.step(0.0, state)
    state.set_device(0, energy_mj=10_500_000).sample(0, 106, ts=1_000_000, sm=75).sample(0, 101, ts=1_000_000, sm=25)
    node.step(5.0, state)
    tick = node.run(gpu_idle_watts="0", render=True)[-1]
    job, pod = apportion(500_000_000, [75, 25, 0])[:2]
    assert workload_gpu_uj(tick, "job", "77", UUID0) == job == 375_000_000
    assert workload_gpu_uj(tick, "pod", "0000000a-0000-4000-8000-00000000000a", UUID0) == pod
    lines = [line for line in tick["text"].splitlines() if line.startswith("wattlens_job_gpu_joules_total{")]
    assert lines == [f'wattlens_job_gpu_joules_total{{gpu="0",gpu_uuid="{UUID0}",job_id="77",node="gpu",'
                     'scheduler="slurm",user_id=""} 375.0']


def test_the_daemon_serves_gpu_joules_with_the_stub(tmp_path: Path, stub_dir: Path) -> None:
    node = GpuNode(tmp_path, stub_dir)
    state_path = tmp_path / "nvml.state"
    StubState().device(0, "NVIDIA A100-SXM4-80GB", energy_mj=1_000).write(state_path)
    env = stub_env(stub_dir, state_path, base={})
    with Daemon("--sys", str(node.rapl.root), "--interval", "0.5", "--node-name", "gpu",
                env={k: env[k] for k in ("LD_LIBRARY_PATH", "STUB_NVML_STATE")}) as daemon:
        daemon.wait_ready()
        assert "measuring 1 NVIDIA GPU(s) through NVML (driver 550.54.15)" in "".join(daemon.log)
        StubState().device(0, "NVIDIA A100-SXM4-80GB", energy_mj=81_000).write(state_path)
        samples = daemon.wait_ticks(2)
        key = (f'wattlens_node_gpu_joules_total{{gpu="0",gpu_model="NVIDIA A100-SXM4-80GB",gpu_uuid="{UUID0}",'
               f'method="energy_counter",node="gpu"}}')
        assert samples[key] == 80.0
        assert daemon.stop()[0] == 0


def test_without_any_nvidia_library_it_runs_cpu_only_and_check_says_why(tmp_path: Path) -> None:
    rapl = RaplTree.copy("unreadable", tmp_path)
    result = subprocess.run([sys.executable, "-m", "exporter", "check", "--sys", str(rapl.root), "--seconds", "0.2"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "[no ] nvml: no NVIDIA GPUs: the NVIDIA driver library libnvidia-ml.so.1 is not installed" in result.stdout
    assert "NVIDIA_VISIBLE_DEVICES=all" in result.stdout


def test_gh200_module_is_counted_once_and_grace_is_not_given_twice(tmp_path: Path, stub_dir: Path) -> None:
    """A GH200 (hwmon-gh200: Module 612 W ⊃ Grace 151 W ⊃ CPU 97 W + SysIO 31 W) whose NVML energy counter,
    like the hardware's, counts the whole module. The node's total is the module once (the sum a dashboard
    shows: docs/domains.md); the GPU's split among its users is the module less Grace (Grace is split by CPU
    time already); RAPL is absent, so hwmon measures the CPU."""
    node = GpuNode(tmp_path, stub_dir)
    shutil.copytree(REPO / "fixtures" / "sysfs" / "hwmon-gh200", tmp_path / "gh200", symlinks=True)
    (tmp_path / "gh200" / "expected.yaml").unlink()
    module_mj = 612 * 5 * 1000  # the NVML counter moves like the Module meter: 612 W over each 5 s tick
    for step in range(3):
        state = StubState().device(0, "NVIDIA GH200 480GB", energy_mj=1_000_000 + step * module_mj)
        state.process(0, 101, mem=1 << 30).sample(0, 101, ts=(step + 1) * 5_000_000, sm=50)
        node.step(step * 5.0, state)
    ticks = node.run(sys_path=str(tmp_path / "gh200"), meters="rapl,hwmon,model")
    last = ticks[-1]
    tree = {zone: (parent, top) for zone, parent, top in last["zone_info"]}
    assert tree["module"] == ("", True)
    assert tree["gpu"] == ("module", False)  # the GPU's counter is the module, inside the Module meter
    assert tree["grace"] == ("gpu", False)
    assert tree["cpu"] == ("grace", False) and tree["sysio"] == ("grace", False)
    # The node's total: the module, once (not + the GPU's 612 W + Grace 151 W + its rails).
    assert last["node_total_uj"] == 2 * 612 * 5 * 1_000_000
    assert last["rest_uj"] is None  # no platform meter
    # The GPU's share for its users: module − Grace = 461 W over each tick; Grace is the CPU's domain.
    g = gpu(last, 0)
    assert g["idle_uj"] + g["active_uj"] == 2 * (612 - 151) * 5 * 1_000_000
    assert g["joules_uj"] == 2 * 612 * 5 * 1_000_000  # the counter itself, as NVML reports it
    assert g["scope"] == "module"
