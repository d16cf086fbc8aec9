"""GPU tick cost: NVML reads and GPU accounting for 8 GPUs, through the real pynvml and the stub library.

Run: .venv/bin/python benchmarks/gpu.py [--ticks N]
The stub (tests/nvml_stub) is built with gcc and the script re-executes itself with LD_LIBRARY_PATH set, as
the dynamic loader only honours it at process start. Each GPU has 4 compute processes and fresh utilisation
samples every tick. Figures are wall time of the calls the tick thread makes (the asyncio loop never waits on
NVML: ticks run in a worker thread).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import pynvml  # noqa: E402
from nvml_stub.stub import StubState, build_stub, stub_env  # noqa: E402

from exporter.accounting import Accounting, Weights  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.ledger import WorkloadLedger  # noqa: E402
from exporter.meters.nvml import NvmlMeter  # noqa: E402

GPUS = 8
PROCESSES_PER_GPU = 4


def state_at(tick: int) -> StubState:
    state = StubState()
    for index in range(GPUS):
        state.device(index, "NVIDIA H100 80GB HBM3", energy_mj=1_000_000 + tick * 2_500_000 + index)
        for p in range(PROCESSES_PER_GPU):
            pid = 10_000 + index * 100 + p
            state.process(index, pid, mem=(p + 1) << 30)
            state.sample(index, pid, ts=(tick + 1) * 5_000_000, sm=10 + 20 * p)
    return state


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"p50 {statistics.median(ordered):7.3f}  p99 {p99:7.3f}  mean {statistics.fmean(ordered):7.3f}  "
        f"max {ordered[-1]:7.3f}"
    )


def measure(ticks: int, state_path: Path) -> None:
    state_at(0).write(state_path)
    meter = NvmlMeter.open(timeout_s=5.0, proc_path=state_path.parent / "no-proc")
    ledger: WorkloadLedger[str] = WorkloadLedger(600.0)
    accounting = Accounting(load_config({"gpu_idle_watts": "60"}, None, environ={}), ledger, dict)
    keys = [("pod:x", "")] + [(f"container:{10_000 + i * 100 + p}", "pod:x") for i in range(GPUS)
                              for p in range(PROCESSES_PER_GPU)]
    read_ms, tick_ms = [], []
    for tick in range(1, ticks + 1):
        state_at(tick).write(state_path)  # outside the timed region
        now = tick * 5.0
        start = time.perf_counter()
        meter.read(now)
        read_ms.append((time.perf_counter() - start) * 1000)
        state_at(tick).set_device(0, energy_mj=1_000_000 + tick * 2_500_000 + 7).write(state_path)
        for key, parent in keys:
            ledger.seen(now, key, key, parent)
        start = time.perf_counter()
        accounting.tick(now + 0.001, 5.0, node=[], cpu=Weights(0, []), accelerators=meter.read(now + 0.001),
                        owner=lambda user: ("pod:x", f"container:{user.pid}"))
        tick_ms.append((time.perf_counter() - start) * 1000)
    calls_per_tick = _calls(lambda: meter.read(ticks * 5.0 + 1.0)) / GPUS
    poll_ms = _timed(lambda: meter.poll(ticks * 5.0 + 2.0, wait=True), 50)
    floor_ms = _timed(lambda: _classic_call_set(meter), 50)
    meter.close()
    print(
        f"wattlens GPU benchmark: {GPUS} stub GPUs x {PROCESSES_PER_GPU} processes, {ticks} ticks; "
        f"nproc {os.cpu_count()}, Python {platform.python_version()}"
    )
    print(f"  NvmlMeter.read (all {GPUS} GPUs), ms:     {percentiles(read_ms)}")
    print(f"  read + Accounting.tick (split), ms:    {percentiles(tick_ms)}")
    per_gpu = statistics.median(read_ms) / GPUS
    print(f"  per GPU: read {per_gpu:.3f} ms, {calls_per_tick:.1f} NVML calls per tick; a poll between ticks "
          f"{poll_ms / GPUS:.3f} ms")
    print(f"  floor (same run): the classic per-tick call set (energy, 3 process lists, utilisation, MIG mode) "
          f"{floor_ms / GPUS:.3f} ms per GPU -> read/floor {per_gpu / floor_ms * GPUS:.2f}x")
    budget = statistics.median(tick_ms)
    print(f"  target <= 5 ms per tick for 8 GPUs: median {budget:.3f} ms -> {'OK' if budget <= 5 else 'OVER'}")


def _timed(call: Callable[[], object], repeat: int) -> float:
    """Median ms of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _calls(call: Callable[[], object]) -> int:
    """NVML calls `call` makes (the stub counts them)."""
    counter = ctypes.CDLL("libnvidia-ml.so.1").nvmlStubGetCallCount
    counter.restype = ctypes.c_ulonglong
    before = counter()
    call()
    return int(counter() - before)


def _classic_call_set(meter: NvmlMeter) -> None:
    """What a tick cost before issue 15, on the same stub: per GPU, the energy call, three process lists, the
    utilisation samples and the MIG mode, each its own call."""
    for device in meter._devices:
        handle = device.handle
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)
        pynvml.nvmlDeviceGetMPSComputeRunningProcesses(handle)
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlDeviceGetMigMode(handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300)
    args = parser.parse_args()
    if "STUB_NVML_STATE" not in os.environ:
        work = Path(tempfile.mkdtemp(prefix="wattlens-gpu-bench-"))
        lib = build_stub(work / "lib")
        env = stub_env(lib, work / "nvml.state")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    measure(args.ticks, Path(os.environ["STUB_NVML_STATE"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
