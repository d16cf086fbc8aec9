"""AMD GPUs through the real `amdsmi` 7.0.2 package against the stub libamd_smi.so, on the same accounting path
as NVIDIA's: two GPUs (one in DPX/NPS2 partitions), processes of two pods and a service, the split by engine
time and by compute units occupied, a counter reset, a lost GPU, promtool."""

from __future__ import annotations

import ctypes
import itertools
import subprocess
from pathlib import Path

import pytest
from amdsmi_stub.stub import AmdSmiState, build_stub, default_uuid, stub_env
from helpers import tool
from test_gpu import GpuNode, gpu, workload_gpu_uj
from test_gpu_jobs import POD_A, POD_B, assert_conserved

from exporter.attribution import apportion

RESOLUTION = ctypes.c_float(15.3).value  # what the package reads: a C float, 15.300000190734863
UUID0, UUID1 = default_uuid(0), default_uuid(1)


@pytest.fixture(scope="session")
def rocm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stub(tmp_path_factory.mktemp("rocm"))


class AmdNode(GpuNode):
    """GpuNode's node (cgroups, /proc) with AMD SMI instead of NVML."""

    def env(self, state: Path) -> dict[str, str]:
        return stub_env(self.stub_dir, state, base={"PATH": "/usr/bin:/bin"})

    def step(self, now: float, state: AmdSmiState) -> None:  # type: ignore[override]
        path = self.tmp / f"state{len(self.steps)}"
        state.write(path)
        self.steps.append({"now": now, "state": str(path)})


def uj(counts: int) -> int:
    return int(counts * RESOLUTION)


def test_two_amd_gpus_split_exactly_by_engine_use_through_resets_and_a_lost_gpu(
        tmp_path: Path, rocm_dir: Path) -> None:
    node = AmdNode(tmp_path, rocm_dir)
    energy = {0: 1_000_000, 1: 5_000_000}

    def state(gfx: dict[int, int], occupancy: dict[int, int], lost: bool = False) -> AmdSmiState:
        s = AmdSmiState().gpu(0, energy=energy[0], gfx_activity=60)
        s.partitioned_gpu(1, 0x11, "DPX", "NPS2", energy=energy[1], lost=int(lost))
        s.process(0, 101, gfx=gfx[101], vram=1 << 30).process(0, 103, gfx=gfx[103], vram=3 << 30)
        # ROCm compute jobs: their engine counters stay 0 (KFD queues); compute units occupied tell them apart
        s.process(1, 102, vram=2 << 30, cu_occupancy=occupancy[102]).process(2, 104, vram=2 << 30,
                                                                             cu_occupancy=occupancy[104])
        return s

    gfx = {101: 1_000_000_000, 103: 2_000_000_000}
    node.step(0.0, state(gfx, {102: 30, 104: 10}))
    gfx = {101: 4_000_000_000, 103: 3_000_000_000}  # 3 s and 1 s of GFX engine time in this tick
    energy[0] += 40_000_000  # × 15.3 µJ: 612 J
    energy[1] += 20_000_000
    node.step(5.0, state(gfx, {102: 30, 104: 10}))
    energy[0] = 1_000  # the counter restarted (driver reload): a reset, never negative
    energy[1] += 10_000_000
    node.step(10.0, state(gfx, {102: 30, 104: 10}, lost=True))  # GPU 1 falls off the bus
    energy[0] += 20_000_000
    node.step(15.0, state(gfx, {102: 30, 104: 10}))  # back: found again by address, re-baselined
    energy[0] += 20_000_000
    energy[1] += 20_000_000
    node.step(20.0, state(gfx, {102: 10, 104: 30}))
    ticks = node.run(gpu_idle_watts="10", render=True)
    assert ["amdsmi", UUID0, True] in ticks[0]["sources"], "the AMD SMI meter did not open: is amdsmi installed?"

    assert_conserved(ticks, UUID0, 0)
    assert_conserved(ticks, UUID1, 1)
    first = ticks[1]
    g0, g1 = gpu(first, 0), gpu(first, 1)
    assert g0["joules_uj"] == uj(41_000_000) - uj(1_000_000)
    assert g0["idle_uj"] == 50_000_000 and g0["splits"] == {"engine_gfx": 1}
    pod_a, pod_b = apportion(g0["active_uj"], [3_000_000_000, 1_000_000_000])
    assert workload_gpu_uj(first, "pod", POD_A, UUID0) == pod_a
    assert workload_gpu_uj(first, "pod", POD_B, UUID0) == pod_b
    # GPU 1 (DPX): energy from its primary partition only, users from both partitions, by CUs occupied
    assert g1["joules_uj"] == uj(25_000_000) - uj(5_000_000)
    assert g1["splits"] == {"cu_occupancy": 1} and g1["partition"] == "DPX/NPS2"
    a2, trainer = apportion(g1["active_uj"], [30, 10])
    assert workload_gpu_uj(first, "pod", POD_A, UUID1) == a2
    assert workload_gpu_uj(first, "service", "trainer.service", UUID1) == trainer

    reset, back, last = ticks[2:]  # 10 s: GPU 0 reset, GPU 1 lost; 15 s: back
    assert gpu(reset, 0)["resets"] == 1 and gpu(reset, 0)["joules_uj"] == g0["joules_uj"]
    assert ["amdsmi", UUID1, False] in reset["sources"] and ["amdsmi", UUID0, True] in reset["sources"]
    assert gpu(reset, 1)["joules_uj"] == g1["joules_uj"]  # nothing invented while lost
    assert ["amdsmi", UUID1, True] in back["sources"]
    assert gpu(back, 1)["joules_uj"] == g1["joules_uj"]  # re-baselined: the gap is not guessed
    assert gpu(last, 1)["joules_uj"] - gpu(back, 1)["joules_uj"] == uj(55_000_000) - uj(35_000_000)
    assert gpu(back, 0)["joules_uj"] - gpu(reset, 0)["joules_uj"] == uj(20_001_000) - uj(1_000)
    for earlier, later in itertools.pairwise(ticks):
        for index in (0, 1):
            assert gpu(later, index)["joules_uj"] >= gpu(earlier, index)["joules_uj"]

    text = last["text"]
    assert f'wattlens_node_gpu_info{{driver="amdgpu 6.10.5",gpu="1",gpu_model="AMD Instinct MI300X",' \
           f'gpu_uuid="{UUID1}",mig="false",node="gpu",partition="DPX/NPS2"}} 1.0' in text
    promtool = tool("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert lint.returncode == 0, lint.stderr.decode()
