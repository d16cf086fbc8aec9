"""Grid carbon-intensity sources: the latest gCO2e/kWh, when it was last good, and whether the source is healthy.

Every source answers `latest()` at once from what it already holds (a lock held only to copy one reference), so a
tick never waits on a disk, a FIFO or the network:

- `StaticIntensity`: one configured value.
- `FileIntensity`: a file an operator or a cron job keeps up to date, read when the tick asks. It is opened with
  O_NONBLOCK and checked with fstat before any read, so a FIFO, socket or device never wedges the tick; only a
  regular file of at most `MAX_FILE_BYTES` is read. Its mtime is the value's update time, so a file nobody
  refreshes shows its age.
- `HttpIntensity`: an API polled by its own daemon thread (off the tick and off the event loop). Each request has
  one deadline for connect, headers and body (a watchdog shuts the socket at the deadline, so a server that
  trickles bytes cannot hold it longer) and a size bound. Failures back off exponentially with jitter (honouring
  Retry-After up to the cap); the last good value stays, with its age, until a poll succeeds again.

A source that starts failing logs one warning (and one line when it recovers); failures are counted in `errors`.

Response shapes, checked against each provider's documentation on 2026-11-27 (details: docs/research/carbon.md):

- Electricity Maps, `GET /v3/carbon-intensity/latest?zone=DE` with header `auth-token: <token>`:
  `{"zone": "DE", "carbonIntensity": 302, "datetime": "2018-04-25T18:07:00.350Z", "updatedAt": …,
  "emissionFactorType": "lifecycle", "isEstimated": …}`, gCO2eq/kWh, a consumption-mix *average*, lifecycle
  factors by default (https://static.electricitymaps.com/api/docs/index.html).
- WattTime v3, `GET /v3/forecast?region=…&signal_type=co2_moer&horizon_hours=0` with `Authorization: Bearer <jwt>`
  from `GET /login` (HTTP Basic; the JWT lasts 30 minutes): `{"data": [{"point_time": …, "value": 1048.4}, …],
  "meta": {"signal_type": "co2_moer", "units": "lbs_co2_per_mwh", …}}`; the first point is the current period.
  co2_moer is *marginal*. `/v3/signal-index` answers the same shape with `"units": "percentile"` (0–100 over the
  next 24 h), which is not an intensity and is refused (https://docs.watttime.org, v2→v3 migration guide;
  WattTime/watttime-python-client watttime/api.py).
- GB Carbon Intensity API (NESO), `GET https://api.carbonintensity.org.uk/intensity`:
  `{"data": [{"from": "2018-01-20T12:00Z", "to": …, "intensity": {"forecast": 266, "actual": 263,
  "index": "moderate"}}]}`, gCO2/kWh, an *average*; `actual` is null until the half-hour closes, then forecast is
  used. The regional forms (`/regional/regionid/N`, `/regional/postcode/X`) nest one more `data` list
  (https://carbon-intensity.github.io/api-definitions/).
- Anything else: a dotted JSON path (`data.0.value`) with the value's units.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import quote, urlsplit

from exporter import __version__

log = logging.getLogger(__name__)

Kind = Literal["average", "marginal"]

# Bounds shared with the configured static value: anything outside is a unit mistake or garbage.
MAX_GRAMS_PER_KWH = 5000.0
MAX_FILE_BYTES = 4096
MAX_RESPONSE_BYTES = 1 << 20

# One avoirdupois pound is exactly 0.45359237 kg, so 1 lb/MWh = 453.59237 g / 1000 kWh.
GRAMS_PER_KWH_PER_LB_PER_MWH = 0.45359237

# Units a value can be given in, as factors to gCO2e/kWh. Names are lower-cased before lookup.
UNIT_FACTORS: Mapping[str, float] = {
    "g_per_kwh": 1.0,
    "g/kwh": 1.0,
    "gco2/kwh": 1.0,
    "gco2e/kwh": 1.0,
    "gco2eq/kwh": 1.0,
    "kg_per_mwh": 1.0,
    "kg/mwh": 1.0,
    "kg_per_kwh": 1000.0,
    "kg/kwh": 1000.0,
    "lb_per_mwh": GRAMS_PER_KWH_PER_LB_PER_MWH,
    "lb/mwh": GRAMS_PER_KWH_PER_LB_PER_MWH,
    "lbs/mwh": GRAMS_PER_KWH_PER_LB_PER_MWH,
    "lbs_co2_per_mwh": GRAMS_PER_KWH_PER_LB_PER_MWH,
}

WATTTIME_KINDS: Mapping[str, Kind] = {"co2_moer": "marginal", "co2_aoer": "average"}
# WattTime's JWT lasts 30 minutes; renew it five minutes early (and at once on a 401/403).
_WATTTIME_TOKEN_REFRESH_S = 25 * 60


class IntensityError(ValueError):
    """A read or a response that gives no usable intensity; the message says why."""


@dataclass(frozen=True)
class Reading:
    """One value from a provider: gCO2e/kWh and the UNIX time it is for, when the provider says."""

    grams_per_kwh: float
    observed_at: float | None = None


@dataclass(frozen=True)
class IntensityStatus:
    """What a source holds now. `grams_per_kwh` is the last good value (None before the first), kept through
    failures; `updated_at` is when that value was last confirmed (file mtime or fetch time, UNIX seconds)."""

    source: str
    kind: Kind
    grams_per_kwh: float | None
    updated_at: float | None
    observed_at: float | None
    up: bool
    errors: int
    last_error: str | None = None

    def age_seconds(self, now: float) -> float | None:
        """Seconds since the value was last confirmed; None for a value that cannot age (static) or none yet."""
        return None if self.updated_at is None else max(0.0, now - self.updated_at)


class IntensitySource(Protocol):
    """Anything the tick can ask for the current intensity. `latest()` never blocks on I/O for long: static
    and HTTP sources return held state, the file source does one bounded non-blocking read."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    def latest(self) -> IntensityStatus: ...

    def close(self) -> None: ...


def checked_grams(value: object, what: str) -> float:
    """A finite number within 0..MAX_GRAMS_PER_KWH, or IntensityError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IntensityError(f"{what} is {value!r}, not a number")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= MAX_GRAMS_PER_KWH:
        raise IntensityError(f"{what} = {number:g} gCO2e/kWh is outside 0..{MAX_GRAMS_PER_KWH:g}")
    return number


def unit_factor(units: str) -> float:
    """The factor from `units` to gCO2e/kWh, or IntensityError listing what is understood."""
    factor = UNIT_FACTORS.get(units.strip().lower())
    if factor is None:
        known = ", ".join(sorted({"g_per_kwh", "kg_per_mwh", "kg_per_kwh", "lb_per_mwh"}))
        raise IntensityError(f"units {units!r} are not an emission rate wattlens understands (one of {known})")
    return factor


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*(Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)


def parse_timestamp(text: object) -> float:
    """UNIX seconds from an ISO 8601 timestamp as the providers write them ("…Z", "+00:00", fractions of any
    length, minutes without seconds); no zone means UTC. Written out because 3.10's fromisoformat takes none
    of "Z", "12:00Z" or 2-digit fractions."""
    if not isinstance(text, str):
        raise IntensityError(f"timestamp {text!r} is not a string")
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise IntensityError(f"timestamp {text!r} is not ISO 8601")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        seconds = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second or 0), 0, 0, 0))
    except (ValueError, OverflowError) as exc:
        raise IntensityError(f"timestamp {text!r}: {exc}") from exc
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31 and int(hour) < 24 and int(minute) < 60):
        raise IntensityError(f"timestamp {text!r} is out of range")
    result = seconds + (float(f"0.{fraction}") if fraction else 0.0)
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        result -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return float(result)


def _optional_timestamp(value: object) -> float | None:
    return None if value is None else parse_timestamp(value)


def _object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise IntensityError(f"{what} is {type(value).__name__}, not a JSON object")
    return value


def _first(value: object, what: str) -> object:
    if not isinstance(value, list):
        raise IntensityError(f"{what} is {type(value).__name__}, not a JSON list")
    if not value:
        raise IntensityError(f"{what} is empty")
    return value[0]


# --- response shapes ------------------------------------------------------------------------------------------

Parser = Callable[[object], Reading]


def parse_electricity_maps(doc: object) -> Reading:
    """`/v3/carbon-intensity/latest`: carbonIntensity (gCO2eq/kWh) for the hour starting at `datetime`."""
    body = _object(doc, "Electricity Maps response")
    if body.get("carbonIntensity") is None:
        zone = body.get("zone", "?")
        raise IntensityError(f"Electricity Maps returned no carbonIntensity for zone {zone}")
    return Reading(checked_grams(body["carbonIntensity"], "carbonIntensity"), _optional_timestamp(body.get("datetime")))


def watttime_parser(signal_type: str = "co2_moer") -> Parser:
    """A parser for WattTime v3 `/v3/forecast` (or `/v3/historical`) answers of `signal_type`: the first point,
    converted from `meta.units` to gCO2e/kWh."""

    def parse(doc: object) -> Reading:
        body = _object(doc, "WattTime response")
        meta = _object(body.get("meta", {}), "WattTime meta")
        units = meta.get("units")
        if units == "percentile":
            raise IntensityError(
                "WattTime returned a percentile (units 'percentile', as /v3/signal-index does), not an emission "
                "rate: poll /v3/forecast?horizon_hours=0 for the current rate in lbs_co2_per_mwh"
            )
        if not isinstance(units, str):
            raise IntensityError(f"WattTime meta.units is {units!r}, not a unit name")
        answered = meta.get("signal_type", signal_type)
        if answered != signal_type:
            raise IntensityError(f"WattTime answered signal_type {answered!r}, not the requested {signal_type!r}")
        point = _object(_first(body.get("data"), "WattTime data"), "WattTime data[0]")
        value = point.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IntensityError(f"WattTime data[0].value is {value!r}, not a number")
        grams = checked_grams(float(value) * unit_factor(units), f"WattTime value {value:g} {units}")
        return Reading(grams, _optional_timestamp(point.get("point_time")))

    return parse


def parse_uk_carbon_intensity(doc: object) -> Reading:
    """GB Carbon Intensity API `/intensity` (or a regional form): `actual` once the half-hour has closed, else
    `forecast`, for the period starting at `from`."""
    body = _object(doc, "Carbon Intensity API response")
    period = _object(_first(body.get("data"), "data"), "data[0]")
    if "intensity" not in period and "data" in period:  # /regional/regionid/N and /regional/postcode/X
        period = _object(_first(period["data"], "data[0].data"), "data[0].data[0]")
    intensity = _object(period.get("intensity"), "data[0].intensity")
    actual = intensity.get("actual")
    if actual is not None:
        grams = checked_grams(actual, "intensity.actual")
    else:
        grams = checked_grams(intensity.get("forecast"), "intensity.forecast")
    return Reading(grams, _optional_timestamp(period.get("from")))


def split_json_path(path: str) -> tuple[str, ...]:
    """`data.0.value` → ("data", "0", "value"); empty segments are a mistake."""
    parts = tuple(path.split("."))
    if not path or any(not part for part in parts):
        raise IntensityError(f"JSON path {path!r} has an empty segment (write it as data.0.value)")
    return parts


def _walk(doc: object, parts: Sequence[str], path: str) -> object:
    node = doc
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, dict):
            if part not in node:
                raise IntensityError(f"JSON path {path!r}: no key {where!r} in the response")
            node = node[part]
        elif isinstance(node, list) and part.isdigit():
            if int(part) >= len(node):
                raise IntensityError(f"JSON path {path!r}: {where!r} is past the end of a list of {len(node)}")
            node = node[int(part)]
        else:
            raise IntensityError(f"JSON path {path!r}: {where!r} cannot index a {type(node).__name__}")
    return node


def json_path_parser(value_path: str, units: str = "g_per_kwh", timestamp_path: str | None = None) -> Parser:
    """A parser that takes the number at `value_path` (in `units`) and, optionally, an ISO time at
    `timestamp_path`. Paths and units are checked here, so a bad configuration fails at startup."""
    value_parts = split_json_path(value_path)
    time_parts = split_json_path(timestamp_path) if timestamp_path is not None else None
    factor = unit_factor(units)

    def parse(doc: object) -> Reading:
        value = _walk(doc, value_parts, value_path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IntensityError(f"JSON path {value_path!r} holds {value!r}, not a number")
        grams = checked_grams(float(value) * factor, f"{value_path} = {value:g} {units}")
        observed = None
        if time_parts is not None and timestamp_path is not None:
            observed = parse_timestamp(_walk(doc, time_parts, timestamp_path))
        return Reading(grams, observed)

    return parse


# --- health bookkeeping shared by the sources -----------------------------------------------------------------


class _Health:
    """The status of one source, swapped whole under a lock; logs once when the source goes down and once when
    it recovers, so a source failing every poll does not flood the log."""

    def __init__(self, source: str, kind: Kind) -> None:
        self._lock = threading.Lock()
        self._status = IntensityStatus(source, kind, None, None, None, up=True, errors=0)

    def get(self) -> IntensityStatus:
        with self._lock:
            return self._status

    def succeed(self, reading: Reading, updated_at: float | None) -> None:
        with self._lock:
            was_up = self._status.up
            self._status = replace(
                self._status,
                grams_per_kwh=reading.grams_per_kwh,
                updated_at=updated_at,
                observed_at=reading.observed_at,
                up=True,
                last_error=None,
            )
        if not was_up:
            log.info("carbon intensity %s recovered: %g gCO2e/kWh", self._status.source, reading.grams_per_kwh)

    def fail(self, reason: str) -> None:
        with self._lock:
            was_up = self._status.up
            self._status = replace(self._status, up=False, errors=self._status.errors + 1, last_error=reason)
            kept = self._status.grams_per_kwh
        if was_up:
            keeping = "no value yet" if kept is None else f"keeping the last value, {kept:g} gCO2e/kWh"
            log.warning("carbon intensity %s unusable (%s); %s", self._status.source, reason, keeping)
        else:
            log.debug("carbon intensity %s still unusable (%s)", self._status.source, reason)


# --- sources ---------------------------------------------------------------------------------------------------


class StaticIntensity:
    """A configured constant; it has no age and never fails."""

    def __init__(self, grams_per_kwh: float, kind: Kind = "average", name: str = "static") -> None:
        self._status = IntensityStatus(name, kind, checked_grams(grams_per_kwh, name), None, None, up=True, errors=0)

    @property
    def name(self) -> str:
        return self._status.source

    @property
    def kind(self) -> Kind:
        return self._status.kind

    def latest(self) -> IntensityStatus:
        return self._status

    def close(self) -> None:
        return None


def read_intensity_file(path: Path, limit: int = MAX_FILE_BYTES) -> tuple[float, float]:
    """(gCO2e/kWh, mtime) from the first token of a small regular file. Opened O_NONBLOCK and checked with fstat
    before reading, so a FIFO without a writer, a socket or a device answers at once with an error."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IntensityError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise IntensityError(f"{path} is {info.st_size} bytes, more than the {limit} an intensity needs")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise IntensityError(f"{path} grew past {limit} bytes while being read")
    tokens = data.decode("utf-8", "replace").split()
    if not tokens:
        raise IntensityError(f"{path} is empty")
    try:
        number = float(tokens[0])
    except ValueError:
        raise IntensityError(f"{path} starts with {tokens[0][:40]!r}, not a number") from None
    return checked_grams(number, str(path)), info.st_mtime


class _Tracked:
    """A source whose name, kind and status live in its `_Health`."""

    _health: _Health

    @property
    def name(self) -> str:
        return self._health.get().source

    @property
    def kind(self) -> Kind:
        return self._health.get().kind


class FileIntensity(_Tracked):
    """The operator's file, read each time the tick asks; a bad read keeps the last good value."""

    def __init__(self, path: Path, kind: Kind = "average", name: str | None = None) -> None:
        self.path = path
        self._health = _Health(name or f"file:{path}", kind)

    def latest(self) -> IntensityStatus:
        try:
            grams, mtime = read_intensity_file(self.path)
        except (OSError, IntensityError) as exc:
            self._health.fail(str(exc) if isinstance(exc, IntensityError) else f"{self.path}: {exc.strerror}")
        else:
            self._health.succeed(Reading(grams), mtime)
        return self._health.get()

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class Login:
    """WattTime-style login: GET `url` with HTTP Basic credentials answers {"token": "<jwt>"}."""

    url: str
    username: str
    password: str
    lifetime_s: float = _WATTTIME_TOKEN_REFRESH_S


@dataclass(frozen=True)
class PollTiming:
    """When to poll: every `interval_s` while healthy; after the n-th failure in a row, a delay drawn uniformly
    from [1/2, 1] × min(max_backoff_s, min_backoff_s × 2^(n-1)); each request bounded by `timeout_s` in all."""

    interval_s: float = 300.0
    timeout_s: float = 10.0
    min_backoff_s: float = 5.0
    max_backoff_s: float = 600.0

    def __post_init__(self) -> None:
        for field in ("interval_s", "timeout_s", "min_backoff_s", "max_backoff_s"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value > 0):
                raise IntensityError(f"{field} = {value!r} must be a positive number of seconds")
        if self.max_backoff_s < self.min_backoff_s:
            raise IntensityError(f"max_backoff_s {self.max_backoff_s:g} is below min_backoff_s {self.min_backoff_s:g}")

    def backoff_bound(self, failures: int) -> float:
        """The upper bound of the delay after `failures` failures in a row (≥ 1)."""
        return min(self.max_backoff_s, self.min_backoff_s * 2.0 ** min(failures - 1, 60))


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpIntensity(_Tracked):
    """A JSON API polled in a background daemon thread; `latest()` returns the held status at once.

    `start()` begins polling (the first request at once); `close()` stops the thread, aborting a request in
    flight. `poll_once()` runs one poll in the caller's thread and returns the delay the thread would wait next.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        parser: Parser,
        kind: Kind,
        headers: Mapping[str, str] | None = None,
        login: Login | None = None,
        timing: PollTiming | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        _check_url(url)
        if login is not None:
            _check_url(login.url)
        self.url = url
        self.timing = timing or PollTiming()
        self._parser = parser
        self._headers = dict(headers or {})
        self._login = login
        self._max_bytes = max_bytes
        self._ssl = ssl_context
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._health = _Health(name, kind)
        self._failures = 0
        self._token: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight_lock = threading.Lock()
        self._inflight: http.client.HTTPConnection | None = None

    def latest(self) -> IntensityStatus:
        return self._health.get()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"carbon-intensity {self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._abort_inflight()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.poll_once()
            if self._stop.wait(delay):
                return

    def poll_once(self) -> float:
        """One request and its bookkeeping; returns the seconds until the next poll should start."""
        retry_after: float | None = None
        try:
            response = self._get_authorised()
            if response.status != 200:
                retry_after = _retry_after(response)
                raise IntensityError(f"HTTP {response.status} from {_redacted(self.url)}")
            try:
                doc = json.loads(response.body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise IntensityError(f"response from {_redacted(self.url)} is not JSON ({exc})") from None
            reading = self._parser(doc)
        except (IntensityError, OSError, http.client.HTTPException) as exc:
            if self._stop.is_set():
                return 0.0
            self._failures += 1
            self._health.fail(_describe(exc))
            delay = self.timing.backoff_bound(self._failures) * self._rng.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.timing.max_backoff_s))
            return delay
        self._failures = 0
        self._health.succeed(reading, self._wall())
        return self.timing.interval_s

    def _get_authorised(self) -> _Response:
        if self._login is None:
            return self._get(self.url, self._headers)
        response = self._get(self.url, {**self._headers, "Authorization": f"Bearer {self._bearer(refresh=False)}"})
        if response.status in (401, 403):  # the token expired early or was revoked: log in again once
            response = self._get(self.url, {**self._headers, "Authorization": f"Bearer {self._bearer(refresh=True)}"})
        return response

    def _bearer(self, refresh: bool) -> str:
        assert self._login is not None
        now = time.monotonic()
        if self._token is not None and not refresh and now - self._token[1] < self._login.lifetime_s:
            return self._token[0]
        self._token = None
        basic = base64.b64encode(f"{self._login.username}:{self._login.password}".encode()).decode("ascii")
        response = self._get(self._login.url, {"Authorization": f"Basic {basic}"})
        if response.status != 200:
            raise IntensityError(f"login at {_redacted(self._login.url)} failed: HTTP {response.status}")
        try:
            token = json.loads(response.body).get("token")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise IntensityError(f"login at {_redacted(self._login.url)} answered no token")
        self._token = (token, now)
        return token

    def _get(self, url: str, headers: Mapping[str, str]) -> _Response:
        """One GET with a single deadline for connect, headers and body, and a size bound."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        timeout = self.timing.timeout_s
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            context = self._ssl or ssl.create_default_context()
            connection = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_headers = {"Accept": "application/json", "User-Agent": f"wattlens/{__version__}", **headers}
        expired = threading.Event()

        def on_deadline() -> None:
            expired.set()
            _shutdown(connection)

        watchdog = threading.Timer(timeout, on_deadline)
        watchdog.daemon = True
        with self._inflight_lock:
            if self._stop.is_set():
                raise IntensityError("stopping")
            self._inflight = connection
        watchdog.start()
        try:
            connection.request("GET", target, headers=request_headers)
            response = connection.getresponse()
            body = response.read(self._max_bytes + 1)
            if len(body) > self._max_bytes:
                raise IntensityError(f"response from {_redacted(url)} is larger than {self._max_bytes} bytes")
            return _Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise IntensityError(f"no complete response from {_redacted(url)} within {timeout:g} s") from None
            raise IntensityError(f"{_redacted(url)}: {_describe(exc)}") from None
        finally:
            watchdog.cancel()
            with self._inflight_lock:
                self._inflight = None
            connection.close()

    def _abort_inflight(self) -> None:
        with self._inflight_lock:
            connection = self._inflight
        if connection is not None:
            _shutdown(connection)


def _shutdown(connection: http.client.HTTPConnection) -> None:
    """Unblock a thread reading from `connection` (a closed fd alone would not wake a blocked recv)."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IntensityError(f"URL {url!r} must be http:// or https:// with a host")


def _redacted(url: str) -> str:
    """The URL without its query (some APIs take tokens there) for log lines."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _retry_after(response: _Response) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored: backoff covers it)."""
    value = response.headers.get("retry-after", "").strip()
    if response.status not in (429, 503) or not value.isdigit():
        return None
    return float(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, IntensityError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- the public APIs, preset ----------------------------------------------------------------------------------

ELECTRICITY_MAPS_URL = "https://api.electricitymaps.com"
WATTTIME_URL = "https://api.watttime.org"
UK_CARBON_INTENSITY_URL = "https://api.carbonintensity.org.uk"


def electricity_maps(
    zone: str,
    token: str,
    *,
    emission_factor_type: Literal["lifecycle", "direct"] = "lifecycle",
    base_url: str = ELECTRICITY_MAPS_URL,
    timing: PollTiming | None = None,
) -> HttpIntensity:
    """Electricity Maps' latest average intensity for `zone` (hourly resolution), with the `auth-token` header."""
    url = (
        f"{base_url.rstrip('/')}/v3/carbon-intensity/latest?zone={quote(zone, safe='')}"
        f"&emissionFactorType={emission_factor_type}"
    )
    return HttpIntensity(
        name=f"electricitymaps:{zone}",
        url=url,
        parser=parse_electricity_maps,
        kind="average",
        headers={"auth-token": token},
        timing=timing,
    )


def watttime(
    region: str,
    username: str,
    password: str,
    *,
    signal_type: Literal["co2_moer", "co2_aoer"] = "co2_moer",
    base_url: str = WATTTIME_URL,
    timing: PollTiming | None = None,
) -> HttpIntensity:
    """WattTime's current rate for `region` from the v3 forecast's first point (the nowcast), logging in with
    the account's credentials and renewing the 30-minute token before it lapses."""
    base = base_url.rstrip("/")
    url = f"{base}/v3/forecast?region={quote(region, safe='')}&signal_type={signal_type}&horizon_hours=0"
    return HttpIntensity(
        name=f"watttime:{region}",
        url=url,
        parser=watttime_parser(signal_type),
        kind=WATTTIME_KINDS[signal_type],
        login=Login(f"{base}/login", username, password),
        timing=timing,
    )


def uk_carbon_intensity(
    *,
    region_id: int | None = None,
    postcode: str | None = None,
    base_url: str = UK_CARBON_INTENSITY_URL,
    timing: PollTiming | None = None,
) -> HttpIntensity:
    """The GB Carbon Intensity API: national (default), one of the 17 regions, or an outward postcode."""
    base = base_url.rstrip("/")
    if region_id is not None and postcode is not None:
        raise IntensityError("give region_id or postcode, not both")
    if region_id is not None:
        if not 1 <= region_id <= 17:
            raise IntensityError(f"region_id {region_id} is not a GB region (1..17)")
        url, name = f"{base}/regional/regionid/{region_id}", f"carbonintensity.org.uk:region{region_id}"
    elif postcode is not None:
        url, name = f"{base}/regional/postcode/{quote(postcode, safe='')}", f"carbonintensity.org.uk:{postcode}"
    else:
        url, name = f"{base}/intensity", "carbonintensity.org.uk"
    return HttpIntensity(name=name, url=url, parser=parse_uk_carbon_intensity, kind="average", timing=timing)


def json_endpoint(
    url: str,
    value_path: str,
    *,
    units: str = "g_per_kwh",
    kind: Kind = "average",
    timestamp_path: str | None = None,
    headers: Mapping[str, str] | None = None,
    name: str | None = None,
    timing: PollTiming | None = None,
) -> HttpIntensity:
    """Any JSON endpoint: the number at `value_path` in `units`, of the stated `kind`."""
    parts = urlsplit(url)
    return HttpIntensity(
        name=name or f"json:{parts.hostname}",
        url=url,
        parser=json_path_parser(value_path, units, timestamp_path),
        kind=kind,
        headers=headers,
        timing=timing,
    )
