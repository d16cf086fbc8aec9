"""The grid intensity a tick multiplies its energy by: the configured value or file (carbon/file.py), or an API
polled in the background (carbon/intensity.py), chosen by the config.

A tick only copies what the source holds: the HTTP poller runs in its own daemon thread with its own deadline and
backoff, so a slow or dead API never delays a tick. Through an outage the last good value stays in force and its
age grows (exported as `wattlens_grid_carbon_intensity_age_seconds`); the source is down in `wattlens_source_up`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.carbon.file import CarbonFile
from exporter.carbon.ledger import CarbonLedger, CarbonParts
from exporter.files import SMALL_VALUE_LIMIT, read_operator_text
from exporter.runtime_config import ConfigError
from exporter.snapshot import CarbonDomain, CarbonState

if TYPE_CHECKING:
    from exporter.carbon.intensity import HttpIntensity
    from exporter.config import CarbonConfig, Config


STATIC = "static"


@dataclass(frozen=True, slots=True)
class IntensityReading:
    """What the tick uses and exports: gCO2e/kWh (None before the first value), the source's name (the `device`
    of its source_up; "static" for a configured value, which cannot fail and has none), average or marginal, the
    value's age in seconds (None where it cannot age) and health."""

    grams_per_kwh: float | None
    source: str
    kind: str
    age_s: float | None
    up: bool
    errors: int


class GridIntensity:
    """The configured intensity source. `read()` once per tick; `close()` stops a poller."""

    def __init__(self, config: Config) -> None:
        self.kind = config.carbon.kind
        self._file: CarbonFile | None = None
        self._http: HttpIntensity | None = None
        if config.carbon.provider == "none":
            self._file = CarbonFile(config)
        else:
            self._http = open_provider(config.carbon)
            self.kind = self._http.kind
            self._http.start()
        self.reading: IntensityReading | None = None

    @property
    def configured(self) -> bool:
        if self._http is not None:
            return True
        return self._file is not None and (self._file.path is not None or self._file.value is not None)

    def read(self) -> IntensityReading | None:
        if self._http is not None:
            status = self._http.latest()
            age = status.age_seconds(time.time())
            up = status.up and status.grams_per_kwh is not None  # down until the first value
            self.reading = IntensityReading(status.grams_per_kwh, status.source, status.kind, age, up, status.errors)
        elif self._file is not None and self.configured:
            value = self._file.read()
            path = str(self._file.path) if self._file.path is not None else STATIC
            self.reading = IntensityReading(value, path, self.kind, None, self._file.up, self._file.errors)
        return self.reading

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def _secret(path: Path, setting: str) -> str:
    """A credential from a file (a mounted Secret's key), or a one-line ConfigError naming the setting."""
    try:
        text = read_operator_text(path, SMALL_VALUE_LIMIT).strip()
    except OSError as exc:
        raise ConfigError(
            f"invalid setting {setting}={str(path)!r}: cannot be read ({exc.strerror or exc}). "
            f"Fix: point {setting} at a readable file holding only the credential"
        ) from None
    if not text:
        raise ConfigError(
            f"invalid setting {setting}={str(path)!r}: the file is empty. Fix: write the credential in it"
        )
    return text


def carbon_state(reading: IntensityReading | None, ledger: CarbonLedger) -> CarbonState:
    """The snapshot's carbon: the intensity in force and every domain's grams by part."""

    def domains(parts: dict[str, CarbonParts]) -> tuple[CarbonDomain, ...]:
        return tuple(CarbonDomain(k, p.idle_ng, p.unattributed_ng, p.workloads_ng) for k, p in sorted(parts.items()))

    if reading is None:
        return CarbonState(embodied=domains(ledger.embodied))
    return CarbonState(
        reading.source, reading.kind, reading.age_s, domains(ledger.operational), domains(ledger.embodied)
    )


def open_provider(carbon: CarbonConfig) -> HttpIntensity:
    """The HTTP source of `carbon.provider` (imported here: http.client and ssl only where one is configured)."""
    from exporter.carbon import intensity as api  # noqa: PLC0415 - http.client only where an API is configured

    timing = api.PollTiming(
        interval_s=carbon.poll_interval,
        timeout_s=carbon.timeout,
        min_backoff_s=min(5.0, carbon.max_backoff / 8),  # then doubling, jittered, up to max_backoff
        max_backoff_s=carbon.max_backoff,
    )
    if carbon.provider == "electricity_maps":
        token = _secret(carbon.token_file or Path(), "carbon.token_file")
        return api.electricity_maps(
            carbon.region,
            token,
            emission_factor_type=carbon.emission_factor_type,
            base_url=carbon.url or api.ELECTRICITY_MAPS_URL,
            timing=timing,
        )
    if carbon.provider == "watttime":
        password = _secret(carbon.password_file or Path(), "carbon.password_file")
        return api.watttime(
            carbon.region,
            carbon.username,
            password,
            signal_type=carbon.signal_type,
            base_url=carbon.url or api.WATTTIME_URL,
            timing=timing,
        )
    if carbon.provider == "uk_carbon_intensity":
        region = carbon.region
        return api.uk_carbon_intensity(
            region_id=int(region) if region.isdigit() else None,
            postcode=region if region and not region.isdigit() else None,
            base_url=carbon.url or api.UK_CARBON_INTENSITY_URL,
            timing=timing,
        )
    headers = {}
    if carbon.token_file is not None:
        headers["Authorization"] = f"Bearer {_secret(carbon.token_file, 'carbon.token_file')}"
    return api.json_endpoint(
        carbon.url,
        carbon.value_path,
        units=carbon.units,
        kind=carbon.kind,
        timestamp_path=carbon.timestamp_path or None,
        headers=headers,
        timing=timing,
    )
