"""Build and drive the stub libnvidia-ml.so.1 (stub_nvml.c) that the real, unmodified pynvml loads in tests.

Typical use (the stub only works in a process started with its environment: LD_LIBRARY_PATH is read by the
dynamic loader at process start)::

    lib_dir = build_stub(tmp_path_factory.mktemp("nvml"))
    state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=1_000, power_mw=100_000)
    state.write(state_path)
    subprocess.run([...], env=stub_env(lib_dir, state_path))
    state.set_device(0, energy_mj=2_000).write(state_path)   # seen by the very next NVML call

The state file format is documented in README.md next to this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path

from stub_common.build import check_uint, compile_library, percent_encode, read_call_log, write_atomic

__all__ = [
    "CALL_LOG_ENV",
    "LIB_NAME",
    "NVML_VALUE_NOT_AVAILABLE",
    "SOURCE",
    "STATE_ENV",
    "StubState",
    "build_stub",
    "default_name",
    "default_uuid",
    "exported_symbols",
    "read_call_log",
    "stub_env",
]

SOURCE = Path(__file__).resolve().parent / "stub_nvml.c"
LIB_NAME = "libnvidia-ml.so.1"
STATE_ENV = "STUB_NVML_STATE"
CALL_LOG_ENV = "STUB_NVML_CALL_LOG"
NVML_VALUE_NOT_AVAILABLE = 2**64 - 1
MAX_DEVICES = 64

_LISTS = ("compute", "graphics", "mps")
_INT_FIELDS = ("energy_rc", "power_rc", "procs_rc", "util_rc", "mig_rc")  # NVML return codes, any int
_UINT_FIELDS = {"energy_mj": 2**64 - 1, "power_mw": 2**32 - 1, "delay_ms": 2**32 - 1}
_BOOL_FIELDS = ("lost", "mig")
_STR_FIELDS = ("name", "uuid")
DEVICE_FIELDS = frozenset((*_INT_FIELDS, *_UINT_FIELDS, *_BOOL_FIELDS, *_STR_FIELDS))

# ---- building ----------------------------------------------------------------------------------------------


def exported_symbols() -> frozenset[str]:
    """The NVML (and nvmlStub*) symbols stub_nvml.c exports, read from its source."""
    text = SOURCE.read_text()
    names = re.findall(r"^EXPORT [^(]*?\b(\w+)\(", text, flags=re.MULTILINE)
    names += re.findall(r"^RUNNING_PROCESSES\((\w+),", text, flags=re.MULTILINE)
    return frozenset(names)


def build_stub(dest_dir: Path, *, omit: Collection[str] = ()) -> Path:
    """Compile the stub into dest_dir (once: reuses an up-to-date build) and return dest_dir.

    omit: exported symbols to leave out of the dynamic symbol table (a linker version script makes them
    local), to imitate an older driver, e.g. ``omit={"nvmlDeviceGetComputeRunningProcesses_v3"}``.
    Use a different dest_dir per distinct omit set.
    """
    unknown = set(omit) - exported_symbols()
    if unknown:
        raise ValueError(f"not exported by the stub, cannot omit: {sorted(unknown)}")
    compile_library(SOURCE, Path(dest_dir) / LIB_NAME, soname=LIB_NAME, omit=omit, what="NVML stub")
    return Path(dest_dir)


def stub_env(
    lib_dir: Path,
    state_path: Path,
    *,
    call_log: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a subprocess that should load the stub: base (default os.environ) plus
    LD_LIBRARY_PATH (stub directory first) and STUB_NVML_STATE, and STUB_NVML_CALL_LOG when call_log is given."""
    env = dict(os.environ if base is None else base)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(Path(lib_dir).resolve()) + (f":{old}" if old else "")
    env[STATE_ENV] = str(Path(state_path).resolve())
    if call_log is not None:
        env[CALL_LOG_ENV] = str(Path(call_log).resolve())
    else:
        env.pop(CALL_LOG_ENV, None)
    return env


# ---- state -------------------------------------------------------------------------------------------------


def default_name(index: int) -> str:
    return f"NVIDIA Stub GPU {index}"


def default_uuid(index: int) -> str:
    return f"GPU-00000000-0000-4000-8000-{index:012d}"


_encode = percent_encode


def _check_device_field(key: str, value: object) -> None:
    if key not in DEVICE_FIELDS:
        raise TypeError(f"unknown device field {key!r}; known: {sorted(DEVICE_FIELDS)}")
    if key in _STR_FIELDS:
        if not isinstance(value, str) or len(value.encode()) > 95 or "\0" in value:
            raise ValueError(f"{key} must be a str of at most 95 bytes without NUL, got {value!r}")
    elif key in _BOOL_FIELDS:
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise ValueError(f"{key} must be a bool, got {value!r}")
    elif not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an int, got {value!r}")
    else:
        low, high = (0, _UINT_FIELDS[key]) if key in _UINT_FIELDS else (-(2**31), 2**31 - 1)
        if not low <= value <= high:
            raise ValueError(f"{key} out of range: {value}")


_check_uint = check_uint


class StubState:
    """Builder for the stub's state file.  Every method returns self, so calls chain."""

    def __init__(self) -> None:
        self.driver_version = "550.54.15"
        self.nvml_version: str | None = None
        self.init_rc = 0
        self.devices: dict[int, dict[str, int | bool | str]] = {}
        self.processes: list[dict[str, int | str | None]] = []
        self.samples: list[dict[str, int]] = []

    def driver(self, version: str, *, nvml: str | None = None) -> StubState:
        """nvmlSystemGetDriverVersion; nvmlSystemGetNVMLVersion defaults to "12.<version>"."""
        self.driver_version = version
        self.nvml_version = nvml
        return self

    def init(self, rc: int) -> StubState:
        """Return code of nvmlInitWithFlags/nvmlInit_v2/nvmlInit (0 = success, 9 = DRIVER_NOT_LOADED...)."""
        self.init_rc = rc
        return self

    def device(
        self,
        index: int,
        name: str | None = None,
        uuid: str | None = None,
        *,
        energy_mj: int = 0,
        power_mw: int = 0,
        **fields: int | bool,
    ) -> StubState:
        """Add (or replace) GPU `index`.  fields: energy_rc, power_rc, procs_rc, util_rc, mig_rc (NVML return
        codes for those calls, 0 = success), lost, mig (bools), delay_ms (sleep in every call on this GPU)."""
        if not isinstance(index, int) or not 0 <= index < MAX_DEVICES:
            raise ValueError(f"device index must be 0..{MAX_DEVICES - 1}, got {index!r}")
        dev: dict[str, int | bool | str] = {
            "name": default_name(index) if name is None else name,
            "uuid": default_uuid(index) if uuid is None else uuid,
            "energy_mj": energy_mj,
            "power_mw": power_mw,
            **fields,
        }
        for key, value in dev.items():
            _check_device_field(key, value)
        self.devices[index] = dev
        return self

    def set_device(self, index: int, **fields: int | bool | str) -> StubState:
        """Change fields of an existing GPU (same names as device(), plus name and uuid)."""
        if index not in self.devices:
            raise KeyError(f"no device {index}")
        for key, value in fields.items():
            _check_device_field(key, value)
        self.devices[index].update(fields)
        return self

    def remove_device(self, index: int) -> StubState:
        """Drop GPU `index` with its processes and samples (its old handle then answers GPU_IS_LOST)."""
        del self.devices[index]
        self.processes = [p for p in self.processes if p["device"] != index]
        self.samples = [s for s in self.samples if s["device"] != index]
        return self

    def process(
        self,
        device: int,
        pid: int,
        list: str = "compute",
        mem: int | None = 0,
        *,
        gi: int | None = None,
        ci: int | None = None,
    ) -> StubState:
        """A running process on `device` in list compute|graphics|mps; mem in bytes, None = not available
        (pynvml then reports usedGpuMemory=None).  gi/ci: MIG GPU/compute instance ids (default 0xFFFFFFFF)."""
        if list not in _LISTS:
            raise ValueError(f"list must be one of {_LISTS}, got {list!r}")
        _check_uint("pid", pid, 32)
        if mem is not None:
            _check_uint("mem", mem, 64)
        for key, val in (("gi", gi), ("ci", ci)):
            if val is not None:
                _check_uint(key, val, 32)
        self.processes.append({"device": device, "list": list, "pid": pid, "mem": mem, "gi": gi, "ci": ci})
        return self

    def clear_processes(self, device: int | None = None, pid: int | None = None) -> StubState:
        """Remove processes (all, or those matching device and/or pid)."""
        self.processes = [
            p
            for p in self.processes
            if not ((device is None or p["device"] == device) and (pid is None or p["pid"] == pid))
        ]
        return self

    def sample(
        self,
        device: int,
        pid: int,
        ts: int,
        sm: int = 0,
        mem: int = 0,
        enc: int = 0,
        dec: int = 0,
        *,
        jpg: int = 0,
        ofa: int = 0,
    ) -> StubState:
        """A per-process utilization sample (ts in µs; utilizations in percent)."""
        values = {"device": device, "pid": pid, "ts": ts, "sm": sm, "mem": mem, "enc": enc, "dec": dec}
        values |= {"jpg": jpg, "ofa": ofa}
        for key, val in values.items():
            _check_uint(key, val, 64 if key == "ts" else 32)
        self.samples.append(values)
        return self

    def clear_samples(self, device: int | None = None) -> StubState:
        """Remove samples (all, or those of one device)."""
        self.samples = [s for s in self.samples if device is not None and s["device"] != device]
        return self

    def render(self) -> str:
        used = [(p["device"], p) for p in self.processes] + [(s["device"], s) for s in self.samples]
        for device, item in used:
            if device not in self.devices:
                raise ValueError(f"{item} refers to undeclared device {device}")
        lines = ["# stub libnvidia-ml.so.1 state (tests/nvml_stub/README.md)"]
        driver = f"driver version={_encode(self.driver_version)}"
        if self.nvml_version is not None:
            driver += f" nvml={_encode(self.nvml_version)}"
        lines += [driver, f"init rc={self.init_rc}"]
        for index in sorted(self.devices):
            parts = [f"device index={index}"]
            for key, value in self.devices[index].items():
                parts.append(f"{key}={_encode(value) if isinstance(value, str) else int(value)}")
            lines.append(" ".join(parts))
        for p in self.processes:
            line = f"proc device={p['device']} list={p['list']} pid={p['pid']}"
            line += f" mem={'na' if p['mem'] is None else p['mem']}"
            line += "".join(f" {k}={p[k]}" for k in ("gi", "ci") if p[k] is not None)
            lines.append(line)
        lines.extend(" ".join(["sample", *(f"{k}={v}" for k, v in s.items())]) for s in self.samples)
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        """Atomically replace `path` (temporary file in the same directory, then os.replace)."""
        return write_atomic(path, self.render())
