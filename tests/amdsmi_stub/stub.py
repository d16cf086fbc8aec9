"""Build and drive the stub libamd_smi.so (stub_amdsmi.c) that the real, unmodified PyPI `amdsmi` package (7.0.2)
loads in tests.

The package looks for the library at $ROCM_HOME/lib or $ROCM_PATH/lib first, so the stub is built into
``<dir>/lib/libamd_smi.so`` and a subprocess gets ``ROCM_PATH=<dir>``::

    rocm = build_stub(tmp_path_factory.mktemp("rocm"))
    state = AmdSmiState().gpu(0, energy=1_000).process(0, 4242, gfx=5_000_000)
    state.write(state_path)
    subprocess.run([...], env=stub_env(rocm, state_path))
    state.set_gpu(0, energy=2_000).write(state_path)   # seen by the very next AMD SMI call

The state file format is documented in README.md next to this module.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from enum import IntEnum
from pathlib import Path

from stub_common.build import check_uint, compile_library, make_env, read_call_log, render_line, write_atomic

__all__ = [
    "CALL_LOG_ENV",
    "LIB_NAME",
    "PARTITION_COUNTS",
    "SONAME",
    "SOURCE",
    "STATE_ENV",
    "AmdSmiState",
    "AmdSmiStatus",
    "build_stub",
    "default_bdf",
    "default_uuid",
    "exported_symbols",
    "library_path",
    "read_call_log",
    "stub_env",
]

SOURCE = Path(__file__).resolve().parent / "stub_amdsmi.c"
LIB_NAME = "libamd_smi.so"
SONAME = "libamd_smi.so.26"  # AMD SMI library 26.0.2 ships with ROCm 7.0.2
STATE_ENV = "STUB_AMDSMI_STATE"
CALL_LOG_ENV = "STUB_AMDSMI_CALL_LOG"
MAX_GPUS = 64
UINT32_NA = 2**32 - 1  # what the library writes for "not available" in 32-bit fields


class AmdSmiStatus(IntEnum):
    """amdsmi_status_t values the tests use (amdsmi_wrapper.py 7.0.2)."""

    SUCCESS = 0
    INVAL = 1
    NOT_SUPPORTED = 2
    NO_PERM = 10
    IO = 12
    FILE_ERROR = 14
    OUT_OF_RESOURCES = 15
    NOT_FOUND = 31
    NOT_INIT = 32
    DRIVER_NOT_LOADED = 34
    INSUFFICIENT_SIZE = 41
    UNKNOWN_ERROR = 0xFFFFFFFF


# Compute partitions of an MI300X (8 XCDs): how many processors each mode makes of one GPU.
PARTITION_COUNTS = {"SPX": 1, "DPX": 2, "TPX": 3, "QPX": 4, "CPX": 8}

_STR_FIELDS = frozenset(
    (
        "bdf",
        "uuid",
        "market_name",
        "vendor_name",
        "asic_serial",
        "product_name",
        "model_number",
        "product_serial",
        "fru_id",
        "manufacturer",
        "driver_version",
        "driver_date",
        "driver_name",
        "compute_partition",
        "memory_partition",
    )
)
_U32_FIELDS = frozenset(
    (
        "vendor_id",
        "subvendor_id",
        "rev_id",
        "oam_id",
        "cu",
        "subsystem_id",
        "current_socket_power",
        "average_socket_power",
        "power_limit",
        "gfx_activity",
        "umc_activity",
        "mm_activity",
        "vram_total",
        "vram_used",
        "partition_id",
        "node_id",
        "render_minor",
        "card",
        "hsa_id",
        "hip_id",
        "delay_ms",
    )
)
_U64_FIELDS = frozenset(
    ("device_id", "gfx_version", "energy", "energy_ts", "socket_power", "kfd_id", "gfx_voltage", "soc_voltage")
) | {"mem_voltage"}
_RC_FIELDS = frozenset(("energy_rc", "power_rc", "activity_rc", "procs_rc", "partition_rc", "lost_rc"))
GPU_FIELDS = _STR_FIELDS | _U32_FIELDS | _U64_FIELDS | _RC_FIELDS | {"resolution", "lost"}
PROC_FIELDS = frozenset(("name", "container", "mem", "gfx", "enc", "gtt", "cpu", "vram", "cu_occupancy"))


# ---- building ----------------------------------------------------------------------------------------------


def exported_symbols() -> frozenset[str]:
    """The symbols stub_amdsmi.c exports (AMD SMI functions plus amdsmiStub*), read from its source."""
    text = SOURCE.read_text()
    names = re.findall(r"^EXPORT [^(]*?\b(\w+)\(", text, flags=re.MULTILINE)
    names += re.findall(r"^NOT_SUPPORTED\((\w+)\)", text, flags=re.MULTILINE)
    return frozenset(names)


def library_path(rocm_dir: Path) -> Path:
    """Where build_stub puts the library under a ROCm-like directory."""
    return Path(rocm_dir) / "lib" / LIB_NAME


def build_stub(dest_dir: Path, *, omit: Collection[str] = ()) -> Path:
    """Compile the stub into dest_dir/lib/libamd_smi.so (once: reuses an up-to-date build); return dest_dir,
    the value for ROCM_PATH.

    omit: exported symbols to leave out (a linker version script makes them local).  The `amdsmi` package
    binds every function at import, so a missing one makes `import amdsmi` raise AttributeError: that is how
    a library older than the package looks.
    """
    unknown = set(omit) - exported_symbols()
    if unknown:
        raise ValueError(f"not exported by the stub, cannot omit: {sorted(unknown)}")
    compile_library(SOURCE, library_path(dest_dir), soname=SONAME, omit=omit, what="AMD SMI stub")
    return Path(dest_dir)


def stub_env(
    rocm_dir: Path,
    state_path: Path,
    *,
    call_log: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a subprocess whose `import amdsmi` should load the stub: base (default os.environ) with
    ROCM_PATH=rocm_dir (ROCM_HOME removed: it would take precedence), STUB_AMDSMI_STATE, and
    STUB_AMDSMI_CALL_LOG when call_log is given."""
    return make_env(
        base,
        {
            "ROCM_HOME": None,
            "ROCM_PATH": str(Path(rocm_dir).resolve()),
            STATE_ENV: str(Path(state_path).resolve()),
            CALL_LOG_ENV: None if call_log is None else str(Path(call_log).resolve()),
        },
    )


# ---- state -------------------------------------------------------------------------------------------------


def default_bdf(index: int) -> str:
    return f"0000:{0x10 + index:02x}:00.0"


def default_uuid(index: int) -> str:
    return f"{0x5F00 + index:04x}74a1-0000-1000-8000-{index:012x}"


def _check_gpu_field(key: str, value: object) -> None:
    if key not in GPU_FIELDS:
        raise TypeError(f"unknown gpu field {key!r}; known: {sorted(GPU_FIELDS)}")
    if key in _STR_FIELDS:
        limit = 79 if key.endswith("_partition") else 255
        if not isinstance(value, str) or len(value.encode()) > limit or "\0" in value:
            raise ValueError(f"{key} must be a str of at most {limit} bytes without NUL, got {value!r}")
    elif key == "resolution":
        if not isinstance(value, float | int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"resolution must be a non-negative number (µJ per count), got {value!r}")
    elif key == "lost":
        if value not in (0, 1):
            raise ValueError(f"lost must be a bool, got {value!r}")
    elif key in _RC_FIELDS:
        check_uint(key, value, 32)
    elif key in ("oam_id", "cu") and value is None:
        return  # written as "na"
    else:
        check_uint(key, value, 64 if key in _U64_FIELDS else 32)


class AmdSmiState:
    """Builder for the stub's state file.  Every method returns self, so calls chain."""

    def __init__(self) -> None:
        self.init_rc = 0
        self.lib_version: tuple[int, int, int] | None = None
        self.gpus: dict[int, dict[str, object]] = {}
        self.processes: dict[tuple[int, int], dict[str, object]] = {}

    def init(self, rc: int) -> AmdSmiState:
        """Return code of amdsmi_init (0 = success; e.g. AmdSmiStatus.DRIVER_NOT_LOADED)."""
        check_uint("rc", rc, 32)
        self.init_rc = rc
        return self

    def lib(self, major: int, minor: int, release: int) -> AmdSmiState:
        """amdsmi_get_lib_version (default 26.0.2)."""
        self.lib_version = (major, minor, release)
        return self

    def gpu(self, index: int, bdf: str | None = None, **fields: object) -> AmdSmiState:
        """Add (or replace) processor `index` (0..63): a GPU, or one partition of one.  fields: see README.md;
        the usual ones are energy (accumulator counts), resolution (µJ per count, default 15.3), energy_ts
        (ns), current_socket_power/average_socket_power/socket_power (W), compute_partition,
        memory_partition, partition_id, energy_rc/power_rc/procs_rc/..., lost, lost_rc."""
        if not isinstance(index, int) or not 0 <= index < MAX_GPUS:
            raise ValueError(f"gpu index must be 0..{MAX_GPUS - 1}, got {index!r}")
        gpu: dict[str, object] = {"bdf": default_bdf(index) if bdf is None else bdf, **fields}
        for key, value in gpu.items():
            _check_gpu_field(key, value)
        self.gpus[index] = gpu
        return self

    def set_gpu(self, index: int, **fields: object) -> AmdSmiState:
        """Change fields of an existing processor."""
        if index not in self.gpus:
            raise KeyError(f"no gpu {index}")
        for key, value in fields.items():
            _check_gpu_field(key, value)
        self.gpus[index].update(fields)
        return self

    def remove_gpu(self, index: int) -> AmdSmiState:
        """Drop processor `index` and its processes (its handle then answers NOT_FOUND)."""
        del self.gpus[index]
        self.processes = {k: v for k, v in self.processes.items() if k[0] != index}
        return self

    def partitioned_gpu(
        self,
        first_index: int,
        bus: int,
        compute: str = "CPX",
        memory: str = "NPS1",
        *,
        domain: int = 0,
        **fields: object,
    ) -> AmdSmiState:
        """One MI300X-like GPU split into compute partitions: PARTITION_COUNTS[compute] processors with indexes
        first_index.., PCI functions 0.. on the same bus/device (one socket), partition_id 0.. and the CUs
        divided among them.  fields go to the primary partition (partition 0); the secondaries answer
        NOT_SUPPORTED for energy and power, as the stub models them (README.md)."""
        count = PARTITION_COUNTS[compute]
        for part in range(count):
            extra: dict[str, object] = dict(fields) if part == 0 else {"energy_rc": 2, "power_rc": 2}
            self.gpu(
                first_index + part,
                f"{domain:04x}:{bus:02x}:00.{part}",
                compute_partition=compute,
                memory_partition=memory,
                partition_id=part,
                cu=304 // count,
                **extra,
            )
        return self

    def process(
        self,
        gpu: int,
        pid: int,
        *,
        name: str = "python3",
        gfx: int = 0,
        enc: int = 0,
        vram: int = 0,
        gtt: int = 0,
        cpu: int = 0,
        mem: int | None = None,
        cu_occupancy: int | None = None,
        container: str = "",
    ) -> AmdSmiState:
        """Add (or replace) process `pid` on `gpu`.  gfx/enc: cumulative ns the process used those engines
        (amdsmi_proc_info_t.engine_usage); vram/gtt/cpu: bytes; mem defaults to their sum; cu_occupancy:
        compute units in use, None = not available (the Python package then returns "N/A")."""
        check_uint("pid", pid, 32)
        for key, val in (("gfx", gfx), ("enc", enc), ("vram", vram), ("gtt", gtt), ("cpu", cpu)):
            check_uint(key, val, 64)
        proc: dict[str, object] = {"name": name, "gfx": gfx, "enc": enc, "vram": vram, "gtt": gtt, "cpu": cpu}
        if mem is not None:
            check_uint("mem", mem, 64)
            proc["mem"] = mem
        if cu_occupancy is not None:
            check_uint("cu_occupancy", cu_occupancy, 32)
            proc["cu_occupancy"] = cu_occupancy
        if container:
            proc["container"] = container
        for key in ("name", "container"):
            if key in proc and (len(str(proc[key]).encode()) > 255 or "\0" in str(proc[key])):
                raise ValueError(f"{key} must be at most 255 bytes without NUL")
        self.processes[(gpu, pid)] = proc
        return self

    def set_process(self, gpu: int, pid: int, **fields: object) -> AmdSmiState:
        """Change fields of a process (e.g. advance its cumulative gfx ns)."""
        proc = self.processes[(gpu, pid)]
        unknown = set(fields) - PROC_FIELDS
        if unknown:
            raise TypeError(f"unknown process fields {sorted(unknown)}; known: {sorted(PROC_FIELDS)}")
        merged = {**proc, **fields}
        cu = merged.pop("cu_occupancy", None)
        mem = merged.pop("mem", None)
        return self.process(gpu, pid, **merged, mem=mem, cu_occupancy=cu)  # type: ignore[arg-type]

    def clear_processes(self, gpu: int | None = None, pid: int | None = None) -> AmdSmiState:
        """Remove processes (all, or those matching gpu and/or pid)."""
        self.processes = {
            (g, p): v
            for (g, p), v in self.processes.items()
            if not ((gpu is None or g == gpu) and (pid is None or p == pid))
        }
        return self

    def render(self) -> str:
        for gpu, pid in self.processes:
            if gpu not in self.gpus:
                raise ValueError(f"process {pid} refers to undeclared gpu {gpu}")
        lines = ["# stub libamd_smi.so state (tests/amdsmi_stub/README.md)", f"init rc={self.init_rc}"]
        if self.lib_version is not None:
            major, minor, release = self.lib_version
            lines.append(f"lib major={major} minor={minor} release={release}")
        for index in sorted(self.gpus):
            items = [(k, "na" if v is None else v) for k, v in self.gpus[index].items()]
            lines.append(render_line("gpu", [("index", index), *items]))
        for (gpu, pid), proc in self.processes.items():
            lines.append(render_line("proc", [("gpu", gpu), ("pid", pid), *proc.items()]))
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        """Atomically replace `path` (temporary file in the same directory, then os.replace)."""
        return write_atomic(path, self.render())
