"""AMD GPUs through AMD SMI (the `amdsmi` Python package over ROCm's `libamd_smi.so`): energy per GPU and who
used it, on the same accounting path as NVIDIA's.

- **Devices.** AMD SMI lists one *processor* per compute partition (CPX splits an MI300X into 8); partitions of
  one GPU share its domain:bus:device. Each GPU is one accelerator: energy from its primary partition (the one
  with full visibility of device metrics), users from every partition, and `partition` says the mode
  ("CPX/NPS4"). Partitions' energies are never added.
- **Energy.** `amdsmi_get_energy_count`: a 64-bit count and its resolution in µJ (15.3 on every ASIC so far,
  read as a C float). µJ = ⌊(count − origin) × resolution⌋ + what came before the origin; a new resolution
  starts a new origin, a count that goes down is a reset (the accounting adds nothing for that tick).
- **Users.** `amdsmi_get_gpu_process_list` per partition, polled every `gpu_poll_interval`, each process
  recorded on first sight by (PID, start time) with its cgroup (gpu_processes.py). Weights, first that has any:
  growth of the cumulative GFX + encoder engine time (`engine_gfx`, DRM clients); compute units occupied
  (`cu_occupancy`, sampled at each poll, × seconds: ROCm compute jobs, which submit through KFD and leave the
  engine counters at 0); VRAM (`vram`, an estimate); running processes equally (`equal`).
- **Failures.** Any library error on a GPU marks it down (`source_up`), logged once; it is retried with
  backoff by re-initialising AMD SMI (handles do not survive a re-init) and finding the GPU by its address.

The package is imported only here, with its stdout captured (it prints when the library is missing), from the
environment or else from the copy ROCm installs, which matches the library (`$ROCM_PATH/share/amd_smi`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from exporter.meters.base import ENERGY_COUNTER, Accelerator, AcceleratorSample, AcceleratorUser, MeterUnavailable
from exporter.meters.gpu_processes import GpuProcess, GpuProcesses
from exporter.meters.worker import MeterWorker

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

SOURCE = "amdsmi"
LIBRARY = "libamd_smi.so"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
FIX = (
    "on AMD GPU nodes install ROCm (libamd_smi.so) and the amdsmi package of the same version, or set "
    "ROCM_PATH to the ROCm install; mount /dev/kfd and /dev/dri read-only"
)


def _library_loads() -> bool:
    """Whether libamd_smi.so loads from where the package looks for it (ROCM_HOME, ROCM_PATH, the loader,
    /opt/rocm): most nodes have no AMD GPU and should not pay for importing the package."""
    candidates = [str(Path(os.environ[v]) / "lib" / LIBRARY) for v in ("ROCM_HOME", "ROCM_PATH") if v in os.environ]
    for candidate in (*candidates, LIBRARY, f"/opt/rocm/lib/{LIBRARY}"):
        try:
            ctypes.CDLL(candidate)
        except OSError:
            continue
        return True
    return False


def load_amdsmi() -> ModuleType:
    """The `amdsmi` package, or MeterUnavailable with the reason. It loads libamd_smi.so at import."""
    if not _library_loads():
        raise MeterUnavailable(f"no AMD GPUs: {LIBRARY} (ROCm) is not installed", FIX)
    captured = io.StringIO()
    for attempt in range(2):
        try:
            with contextlib.redirect_stdout(captured):
                return importlib.import_module("amdsmi")
        except ImportError:
            rocm = Path(os.environ.get("ROCM_PATH", "/opt/rocm")) / "share" / "amd_smi"
            if attempt or not rocm.is_dir():
                raise MeterUnavailable("no AMD GPUs: the amdsmi Python package is not installed", FIX) from None
            sys.path.append(str(rocm))  # ROCm's own copy matches its library
        except KeyError:  # the package's way of saying libamd_smi.so did not load
            raise MeterUnavailable("no AMD GPUs: libamd_smi.so (ROCm) is not installed", FIX) from None
        except (AttributeError, OSError) as exc:
            raise MeterUnavailable(
                f"no AMD GPUs: libamd_smi.so does not match the amdsmi package ({exc})", FIX
            ) from None
    raise MeterUnavailable("no AMD GPUs", FIX)


@dataclass(slots=True)
class _Energy:
    """Counts → µJ, exact from an origin so that per-tick deltas sum to the converted total. A new resolution
    moves the origin (the µJ continue); a count that goes down starts again from 0, so the accounting sees the
    decrease and treats it as a reset, as on NVIDIA."""

    resolution: float = 0.0
    origin: int = 0
    before_uj: int = 0
    last_count: int = 0
    last_uj: int = 0

    def convert(self, count: int, resolution: float) -> int:
        if count < self.last_count:
            self.origin, self.before_uj = 0, 0
        elif resolution != self.resolution and self.resolution:
            self.origin, self.before_uj = self.last_count, self.last_uj
        self.resolution, self.last_count = resolution, count
        self.last_uj = self.before_uj + int((count - self.origin) * resolution)
        return self.last_uj


@dataclass(slots=True)
class _Use:
    engine: dict[GpuProcess, int] = field(default_factory=dict)  # ns of GFX + encoder time this tick
    occupancy: dict[GpuProcess, float] = field(default_factory=dict)  # CUs × seconds
    vram: dict[GpuProcess, int] = field(default_factory=dict)  # bytes (the most seen)
    util_sum: float = 0.0
    util_n: int = 0


@dataclass(slots=True)
class _Gpu:
    gpu: Accelerator
    address: str  # domain:bus:device
    handles: list[Any]  # its processors, the primary first
    energy: _Energy = field(default_factory=_Energy)
    engine_seen: dict[tuple[int, GpuProcess], int] = field(default_factory=dict)  # (partition, process) → ns
    use: _Use = field(default_factory=_Use)
    last_poll: float | None = None
    down: bool = False
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST_S
    error: str = ""


def _processors(smi: ModuleType) -> dict[str, list[tuple[str, Any]]]:
    """Processors by GPU address (BDF without the function), each with its BDF, in the library's order."""
    by_address: dict[str, list[tuple[str, Any]]] = {}
    for handle in smi.amdsmi_get_processor_handles():
        try:
            bdf = str(smi.amdsmi_get_gpu_device_bdf(handle)).lower()
        except smi.AmdSmiException:
            continue  # a processor that does not answer (lost): the others are still found
        by_address.setdefault(bdf.rsplit(".", 1)[0], []).append((bdf, handle))
    return by_address


def _primary(smi: ModuleType, processors: list[tuple[str, Any]]) -> list[Any]:
    """The processors of one GPU, the primary partition (partition id 0, else function 0) first."""

    def partition(item: tuple[str, Any]) -> tuple[int, str]:
        try:
            return int(smi.amdsmi_get_gpu_kfd_info(item[1])["current_partition_id"]), item[0]
        except Exception:
            return 0, item[0]

    return [handle for _, handle in sorted(processors, key=partition)]


def _optional(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception:
        return None


class AmdSmiMeter:
    """Every AMD GPU AMD SMI lists (an AcceleratorMeter)."""

    name = SOURCE
    kind = "AMD GPU(s) through AMD SMI"

    def __init__(
        self,
        smi: ModuleType,
        gpus: list[_Gpu],
        driver: str,
        timeout_s: float,
        *,
        processes: GpuProcesses,
        poll_s: float = 0.0,
    ) -> None:
        self._smi = smi
        self._gpus = gpus
        self.driver = driver
        self.processes = processes
        self._worker = MeterWorker("AMD SMI", timeout_s, self._read_all, self._poll_all, poll_s)

    @classmethod
    def open(
        cls, timeout_s: float = 2.0, *, proc_path: Path = Path("/proc"), poll_s: float = 0.0, ttl_s: float = 600.0
    ) -> AmdSmiMeter:
        smi = load_amdsmi()
        try:
            smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
        except smi.AmdSmiException as exc:
            raise MeterUnavailable(f"no AMD GPUs: AMD SMI did not initialise ({_describe(exc)})", FIX) from None
        try:
            gpus = []
            for index, (address, processors) in enumerate(sorted(_processors(smi).items())):
                handles = _primary(smi, processors)
                primary = handles[0]
                uuid = str(smi.amdsmi_get_gpu_device_uuid(primary))
                asic = _optional(smi.amdsmi_get_gpu_asic_info, primary) or {}
                compute = _optional(smi.amdsmi_get_gpu_compute_partition, primary)
                memory = _optional(smi.amdsmi_get_gpu_memory_partition, primary)
                partition = "/".join(str(p) for p in (compute, memory) if p and p != "N/A")
                model = str(asic.get("market_name") or "AMD GPU")
                gpus.append(_Gpu(Accelerator(index, uuid, model, SOURCE, partition=partition), address, handles))
            driver = ""
            if gpus:
                info = _optional(smi.amdsmi_get_gpu_driver_info, gpus[0].handles[0]) or {}
                driver = f"{info.get('driver_name', 'amdgpu')} {info.get('driver_version', '')}".strip()
        except smi.AmdSmiException as exc:
            with contextlib.suppress(smi.AmdSmiException):
                smi.amdsmi_shut_down()
            raise MeterUnavailable(
                f"AMD SMI failed listing GPUs ({_describe(exc)})", "check the amdgpu driver"
            ) from None
        if not gpus:
            with contextlib.suppress(smi.AmdSmiException):
                smi.amdsmi_shut_down()
            raise MeterUnavailable("AMD SMI found no GPUs", "")
        return cls(smi, gpus, driver, timeout_s, processes=GpuProcesses(proc_path, ttl_s), poll_s=poll_s)

    @property
    def devices(self) -> list[Accelerator]:
        return [g.gpu for g in self._gpus]

    def read(self, now: float) -> list[AcceleratorSample]:
        result = self._worker.read(now)
        if isinstance(result, str):
            return [self._failed(g, result) for g in self._gpus]
        return result

    def poll(self, now: float, wait: bool = False) -> None:
        self._worker.poll(now, wait)

    def _failed(self, gpu: _Gpu, reason: str) -> AcceleratorSample:
        return AcceleratorSample(gpu.gpu, None, ENERGY_COUNTER, error=reason)

    def _poll_all(self, now: float) -> None:
        for gpu in self._gpus:
            if not gpu.down:
                with contextlib.suppress(self._smi.AmdSmiException):  # the tick's own read reports failures
                    self._poll(gpu, now)
        self.processes.expire(now)

    def _read_all(self, now: float) -> list[AcceleratorSample]:
        if any(g.down and now >= g.retry_at for g in self._gpus):
            self._reacquire()
        samples = [self._read(gpu, now) for gpu in self._gpus]
        self.processes.expire(now)
        return samples

    def _reacquire(self) -> None:
        """Re-initialise AMD SMI (its processor list is built at init) and find every GPU again by address."""
        smi = self._smi
        try:
            smi.amdsmi_shut_down()
            smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
            found = _processors(smi)
        except smi.AmdSmiException:
            return
        for gpu in self._gpus:
            if gpu.address in found:
                gpu.handles = _primary(smi, found[gpu.address])

    def _read(self, gpu: _Gpu, now: float) -> AcceleratorSample:
        smi = self._smi
        if gpu.down and now < gpu.retry_at:
            return self._failed(gpu, gpu.error)
        try:
            reading = smi.amdsmi_get_energy_count(gpu.handles[0])
            count = int(reading.get("energy_accumulator", reading.get("power", 0)))
            energy = gpu.energy.convert(count, float(reading["counter_resolution"]))
            self._poll(gpu, now)
        except smi.AmdSmiException as exc:
            gpu.down, gpu.error = True, f"GPU not answering ({_describe(exc)})"
            gpu.retry_at, gpu.backoff = now + gpu.backoff, min(gpu.backoff * 2, RETRY_MAX_S)
            gpu.use, gpu.last_poll = _Use(), None
            return self._failed(gpu, gpu.error)
        gpu.down, gpu.backoff, gpu.error = False, RETRY_FIRST_S, ""
        use, gpu.use = gpu.use, _Use()
        users, split = _weights(use)
        utilization = use.util_sum / use.util_n if use.util_n else None
        return AcceleratorSample(gpu.gpu, energy, ENERGY_COUNTER, users, split, utilization=utilization)

    def _poll(self, gpu: _Gpu, now: float) -> None:
        smi, use = self._smi, gpu.use
        seconds = 0.0 if gpu.last_poll is None else max(0.0, now - gpu.last_poll)
        gpu.last_poll = now
        seen: dict[tuple[int, GpuProcess], int] = {}
        for partition, handle in enumerate(gpu.handles):
            for info in smi.amdsmi_get_gpu_process_list(handle) or ():
                process = self.processes.seen(int(info["pid"]), now)
                engines = info.get("engine_usage") or {}
                total = sum(int(v) for v in (engines.get("gfx"), engines.get("enc")) if isinstance(v, int))
                # A process seen for the first time used its engine time since our last look (or before
                # wattlens started, which the first tick, a baseline, discards).
                grew = max(0, total - gpu.engine_seen.get((partition, process), 0))
                seen[(partition, process)] = total
                use.engine[process] = use.engine.get(process, 0) + grew
                occupancy = info.get("cu_occupancy")
                if isinstance(occupancy, int) and occupancy > 0:
                    use.occupancy[process] = use.occupancy.get(process, 0.0) + occupancy * max(seconds, 1e-3)
                vram = (info.get("memory_usage") or {}).get("vram_mem")
                use.vram[process] = max(use.vram.get(process, 0), vram if isinstance(vram, int) else 0)
        gpu.engine_seen = seen  # processes no longer listed have ended
        activity = _optional(smi.amdsmi_get_gpu_activity, gpu.handles[0]) or {}
        gfx = activity.get("gfx_activity")
        if isinstance(gfx, int):
            use.util_sum += gfx
            use.util_n += 1

    def close(self) -> None:
        self._worker.close()
        self.processes.close()
        with contextlib.suppress(Exception):
            self._smi.amdsmi_shut_down()


def _weights(use: _Use) -> tuple[tuple[AcceleratorUser, ...], str]:
    """Engine time where any process has some, else compute units occupied, else VRAM, else equal shares."""
    for weights, split in (
        (use.engine, "engine_gfx"),
        ({p: round(v * 1000) for p, v in use.occupancy.items()}, "cu_occupancy"),
        ({p: v >> 20 for p, v in use.vram.items()}, "vram"),
    ):
        if any(w > 0 for w in weights.values()):
            users = tuple(AcceleratorUser(p.pid, w, p.cgroup) for p, w in sorted(weights.items()) if w > 0)
            return users, split
    if use.vram:
        return tuple(AcceleratorUser(p.pid, 1, p.cgroup) for p in sorted(use.vram)), "equal"
    return (), "none"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def open_accelerator(config: Config) -> AmdSmiMeter:
    return AmdSmiMeter.open(
        config.nvml_timeout, proc_path=config.proc_path, poll_s=config.gpu_poll_interval, ttl_s=config.workload_ttl
    )
