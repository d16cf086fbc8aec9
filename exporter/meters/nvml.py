"""NVIDIA GPUs through NVML (nvidia-ml-py, module `pynvml`): energy per GPU and who used it.

Energy comes from the GPU's own counter, read in one `nvmlDeviceGetFieldValues` call per tick together with the
power scopes the GPU reports (probed once: memory on H100, module on GH200/GB200); where the counter is not
supported, power is integrated over the tick and the series say so (`method="power_integration"`). Users are the
compute, graphics and MPS processes (a PID in several lists counts once), weighted by their SM utilisation
samples; without samples, running processes share equally. Under MIG, GPM activity per GPU instance splits the
board (nvml_mig.py), GPU memory where GPM is missing (an estimate).

Processes are polled in the meter's thread every `gpu_poll_interval` (1 s), more often than the tick: each is
recorded when first seen with its start time and cgroup (gpu_processes.py), and its samples, which NVML keeps
with timestamps after the process exits, are summed per process as they come. So a job that exits between
ticks keeps every sample, and a reused PID never receives another process's samples.

NVML calls can block (a GPU falling off the bus), so they run in the meter's own worker thread and a tick waits
at most `timeout_s` for them. A lost GPU is marked down and re-acquired by UUID with backoff.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pynvml

from exporter.counters import MICRO
from exporter.meters.base import (
    Accelerator,
    AcceleratorSample,
    AcceleratorUser,
    InstanceUse,
    MeterUnavailable,
    ScopePower,
)
from exporter.meters.gpu_processes import NOBODY, GpuProcess, GpuProcesses
from exporter.meters.nvml_loader import FIX, NOT_INSTALLED
from exporter.meters.nvml_mig import MigState, mig_users
from exporter.meters.worker import MeterWorker

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

SOURCE = "nvml"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
# Codes after which a device must be re-acquired; anything else is a failed read on a healthy device.
_DEVICE_GONE = {pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED, pynvml.NVML_ERROR_GPU_NOT_FOUND}
_NVML_ERRORS = (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError)


# NVML's energy counter of a GH200 counts the whole superchip module (Grace + Hopper + memory: zeus#172,
# docs/research/hwmon.md): never board-only there. Other parts, GB200 included, count their board.
MODULE_SCOPE_MODELS = ("GH200",)

# What a tick asks nvmlDeviceGetFieldValues for (probed per GPU at start: each slot says whether it exists).
ENERGY_FIELD = (pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0)
POWER_FIELD = (pynvml.NVML_FI_DEV_POWER_INSTANT, 0)
SCOPE_FIELDS = {  # power scopes beside the GPU's own: exported as a breakdown, never added to the GPU
    "memory": (pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_POWER_SCOPE_MEMORY),
    "module": (pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_POWER_SCOPE_MODULE),
}


def _scope(model: str) -> str:
    return "module" if any(name in model for name in MODULE_SCOPE_MODELS) else ""


@dataclass(slots=True)
class _Integral:
    """A power reading integrated over time (trapezoid), in whole µJ with the fraction carried."""

    uj: int = 0
    fraction: float = 0.0
    last: tuple[float, float] | None = None  # (time, watts)

    def add(self, now: float, watts: float) -> int:
        if self.last is not None:
            then, before = self.last
            exact = (before + watts) / 2 * max(0.0, now - then) * MICRO + self.fraction
            whole = int(exact)
            self.fraction, self.uj = exact - whole, self.uj + whole
        self.last = (now, watts)
        return self.uj


@dataclass(slots=True)
class _Use:
    """What a GPU's processes did since the last tick, gathered by every poll."""

    sm: dict[GpuProcess, int] = field(default_factory=dict)  # Σ SM utilisation samples per process
    running: dict[GpuProcess, tuple[int, int]] = field(default_factory=dict)  # → (GPU instance, memory bytes)
    util_sum: float = 0.0  # device utilisation readings (%)
    util_n: int = 0


@dataclass(slots=True)
class _Device:
    gpu: Accelerator
    handle: Any
    energy_counter: bool = True
    fields: list[tuple[int, int]] | None = None  # field values to read each tick (None: not probed yet)
    scopes: dict[str, _Integral] = field(default_factory=dict)
    power: _Integral = field(default_factory=_Integral)
    last_sample_ts: int = 0
    down: bool = False
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST_S
    error: str = ""
    mig: bool = False
    mig_state: MigState = field(default_factory=MigState)
    use: _Use = field(default_factory=_Use)


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _describe(exc: BaseException) -> str:
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # pynvml's __str__ itself calls into the library
        return type(exc).__name__


class NvmlMeter:
    """Every GPU NVML reports (an AcceleratorMeter); `read(now)` returns one AcceleratorSample per GPU."""

    name = SOURCE
    kind = "NVIDIA GPU(s) through NVML"

    def __init__(
        self, devices: list[_Device], driver: str, timeout_s: float, processes: GpuProcesses, poll_s: float = 0.0
    ) -> None:
        self._devices = devices
        self.driver = driver
        self.timeout_s = timeout_s
        self.processes = processes
        self._worker = MeterWorker("NVML", timeout_s, self._read_all, self._poll_all, poll_s)

    @classmethod
    def open(
        cls, timeout_s: float = 2.0, *, proc_path: Path = Path("/proc"), poll_s: float = 0.0, ttl_s: float = 600.0
    ) -> NvmlMeter:
        """Initialise NVML and list GPUs; MeterUnavailable (with the reason) when there is nothing to read."""
        try:
            pynvml.nvmlInit()
        except _NVML_ERRORS as exc:
            reason = {
                pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: NOT_INSTALLED,
                pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
                pynvml.NVML_ERROR_NO_PERMISSION: "no permission to open /dev/nvidiactl",
            }.get(_code(exc) or 0, f"NVML did not initialise ({_describe(exc)})")
            raise MeterUnavailable(f"no NVIDIA GPUs: {reason}", FIX) from None
        try:
            driver = str(pynvml.nvmlSystemGetDriverVersion())
            devices = []
            for index in range(int(pynvml.nvmlDeviceGetCount())):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                model = str(pynvml.nvmlDeviceGetName(handle))
                gpu = Accelerator(index, str(pynvml.nvmlDeviceGetUUID(handle)), model, SOURCE, _scope(model))
                devices.append(_Device(gpu, handle))
        except _NVML_ERRORS as exc:
            pynvml.nvmlShutdown()
            raise MeterUnavailable(f"NVML failed listing GPUs ({_describe(exc)})", "check the driver") from None
        if not devices:
            pynvml.nvmlShutdown()
            raise MeterUnavailable("NVML found no GPUs", "")
        return cls(devices, driver, timeout_s, GpuProcesses(proc_path, ttl_s), poll_s)

    @property
    def devices(self) -> list[Accelerator]:
        return [d.gpu for d in self._devices]

    def read(self, now: float) -> list[AcceleratorSample]:
        """Read every GPU in the worker thread, waiting at most timeout_s; a call still stuck from an earlier
        tick makes every GPU read as failed until it returns."""
        result = self._worker.read(now)
        if isinstance(result, str):
            return [self._failed_sample(d, result) for d in self._devices]
        return result

    def poll(self, now: float, wait: bool = False) -> None:
        """Gather the GPUs' processes and samples between ticks (the worker's own timer does it every
        gpu_poll_interval; skipped while an NVML call is running, so a hung GPU never queues polls)."""
        self._worker.poll(now, wait)

    def _failed_sample(self, device: _Device, reason: str) -> AcceleratorSample:
        return AcceleratorSample(device.gpu, None, self._method(device), error=reason)

    @staticmethod
    def _method(device: _Device) -> str:
        return "energy_counter" if device.energy_counter else "power_integration"

    def _poll_all(self, now: float) -> None:
        for device in self._devices:
            if not device.down:
                with contextlib.suppress(*_NVML_ERRORS):  # the tick's own read reports failures
                    self._poll(device, now)
        self.processes.expire(now)

    def _read_all(self, now: float) -> list[AcceleratorSample]:
        samples = [self._read_device(device, now) for device in self._devices]
        self.processes.expire(now)
        return samples

    def _read_device(self, device: _Device, now: float) -> AcceleratorSample:
        if device.down:
            if now < device.retry_at:
                return self._failed_sample(device, device.error)
            try:
                device.handle = pynvml.nvmlDeviceGetHandleByUUID(device.gpu.uuid)
            except _NVML_ERRORS as exc:
                return self._lost(device, now, exc)
        try:
            energy, scopes = self._energy(device, now)
            sample = self._users(device, now, energy, scopes)
        except _NVML_ERRORS as exc:
            if _code(exc) in _DEVICE_GONE:
                return self._lost(device, now, exc)
            return self._failed_sample(device, _describe(exc))
        device.down, device.backoff, device.error = False, RETRY_FIRST_S, ""
        return sample

    def _lost(self, device: _Device, now: float, exc: BaseException) -> AcceleratorSample:
        device.down, device.error = True, f"GPU lost ({_describe(exc)})"
        device.retry_at = now + device.backoff
        device.backoff = min(device.backoff * 2, RETRY_MAX_S)
        device.power.last = None  # re-integrate from the next good reading
        for integral in device.scopes.values():
            integral.last = None
        device.use = _Use()  # what it did before it was lost is not this energy's
        device.mig_state.close()
        device.mig_state = MigState()
        return self._failed_sample(device, device.error)

    # --- energy: one field-values call per tick ------------------------------------------------------------

    def _probe(self, device: _Device) -> list[tuple[int, int]]:
        """The fields this GPU answers (each slot of one call carries its own status)."""
        wanted = [ENERGY_FIELD, POWER_FIELD, *SCOPE_FIELDS.values()]
        try:
            values = pynvml.nvmlDeviceGetFieldValues(device.handle, wanted)
        except pynvml.NVMLError as exc:
            if _code(exc) in _DEVICE_GONE:
                raise
            return []  # no field values at all: the classic calls
        except pynvml.NVMLLibraryMismatchError:
            return []
        supported = [f for f, v in zip(wanted, values, strict=True) if v.nvmlReturn == pynvml.NVML_SUCCESS]
        scopes = [name for name, f in SCOPE_FIELDS.items() if f in supported]
        if scopes:
            log.info("GPU %d (%s) reports power scopes: %s", device.gpu.index, device.gpu.model, ", ".join(scopes))
        return supported

    def _energy(self, device: _Device, now: float) -> tuple[int, tuple[ScopePower, ...]]:
        if device.fields is None:
            device.fields = self._probe(device)
        values: dict[tuple[int, int], float] = {}
        if device.fields:
            for wanted, value in zip(
                device.fields, pynvml.nvmlDeviceGetFieldValues(device.handle, device.fields), strict=True
            ):
                if value.nvmlReturn == pynvml.NVML_SUCCESS:
                    values[wanted] = _field_value(value)
        scopes = []
        for name, wanted in SCOPE_FIELDS.items():
            if wanted in values:
                integral = device.scopes.setdefault(name, _Integral())
                watts = values[wanted] / 1000
                scopes.append(ScopePower(name, watts, integral.add(now, watts)))
        if device.energy_counter:
            if ENERGY_FIELD in values:
                return int(values[ENERGY_FIELD]) * 1000, tuple(scopes)
            try:
                return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)) * 1000, tuple(scopes)
            except pynvml.NVMLError as exc:
                if _code(exc) != pynvml.NVML_ERROR_NOT_SUPPORTED:
                    raise
                device.energy_counter = False  # pre-Volta: integrate power from now on
                log.info("GPU %d (%s) has no energy counter: integrating its power", device.gpu.index, device.gpu.model)
        milliwatts = values.get(POWER_FIELD)
        if milliwatts is None:
            milliwatts = float(pynvml.nvmlDeviceGetPowerUsage(device.handle))
        return device.power.add(now, milliwatts / 1000), tuple(scopes)

    # --- users: polled between ticks, handed over at the tick ---------------------------------------------

    def _poll(self, device: _Device, now: float) -> None:
        """One look at the GPU's processes: record new ones, sum their samples since the last one seen."""
        use, processes = device.use, self.processes
        for listing in (
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            pynvml.nvmlDeviceGetGraphicsRunningProcesses,
            pynvml.nvmlDeviceGetMPSComputeRunningProcesses,
        ):
            for info in _optional(listing, device.handle):
                process = processes.seen(int(info.pid), now)
                gi = int(getattr(info, "gpuInstanceId", 0xFFFFFFFF) or 0)
                _, memory = use.running.get(process, (gi, 0))
                use.running[process] = (gi, max(memory, int(info.usedGpuMemory or 0)))
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(device.handle)
            device.mig = bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)
        except pynvml.NVMLError as exc:
            if _code(exc) in _DEVICE_GONE:
                raise
            device.mig = False  # NOT_SUPPORTED on GPUs without MIG
        except pynvml.NVMLLibraryMismatchError:
            device.mig = False
        if device.mig:
            return  # NVML has no per-process utilisation under MIG
        samples = _optional(pynvml.nvmlDeviceGetProcessUtilization, device.handle, device.last_sample_ts)
        if samples:
            processes.calibrate(max(int(sample.timeStamp) for sample in samples))
        for sample in samples:
            ts = int(sample.timeStamp)
            device.last_sample_ts = max(device.last_sample_ts, ts)
            process = processes.at(int(sample.pid), ts, now)
            use.sm[process] = use.sm.get(process, 0) + int(sample.smUtil)
        rates = _optional(_utilization, device.handle)
        if rates:
            use.util_sum += float(rates[0])
            use.util_n += 1

    def _users(self, device: _Device, now: float, energy: int, scopes: tuple[ScopePower, ...]) -> AcceleratorSample:
        self._poll(device, now)
        use, device.use = device.use, _Use()
        instances: tuple[InstanceUse, ...] = ()
        if device.mig:
            device.mig_state.refresh(device.handle)
            activity = device.mig_state.activity(device.handle, now)
            users, instances, split = mig_users(device.mig_state, use.running, activity)
        else:
            users, split = _weights(use)
        return AcceleratorSample(
            device.gpu,
            energy,
            self._method(device),
            users,
            split,
            device.mig,
            utilization=use.util_sum / use.util_n if use.util_n else None,
            scopes=scopes,
            instances=instances,
        )

    def close(self) -> None:
        self._worker.close()
        for device in self._devices:
            device.mig_state.close()
        self.processes.close()
        with contextlib.suppress(*_NVML_ERRORS):
            pynvml.nvmlShutdown()


def _weights(use: _Use) -> tuple[tuple[AcceleratorUser, ...], str]:
    """Users weighted by their SM utilisation samples (samples no known process accounts for: PID 0), else the
    running processes equally."""
    weighted = sorted((p, w) for p, w in use.sm.items() if w > 0 and p is not NOBODY)
    unknown = sum(w for p, w in use.sm.items() if p is NOBODY)
    if weighted or unknown:
        users = [AcceleratorUser(p.pid, w, p.cgroup) for p, w in weighted]
        if unknown:
            users.append(AcceleratorUser(0, unknown))
        return tuple(users), "sm_util"
    if use.running:
        return tuple(AcceleratorUser(p.pid, 1, p.cgroup) for p in sorted(use.running)), "equal"
    return (), "none"


def _utilization(handle: Any) -> list[int]:
    return [int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)]


def _field_value(value: Any) -> float:
    """A field value by its declared type (0 double, 1 uint, 2 ulong, 3 ulonglong, 4 slonglong, 5 sint)."""
    kind = int(value.valueType)
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(kind, "ullVal")
    return float(getattr(value.value, member))


def _optional(call: Callable[..., Any], *args: Any) -> list[Any]:
    """A query some GPUs or drivers do not answer: no data rather than an error (a lost GPU still raises)."""
    try:
        return list(call(*args))
    except pynvml.NVMLError as exc:
        if _code(exc) in _DEVICE_GONE:
            raise
        return []
    except pynvml.NVMLLibraryMismatchError:
        return []  # an older driver without this versioned symbol


def open_accelerator(config: Config) -> NvmlMeter:
    return NvmlMeter.open(
        config.nvml_timeout, proc_path=config.proc_path, poll_s=config.gpu_poll_interval, ttl_s=config.workload_ttl
    )
