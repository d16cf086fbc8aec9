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
from typing import NamedTuple

from stub_common.build import (
    check_uint,
    compile_library,
    make_env,
    percent_encode,
    read_call_log,
    render_line,
    write_atomic,
)

__all__ = [
    "CALL_LOG_ENV",
    "H100_80GB_PROFILES",
    "LIB_NAME",
    "NVML_VALUE_NOT_AVAILABLE",
    "SOURCE",
    "STATE_ENV",
    "MigProfile",
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
# NVML return codes, any int
_INT_FIELDS = ("energy_rc", "power_rc", "procs_rc", "util_rc", "mig_rc", "fv_rc", "gpm_rc", "gi_rc")
_U32, _U64 = 2**32 - 1, 2**64 - 1
_UINT_FIELDS = {
    "energy_mj": _U64,
    "power_mw": _U32,
    "delay_ms": _U32,
    "power_avg_mw": _U32,
    "power_inst_mw": _U32,
    "module_power_mw": _U32,
    "memory_power_mw": _U32,
    "module_energy_mj": _U64,
    "mem_total": _U64,
    "mem_used": _U64,
    "mig_max": _U32,
    "gpu_util": _U32,
    "mem_util": _U32,
}
_BOOL_FIELDS = ("lost", "mig", "gpm")
_STR_FIELDS = ("name", "uuid")
DEVICE_FIELDS = frozenset((*_INT_FIELDS, *_UINT_FIELDS, *_BOOL_FIELDS, *_STR_FIELDS))


class MigProfile(NamedTuple):
    """A GPU instance profile: NVML_GPU_INSTANCE_PROFILE_* value, the profile id NVML reports for it
    (nvidia-smi mig -lgip "ID"), its compute slices and how many instances of it fit on the GPU."""

    profile: int
    id: int
    slices: int
    instances: int


# H100 80GB profiles (NVIDIA MIG User Guide, "Supported MIG Profiles"; ids as nvidia-smi mig -lgip lists them).
H100_80GB_PROFILES: dict[str, MigProfile] = {
    "1g.10gb": MigProfile(0x0, 19, 1, 7),
    "1g.10gb+me": MigProfile(0x7, 20, 1, 1),
    "1g.20gb": MigProfile(0x9, 15, 1, 4),
    "2g.20gb": MigProfile(0x1, 14, 2, 3),
    "3g.40gb": MigProfile(0x2, 9, 3, 2),
    "4g.40gb": MigProfile(0x3, 5, 4, 1),
    "7g.80gb": MigProfile(0x4, 0, 7, 1),
}

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
    old = (os.environ if base is None else base).get("LD_LIBRARY_PATH")
    return make_env(
        base,
        {
            "LD_LIBRARY_PATH": str(Path(lib_dir).resolve()) + (f":{old}" if old else ""),
            STATE_ENV: str(Path(state_path).resolve()),
            CALL_LOG_ENV: None if call_log is None else str(Path(call_log).resolve()),
        },
    )


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
        self.profiles: dict[tuple[int, int], dict[str, int | str]] = {}  # (device, profile id)
        self.instances: dict[tuple[int, int], dict[str, int | str]] = {}  # (device, gi id)
        self.gpm_counters: dict[tuple[int, int | None], dict[str, int]] = {}  # (device, gi or None)

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
        """Add (or replace) GPU `index`.  fields (README.md has the details):

        - return codes (0 = success): energy_rc, power_rc, procs_rc, util_rc, mig_rc, fv_rc (the whole
          nvmlDeviceGetFieldValues call), gpm_rc (GPM calls), gi_rc (GPU instance calls only)
        - lost, mig, gpm (bools); delay_ms (sleep in every call on this GPU)
        - field values: power_avg_mw, power_inst_mw (power scope 0, default power_mw), module_power_mw
          (scope 1), memory_power_mw (scope 2), module_energy_mj (NVML_FI_DEV_ENERGY scope 1); a scope
          without a value answers NOT_SUPPORTED
        - mem_total, mem_used (bytes, nvmlDeviceGetMemoryInfo); mig_max (default 7 with mig, else 0)"""
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
        self.profiles = {k: v for k, v in self.profiles.items() if k[0] != index}
        self.instances = {k: v for k, v in self.instances.items() if k[0] != index}
        self.gpm_counters = {k: v for k, v in self.gpm_counters.items() if k[0] != index}
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

    def mig_profile(
        self,
        device: int,
        name: str,
        *,
        profile: MigProfile | None = None,
        mem_mb: int | None = None,
        sms: int = 0,
    ) -> StubState:
        """Declare a GPU instance profile on `device` (nvmlDeviceGetGpuInstanceProfileInfo*): by default the
        H100 80GB one of that name; memory defaults to the size in the name ("1g.10gb" -> 10240 MB)."""
        if profile is None:
            if name not in H100_80GB_PROFILES:
                raise KeyError(f"no H100 80GB profile {name!r}: pass profile=MigProfile(...)")
            profile = H100_80GB_PROFILES[name]
        if mem_mb is None:
            match = re.search(r"\.(\d+)gb", name)
            mem_mb = int(match.group(1)) * 1024 if match else 0
        for key, val in (("profile", profile.profile), ("id", profile.id), ("mem_mb", mem_mb), ("sms", sms)):
            _check_uint(key, val, 64 if key == "mem_mb" else 32)
        self.profiles[(device, profile.id)] = {
            "device": device,
            "profile": profile.profile,
            "id": profile.id,
            "name": name,
            "slices": profile.slices,
            "instances": profile.instances,
            "sms": sms,
            "mem_mb": mem_mb,
        }
        return self

    def gpu_instance(
        self,
        device: int,
        gi: int,
        profile: str,
        *,
        start: int = 0,
        ci: int = 0,
        mem_used: int = 0,
        uuid: str | None = None,
    ) -> StubState:
        """Add (or replace) GPU instance `gi` (0..31) of the named profile, with one compute instance `ci`:
        together one MIG device.  The profile is declared with mig_profile() defaults if it is not yet.
        mem_used: bytes in use (nvmlDeviceGetMemoryInfo on the MIG device handle)."""
        _check_uint("gi", gi, 5)
        if not any(p["name"] == profile for (dev, _), p in self.profiles.items() if dev == device):
            self.mig_profile(device, profile)
        profile_id = next(p["id"] for (dev, _), p in self.profiles.items() if dev == device and p["name"] == profile)
        item: dict[str, int | str] = {"device": device, "id": gi, "profile_id": profile_id, "start": start, "ci": ci}
        item["mem_used"] = mem_used
        if uuid is not None:
            item["uuid"] = uuid
        for key in ("start", "ci", "mem_used"):
            _check_uint(key, item[key], 64 if key == "mem_used" else 32)
        self.instances[(device, gi)] = item
        return self

    def remove_gpu_instance(self, device: int, gi: int) -> StubState:
        """Destroy GPU instance `gi` (its handles then answer INVALID_ARGUMENT), with its GPM counters."""
        del self.instances[(device, gi)]
        self.gpm_counters.pop((device, gi), None)
        return self

    def gpm(self, device: int, ts: int, *, gr: int = 0, sm: int = 0, occ: int = 0, gi: int | None = None) -> StubState:
        """Set the cumulative GPM activity of the whole GPU (gi=None) or of GPU instance `gi` at time `ts`:
        all in ns, so a GPM metric over two samples is 100 * d(counter) / d(ts) percent (gr: graphics
        engine busy time -> GRAPHICS_UTIL; sm: SM busy time averaged over the SMs -> SM_UTIL; occ ->
        SM_OCCUPANCY)."""
        for key, val in (("ts", ts), ("gr", gr), ("sm", sm), ("occ", occ)):
            _check_uint(key, val, 64)
        self.gpm_counters[(device, gi)] = {"ts": ts, "gr": gr, "sm": sm, "occ": occ}
        return self

    def render(self) -> str:
        used = [(p["device"], p) for p in self.processes] + [(s["device"], s) for s in self.samples]
        used += [(device, item) for (device, _), item in [*self.profiles.items(), *self.instances.items()]]
        used += [(device, {"gpm": gi}) for device, gi in self.gpm_counters]
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
        lines.extend(render_line("profile", list(p.items())) for p in self.profiles.values())
        lines.extend(render_line("gi", list(g.items())) for g in self.instances.values())
        for (device, gi), counters in self.gpm_counters.items():
            where = [("device", device)] + ([] if gi is None else [("gi", gi)])
            lines.append(render_line("gpm", where + list(counters.items())))
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        """Atomically replace `path` (temporary file in the same directory, then os.replace)."""
        return write_atomic(path, self.render())
