"""MIG on one GPU: its GPU instances and, on GPUs with GPM (Hopper and newer), each instance's activity.

Energy under MIG is board-level only and NVML has no per-process utilisation there, but GPM measures each GPU
instance (`nvmlGpmMigSampleGet` on the parent GPU + `nvmlGpmMetricsGet`, GRAPHICS_UTIL: the share of time
any context was active on it) with no DCGM. So the board's active energy is split among instances by their
activity and, inside an instance, among its processes by their GPU memory. Without GPM the split falls back
to GPU memory alone (`mig_memory`, an estimate). GPM needs two samples ≥ 100 ms apart: one sample per instance
is kept from the previous tick and compared with the new one.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporter.attribution import apportion
from exporter.meters.base import AcceleratorUser, InstanceUse
from exporter.meters.gpu_processes import GpuProcess

log = logging.getLogger(__name__)

MIN_SPACING_S = 0.1  # NVML: GPM samples closer than its 100 ms refresh give no valid metric
_ERRORS = (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError)
_GONE = {pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED, pynvml.NVML_ERROR_GPU_NOT_FOUND}
ACTIVITY_SCALE = 10_000  # GRAPHICS_UTIL (%) × 100 as an integer weight


@dataclass(slots=True)
class _Instance:
    gi: int
    profile: str
    uuid: str
    memory_used: int
    sample: Any = None  # the GPM sample of the previous tick
    sampled_at: float = 0.0


@dataclass(slots=True)
class MigState:
    """The GPU instances of one MIG GPU and their last GPM samples."""

    gpm: bool | None = None  # None until probed
    instances: dict[int, _Instance] = field(default_factory=dict)

    def refresh(self, handle: Any) -> None:
        """List the GPU instances through the MIG device handles (no MIG monitor capability needed)."""
        found: dict[int, _Instance] = {}
        for index in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
                gi = int(pynvml.nvmlDeviceGetGpuInstanceId(mig))
                name = str(pynvml.nvmlDeviceGetName(mig))
                uuid = str(pynvml.nvmlDeviceGetUUID(mig))
                memory = int(pynvml.nvmlDeviceGetMemoryInfo(mig).used)
            except pynvml.NVMLError as exc:
                if getattr(exc, "value", None) in _GONE:
                    raise
                continue  # an empty slot (NOT_FOUND)
            known = self.instances.pop(gi, None)
            profile = name.rsplit(" MIG ", 1)[-1] if " MIG " in name else name
            instance = _Instance(gi, profile, uuid, memory)
            if known is not None and known.uuid == uuid:
                instance.sample, instance.sampled_at = known.sample, known.sampled_at
            found[gi] = instance
        for gone in self.instances.values():  # instances destroyed since the last tick
            _free(gone.sample)
        self.instances = found
        if self.gpm is None:
            try:
                self.gpm = bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
            except _ERRORS:
                self.gpm = False

    def activity(self, handle: Any, now: float) -> dict[int, float] | None:
        """GRAPHICS_UTIL (%) of every instance since the previous tick; None without GPM or before two samples."""
        if not self.gpm:
            return None
        result: dict[int, float] = {}
        for instance in self.instances.values():
            previous, spacing = instance.sample, now - instance.sampled_at
            if previous is not None and spacing < MIN_SPACING_S:
                continue  # too close: keep the older sample for the next tick
            sample = pynvml.nvmlGpmSampleAlloc()
            try:
                pynvml.nvmlGpmMigSampleGet(handle, instance.gi, sample)
            except _ERRORS as exc:
                _free(sample)
                if getattr(exc, "value", None) in _GONE:
                    raise
                self.gpm = False  # not answered: memory split from now on, and say so
                log.info("GPM is not available on this MIG GPU (%s): splitting by GPU memory", exc)
                return None
            if previous is not None:
                util = _graphics_util(previous, sample)
                if util is not None:
                    result[instance.gi] = util
                _free(previous)
            instance.sample, instance.sampled_at = sample, now
        return result if len(result) == len(self.instances) and result else None

    def close(self) -> None:
        for instance in self.instances.values():
            _free(instance.sample)
            instance.sample = None


def _graphics_util(first: Any, second: Any) -> float | None:
    metrics = pynvml.c_nvmlGpmMetricsGet_t()
    metrics.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    metrics.numMetrics = 1
    metrics.sample1, metrics.sample2 = first, second
    metrics.metrics[0].metricId = pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL
    try:
        pynvml.nvmlGpmMetricsGet(metrics)
    except _ERRORS:
        return None
    metric = metrics.metrics[0]
    if metric.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    return max(0.0, min(100.0, float(metric.value)))


def _free(sample: Any) -> None:
    if sample is not None:
        with contextlib.suppress(*_ERRORS):
            pynvml.nvmlGpmSampleFree(sample)


def mig_users(
    state: MigState, running: dict[GpuProcess, tuple[int, int]], activity: dict[int, float] | None
) -> tuple[tuple[AcceleratorUser, ...], tuple[InstanceUse, ...], str]:
    """Users and instance shares of a MIG GPU. `running` maps each process seen this tick to (GPU instance,
    memory bytes). With GPM activity, each instance's activity is split among its processes by memory (equally
    when memory is unknown; unattributed without processes); without it, every process weighs its memory."""
    by_instance: dict[int, list[tuple[GpuProcess, int]]] = {}
    for process, (gi, memory) in running.items():
        by_instance.setdefault(gi, []).append((process, memory))
    users: list[AcceleratorUser] = []
    shares: list[InstanceUse] = []
    if activity is not None:
        for gi, instance in sorted(state.instances.items()):
            weight = round(activity.get(gi, 0.0) * ACTIVITY_SCALE / 100)
            shares.append(InstanceUse(str(gi), instance.profile, instance.uuid, weight))
            processes = by_instance.get(gi, [])
            if not processes:
                if weight:
                    users.append(AcceleratorUser(0, weight))
                continue
            memories = [m for _, m in processes]
            parts = apportion(weight, memories if any(memories) else [1] * len(processes))
            users += [AcceleratorUser(p.pid, w, p.cgroup) for (p, _), w in zip(processes, parts, strict=True) if w]
        return tuple(users), tuple(shares), "mig_gpm"
    for gi, instance in sorted(state.instances.items()):
        shares.append(InstanceUse(str(gi), instance.profile, instance.uuid, instance.memory_used >> 20))
    for process, (_gi, memory) in sorted(running.items(), key=lambda item: (item[0].pid, item[0].start_us)):
        if memory >> 20:
            users.append(AcceleratorUser(process.pid, memory >> 20, process.cgroup))
    return tuple(users), tuple(shares), "mig_memory" if users else "none"
