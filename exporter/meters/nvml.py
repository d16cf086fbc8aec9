"""NVIDIA GPUs through NVML (nvidia-ml-py, module `pynvml`): energy per GPU and who used it.

Energy comes from the GPU's own counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ, Volta and newer); where
that is not supported, power (`nvmlDeviceGetPowerUsage`) is integrated over the tick and the series say so
(`method="power_integration"`). Users are the compute, graphics and MPS processes (a PID in several lists
counts once), weighted by their SM utilisation samples since the last read; without samples, running processes
share equally. Under MIG, NVML has no per-process utilisation: processes are weighted by GPU memory and the
split is an estimate.

NVML calls can block (a GPU falling off the bus), so they run in the meter's own worker thread and a tick waits
at most `timeout_s` for them. A lost GPU is marked down and re-acquired by UUID with backoff.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporter.config import Config
from exporter.counters import MICRO
from exporter.meters.base import Accelerator, AcceleratorSample, MeterUnavailable
from exporter.meters.nvml_loader import FIX, NOT_INSTALLED

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


def _scope(model: str) -> str:
    return "module" if any(name in model for name in MODULE_SCOPE_MODELS) else ""


@dataclass(slots=True)
class _Device:
    gpu: Accelerator
    handle: Any
    energy_counter: bool = True
    integrated_uj: int = 0
    fraction_uj: float = 0.0
    last_power: tuple[float, int] | None = None  # (time, mW)
    last_sample_ts: int = 0
    down: bool = False
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST_S
    error: str = ""
    mig: bool = False
    users: tuple[tuple[int, int], ...] = field(default=())


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

    def __init__(self, devices: list[_Device], driver: str, timeout_s: float) -> None:
        self._devices = devices
        self.driver = driver
        self.timeout_s = timeout_s
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wattlens-nvml")
        self._pending: concurrent.futures.Future[list[AcceleratorSample]] | None = None

    @classmethod
    def open(cls, timeout_s: float = 2.0) -> NvmlMeter:
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
        return cls(devices, driver, timeout_s)

    @property
    def devices(self) -> list[Accelerator]:
        return [d.gpu for d in self._devices]

    def read(self, now: float) -> list[AcceleratorSample]:
        """Read every GPU in the worker thread, waiting at most timeout_s; a call still stuck from an earlier
        tick makes every GPU read as failed until it returns."""
        if self._pending is not None and not self._pending.done():
            return [self._failed_sample(d, "an earlier NVML call has not returned") for d in self._devices]
        self._pending = self._worker.submit(self._read_all, now)
        try:
            return self._pending.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            return [self._failed_sample(d, f"NVML did not answer within {self.timeout_s:g} s") for d in self._devices]

    def _failed_sample(self, device: _Device, reason: str) -> AcceleratorSample:
        return AcceleratorSample(device.gpu, None, self._method(device), error=reason)

    @staticmethod
    def _method(device: _Device) -> str:
        return "energy_counter" if device.energy_counter else "power_integration"

    def _read_all(self, now: float) -> list[AcceleratorSample]:
        return [self._read_device(device, now) for device in self._devices]

    def _read_device(self, device: _Device, now: float) -> AcceleratorSample:
        if device.down:
            if now < device.retry_at:
                return self._failed_sample(device, device.error)
            try:
                device.handle = pynvml.nvmlDeviceGetHandleByUUID(device.gpu.uuid)
            except _NVML_ERRORS as exc:
                return self._lost(device, now, exc)
        try:
            energy = self._energy(device, now)
            users, split = self._users(device)
        except _NVML_ERRORS as exc:
            if _code(exc) in _DEVICE_GONE:
                return self._lost(device, now, exc)
            return self._failed_sample(device, _describe(exc))
        device.down, device.backoff, device.error = False, RETRY_FIRST_S, ""
        return AcceleratorSample(device.gpu, energy, self._method(device), users, split, device.mig)

    def _lost(self, device: _Device, now: float, exc: BaseException) -> AcceleratorSample:
        device.down, device.error = True, f"GPU lost ({_describe(exc)})"
        device.retry_at = now + device.backoff
        device.backoff = min(device.backoff * 2, RETRY_MAX_S)
        device.last_power = None  # re-integrate from the next good reading
        return self._failed_sample(device, device.error)

    def _energy(self, device: _Device, now: float) -> int:
        if device.energy_counter:
            try:
                return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)) * 1000
            except pynvml.NVMLError as exc:
                if _code(exc) != pynvml.NVML_ERROR_NOT_SUPPORTED:
                    raise
                device.energy_counter = False  # pre-Volta: integrate power from now on
                log.info("GPU %d (%s) has no energy counter: integrating its power", device.gpu.index, device.gpu.model)
        milliwatts = int(pynvml.nvmlDeviceGetPowerUsage(device.handle))
        if device.last_power is not None:
            then, before = device.last_power
            exact = (before + milliwatts) / 2 / 1000 * max(0.0, now - then) * MICRO + device.fraction_uj
            whole = int(exact)
            device.fraction_uj = exact - whole
            device.integrated_uj += whole
        device.last_power = (now, milliwatts)
        return device.integrated_uj

    def _users(self, device: _Device) -> tuple[tuple[tuple[int, int], ...], str]:
        running: dict[int, int] = {}  # pid → used GPU memory (bytes, 0 if unknown)
        for listing in (
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            pynvml.nvmlDeviceGetGraphicsRunningProcesses,
            pynvml.nvmlDeviceGetMPSComputeRunningProcesses,
        ):
            for process in _optional(listing, device.handle):
                running[int(process.pid)] = max(running.get(int(process.pid), 0), int(process.usedGpuMemory or 0))
        device.mig = _mig_enabled(device.handle)
        if device.mig:
            weights = {pid: memory // (1 << 20) for pid, memory in running.items() if memory > 0}
            return (tuple(sorted(weights.items())), "mig_memory") if weights else ((), "none")
        sm: dict[int, int] = {}
        for sample in _optional(pynvml.nvmlDeviceGetProcessUtilization, device.handle, device.last_sample_ts):
            device.last_sample_ts = max(device.last_sample_ts, int(sample.timeStamp))
            sm[int(sample.pid)] = sm.get(int(sample.pid), 0) + int(sample.smUtil)
        if any(sm.values()):
            return tuple(sorted((pid, w) for pid, w in sm.items() if w > 0)), "sm_util"
        if running:
            return tuple((pid, 1) for pid in sorted(running)), "equal"
        return (), "none"

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(*_NVML_ERRORS):
            pynvml.nvmlShutdown()


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


def _mig_enabled(handle: Any) -> bool:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except _NVML_ERRORS:
        return False  # NOT_SUPPORTED on GPUs without MIG
    return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)


def open_accelerator(config: Config) -> NvmlMeter:
    return NvmlMeter.open(config.nvml_timeout)
