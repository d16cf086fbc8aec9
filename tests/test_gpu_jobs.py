"""GPU energy that follows every job to its end, through the real engine, the real pynvml and the stub library:
jobs whose PIDs exit between ticks, recycled PIDs, the ramp-down tail, the idle estimate of a GPU that is never
idle, and MIG split by GPM activity. Time is simulated: the driver polls and ticks at the steps' times, and the
jobs' processes appear in and vanish from the fixture /proc as real ones do from the kernel's."""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpu_driver import spawn
from helpers import Daemon
from nvml_stub.stub import StubState, default_uuid, stub_env
from test_gpu import CGROUPS, GpuNode, gpu, stub_dir, workload_gpu_uj  # noqa: F401 - stub_dir: a fixture

from exporter.attribution import apportion
from exporter.meters.gpu_processes import NOBODY, GpuProcesses
from exporter.meters.worker import MeterWorker

UUID0 = default_uuid(0)
POD_A, POD_B = "0000000a-0000-4000-8000-00000000000a", "0000000b-0000-4000-8000-00000000000b"
CG_A, CG_B = CGROUPS[101], CGROUPS[103]  # a container of pod A, the container of pod B
T0_US = int(time.time() * 1e6)  # simulated time 0 as µs since the epoch: NVML's sample clock is the wall clock
SAMPLE_S = 1 / 6  # NVML's per-process utilisation samples come about every 1/6 s


@dataclass(frozen=True)
class Job:
    pid: int
    cgroup: str
    start: float
    end: float
    sm: int = 100


@dataclass
class GpuModel:
    """A GPU drawing `idle` watts, `busy` more while any job runs and, after the last one ends, a ramp-down
    that falls linearly from `tail` watts to 0 over `tail_s`; its energy counter moves every 100 ms."""

    jobs: list[Job]
    idle: float = 72.0
    busy: float = 230.0
    tail: float = 50.0
    tail_s: float = 2.0
    start_mj: int = 5_000_000

    def owner(self, t: float) -> Job | None:
        """The job whose active power this is at time t: the running one, else the one whose tail it is."""
        running = [j for j in self.jobs if j.start <= t < j.end]
        if running:
            return running[0]
        ended = [j for j in self.jobs if j.end <= t < j.end + self.tail_s]
        return max(ended, key=lambda j: j.end) if ended else None

    def active_watts(self, t: float) -> float:
        job = self.owner(t)
        if job is None:
            return 0.0
        return self.busy if job.start <= t < job.end else self.tail * (1 - (t - job.end) / self.tail_s)

    def integrate(self, until: float, step: float = 0.001) -> tuple[list[float], dict[int, float]]:
        """Cumulative energy (J) at every ms, and each job's true active joules."""
        energy, truth, total = [0.0], {j.pid: 0.0 for j in self.jobs}, 0.0
        for i in range(round(until / step)):
            t = (i + 0.5) * step
            active = self.active_watts(t)
            total += (self.idle + active) * step
            energy.append(total)
            job = self.owner(t)
            if job is not None:
                truth[job.pid] += active * step
        return energy, truth

    def counter_mj(self, energy: list[float], t: float) -> int:
        return self.start_mj + int(energy[round(math.floor(t * 10) / 10 * 1000)] * 1000)


def simulate(node: GpuNode, model: GpuModel, ticks: list[float], polls: list[float], end: float,
             **device: Any) -> tuple[list[dict[str, Any]], dict[int, float], int]:
    """Write the steps (polls and ticks in time order) for the driver, run it; returns the ticks, each job's
    true active joules and the counter's movement between the first and last tick (µJ)."""
    energy, truth = model.integrate(end)
    spawned: set[int] = set()
    for t in sorted({*ticks, *polls}):
        state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=model.counter_mj(energy, t), **device)
        spawn, gone = {}, []
        for job in model.jobs:
            if job.start <= t < job.end:
                state.process(0, job.pid, mem=2 << 30)
                if job.pid not in spawned:
                    spawn[str(job.pid)] = [job.cgroup, T0_US + round(job.start * 1e6)]
                    spawned.add(job.pid)
            elif job.end <= t and job.pid in spawned:
                gone.append(job.pid)
                spawned.discard(job.pid)
            k = math.ceil(job.start / SAMPLE_S)
            while k * SAMPLE_S < min(job.end, t):  # the samples NVML holds at t (it keeps ~the last 10 s)
                if t - k * SAMPLE_S <= 10:
                    state.sample(0, job.pid, ts=T0_US + round(k * SAMPLE_S * 1e6), sm=job.sm)
                k += 1
        node.step(t, state)
        node.steps[-1].update(poll=t not in ticks, spawn=spawn, exit=gone)
    out = node.run(gpu_idle_watts=str(model.idle))
    moved = (model.counter_mj(energy, ticks[-1]) - model.counter_mj(energy, ticks[0])) * 1000
    return out, truth, moved


def top_level_gpu_uj(tick: dict[str, Any], uuid: str = UUID0) -> int:
    return sum(int(w["energy_uj"].get(f"gpu:{uuid}", 0)) for w in tick["workloads"] if w["kind"] != "container")


def assert_conserved(ticks: list[dict[str, Any]], uuid: str = UUID0, index: int = 0) -> None:
    """Every tick: the GPU's joules = idle + unattributed + Σ top-level workloads, exactly (integer µJ)."""
    for tick in ticks:
        g = gpu(tick, index)
        assert g["idle_uj"] + g["unattributed_uj"] + top_level_gpu_uj(tick, uuid) == g["joules_uj"]
        assert g["idle_uj"] + g["active_uj"] == g["joules_uj"]


def test_the_5_second_case_gives_every_job_its_energy(tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """../shared/gpu-check/gpu_check2.py through the stub: 5 s ticks, idle 72 W, a 15 s job in pod A, then
    thirteen 1 s jobs in pod B 1.5 s apart, each PID exiting between ticks. On the H100 wattlens gave 90.6 % and
    96.0 % of their active energy to their pods, the rest to unattributed; here both get ≥ 99 %."""
    node = GpuNode(tmp_path, stub_dir)
    jobs = [Job(2001, CG_A, 10.0, 25.0)] + [Job(3001 + i, CG_B, 35 + 1.5 * i, 36 + 1.5 * i) for i in range(13)]
    model = GpuModel(jobs)
    ticks = [2.2 + 5 * k for k in range(15)]  # not aligned with the jobs, as the daemon's are not
    polls = [0.6 + k for k in range(73)]  # the meter's thread, every second
    out, truth, moved = simulate(node, model, ticks, polls, end=75.0)
    assert len(out) == len(ticks)
    last = gpu(out[-1], 0)
    assert last["joules_uj"] == moved  # node GPU joules equal the counter
    assert_conserved(out)
    job_a = truth[2001]
    short = sum(truth[j.pid] for j in jobs[1:])
    pod_a = workload_gpu_uj(out[-1], "pod", POD_A, UUID0)
    pod_b = workload_gpu_uj(out[-1], "pod", POD_B, UUID0)
    print(f"5 s case: pod A {pod_a / 1e6:.1f} J of {job_a:.1f} J, pod B {pod_b / 1e6:.1f} J of {short:.1f} J, "
          f"unattributed {last['unattributed_uj'] / 1e6:.1f} J, node {last['joules_uj'] / 1e6:.1f} J = "
          f"counter {moved / 1e6:.1f} J")
    assert pod_a >= 0.99 * job_a * 1e6, (pod_a / 1e6, job_a)
    assert pod_b >= 0.99 * short * 1e6, (pod_b / 1e6, short)
    # and no more than their own: the idle is exact here, so what they get is what they used
    assert pod_a <= 1.01 * job_a * 1e6 and pod_b <= 1.01 * short * 1e6
    assert last["unattributed_uj"] <= 0.01 * (job_a + short) * 1e6
    assert set(last["splits"]) <= {"sm_util", "none", "tail"}

    # The control: without polls between ticks and without the tail, the 1 s jobs that no tick saw alive have no
    # recorded owner (their /proc entries are gone when their samples are read): their energy is unattributed.
    # The 15 s job is still whole, as the tick before its exit recorded it (the H100 lost 9.4 % of it here).
    before = GpuNode(tmp_path / "before", stub_dir)
    before.flags["gpu_tail"] = "0"
    out, truth, moved = simulate(before, model, ticks, [], end=75.0)
    assert gpu(out[-1], 0)["joules_uj"] == moved
    assert_conserved(out)
    lost_a = workload_gpu_uj(out[-1], "pod", POD_A, UUID0) / 1e6 / job_a
    lost_b = workload_gpu_uj(out[-1], "pod", POD_B, UUID0) / 1e6 / short
    print(f"  without polls and tail: pod A {lost_a:.1%}, pod B {lost_b:.1%}")
    assert lost_a >= 0.99 and lost_b < 0.5


def test_a_recycled_pid_in_another_cgroup_never_gets_the_old_owners_samples(
        tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """PID 5000 runs in pod A, exits, and is reused by a process of pod B before the tick that reads both
    processes' samples. Seen by a poll, the old process keeps its samples; never seen (no poll), its samples are
    nobody's; either way pod B gets only its own."""
    for polled in (True, False):
        node = GpuNode(tmp_path / str(polled), stub_dir)
        jobs = [Job(5000, CG_A, 1.0, 3.0), Job(5000, CG_B, 3.5, 6.0)]  # the new process still runs at the tick
        model = GpuModel(jobs, tail=0.0)
        out, _, moved = simulate(node, model, [0.0, 5.0], [2.0] if polled else [], end=5.0)
        tick = out[-1]
        g = gpu(tick, 0)
        assert g["joules_uj"] == moved
        assert_conserved(out)
        samples_a, samples_b = 12, 9  # 1/6 s samples within [1, 3) and [3.5, 5)
        pod_a, pod_b, nobody = apportion(g["active_uj"], [samples_a * 100 if polled else 0, samples_b * 100,
                                                         0 if polled else samples_a * 100])
        assert workload_gpu_uj(tick, "pod", POD_B, UUID0) == pod_b
        assert workload_gpu_uj(tick, "pod", POD_A, UUID0) == pod_a
        assert g["unattributed_uj"] == nobody


def test_the_tail_goes_to_the_last_users_for_gpu_tail_seconds(tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """A job in pod A ends at 4 s; the ramp-down lasts 6 s. The tick (5, 10] has no user: with gpu_tail 5 its
    active energy is the job's, with gpu_tail 2 the part in the first 2 s (40 %) is, and after the window
    nothing is the job's (unattributed)."""
    for tail_s, fraction in (("5", 1000), ("2", 400), ("0", 0)):
        node = GpuNode(tmp_path / tail_s, stub_dir)
        model = GpuModel([Job(6000, CG_A, 0.5, 4.0)], tail=40.0, tail_s=11.0)
        node.flags["gpu_tail"] = tail_s
        out, _, _ = simulate(node, model, [0.0, 5.0, 10.0, 15.0], [1.0], end=15.0)
        assert_conserved(out)
        after = [gpu(t, 0) for t in out]
        tail_active = after[2]["active_uj"] - after[1]["active_uj"]
        pod_a = [workload_gpu_uj(t, "pod", POD_A, UUID0) for t in out]
        assert pod_a[2] - pod_a[1] == apportion(tail_active, [fraction, 1000 - fraction])[0]
        assert pod_a[3] == pod_a[2]  # (10, 15] is past the window: unattributed
        unattributed = after[3]["unattributed_uj"] - after[2]["unattributed_uj"]
        assert unattributed == after[3]["active_uj"] - after[2]["active_uj"]
        if fraction:
            assert after[2]["splits"]["tail"] == 1


def test_a_gpu_that_is_never_idle_gets_an_idle_estimate_with_its_method(tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """A server holds the GPU all the time at loads from 10 % to 90 %: no interval is user-free. The idle
    estimate is the regression's intercept at 0 % load (70 W here: power = 70 W + 2.5 W per %), said by
    method="regression"; the split conserves exactly every tick."""
    node = GpuNode(tmp_path, stub_dir)
    state = StubState()
    energy_mj, loads = 1_000_000, [10, 30, 50, 70, 90, 20, 60, 40, 80, 15, 85, 55, 35, 65, 25]
    for i, load in enumerate([0, *loads]):
        energy_mj += 0 if i == 0 else round((70 + 2.5 * load) * 5 * 1000)
        state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=energy_mj, gpu_util=load)
        state.process(0, 101, mem=1 << 30).sample(0, 101, ts=T0_US + i * 5_000_000, sm=max(load, 1))
        node.step(i * 5.0, state)
    out = node.run(idle_window="1h")
    assert_conserved(out)
    methods = [gpu(t, 0)["idle_method"] for t in out]
    assert methods[1] == "none" and methods[-1] == "regression"
    assert abs(gpu(out[-1], 0)["idle_watts"] - 70.0) < 0.01
    assert "regression" in methods[: 5]  # three bands 20 % apart are enough
    tick = out[-1]
    rendered = node.run(render=True, idle_window="1h")[-1]["text"]
    assert 'method="regression"' in rendered
    assert gpu(tick, 0)["unattributed_uj"] == 0  # its one user takes all the active energy


def test_mig_instances_split_by_gpm_activity_or_by_memory_labelled(tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """An H100 in MIG mode with a 1g.10gb and a 3g.40gb instance: GPM says 75 % and 25 % activity, so pod A's
    process on the first instance gets 3/4 of the board's active energy whatever its memory; without GPM the
    split is by memory and says so (split="mig_memory"). Instances' shares sum to the active energy exactly."""
    for gpm in (True, False):
        node = GpuNode(tmp_path / str(gpm), stub_dir)
        state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=0, mig=True, gpm=gpm)
        state.gpu_instance(0, 7, "1g.10gb", start=6, mem_used=1 << 30).gpu_instance(0, 2, "3g.40gb",
                                                                                   mem_used=9 << 30)
        state.process(0, 101, mem=1 << 30, gi=7, ci=0).process(0, 103, mem=9 << 30, gi=2, ci=0)
        state.gpm(0, ts=1_000_000_000, gi=7).gpm(0, ts=1_000_000_000, gi=2)
        node.step(0.0, state)
        state.set_device(0, energy_mj=400_000)  # 400 J in 5 s
        state.gpm(0, ts=6_000_000_000, gr=3_750_000_000, gi=7).gpm(0, ts=6_000_000_000, gr=1_250_000_000, gi=2)
        node.step(5.0, state)
        out = node.run(gpu_idle_watts="20", render=True)
        assert_conserved(out)
        tick = out[-1]
        g = gpu(tick, 0)
        active = g["active_uj"]
        assert active == 400_000_000 - 100_000_000
        a_weight, b_weight = (7500, 2500) if gpm else (1024, 9216)
        pod_a, pod_b = apportion(active, [a_weight, b_weight])
        assert workload_gpu_uj(tick, "pod", POD_A, UUID0) == pod_a
        assert workload_gpu_uj(tick, "pod", POD_B, UUID0) == pod_b
        assert g["splits"] == {"mig_gpm" if gpm else "mig_memory": 1}
        instances = g["instances"]
        assert sum(uj for _, _, uj in instances.values()) == active
        assert instances["7"][:2] == ["1g.10gb", "MIG-00000000-0000-4000-8000-000000000007"]
        assert instances["7"][2] == apportion(active, [b_weight, a_weight])[1]  # instances in id order: 2, 7
        text = tick["text"]
        assert f'wattlens_node_gpu_instance_active_joules_total{{gpu="0",gpu_instance="7",gpu_uuid="{UUID0}",' \
               f'mig_profile="1g.10gb",mig_uuid="MIG-00000000-0000-4000-8000-000000000007",node="gpu"}}' in text


def test_memory_power_scope_is_a_breakdown_never_added(tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """The H100 reports memory power (scope 2) next to the board's; module scope is not supported there. The
    board's energy still comes from its counter (one field-values call), memory power is its own series."""
    node = GpuNode(tmp_path, stub_dir)
    for i in range(3):
        state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=1_000_000 + i * 469_500,
                                   power_mw=93_900, memory_power_mw=48_700)
        node.step(i * 5.0, state)
    out = node.run(render=True)
    g = gpu(out[-1], 0)
    assert g["joules_uj"] == 2 * 469_500_000
    assert set(g["scopes"]) == {"memory"}
    watts, joules = g["scopes"]["memory"]
    assert watts == 48.7 and abs(joules - 487_000_000) <= 1
    text = out[-1]["text"]
    assert 'wattlens_node_gpu_scope_watts{gpu="0",gpu_model="NVIDIA H100 80GB HBM3",' in text
    assert 'scope="memory"} 48.7' in text


def test_a_real_process_keeps_its_record_after_it_is_reaped(tmp_path: Path) -> None:
    """On the real /proc: a process is recorded with its start time and cgroup; once reaped, its held stat fd
    says so (ESRCH) and the record still answers for its samples, but not for samples from before it started."""
    processes = GpuProcesses(Path("/proc"), ttl_s=600.0)
    child = subprocess.Popen(["sleep", "30"])
    try:
        cgroup = Path(f"/proc/{child.pid}/cgroup").read_bytes()
        seen = processes.seen(child.pid, 1.0)
        assert seen.cgroup == cgroup
        assert abs(seen.start_us - time.time() * 1e6) < 5e6
    finally:
        child.kill()
        child.wait()
    assert processes.at(child.pid, seen.start_us + 10_000, 2.0) == seen  # its samples, read after it exited
    assert processes.at(child.pid, seen.start_us - 5_000_000, 2.0) is NOBODY  # before it: another process's
    # A driver whose sample clock is not the wall clock (told by the newest sample): samples go to the newest
    # process of their PID rather than to nobody.
    processes.calibrate(1_000_000_000)
    assert not processes.wall_clock
    assert processes.at(child.pid, 999_000_000, 2.0) == seen
    assert len(processes) == 1
    processes.expire(2.0 + 601.0)
    assert len(processes) == 0
    processes.close()


def test_the_daemons_poll_thread_keeps_a_job_that_lives_between_two_ticks(
        tmp_path: Path, stub_dir: Path) -> None:  # noqa: F811
    """The real daemon in real time (2 s ticks, polls every 0.2 s): a job appears just after a tick, runs 0.8 s and
    exits (its /proc entry goes) while NVML keeps its samples. The next tick gives its active energy to its pod;
    with polls off, nobody saw it alive and it is unattributed."""
    for poll in ("0.2", "0"):
        node = GpuNode(tmp_path / poll, stub_dir)
        state_path = node.tmp / "nvml.state"
        energy = 1_000_000
        StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=energy).write(state_path)
        env = stub_env(stub_dir, state_path, base={})
        with Daemon("--sys", node.flags["sys_path"], "--proc", node.flags["proc_path"], "--cgroup-root",
                    node.flags["cgroup_root"], "--interval", "2", "--gpu-poll-interval", poll, "--node-name", "gpu",
                    env={k: env[k] for k in ("LD_LIBRARY_PATH", "STUB_NVML_STATE")} | {"WATTLENS_GPU_IDLE_WATTS": "50"},
                    ) as daemon:
            daemon.wait_ready()
            daemon.wait_ticks(1)
            time.sleep(0.2)
            pid, start_us = 4321, int(time.time() * 1e6)
            job = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=energy).process(0, pid, mem=1 << 30)
            for k in range(4):
                job.sample(0, pid, ts=start_us + k * 166_000, sm=100)
            spawn(str(node.proc.root), str(pid), CG_A, start_us)  # as the kernel shows a new process
            job.write(state_path)
            time.sleep(0.8)
            shutil.rmtree(node.proc.root / str(pid))  # the job exits
            job.clear_processes().set_device(0, energy_mj=energy + 2_000_000).write(state_path)  # 2000 J in all
            samples = daemon.wait_ticks(1)
            assert daemon.stop()[0] == 0
        pod = [v for k, v in samples.items() if k.startswith("wattlens_pod_gpu_joules_total{") and POD_A in k]
        unattributed = sum(v for k, v in samples.items() if k.startswith("wattlens_unattributed_gpu_joules_total"))
        idle = sum(v for k, v in samples.items() if k.startswith("wattlens_node_gpu_idle_joules_total"))
        assert sum(pod) + unattributed + idle == pytest.approx(2000.0, abs=1e-6)
        active = 2000.0 - idle  # idle: 50 W × the tick (2 s, or more if the machine is slow)
        assert active > 1000
        got = sum(pod) if poll != "0" else unattributed  # all of it to the pod; without polls, nobody's
        assert got == pytest.approx(active, abs=1e-6), (pod, unattributed, idle)



def test_the_meter_worker_bounds_every_read_and_never_queues_polls() -> None:
    """A read that raises, a read that hangs (the time limit, then 'still stuck' without waiting), and polls
    skipped while a call runs: the tick always gets an answer."""
    release, polls = threading.Event(), []

    def read(now: float) -> str:
        if now == 1.0:
            raise ValueError("garbage from the driver")
        if now == 2.0:
            release.wait(5)
        return f"read at {now}"

    worker: MeterWorker[str] = MeterWorker("NVML", 0.2, read, polls.append)
    assert worker.read(0.0) == "read at 0.0"
    assert worker.read(1.0) == "NVML read failed (ValueError: garbage from the driver)"
    assert worker.read(2.0) == "NVML did not answer within 0.2 s"
    started = time.monotonic()
    assert worker.read(3.0) == "an earlier NVML call has not returned"
    worker.poll(3.5)  # skipped: the hung read still holds the thread
    assert time.monotonic() - started < 0.1
    release.set()
    time.sleep(0.1)
    worker.poll(4.0, wait=True)
    assert polls == [4.0]
    assert worker.read(5.0) == "read at 5.0"
    worker.close()
