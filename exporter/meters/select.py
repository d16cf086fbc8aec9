"""Choosing the node's meter: the first in the configured order that discovers something readable."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.config import Config
from exporter.meters.base import Meter, MeterUnavailable
from exporter.meters.model import ModelMeter
from exporter.meters.rapl import RaplMeter


@dataclass(frozen=True, slots=True)
class MeterReport:
    """What one meter's discovery found; shown by `wattlens check` and logged at start."""

    name: str
    available: bool
    reason: str = ""
    fix: str = ""
    notes: tuple[str, ...] = ()


def open_meter(name: str, config: Config, cpus: int) -> Meter:
    if name == "rapl":
        return RaplMeter.open(config.sys_path)
    if name == "model":
        return ModelMeter(config.model, cpus)
    raise MeterUnavailable(f"unknown meter {name}")


def select_meter(config: Config, cpus: int, try_all: bool = False) -> tuple[Meter | None, list[MeterReport]]:
    """Open meters in order and keep the first that works; `try_all` also probes the rest (for check)."""
    chosen: Meter | None = None
    reports: list[MeterReport] = []
    for name in config.meters:
        if chosen is not None and not try_all:
            break
        try:
            meter = open_meter(name, config, cpus)
        except MeterUnavailable as exc:
            reports.append(MeterReport(name, False, exc.reason, exc.fix))
            continue
        reports.append(MeterReport(name, True, notes=tuple(getattr(meter, "notes", ()))))
        if chosen is None:
            chosen = meter
        else:
            meter.close()
    return chosen, reports
