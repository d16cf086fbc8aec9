"""The stub libnvidia-ml.so.1 (tests/nvml_stub) seen through the real, unmodified pynvml (nvidia-ml-py).

Every NVML call runs in a child Python process (stub_common.child) started with stub_env(), because
LD_LIBRARY_PATH only takes effect at process start.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nvml_stub.stub import (
    LIB_NAME,
    NVML_VALUE_NOT_AVAILABLE,
    StubState,
    build_stub,
    default_uuid,
    read_call_log,
    stub_env,
)
from stub_common.child import Child, Children

# Runs in the child before it serves requests: the real pynvml and helpers that turn its structures into JSON.
_PRELUDE = r"""
import ctypes, time
import pynvml

LIB_ERROR = pynvml.NVMLError

def procs(objs):
    return [[o.pid, o.usedGpuMemory, o.gpuInstanceId, o.computeInstanceId] for o in objs]

def samples(objs):
    return [[s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil] for s in objs]

def handle(i):
    return pynvml.nvmlDeviceGetHandleByIndex(i)

def fields(objs):
    return [
        [f.fieldId, f.scopeId, f.nvmlReturn, f.valueType, f.value.ullVal if f.valueType == 3 else f.value.uiVal]
        for f in objs
    ]

def text(b):
    return None if b is None else b.decode()

def addr(ptr):
    return ctypes.cast(ptr, ctypes.c_void_p).value

def metrics_get(s1, s2, ids, version=pynvml.NVML_GPM_METRICS_GET_VERSION):
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version, mg.numMetrics, mg.sample1, mg.sample2 = version, len(ids), s1, s2
    for i, metric in enumerate(ids):
        mg.metrics[i].metricId = metric
    pynvml.nvmlGpmMetricsGet(mg)
    return [
        [m.metricId, m.nvmlReturn, round(m.value, 9), text(m.metricInfo.shortName), text(m.metricInfo.unit)]
        for m in mg.metrics[: len(ids)]
    ]

def gpu_instances(h):
    found = []
    for profile in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, profile)
        except pynvml.NVMLError_NotSupported:
            continue
        arr = (pynvml.c_nvmlGpuInstance_t * info.instanceCount)()
        count = ctypes.c_uint(0)
        pynvml.nvmlDeviceGetGpuInstances(h, info.id, arr, ctypes.byref(count))
        for gi in arr[: count.value]:
            gi_info = pynvml.nvmlGpuInstanceGetInfo(gi)
            found.append([
                info.name, profile, info.id, info.sliceCount, info.memorySizeMB,
                gi_info.id, gi_info.profileId, gi_info.placement.start, gi_info.placement.size,
                addr(gi_info.device) == addr(h),
            ])
    return found

"""


@pytest.fixture(scope="session")
def stub_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stub(tmp_path_factory.mktemp("nvml_stub"))


@pytest.fixture(scope="session")
def old_driver_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stub without the _v3 process-list symbols, like an R470-era driver."""
    omit = {f"nvmlDeviceGet{kind}RunningProcesses_v3" for kind in ("Compute", "Graphics", "MPSCompute")}
    return build_stub(tmp_path_factory.mktemp("nvml_stub_old"), omit=omit)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "nvml.state"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Child]]:
    with Children(tmp_path, _PRELUDE) as children:
        yield children.start


@pytest.fixture
def nvml(stub_lib: Path, state_path: Path, spawn: Callable[[dict[str, str]], Child]) -> Callable[[StubState], Child]:
    """Write the state, start a child on the stub, nvmlInit() it."""

    def start(state: StubState) -> Child:
        state.write(state_path)
        child = spawn(stub_env(stub_lib, state_path))
        child.ok("pynvml.nvmlInit()")
        return child

    return start


def two_gpus() -> StubState:
    return (
        StubState()
        .driver("550.54.15")
        .device(0, "NVIDIA H100 80GB HBM3", energy_mj=123_456_789_012, power_mw=350_123)
        .device(1, "NVIDIA H100 80GB HBM3 #2 (100% = ok) é", "GPU-abc-1", energy_mj=5, power_mw=70_000)
    )


# ---- building and the state file ----------------------------------------------------------------------


def test_build_is_cached_and_exports_the_soname(stub_lib: Path) -> None:
    lib = stub_lib / LIB_NAME
    before = lib.stat().st_mtime_ns
    assert build_stub(stub_lib) == stub_lib
    assert lib.stat().st_mtime_ns == before
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, timeout=30, check=False)
    if dynamic.returncode == 0:
        assert f"Library soname: [{LIB_NAME}]" in dynamic.stdout


def test_build_rejects_unknown_omit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nvmlDeviceGetTemperature"):
        build_stub(tmp_path, omit={"nvmlDeviceGetTemperature"})


def test_state_rendering_and_validation(state_path: Path) -> None:
    state = two_gpus().process(0, 42, "graphics", None, gi=1, ci=2).sample(0, 42, 1000, 50)
    text = state.write(state_path).read_text()
    assert "name=NVIDIA%20H100%2080GB%20HBM3%20%232%20(100%25%20%3D%20ok)%20%C3%A9" in text
    assert "proc device=0 list=graphics pid=42 mem=na gi=1 ci=2" in text
    assert "sample device=0 pid=42 ts=1000 sm=50 mem=0 enc=0 dec=0 jpg=0 ofa=0" in text
    assert not list(state_path.parent.glob(".*.tmp"))
    with pytest.raises(TypeError, match="unknown device field"):
        StubState().device(0, energy_rcc=3)
    with pytest.raises(ValueError, match="list must be"):
        StubState().device(0).process(0, 1, "cuda")
    with pytest.raises(ValueError, match="undeclared device"):
        StubState().device(0).process(1, 1).render()
    with pytest.raises(KeyError):
        StubState().set_device(3, lost=True)


# ---- through pynvml -------------------------------------------------------------------------------------


def test_init_driver_count_names_uuids(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(two_gpus())
    assert child.ok("pynvml.nvmlSystemGetDriverVersion()") == "550.54.15"
    assert child.ok("pynvml.nvmlSystemGetNVMLVersion()") == "12.550.54.15"
    assert child.ok("pynvml.nvmlDeviceGetCount()") == 2
    assert child.ok("[pynvml.nvmlDeviceGetName(handle(i)) for i in range(2)]") == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 80GB HBM3 #2 (100% = ok) é",
    ]
    assert child.ok("[pynvml.nvmlDeviceGetUUID(handle(i)) for i in range(2)]") == [default_uuid(0), "GPU-abc-1"]
    assert child.ok("pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID('GPU-abc-1'))") == 1
    assert child.raises("pynvml.nvmlDeviceGetHandleByUUID('GPU-nope')")["exc"] == "NVMLError_NotFound"
    assert child.raises("handle(2)")["exc"] == "NVMLError_InvalidArgument"
    assert child.ok("pynvml.nvmlDeviceGetPciInfo(handle(1)).busId") == "00000000:11:00.0"
    assert child.ok("pynvml.nvmlDeviceGetMigMode(handle(0))") == [0, 0]
    assert child.ok("pynvml.nvmlDeviceGetMaxMigDeviceCount(handle(0))") == 0
    child.ok("pynvml.nvmlShutdown()")
    assert child.raises("pynvml.nvmlDeviceGetCount()")["exc"] == "NVMLError_Uninitialized"
    assert child.raises("pynvml.nvmlShutdown()")["exc"] == "NVMLError_Uninitialized"


def test_energy_and_power(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(two_gpus())
    assert child.ok("pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0))") == 123_456_789_012  # > 2**32: u64
    assert child.ok("pynvml.nvmlDeviceGetPowerUsage(handle(0))") == 350_123
    assert child.ok("pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(1))") == 5
    assert child.ok("pynvml.nvmlDeviceGetPowerUsage(handle(1))") == 70_000


def test_utilization_rates(nvml: Callable[[StubState], Child]) -> None:
    """nvmlUtilization_t {gpu, memory} as pynvml's c_nvmlUtilization_t reads it; util_rc fails the call."""
    child = nvml(StubState().device(0, gpu_util=87, mem_util=41).device(1, util_rc=3))
    assert child.ok("[pynvml.nvmlDeviceGetUtilizationRates(handle(0)).gpu, "
                    "pynvml.nvmlDeviceGetUtilizationRates(handle(0)).memory]") == [87, 41]
    assert child.raises("pynvml.nvmlDeviceGetUtilizationRates(handle(1))")["exc"] == "NVMLError_NotSupported"


def test_energy_not_supported(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(StubState().device(0, power_mw=60_000, energy_rc=3).device(1, power_rc=4))
    err = child.raises("pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0))")
    assert (err["exc"], err["value"], err["msg"]) == ("NVMLError_NotSupported", 3, "Not Supported")
    assert child.ok("pynvml.nvmlDeviceGetPowerUsage(handle(0))") == 60_000
    assert child.raises("pynvml.nvmlDeviceGetPowerUsage(handle(1))")["exc"] == "NVMLError_NoPermission"


def test_error_string_comes_from_the_library_for_codes_pynvml_does_not_know(
    nvml: Callable[[StubState], Child],
) -> None:
    child = nvml(StubState().device(0, power_rc=27, energy_rc=12345))
    err = child.raises("pynvml.nvmlDeviceGetPowerUsage(handle(0))")
    assert (err["exc"], err["msg"]) == ("NVMLError_NotReady", "Not ready")  # via nvmlErrorString
    err = child.raises("pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0))")
    assert (err["exc"], err["value"], err["msg"]) == ("NVMLError", 12345, "Unknown Error")


def test_process_lists(nvml: Callable[[StubState], Child]) -> None:
    gib = 2**30
    state = (
        two_gpus()
        .process(0, 100, "compute", gib)
        .process(0, 100, "graphics", None)
        .process(0, 200, "compute", 2 * gib)
        .process(0, 300, "mps", 3 * gib, gi=1, ci=0)
    )
    for pid in range(1000, 1040):  # more than the first call's count: the wrapper sizes from it
        state.process(1, pid, "compute", pid)
    child = nvml(state)
    na = 0xFFFFFFFF
    compute = [[100, gib, na, na], [200, 2 * gib, na, na]]
    for version in ("", "_v3", "_v2"):
        assert child.ok(f"procs(pynvml.nvmlDeviceGetComputeRunningProcesses{version}(handle(0)))") == compute
        assert child.ok(f"procs(pynvml.nvmlDeviceGetGraphicsRunningProcesses{version}(handle(0)))") == [
            [100, None, na, na]
        ]
        assert child.ok(f"procs(pynvml.nvmlDeviceGetMPSComputeRunningProcesses{version}(handle(0)))") == [
            [300, 3 * gib, 1, 0]
        ]
        assert child.ok(f"procs(pynvml.nvmlDeviceGetGraphicsRunningProcesses{version}(handle(1)))") == []
    assert child.ok("procs(pynvml.nvmlDeviceGetComputeRunningProcesses(handle(1)))") == [
        [pid, pid, na, na] for pid in range(1000, 1040)
    ]


def test_process_list_error_code(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(StubState().device(0, procs_rc=3).process(0, 1))
    assert child.raises("pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))")["exc"] == "NVMLError_NotSupported"


def test_process_utilization(nvml: Callable[[StubState], Child]) -> None:
    state = (
        two_gpus()
        .sample(0, 100, 1_000, 10, 1, 2, 3)
        .sample(0, 200, 2_000, 20, 4, 5, 6, jpg=7, ofa=8)
        .sample(0, 100, 3_000, 30, 9, 0, 0)
        .sample(1, 555, 9_000, 99)
    )
    child = nvml(state)
    util = "samples(pynvml.nvmlDeviceGetProcessUtilization(handle(0), {}))"
    assert child.ok(util.format(0)) == [
        [100, 1_000, 10, 1, 2, 3],
        [200, 2_000, 20, 4, 5, 6],
        [100, 3_000, 30, 9, 0, 0],
    ]
    assert child.ok(util.format(1_000)) == [[200, 2_000, 20, 4, 5, 6], [100, 3_000, 30, 9, 0, 0]]
    assert child.ok(util.format(2_999)) == [[100, 3_000, 30, 9, 0, 0]]
    err = child.raises(util.format(3_000))
    assert (err["exc"], err["value"]) == ("NVMLError_NotFound", 6)
    assert child.raises(util.format(2**64 - 1))["exc"] == "NVMLError_NotFound"
    assert child.ok("samples(pynvml.nvmlDeviceGetProcessUtilization(handle(1), 0))") == [[555, 9_000, 99, 0, 0, 0]]
    info = (
        "[[u.timeStamp, u.pid, u.smUtil, u.jpgUtil, u.ofaUtil]"
        " for u in pynvml.nvmlDeviceGetProcessesUtilizationInfo(handle(0), {})]"
    )
    assert child.ok(info.format(1_500)) == [[2_000, 200, 20, 7, 8], [3_000, 100, 30, 0, 0]]
    assert child.raises(info.format(3_000))["exc"] == "NVMLError_NotFound"


def test_process_utilization_error_code(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(StubState().device(0, util_rc=3).sample(0, 1, 1))
    err = child.raises("pynvml.nvmlDeviceGetProcessUtilization(handle(0), 0)")
    assert err["exc"] == "NVMLError_NotSupported"


def test_gpu_lost_only_on_that_device(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(two_gpus().set_device(1, lost=True).process(1, 7))
    assert child.ok("pynvml.nvmlDeviceGetCount()") == 2
    assert child.ok("pynvml.nvmlDeviceGetPowerUsage(handle(0))") == 350_123
    assert child.raises("handle(1)")["exc"] == "NVMLError_GpuIsLost"


def test_gpu_lost_after_handle_taken(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    state = two_gpus().process(1, 7)
    child = nvml(state)
    child.ok("h0, h1 = handle(0), handle(1)", mode="exec")
    state.set_device(1, lost=True).write(state_path)
    for call in (
        "pynvml.nvmlDeviceGetTotalEnergyConsumption(h1)",
        "pynvml.nvmlDeviceGetPowerUsage(h1)",
        "pynvml.nvmlDeviceGetName(h1)",
        "pynvml.nvmlDeviceGetUUID(h1)",
        "pynvml.nvmlDeviceGetIndex(h1)",
        "pynvml.nvmlDeviceGetComputeRunningProcesses(h1)",
        "pynvml.nvmlDeviceGetProcessUtilization(h1, 0)",
        "pynvml.nvmlDeviceGetMigMode(h1)",
    ):
        err = child.raises(call)
        assert (err["exc"], err["value"], err["msg"]) == ("NVMLError_GpuIsLost", 15, "GPU is lost"), call
    assert child.ok("pynvml.nvmlDeviceGetTotalEnergyConsumption(h0)") == 123_456_789_012
    state.remove_device(1).write(state_path)  # fell off the bus entirely: the old handle stays lost
    assert child.raises("pynvml.nvmlDeviceGetPowerUsage(h1)")["exc"] == "NVMLError_GpuIsLost"
    assert child.ok("pynvml.nvmlDeviceGetCount()") == 1


def test_init_driver_not_loaded(stub_lib: Path, state_path: Path, spawn: Callable[[dict[str, str]], Child]) -> None:
    StubState().init(9).device(0).write(state_path)
    child = spawn(stub_env(stub_lib, state_path))
    err = child.raises("pynvml.nvmlInit()")
    assert (err["exc"], err["value"], err["is_lib_error"]) == ("NVMLError_DriverNotLoaded", 9, True)
    # the library stays loaded after a failed init; the stub then answers UNINITIALIZED like NVML does
    assert child.raises("pynvml.nvmlDeviceGetCount()")["exc"] == "NVMLError_Uninitialized"


def test_no_state_file_means_no_gpus(stub_lib: Path, tmp_path: Path, spawn: Callable[[dict[str, str]], Child]) -> None:
    missing = spawn(stub_env(stub_lib, tmp_path / "does-not-exist"))
    missing.ok("pynvml.nvmlInit()")
    assert missing.ok("pynvml.nvmlDeviceGetCount()") == 0
    env = stub_env(stub_lib, tmp_path / "x")
    del env["STUB_NVML_STATE"]
    unset = spawn(env)
    unset.ok("pynvml.nvmlInit()")
    assert unset.ok("pynvml.nvmlDeviceGetCount()") == 0
    assert unset.ok("pynvml.nvmlSystemGetDriverVersion()") == "550.54.15"


def test_without_the_stub_pynvml_finds_no_library(spawn: Callable[[dict[str, str]], Child], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    child = spawn(env)
    probe = child.request("pynvml.nvmlInit()")
    if "exc" not in probe:
        pytest.skip("this machine has a real libnvidia-ml.so.1")
    assert probe["exc"] == "NVMLError_LibraryNotFound"


def test_malformed_state_fails_loudly(nvml: Callable[[StubState], Child], state_path: Path) -> None:
    child = nvml(two_gpus())
    state_path.write_text("device index=0 power_mv=3\n")
    err = child.raises("pynvml.nvmlDeviceGetPowerUsage(handle(0))")
    assert (err["exc"], err["value"]) == ("NVMLError_Unknown", 999)
    assert "unknown key: power_mv" in child.stderr()
    state_path.write_text("device index=0\nproc device=1 list=compute pid=1\n")
    assert child.raises("pynvml.nvmlDeviceGetCount()")["exc"] == "NVMLError_Unknown"
    assert "not declared" in child.stderr()
    state_path.write_text("# only a comment\n\n  device   index=0  # trailing comment\n")
    assert child.ok("pynvml.nvmlDeviceGetCount()") == 1


def test_state_changes_seen_by_a_running_process(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    state = StubState().device(0, energy_mj=1_000, power_mw=100_000)
    child = nvml(state)
    child.ok("h0 = handle(0)", mode="exec")
    energy = "pynvml.nvmlDeviceGetTotalEnergyConsumption(h0)"
    assert child.ok(energy) == 1_000
    assert child.ok("procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h0))") == []
    assert child.raises("pynvml.nvmlDeviceGetProcessUtilization(h0, 0)")["exc"] == "NVMLError_NotFound"

    state.set_device(0, energy_mj=1_500, power_mw=120_000).process(0, 4242, mem=None).sample(0, 4242, 10, 80)
    state.write(state_path)
    assert child.ok(energy) == 1_500
    assert child.ok("pynvml.nvmlDeviceGetPowerUsage(h0)") == 120_000
    assert child.ok("procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h0))") == [[4242, None, 2**32 - 1, 2**32 - 1]]
    assert child.ok("samples(pynvml.nvmlDeviceGetProcessUtilization(h0, 0))") == [[4242, 10, 80, 0, 0, 0]]

    state.device(1, "second").clear_processes().set_device(0, energy_rc=3).write(state_path)
    assert child.ok("pynvml.nvmlDeviceGetCount()") == 2
    assert child.ok("pynvml.nvmlDeviceGetName(handle(1))") == "second"
    assert child.ok("procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h0))") == []
    assert child.raises(energy)["exc"] == "NVMLError_NotSupported"

    # lost, then back after a driver reload (counter restarted), re-initialised by the same process
    state.set_device(0, energy_rc=0, lost=True).write(state_path)
    assert child.raises(energy)["exc"] == "NVMLError_GpuIsLost"
    state.set_device(0, lost=False, energy_mj=7).init(9).write(state_path)
    child.ok("pynvml.nvmlShutdown()")
    assert child.raises("pynvml.nvmlInit()")["exc"] == "NVMLError_DriverNotLoaded"
    state.init(0).write(state_path)
    child.ok("pynvml.nvmlInit()")
    assert child.ok(energy) == 7
    assert NVML_VALUE_NOT_AVAILABLE == 2**64 - 1


def test_missing_symbol_behaviour(
    old_driver_lib: Path, state_path: Path, spawn: Callable[[dict[str, str]], Child]
) -> None:
    StubState().device(0).process(0, 9, "compute", 64).write(state_path)
    child = spawn(stub_env(old_driver_lib, state_path))
    child.ok("pynvml.nvmlInit()")
    # unversioned wrapper: @throwOnVersionMismatch turns FunctionNotFound into NVMLLibraryMismatchError,
    # which is NOT an NVMLError subclass
    for kind in ("Compute", "Graphics", "MPSCompute"):
        err = child.raises(f"pynvml.nvmlDeviceGet{kind}RunningProcesses(handle(0))")
        assert (err["exc"], err["is_lib_error"]) == ("NVMLLibraryMismatchError", False)
        assert f"nvmlDeviceGet{kind}RunningProcesses_v2" in err["msg"]
        err = child.raises(f"pynvml.nvmlDeviceGet{kind}RunningProcesses_v3(handle(0))")
        assert (err["exc"], err["value"], err["is_lib_error"]) == ("NVMLError_FunctionNotFound", 13, True)
    assert child.ok("procs(pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle(0)))") == [
        [9, 64, 2**32 - 1, 2**32 - 1]
    ]
    # a wrapper without the decorator whose symbol the stub never had
    err = child.raises("pynvml.nvmlDeviceGetTemperature(handle(0), 0)")
    assert (err["exc"], err["value"]) == ("NVMLError_FunctionNotFound", 13)


def test_delay_applies_to_that_device_only(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(StubState().device(0).device(1, delay_ms=300, power_mw=1))
    timed = "t = time.monotonic(); pynvml.nvmlDeviceGetPowerUsage(h); result = time.monotonic() - t"
    child.ok("h = handle(0)", mode="exec")
    assert child.ok(timed, mode="exec") < 0.2
    start = time.monotonic()
    child.ok("h = handle(1)", mode="exec")
    assert time.monotonic() - start >= 0.3
    assert child.ok(timed, mode="exec") >= 0.3


def test_call_log_and_call_counter(
    stub_lib: Path, state_path: Path, tmp_path: Path, spawn: Callable[[dict[str, str]], Child]
) -> None:
    two_gpus().write(state_path)
    log = tmp_path / "calls.log"
    child = spawn(stub_env(stub_lib, state_path, call_log=log))
    child.ok("pynvml.nvmlInit()")
    child.ok("pynvml.nvmlDeviceGetPowerUsage(handle(1))")
    assert read_call_log(log) == [
        ("nvmlInitWithFlags", None),
        ("nvmlDeviceGetHandleByIndex_v2", 1),
        ("nvmlDeviceGetPowerUsage", 1),
    ]
    assert child.ok("pynvml.nvmlLib.nvmlStubGetCallCount()") == 3


def test_concurrent_calls_while_the_state_is_replaced(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    state = two_gpus().set_device(0, power_mw=1)
    child = nvml(state)
    start = """
import threading
h0, seen, errors = handle(0), set(), []
def work():
    try:
        for _ in range(400):
            seen.add(pynvml.nvmlDeviceGetPowerUsage(h0))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
"""
    child.ok(start, mode="exec")
    for i in range(60):
        state.set_device(0, power_mw=2 + i % 2).write(state_path)
    child.ok("for t in threads: t.join()", mode="exec")
    assert child.ok("errors") == []
    assert set(child.ok("sorted(seen)")) <= {1, 2, 3}


# ---- field values (power scopes), memory, MIG instances, GPM ----------------------------------------------

FI_TOTAL_ENERGY, FI_POWER_AVERAGE, FI_POWER_INSTANT, FI_ENERGY = 83, 185, 186, 191
VALUE_UINT, VALUE_ULL = 1, 3


def test_field_values_follow_pynvml_ids_and_power_scopes(nvml: Callable[[StubState], Child]) -> None:
    # as measured on an H100 (driver 580): board 93.9 W, memory scope 48.7 W, module scope NOT_SUPPORTED
    state = (
        StubState()
        .device(0, energy_mj=40_412_000, power_mw=93_900, power_inst_mw=95_000, memory_power_mw=48_700)
        .device(1, energy_mj=7, power_mw=1, module_power_mw=400_000, module_energy_mj=9_000_000)
    )
    child = nvml(state)
    ids = "[pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_FI_DEV_ENERGY]"
    assert child.ok(ids) == [FI_TOTAL_ENERGY, FI_POWER_AVERAGE, FI_ENERGY]  # the ids the stub serves
    request = (
        "[pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, (pynvml.NVML_FI_DEV_POWER_AVERAGE, 0),"
        " (pynvml.NVML_FI_DEV_POWER_AVERAGE, 1), (pynvml.NVML_FI_DEV_POWER_AVERAGE, 2),"
        " (pynvml.NVML_FI_DEV_POWER_INSTANT, 0), (pynvml.NVML_FI_DEV_ENERGY, 0), (pynvml.NVML_FI_DEV_ENERGY, 1),"
        " (pynvml.NVML_FI_DEV_POWER_AVERAGE, 3), pynvml.NVML_FI_DEV_MEMORY_TEMP, pynvml.NVML_FI_MAX]"
    )
    before = time.time()
    got = child.ok(f"fields(pynvml.nvmlDeviceGetFieldValues(handle(0), {request}))")
    assert got == [
        [FI_TOTAL_ENERGY, 0, 0, VALUE_ULL, 40_412_000],
        [FI_POWER_AVERAGE, 0, 0, VALUE_UINT, 93_900],
        [FI_POWER_AVERAGE, 1, 3, VALUE_UINT, 0],  # module scope: NOT_SUPPORTED in that slot only
        [FI_POWER_AVERAGE, 2, 0, VALUE_UINT, 48_700],
        [FI_POWER_INSTANT, 0, 0, VALUE_UINT, 95_000],
        [FI_ENERGY, 0, 0, VALUE_ULL, 40_412_000],
        [FI_ENERGY, 1, 3, VALUE_ULL, 0],
        [FI_POWER_AVERAGE, 3, 3, VALUE_UINT, 0],
        [child.ok("pynvml.NVML_FI_DEV_MEMORY_TEMP"), 0, 3, VALUE_UINT, 0],  # a field the stub does not model
        [child.ok("pynvml.NVML_FI_MAX"), 0, 2, VALUE_UINT, 0],  # not a field id: INVALID_ARGUMENT
    ]
    stamp = child.ok(f"pynvml.nvmlDeviceGetFieldValues(handle(0), [{FI_TOTAL_ENERGY}])[0].timestamp")
    assert before * 1e6 - 1e6 <= stamp <= time.time() * 1e6 + 1e6  # µs since 1970
    got = child.ok(f"fields(pynvml.nvmlDeviceGetFieldValues(handle(1), [({FI_POWER_AVERAGE}, 1), ({FI_ENERGY}, 1)]))")
    assert got == [[FI_POWER_AVERAGE, 1, 0, VALUE_UINT, 400_000], [FI_ENERGY, 1, 0, VALUE_ULL, 9_000_000]]


def test_field_values_errors(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    state = StubState().device(0, energy_mj=5, power_mw=6, energy_rc=3, memory_power_mw=1).device(1, fv_rc=4)
    child = nvml(state)
    got = child.ok(f"fields(pynvml.nvmlDeviceGetFieldValues(handle(0), [{FI_TOTAL_ENERGY}, ({FI_POWER_AVERAGE}, 2)]))")
    assert got == [[FI_TOTAL_ENERGY, 0, 3, VALUE_ULL, 0], [FI_POWER_AVERAGE, 2, 0, VALUE_UINT, 1]]
    err = child.raises(f"pynvml.nvmlDeviceGetFieldValues(handle(1), [{FI_TOTAL_ENERGY}])")
    assert (err["exc"], err["value"]) == ("NVMLError_NoPermission", 4)
    child.ok("h0 = handle(0)", mode="exec")
    state.set_device(0, power_rc=15, energy_rc=0).write(state_path)
    got = child.ok(f"fields(pynvml.nvmlDeviceGetFieldValues(h0, [{FI_TOTAL_ENERGY}, {FI_POWER_INSTANT}]))")
    assert got == [[FI_TOTAL_ENERGY, 0, 0, VALUE_ULL, 5], [FI_POWER_INSTANT, 0, 15, VALUE_UINT, 0]]
    state.set_device(0, lost=True).write(state_path)
    assert child.raises(f"pynvml.nvmlDeviceGetFieldValues(h0, [{FI_TOTAL_ENERGY}])")["exc"] == "NVMLError_GpuIsLost"


def test_memory_info(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(StubState().device(0, mem_total=80 * 2**30, mem_used=2**30))
    assert child.ok("[(m := pynvml.nvmlDeviceGetMemoryInfo(handle(0))).total, m.used, m.free]") == [
        80 * 2**30,
        2**30,
        79 * 2**30,
    ]


def mig_h100() -> StubState:
    """An H100 in MIG mode: 1g.10gb as GI 7 (CI 0) and 3g.40gb as GI 2 (CI 0), plus a GPU without MIG."""
    return (
        StubState()
        .device(0, "NVIDIA H100 80GB HBM3", mig=True, gpm=True, energy_mj=10, mem_total=80 * 2**30)
        .gpu_instance(0, 7, "1g.10gb", start=6, mem_used=3 * 2**30)
        .gpu_instance(0, 2, "3g.40gb", start=0, mem_used=2**30, uuid="MIG-2222")
        .mig_profile(0, "7g.80gb")  # supported, no instance
        .device(1)
        .process(0, 100, "compute", 2**30, gi=7, ci=0)
        .process(0, 200, "compute", 2**29, gi=2, ci=0)
    )


def test_mig_gpu_instances_through_the_gpu_instance_api(nvml: Callable[[StubState], Child]) -> None:
    child = nvml(mig_h100())
    assert child.ok("pynvml.nvmlDeviceGetMigMode(handle(0))") == [1, 1]
    assert child.ok("gpu_instances(handle(0))") == [
        # name, NVML_GPU_INSTANCE_PROFILE_*, profile id, slices, MB, GI id, profileId, start, size, device
        ["1g.10gb", 0, 19, 1, 10240, 7, 19, 6, 1, True],
        ["3g.40gb", 2, 9, 3, 40960, 2, 9, 0, 3, True],
    ]
    assert child.ok("pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle(0), 4).name") == "7g.80gb"  # str in 13.x
    assert child.ok("pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle(0), 2, version=1).memorySizeMB") == 40960
    gi = "pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(handle(0), {}))"
    assert child.ok(f"[(i := {gi.format(2)}).id, i.profileId]") == [2, 9]
    assert child.raises(gi.format(3))["exc"] == "NVMLError_NotFound"
    # a GPU without MIG mode
    assert child.raises("pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle(1), 0)")["exc"] == "NVMLError_NotSupported"
    assert child.ok("gpu_instances(handle(1))") == []


def test_mig_devices_through_mig_device_handles(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    state = mig_h100()
    child = nvml(state)
    assert child.ok("pynvml.nvmlDeviceGetMaxMigDeviceCount(handle(0))") == 7
    setup = """
migs = []
for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle(0))):
    try:
        migs.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle(0), i))
    except pynvml.NVMLError_NotFound:
        pass
result = len(migs)
"""
    assert child.ok(setup, mode="exec") == 2
    describe = (
        "[[pynvml.nvmlDeviceIsMigDeviceHandle(m).value, pynvml.nvmlDeviceGetGpuInstanceId(m),"
        " pynvml.nvmlDeviceGetComputeInstanceId(m), pynvml.nvmlDeviceGetUUID(m), pynvml.nvmlDeviceGetName(m),"
        " pynvml.nvmlDeviceGetMemoryInfo(m).total, pynvml.nvmlDeviceGetMemoryInfo(m).used,"
        " addr(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)) == addr(handle(0)),"
        " procs(pynvml.nvmlDeviceGetComputeRunningProcesses(m))] for m in migs]"
    )
    assert child.ok(describe) == [
        [1, 7, 0, "MIG-00000000-0000-4000-8000-000000000007", "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
         10240 * 2**20, 3 * 2**30, True, [[100, 2**30, 7, 0]]],
        [1, 2, 0, "MIG-2222", "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
         40960 * 2**20, 2**30, True, [[200, 2**29, 2, 0]]],
    ]  # fmt: skip
    # the physical handle lists every instance's processes and is no MIG device
    assert child.ok("procs(pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0)))") == [
        [100, 2**30, 7, 0],
        [200, 2**29, 2, 0],
    ]
    assert child.ok("pynvml.nvmlDeviceIsMigDeviceHandle(handle(0)).value") == 0
    assert child.raises("pynvml.nvmlDeviceGetGpuInstanceId(handle(0))")["exc"] == "NVMLError_NotSupported"
    assert (
        child.raises("pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle(0), 7)")["exc"] == "NVMLError_InvalidArgument"
    )
    assert child.raises("pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle(1), 0)")["exc"] == "NVMLError_NotSupported"
    assert child.ok("pynvml.nvmlDeviceGetMaxMigDeviceCount(handle(1))") == 0
    # not MIG-aware calls answer for the parent GPU (board-level energy)
    assert child.ok("pynvml.nvmlDeviceGetTotalEnergyConsumption(migs[0])") == 10
    # the GPU instance API needs the MIG monitor capability; MIG device handles keep working without it
    child.ok("gis = [pynvml.nvmlDeviceGetGpuInstanceById(handle(0), 2)]", mode="exec")
    state.set_device(0, gi_rc=4).write(state_path)
    assert child.raises("gpu_instances(handle(0))")["exc"] == "NVMLError_NoPermission"
    assert child.raises("pynvml.nvmlGpuInstanceGetInfo(gis[0])")["exc"] == "NVMLError_NoPermission"
    assert child.ok("pynvml.nvmlDeviceGetGpuInstanceId(migs[1])") == 2
    # an instance destroyed while its handles are held
    state.set_device(0, gi_rc=0).remove_gpu_instance(0, 2).write(state_path)
    assert child.raises("pynvml.nvmlDeviceGetUUID(migs[1])")["exc"] == "NVMLError_InvalidArgument"
    assert child.raises("pynvml.nvmlGpuInstanceGetInfo(gis[0])")["exc"] == "NVMLError_InvalidArgument"
    assert child.ok("pynvml.nvmlDeviceGetGpuInstanceId(migs[0])") == 7


def test_gpm_metrics_per_gpu_instance_and_whole_gpu(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    ms = 1_000_000
    state = mig_h100().gpm(0, 1_000 * ms, gr=100 * ms, gi=7).gpm(0, 1_000 * ms, sm=0, gi=2).gpm(0, 1_000 * ms)
    child = nvml(state)
    assert child.ok("pynvml.nvmlGpmQueryDeviceSupport(handle(0)).isSupportedDevice") == 1
    take = "s1 = [pynvml.nvmlGpmSampleAlloc() for _ in range(6)]; result = None"
    child.ok(take, mode="exec")
    child.ok(
        "pynvml.nvmlGpmMigSampleGet(handle(0), 7, s1[0]); pynvml.nvmlGpmMigSampleGet(handle(0), 2, s1[1])", mode="exec"
    )
    child.ok("pynvml.nvmlGpmSampleGet(handle(0), s1[2])", mode="exec")
    # 200 ms later: GI 7's graphics engine was busy 150 ms (75 %), GI 2's SMs 50 ms (25 %), the GPU's 60 ms
    state.gpm(0, 1_200 * ms, gr=250 * ms, sm=40 * ms, gi=7).gpm(
        0, 1_200 * ms, gr=20 * ms, sm=50 * ms, occ=10 * ms, gi=2
    )
    state.gpm(0, 1_200 * ms, gr=60 * ms, sm=60 * ms).write(state_path)
    child.ok(
        "pynvml.nvmlGpmMigSampleGet(handle(0), 7, s1[3]); pynvml.nvmlGpmMigSampleGet(handle(0), 2, s1[4])", mode="exec"
    )
    child.ok("pynvml.nvmlGpmSampleGet(handle(0), s1[5])", mode="exec")
    ids = "[pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,"
    ids += " pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL]"
    assert child.ok(f"metrics_get(s1[0], s1[3], {ids})") == [
        [1, 0, 75.0, "gr_util", "%"],
        [2, 0, 20.0, "sm_util", "%"],
        [3, 0, 0.0, "sm_occupancy", "%"],
        [10, 3, 0.0, None, None],  # a metric the stub does not model: NOT_SUPPORTED in its slot
    ]
    assert child.ok(f"metrics_get(s1[1], s1[4], {ids})")[:3] == [
        [1, 0, 10.0, "gr_util", "%"],
        [2, 0, 25.0, "sm_util", "%"],
        [3, 0, 5.0, "sm_occupancy", "%"],
    ]
    assert child.ok(f"metrics_get(s1[2], s1[5], {ids})")[:2] == [
        [1, 0, 30.0, "gr_util", "%"],
        [2, 0, 30.0, "sm_util", "%"],
    ]
    # samples of different instances, samples not in time order, a wrong struct version, an unknown instance
    assert child.raises(f"metrics_get(s1[0], s1[4], {ids})")["exc"] == "NVMLError_InvalidArgument"
    assert child.raises(f"metrics_get(s1[3], s1[0], {ids})")["exc"] == "NVMLError_InvalidArgument"
    assert child.raises(f"metrics_get(s1[0], s1[3], {ids}, version=2)")["exc"] == "NVMLError_ArgumentVersionMismatch"
    assert child.raises("pynvml.nvmlGpmMigSampleGet(handle(0), 5, s1[0])")["exc"] == "NVMLError_InvalidArgument"
    child.ok("[pynvml.nvmlGpmSampleFree(s) for s in s1]")


def test_gpm_unsupported(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    state = mig_h100().set_device(0, gpm=False)
    child = nvml(state)
    assert child.ok("pynvml.nvmlGpmQueryDeviceSupport(handle(0)).isSupportedDevice") == 0
    child.ok("s = pynvml.nvmlGpmSampleAlloc()", mode="exec")
    assert child.raises("pynvml.nvmlGpmSampleGet(handle(0), s)")["exc"] == "NVMLError_NotSupported"
    assert child.raises("pynvml.nvmlGpmMigSampleGet(handle(1), 0, s)")["exc"] == "NVMLError_NotSupported"
    state.set_device(0, gpm=True, gpm_rc=3).write(state_path)
    assert child.raises("pynvml.nvmlGpmQueryDeviceSupport(handle(0))")["exc"] == "NVMLError_NotSupported"
    child.ok("pynvml.nvmlGpmSampleFree(s)")
    assert child.raises("pynvml.nvmlGpmSampleFree(s)")["exc"] == "NVMLError_InvalidArgument"


def test_mig_state_validation(state_path: Path, nvml: Callable[[StubState], Child]) -> None:
    with pytest.raises(KeyError, match=r"9g\.90gb"):
        StubState().device(0).gpu_instance(0, 1, "9g.90gb")
    with pytest.raises(ValueError, match="undeclared device"):
        StubState().device(0).gpu_instance(1, 1, "1g.10gb").render()
    child = nvml(StubState().device(0, mig=True))
    state_path.write_text("device index=0 mig=1\ngpm device=0 gi=3 ts=1\n")
    assert child.raises("pynvml.nvmlDeviceGetCount()")["exc"] == "NVMLError_Unknown"
    assert "gpm refers to a gi that is not declared" in child.stderr()
    state_path.write_text("device index=0 mig=1\ngi device=0 id=1 profile_id=19\n")
    assert child.raises("pynvml.nvmlDeviceGetCount()")["exc"] == "NVMLError_Unknown"
    assert "gi refers to a profile id that is not declared" in child.stderr()
