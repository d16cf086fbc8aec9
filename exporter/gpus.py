"""GPU energy accounting: per-GPU counters, idle, and the split among the workloads that used each GPU.

Per GPU and tick, exactly as for CPU zones: ΔE = idle + unattributed + Σ top-level workloads, each top-level =
Σ children + residual. Weights are the NVML users' weights (SM utilisation, or equal shares); a process that
belongs to no workload cgroup (a host process) lands in `unattributed`.

Idle per GPU is configured (`gpu_idle_watts`) or learned: a low quantile of the GPU's power over intervals in
which no process used it. Kepler takes the minimum power ever seen, which one deep-idle moment drags down for
good; intervals without users are the GPU's real idle, at its current clocks and temperature. Until such
intervals have been seen, no energy is called idle (method "none").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.attribution import Usage, attribute
from exporter.config import Config
from exporter.counters import MICRO, CounterTrack, StepKind
from exporter.idle import IdleBaseline
from exporter.ledger import Ledger
from exporter.meters.nvml import Gpu, GpuSample, NvmlMeter

log = logging.getLogger(__name__)

# (top-level workload key, child key or None) of a PID, or None when it belongs to no workload.
Owner = Callable[[int], tuple[str, str | None] | None]


def domain_of(gpu: Gpu) -> str:
    """The ledger domain of a GPU's energy in workload records ("package"/"dram" are CPU zones)."""
    return f"gpu:{gpu.uuid}"


@dataclass(slots=True)
class _Account:
    gpu: Gpu
    counter: CounterTrack = field(default_factory=CounterTrack)
    method: str = "energy_counter"
    mig: bool = False
    idle_watts: float | None = None
    idle_method: str = "none"
    baseline: IdleBaseline | None = None
    splits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuState:
    gpu: Gpu
    method: str
    joules_uj: int
    idle_uj: int
    active_uj: int
    unattributed_uj: int
    watts: float | None
    idle_watts: float | None
    idle_method: str
    up: bool
    resets: int
    mig: bool
    splits: tuple[tuple[str, int], ...]


class GpuAccounting:
    def __init__(self, meter: NvmlMeter, config: Config) -> None:
        self.meter = meter
        self.config = config
        self._accounts = {
            gpu.uuid: _Account(gpu, baseline=IdleBaseline(config.idle_window, config.idle_quantile))
            for gpu in meter.gpus
        }
        self._energy: Ledger[str] = Ledger()
        self._idle: Ledger[str] = Ledger()
        self._active: Ledger[str] = Ledger()
        self._unattributed: Ledger[str] = Ledger()
        self.errors: Ledger[str] = Ledger()

    def tick(self, now: float, dt: float | None, owner: Owner) -> dict[str, dict[str, int]]:
        """Read every GPU; returns this tick's µJ per workload key and GPU domain."""
        shares: dict[str, dict[str, int]] = {}
        for sample in self.meter.read(now):
            account = self._accounts[sample.gpu.uuid]
            delta = self._account(account, sample, dt)
            if delta is None or dt is None or dt <= 0:
                continue
            self._split(account, sample, delta, now=now, dt=dt, owner=owner, shares=shares)
        return shares

    def _account(self, account: _Account, sample: GpuSample, dt: float | None) -> int | None:
        uuid = sample.gpu.uuid
        account.method, account.mig = sample.method, sample.mig
        if sample.energy_uj is None:
            self.errors.add(uuid, 1)
            if account.counter.failed(sample.error):
                log.warning("GPU %d (%s) is down: %s; retrying with backoff", sample.gpu.index, uuid, sample.error)
            return None
        step, came_back = account.counter.observe(sample.energy_uj, 0, dt, self.config.max_zone_watts)
        if came_back:
            log.info("GPU %d (%s) is back", sample.gpu.index, uuid)
        if step.kind is StepKind.RESET:
            log.warning(
                "GPU %d (%s) energy counter reset (driver reload or GPU reset); adding nothing", sample.gpu.index, uuid
            )
        self._energy.add(uuid, step.delta_uj)
        if step.kind is StepKind.FIRST or not dt:
            return None
        return step.delta_uj

    def _split(
        self,
        account: _Account,
        sample: GpuSample,
        delta: int,
        *,
        now: float,
        dt: float,
        owner: Owner,
        shares: dict[str, dict[str, int]],
    ) -> None:
        uuid = sample.gpu.uuid
        assert account.baseline is not None
        if self.config.gpu_idle_watts is not None:
            account.idle_watts, account.idle_method = self.config.gpu_idle_watts, "configured"
        else:
            learned = account.baseline.watts()
            account.idle_watts, account.idle_method = (learned, "learned") if learned is not None else (None, "none")
        if not sample.users:
            account.baseline.observe(now, delta / MICRO, dt)  # nobody used the GPU: this is its idle power
        idle = min(delta, int((account.idle_watts or 0.0) * dt * MICRO))
        tops: dict[str, tuple[int, dict[str, int]]] = {}
        total = 0
        for pid, weight in sample.users:
            total += weight
            found = owner(pid)
            if found is None:
                continue
            top, child = found
            weight_sum, children = tops.get(top, (0, {}))
            if child is not None:
                children[child] = children.get(child, 0) + weight
            tops[top] = (weight_sum + weight, children)
        usages = [Usage(top, w, tuple(Usage(c, cw) for c, cw in kids.items())) for top, (w, kids) in tops.items()]
        result = attribute(delta, idle, total, usages, spread_idle=self.config.idle_attribution == "cpu")
        self._idle.add(uuid, idle)
        self._active.add(uuid, delta - idle)
        self._unattributed.add(uuid, result.unattributed_uj)
        account.splits[sample.split] = account.splits.get(sample.split, 0) + 1
        for key, microjoules in result.workloads.items():
            shares.setdefault(key, {})[domain_of(sample.gpu)] = microjoules

    def states(self) -> tuple[GpuState, ...]:
        return tuple(
            GpuState(
                gpu=a.gpu,
                method=a.method,
                joules_uj=self._energy.get(uuid),
                idle_uj=self._idle.get(uuid),
                active_uj=self._active.get(uuid),
                unattributed_uj=self._unattributed.get(uuid),
                watts=a.counter.watts,
                idle_watts=a.idle_watts,
                idle_method=a.idle_method,
                up=a.counter.up,
                resets=a.counter.resets,
                mig=a.mig,
                splits=tuple(sorted(a.splits.items())),
            )
            for uuid, a in self._accounts.items()
        )

    def close(self) -> None:
        self.meter.close()
