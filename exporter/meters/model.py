"""The no-sensor fallback: node power modelled from CPU utilisation.

P = cpus × (idle_w + (max_w − idle_w) × util), integrated over each tick into a µJ counter. The default
per-CPU coefficients are the Cloud Carbon Footprint averages for AWS (0.74 W idle, 3.5 W at 100 %), derived
from SPECpower results (docs/power-model.md). Every series this meter drives carries source="model".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from exporter.counters import MICRO
from exporter.meters.base import POWER_INTEGRATION, CounterSample, ZoneId
from exporter.workloads.procfs import CpuTimes, utilisation

if TYPE_CHECKING:
    from exporter.config import Config, ModelConfig

SOURCE = "model"
ZONE = ZoneId(zone="package", socket="", die="", source=SOURCE, device="proc-stat")


class ModelMeter:
    """Integrates modelled power into a cumulative counter that starts at zero."""

    name = SOURCE

    def __init__(self, config: ModelConfig, cpus: int) -> None:
        self.cpus = config.cpus or cpus
        self.idle_w = config.idle_watts_per_cpu * self.cpus
        self.max_w = config.max_watts_per_cpu * self.cpus
        self._energy_uj = 0
        self._fraction_uj = 0.0  # sub-µJ remainder carried so that no energy is lost to rounding
        self._last: tuple[float, CpuTimes] | None = None
        self.last_watts = self.idle_w

    def zones(self) -> Sequence[ZoneId]:
        return [ZONE]

    def power(self, util: float) -> float:
        return self.idle_w + (self.max_w - self.idle_w) * util

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]:
        if cpu is None:
            return [CounterSample(ZONE, None, 0, "no /proc/stat reading", POWER_INTEGRATION)]
        if self._last is not None:
            then, before = self._last
            dt = max(0.0, now - then)
            self.last_watts = self.power(utilisation(before, cpu))
            exact = self.last_watts * dt * MICRO + self._fraction_uj
            whole = int(exact)
            self._fraction_uj = exact - whole
            self._energy_uj += whole
        self._last = (now, cpu)
        return [CounterSample(ZONE, self._energy_uj, 0, method=POWER_INTEGRATION, watts=self.last_watts)]

    def idle_watts(self) -> dict[str, float]:
        return {ZONE.zone: self.idle_w}

    def close(self) -> None:
        self._last = None


def open_meter(config: Config, cpus: int) -> ModelMeter:
    return ModelMeter(config.model, cpus)
