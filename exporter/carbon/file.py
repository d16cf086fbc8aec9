"""The grid's carbon intensity as the operator sets it: a fixed value, or a file re-read every tick."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from exporter.files import SMALL_VALUE_LIMIT, read_operator_text

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)


class CarbonFile:
    """`carbon_intensity`, or `carbon_intensity_file` (on a bad read the last good value stays, the source is
    down and the failure is logged once)."""

    def __init__(self, config: Config) -> None:
        self.path = config.carbon_intensity_file
        self.value = config.carbon_intensity
        self.up = True
        self.errors = 0

    def read(self) -> float | None:
        if self.path is None:
            return self.value
        try:
            value = float(read_operator_text(self.path, SMALL_VALUE_LIMIT).split()[0])
            if not 0 <= value <= 5000:
                raise ValueError(f"{value} is outside 0..5000 gCO2e/kWh")
        except (OSError, ValueError, IndexError) as exc:
            self.errors += 1
            if self.up:
                log.warning("carbon intensity file %s unusable (%s); keeping the last value", self.path, exc)
            self.up = False
            return self.value
        self.value, self.up = value, True
        return value
