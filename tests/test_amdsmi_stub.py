"""The stub libamd_smi.so (tests/amdsmi_stub) seen through the real, unmodified PyPI `amdsmi` package (7.0.2).

Every AMD SMI call runs in a child Python process (stub_common.child) started with stub_env(): the package
loads $ROCM_PATH/lib/libamd_smi.so when it is first imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from amdsmi_stub.stub import (
    LIB_NAME,
    SONAME,
    AmdSmiState,
    AmdSmiStatus,
    build_stub,
    default_uuid,
    exported_symbols,
    library_path,
    read_call_log,
    stub_env,
)
from helpers import require
from stub_common.child import Child, Children

AMDSMI_VERSION = "7.0.2"  # the package version whose structures the stub reproduces

# Runs in the child before it serves requests: the real amdsmi package and a few helpers.
_PRELUDE = r"""
import ctypes, time
import amdsmi
from amdsmi import amdsmi_wrapper

LIB_ERROR = amdsmi.AmdSmiException

def handles():
    return amdsmi.amdsmi_get_processor_handles()

def layout(name):
    fn = amdsmi_wrapper._libraries["libamd_smi.so"].amdsmiStubLayout
    fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.c_char_p]
    return fn(name.encode())

def ctypes_layout(name):
    struct, _, member = name.partition(".")
    cls = getattr(amdsmi_wrapper, struct)
    return getattr(cls, member).offset if member else ctypes.sizeof(cls)
"""


def amdsmi_installed() -> bool:
    return importlib.util.find_spec("amdsmi") is not None


@pytest.fixture(scope="session")
def rocm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(amdsmi_installed(), "the amdsmi package is not installed (pip install -e '.[dev]')")
    return build_stub(tmp_path_factory.mktemp("rocm"))


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "amdsmi.state"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Child]]:
    with Children(tmp_path, _PRELUDE) as children:
        yield children.start


@pytest.fixture
def amd(rocm: Path, state_path: Path, spawn: Callable[[dict[str, str]], Child]) -> Callable[[AmdSmiState], Child]:
    """Write the state, start a child on the stub, amdsmi_init() it."""

    def start(state: AmdSmiState) -> Child:
        state.write(state_path)
        child = spawn(stub_env(rocm, state_path))
        child.ok("amdsmi.amdsmi_init()")
        return child

    return start


def two_gpus() -> AmdSmiState:
    return (
        AmdSmiState()
        .gpu(0, "0000:05:00.0", energy=1_000_000, energy_ts=5_000_000_000, current_socket_power=742)
        .gpu(1, "0000:26:00.0", energy=7, market_name="AMD Instinct MI300X", product_name="AMD Instinct MI300X OAM")
    )


# ---- building, symbols, layouts ---------------------------------------------------------------------------


def test_build_is_cached_with_the_rocm_layout(rocm: Path) -> None:
    lib = library_path(rocm)
    assert lib == rocm / "lib" / LIB_NAME
    before = lib.stat().st_mtime_ns
    assert build_stub(rocm) == rocm
    assert lib.stat().st_mtime_ns == before
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, timeout=30, check=False)
    if dynamic.returncode == 0:
        assert f"Library soname: [{SONAME}]" in dynamic.stdout


def test_the_stub_exports_exactly_what_the_package_binds(rocm: Path) -> None:
    """amdsmi_wrapper.py binds every library function at import; a version with new functions fails here."""
    assert importlib.metadata.version("amdsmi") == AMDSMI_VERSION, "the stub models amdsmi 7.0.2: pin it"
    spec = importlib.util.find_spec("amdsmi")
    assert spec is not None and spec.origin is not None
    wrapper = (Path(spec.origin).parent / "amdsmi_wrapper.py").read_text()
    bound = set(re.findall(r"_libraries\['libamd_smi\.so'\]\.(\w+)", wrapper))
    assert len(bound) == 184
    stub = {s for s in exported_symbols() if s.startswith("amdsmi_")}
    assert stub == bound
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", str(library_path(rocm))], capture_output=True, text=True, timeout=30
    )
    if nm.returncode == 0:
        assert {line.split()[-1] for line in nm.stdout.splitlines()} >= bound


def test_struct_layouts_match_the_packages_ctypes(amd: Callable[[AmdSmiState], Child]) -> None:
    child = amd(AmdSmiState())
    names = [
        "amdsmi_bdf_t",
        "amdsmi_asic_info_t",
        "amdsmi_asic_info_t.vendor_id",
        "amdsmi_asic_info_t.device_id",
        "amdsmi_asic_info_t.asic_serial",
        "amdsmi_asic_info_t.num_of_compute_units",
        "amdsmi_asic_info_t.target_graphics_version",
        "amdsmi_asic_info_t.subsystem_id",
        "amdsmi_board_info_t",
        "amdsmi_board_info_t.product_name",
        "amdsmi_board_info_t.manufacturer_name",
        "amdsmi_power_info_t",
        "amdsmi_power_info_t.current_socket_power",
        "amdsmi_power_info_t.average_socket_power",
        "amdsmi_power_info_t.power_limit",
        "amdsmi_engine_usage_t",
        "amdsmi_proc_info_t",
        "amdsmi_proc_info_t.pid",
        "amdsmi_proc_info_t.mem",
        "amdsmi_proc_info_t.engine_usage",
        "amdsmi_proc_info_t.memory_usage",
        "amdsmi_proc_info_t.container_name",
        "amdsmi_proc_info_t.cu_occupancy",
        "amdsmi_vram_usage_t",
        "amdsmi_kfd_info_t",
        "amdsmi_kfd_info_t.current_partition_id",
        "amdsmi_enumeration_info_t",
        "amdsmi_driver_info_t",
        "amdsmi_version_t",
        "amdsmi_version_t.build",
    ]
    got = child.ok(f"[[n, layout(n), ctypes_layout(n)] for n in {names!r}]")
    assert [[n, c] for n, _, c in got] == [[n, s] for n, s, _ in got]
    assert child.ok("layout('no_such_struct')") == 2**64 - 1


# ---- through the amdsmi package ---------------------------------------------------------------------------


def test_processors_sockets_and_identity(amd: Callable[[AmdSmiState], Child]) -> None:
    child = amd(two_gpus())
    child.ok("hs = handles()", mode="exec")
    assert child.ok("len(hs)") == 2
    assert child.ok("[amdsmi.amdsmi_get_gpu_device_bdf(h) for h in hs]") == ["0000:05:00.0", "0000:26:00.0"]
    assert child.ok("[amdsmi.amdsmi_get_gpu_device_uuid(h) for h in hs]") == [default_uuid(0), default_uuid(1)]
    assert child.ok("[amdsmi.amdsmi_get_socket_info(s) for s in amdsmi.amdsmi_get_socket_handles()]") == [
        "0000:05:00",
        "0000:26:00",
    ]
    assert child.ok("amdsmi.amdsmi_get_processor_type(hs[0])") == {"processor_type": "AMDSMI_PROCESSOR_TYPE_AMD_GPU"}
    assert child.ok("amdsmi.amdsmi_get_gpu_asic_info(hs[1])") == {
        "market_name": "AMD Instinct MI300X",
        "vendor_id": "0x1002",
        "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
        "subvendor_id": "0x1002",
        "device_id": "0x74a1",
        "rev_id": "0x00",
        "asic_serial": "0xA5A5000000000001",
        "oam_id": 1,
        "num_compute_units": 304,
        "target_graphics_version": "gfx942",
        "subsystem_id": "0x74a1",
    }
    assert child.ok("amdsmi.amdsmi_get_gpu_board_info(hs[1])") == {
        "model_number": "N/A",
        "product_serial": "N/A",
        "fru_id": "N/A",
        "product_name": "AMD Instinct MI300X OAM",
        "manufacturer_name": "AMD",
    }
    assert child.ok("amdsmi.amdsmi_get_gpu_kfd_info(hs[0])") == {
        "kfd_id": 4096,
        "node_id": 1,
        "current_partition_id": 0,
    }
    assert child.ok("amdsmi.amdsmi_get_gpu_enumeration_info(hs[1])") == {
        "drm_render": 129,
        "drm_card": 1,
        "hsa_id": 2,
        "hip_id": 1,
        "hip_uuid": "GPU-A5A5000000000001",
    }
    assert child.ok("amdsmi.amdsmi_get_gpu_driver_info(hs[0])") == {
        "driver_name": "amdgpu",
        "driver_version": "6.10.5",
        "driver_date": "N/A",
    }
    # the wrapper decodes only the first byte of the build string (version.build.contents.value)
    assert child.ok("amdsmi.amdsmi_get_lib_version()") == {"major": 26, "minor": 0, "release": 2, "build": "s"}
    assert child.ok("amdsmi.amdsmi_get_gpu_device_bdf(amdsmi.amdsmi_get_processor_handle_from_bdf('26:00.0'))") == (
        "0000:26:00.0"
    )


def test_energy_count_power_and_activity(state_path: Path, amd: Callable[[AmdSmiState], Child]) -> None:
    state = two_gpus().set_gpu(1, resolution=15.259, average_socket_power=0xFFFF, gfx_activity=97, umc_activity=1)
    child = amd(state)
    child.ok("hs = handles()", mode="exec")
    # accumulator in counts; µJ = counts × resolution (a C float, hence 15.300000190734863)
    assert child.ok("amdsmi.amdsmi_get_energy_count(hs[0])") == {
        "energy_accumulator": 1_000_000,
        "counter_resolution": 15.300000190734863,
        "timestamp": 5_000_000_000,
    }
    energy = child.ok("amdsmi.amdsmi_get_energy_count(hs[1])")
    assert energy["counter_resolution"] == pytest.approx(15.259, abs=1e-6)
    boot_ns = child.ok("time.clock_gettime_ns(time.CLOCK_BOOTTIME)")
    assert 0 < boot_ns - energy["timestamp"] < 60 * 10**9  # without energy_ts: the boot-time clock in ns
    assert child.ok("amdsmi.amdsmi_get_power_info(hs[0])") == {
        "socket_power": 0,
        "current_socket_power": 742,
        "average_socket_power": 0,
        "gfx_voltage": 0,
        "soc_voltage": 0,
        "mem_voltage": 0,
        "power_limit": 0,
    }
    assert child.ok("amdsmi.amdsmi_get_power_info(hs[1])['average_socket_power']") == "N/A"  # 0xFFFF
    assert child.ok("amdsmi.amdsmi_get_gpu_activity(hs[1])") == {
        "gfx_activity": 97,
        "umc_activity": 1,
        "mm_activity": 0,
    }
    assert child.ok("amdsmi.amdsmi_get_gpu_vram_usage(hs[1])") == {"vram_total": 196592, "vram_used": 0}
    # the counter moves, then restarts (driver reload): the package returns whatever the library says
    state.set_gpu(0, energy=2_000_000).write(state_path)
    assert child.ok("amdsmi.amdsmi_get_energy_count(hs[0])['energy_accumulator']") == 2_000_000
    state.set_gpu(0, energy=12).write(state_path)
    assert child.ok("amdsmi.amdsmi_get_energy_count(hs[0])['energy_accumulator']") == 12


def test_process_list_with_engine_use(state_path: Path, amd: Callable[[AmdSmiState], Child]) -> None:
    gib = 2**30
    state = (
        two_gpus()
        .process(0, 1111, name="python3", gfx=3_000_000_000, vram=2 * gib, gtt=4096, cu_occupancy=152)
        .process(0, 2222, name="", gfx=1_000_000_000, enc=5, vram=gib, container="a1b2c3d4e5f60718")
        .process(1, 3333, name="/usr/bin/python3.12")
    )
    child = amd(state)
    child.ok("hs = handles()", mode="exec")
    assert child.ok("amdsmi.amdsmi_get_gpu_process_list(hs[0])") == [
        {
            "name": "python3",
            "pid": 1111,
            "mem": 2 * gib + 4096,
            "engine_usage": {"gfx": 3_000_000_000, "enc": 0},
            "memory_usage": {"gtt_mem": 4096, "cpu_mem": 0, "vram_mem": 2 * gib},
            "cu_occupancy": 152,
        },
        {
            "name": "N/A",  # an empty name
            "pid": 2222,
            "mem": gib,
            "engine_usage": {"gfx": 1_000_000_000, "enc": 5},
            "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": gib},
            "cu_occupancy": "N/A",  # 0xFFFFFFFF: not available
        },
    ]  # container_name is in the C structure but the package does not return it
    assert [p["pid"] for p in child.ok("amdsmi.amdsmi_get_gpu_process_list(hs[1])")] == [3333]
    # engine use is cumulative ns: the split uses its growth between two reads
    state.set_process(0, 1111, gfx=3_750_000_000).set_process(0, 2222, gfx=1_250_000_000).write(state_path)
    listed = child.ok("[[p['pid'], p['engine_usage']['gfx']] for p in amdsmi.amdsmi_get_gpu_process_list(hs[0])]")
    assert listed == [[1111, 3_750_000_000], [2222, 1_250_000_000]]
    state.clear_processes(gpu=0).write(state_path)
    assert child.ok("amdsmi.amdsmi_get_gpu_process_list(hs[0])") == []


def test_process_list_larger_than_the_packages_buffer(state_path: Path, amd: Callable[[AmdSmiState], Child]) -> None:
    state = AmdSmiState().gpu(0)
    for pid in range(1, 1026):  # the package passes room for MAX_NUM_PROCESSES = 1024
        state.process(0, pid)
    child = amd(state)
    err = child.raises("amdsmi.amdsmi_get_gpu_process_list(handles()[0])")
    assert (err["exc"], err["value"], err["is_lib_error"]) == ("AmdSmiLibraryException", 15, True)
    assert "AMDSMI_STATUS_OUT_OF_RESOURCES" in err["msg"]


def test_compute_and_memory_partitions(amd: Callable[[AmdSmiState], Child]) -> None:
    state = AmdSmiState().gpu(0, "0000:05:00.0").partitioned_gpu(1, 0x26, "CPX", "NPS4", energy=99)
    child = amd(state)
    child.ok("hs = handles()", mode="exec")
    assert child.ok("len(hs)") == 9
    assert child.ok("[amdsmi.amdsmi_get_socket_info(s) for s in amdsmi.amdsmi_get_socket_handles()]") == [
        "0000:05:00",
        "0000:26:00",
    ]
    partitions = child.ok(
        "[[amdsmi.amdsmi_get_gpu_device_bdf(h), amdsmi.amdsmi_get_gpu_compute_partition(h),"
        " amdsmi.amdsmi_get_gpu_memory_partition(h), amdsmi.amdsmi_get_gpu_kfd_info(h)['current_partition_id'],"
        " amdsmi.amdsmi_get_gpu_asic_info(h)['num_compute_units']] for h in hs]"
    )
    assert partitions[0] == ["0000:05:00.0", "SPX", "NPS1", 0, 304]
    assert partitions[1:] == [[f"0000:26:00.{i}", "CPX", "NPS4", i, 38] for i in range(8)]
    assert child.ok("amdsmi.amdsmi_get_energy_count(hs[1])['energy_accumulator']") == 99  # the primary partition
    err = child.raises("amdsmi.amdsmi_get_energy_count(hs[2])")  # a secondary partition
    assert (err["exc"], err["value"]) == ("AmdSmiLibraryException", AmdSmiStatus.NOT_SUPPORTED)
    assert child.raises("amdsmi.amdsmi_get_power_info(hs[8])")["value"] == AmdSmiStatus.NOT_SUPPORTED


def test_errors_raise_the_packages_exceptions(state_path: Path, amd: Callable[[AmdSmiState], Child]) -> None:
    state = two_gpus().set_gpu(0, energy_rc=2, procs_rc=10).set_gpu(1, partition_rc=2)
    child = amd(state)
    child.ok("hs = handles()", mode="exec")
    err = child.raises("amdsmi.amdsmi_get_energy_count(hs[0])")
    assert (err["exc"], err["value"], err["is_lib_error"]) == ("AmdSmiLibraryException", 2, True)
    assert err["msg"] == "Error code:\n\t2 | AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported"
    assert child.raises("amdsmi.amdsmi_get_gpu_process_list(hs[0])")["value"] == AmdSmiStatus.NO_PERM
    assert child.raises("amdsmi.amdsmi_get_gpu_compute_partition(hs[1])")["value"] == AmdSmiStatus.NOT_SUPPORTED
    # a function the stub does not implement, and a wrong argument type (checked by the package itself)
    assert child.raises("amdsmi.amdsmi_get_gpu_metrics_info(hs[1])")["value"] == AmdSmiStatus.NOT_SUPPORTED
    err = child.raises("amdsmi.amdsmi_get_energy_count(0)")
    assert (err["exc"], err["value"], err["is_lib_error"]) == ("AmdSmiParameterException", None, True)


def test_lost_and_removed_gpus(state_path: Path, amd: Callable[[AmdSmiState], Child]) -> None:
    state = two_gpus()
    child = amd(state)
    child.ok("hs = handles()", mode="exec")
    state.set_gpu(1, lost=True).write(state_path)
    for call in ("amdsmi_get_energy_count", "amdsmi_get_power_info", "amdsmi_get_gpu_process_list"):
        err = child.raises(f"amdsmi.{call}(hs[1])")
        assert (err["exc"], err["value"]) == ("AmdSmiLibraryException", AmdSmiStatus.NOT_FOUND), call
        assert "AMDSMI_STATUS_NOT_FOUND" in err["msg"]
    assert child.ok("amdsmi.amdsmi_get_energy_count(hs[0])['energy_accumulator']") == 1_000_000
    state.set_gpu(1, lost_rc=AmdSmiStatus.IO).write(state_path)
    assert child.raises("amdsmi.amdsmi_get_energy_count(hs[1])")["value"] == AmdSmiStatus.IO
    state.remove_gpu(1).write(state_path)  # gone from the file: its handle answers NOT_FOUND
    assert child.raises("amdsmi.amdsmi_get_energy_count(hs[1])")["value"] == AmdSmiStatus.NOT_FOUND
    assert child.ok("len(handles())") == 1


def test_init_shutdown_and_stale_handles(
    rocm: Path, state_path: Path, spawn: Callable[[dict[str, str]], Child]
) -> None:
    state = two_gpus().init(AmdSmiStatus.DRIVER_NOT_LOADED)
    state.write(state_path)
    child = spawn(stub_env(rocm, state_path))
    err = child.raises("amdsmi.amdsmi_init()")
    assert (err["exc"], err["value"]) == ("AmdSmiLibraryException", AmdSmiStatus.DRIVER_NOT_LOADED)
    assert child.raises("handles()")["value"] == AmdSmiStatus.NOT_INIT
    state.init(0).write(state_path)
    child.ok("amdsmi.amdsmi_init()")
    child.ok("amdsmi.amdsmi_init()")  # not reference counted: a second init is a no-op
    child.ok("old = handles()", mode="exec")
    child.ok("amdsmi.amdsmi_shut_down()")
    child.ok("amdsmi.amdsmi_shut_down()")  # shutting down twice is fine too
    assert child.raises("amdsmi.amdsmi_get_energy_count(old[0])")["value"] == AmdSmiStatus.NOT_INIT
    child.ok("amdsmi.amdsmi_init()")
    # the library forgot its processors at shutdown: handles from before are unknown now
    assert child.raises("amdsmi.amdsmi_get_energy_count(old[0])")["value"] == AmdSmiStatus.NOT_FOUND
    assert child.ok("amdsmi.amdsmi_get_energy_count(handles()[0])['energy_accumulator']") == 1_000_000
    # only GPUs are enumerated when the init flags ask for them
    child.ok("amdsmi.amdsmi_shut_down(); amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_CPUS)", mode="exec")
    assert child.ok("handles()") == []


def test_malformed_state_fails_loudly(state_path: Path, amd: Callable[[AmdSmiState], Child]) -> None:
    child = amd(two_gpus())
    child.ok("hs = handles()", mode="exec")
    state_path.write_text("gpu index=0 energi=5\n")
    err = child.raises("amdsmi.amdsmi_get_energy_count(hs[0])")
    assert (err["value"], err["is_lib_error"]) == (AmdSmiStatus.UNKNOWN_ERROR, True)
    assert "AMDSMI_STATUS_UNKNOWN_ERROR" in err["msg"]
    assert "stub_amdsmi:" in child.stderr() and "unknown key: energi" in child.stderr()
    state_path.write_text("gpu index=0 bdf=0000:zz:00.0\n")
    assert child.raises("handles()")["value"] == AmdSmiStatus.UNKNOWN_ERROR
    assert "bad bdf" in child.stderr()
    state_path.write_text("gpu index=0\nproc gpu=1 pid=5\n")
    assert child.raises("handles()")["value"] == AmdSmiStatus.UNKNOWN_ERROR
    assert "not declared" in child.stderr()


def test_call_log_and_call_counter(rocm: Path, state_path: Path, tmp_path: Path, spawn: Callable[..., Child]) -> None:
    two_gpus().write(state_path)
    log = tmp_path / "calls.log"
    child = spawn(stub_env(rocm, state_path, call_log=log))
    child.ok("amdsmi.amdsmi_init()")
    child.ok("amdsmi.amdsmi_get_energy_count(handles()[1])")
    calls = read_call_log(log)
    assert calls[0] == ("amdsmi_init", None)
    assert calls[-1] == ("amdsmi_get_energy_count", 1)
    assert [c for c, _ in calls].count("amdsmi_get_processor_handles") == 4  # two calls per socket
    fn = "amdsmi_wrapper._libraries['libamd_smi.so'].amdsmiStubGetCallCount"
    assert child.ok(f"({fn}.__setattr__('restype', ctypes.c_ulonglong), {fn}())[1]") == len(calls)


def test_state_validation(state_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown gpu field"):
        AmdSmiState().gpu(0, energi=1)
    with pytest.raises(ValueError, match="resolution"):
        AmdSmiState().gpu(0, resolution=-1.0)
    with pytest.raises(ValueError, match="undeclared gpu"):
        AmdSmiState().gpu(0).process(1, 5).render()
    with pytest.raises(KeyError, match="EPX"):
        AmdSmiState().partitioned_gpu(0, 0x26, "EPX")
    text = AmdSmiState().gpu(0, product_name="A B#1", cu=None).process(0, 7, name="py 3").write(state_path).read_text()
    assert "gpu index=0 bdf=0000:10:00.0 product_name=A%20B%231 cu=na" in text
    assert "proc gpu=0 pid=7 name=py%203 gfx=0 enc=0 vram=0 gtt=0 cpu=0" in text


# ---- the package without (a matching) library --------------------------------------------------------------


def test_import_without_a_library_prints_and_raises_keyerror(tmp_path: Path) -> None:
    """What an exporter sees on a node without ROCm: two lines on stdout, then KeyError from the import."""
    require(amdsmi_installed(), "the amdsmi package is not installed")
    if Path("/opt/rocm/lib/libamd_smi.so").exists():
        pytest.skip("this machine has a real ROCm install")
    env = {"PATH": "/usr/bin:/bin", "ROCM_PATH": str(tmp_path / "no-rocm")}
    proc = subprocess.run(
        [sys.executable, "-c", "import amdsmi"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "Unable to find libamd_smi.so library" in proc.stdout
    assert proc.stderr.rstrip().splitlines()[-1] == "KeyError: 'libamd_smi.so'"


def test_a_library_missing_a_function_breaks_the_import(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A ROCm older than the package lacks functions the wrapper binds at import: AttributeError."""
    require(amdsmi_installed(), "the amdsmi package is not installed")
    rocm = build_stub(tmp_path_factory.mktemp("rocm_old"), omit={"amdsmi_get_gpu_enumeration_info"})
    env = stub_env(rocm, tmp_path_factory.mktemp("state") / "none.state")
    proc = subprocess.run([sys.executable, "-c", "import amdsmi"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "AttributeError" in proc.stderr and "amdsmi_get_gpu_enumeration_info" in proc.stderr
