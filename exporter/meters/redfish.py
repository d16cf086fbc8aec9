"""The node's platform power from its BMC over Redfish (DMTF DSP0266), read in the background.

A poller thread reads the chassis every `redfish.interval` seconds and keeps the latest reading with the time it
was taken; a tick only looks at that reading, so a slow or hanging BMC never delays a tick (its reading just
gets older, and past `stale_after` the platform domain is down). Where the BMC publishes an energy counter
(`EnvironmentMetrics.EnergyJoules`, or `EnergykWh` with enough decimals for the interval) its joules are the
counter; otherwise the chassis power (`EnvironmentMetrics.PowerWatts`, the PSUs' `InputPowerWatts` under
`PowerSubsystem`, or the deprecated `Power.PowerControl[0].PowerConsumedWatts`) is integrated by the trapezoid
rule between readings (`method="power_integration"`); an interval whose reading failed adds nothing.

The client is the standard library (docs/research/redfish.md weighs DMTF's `redfish` and `sushy`): TLS verified
by default (system trust store or `ca_file`), a timeout on every request, basic or session authentication (one
re-login when a session expires), bounded response bodies, and failures retried with exponential backoff. Wrong
credentials or a refused certificate make the platform zone down: the accounting logs that once, with the fix.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from exporter import __version__
from exporter.meters.base import ENERGY_COUNTER, POWER_INTEGRATION, CounterSample, MeterUnavailable, ZoneId
from exporter.workloads.procfs import CpuTimes

if TYPE_CHECKING:
    from exporter.config import Config, RedfishConfig

log = logging.getLogger(__name__)

SOURCE = "redfish"
ROOT = "/redfish/v1"
MAX_BODY = 1 << 20  # a chassis resource is a few kB; anything this large is not one
RETRY_MAX_S = 300.0
KWH_J = 3_600_000
POWER_RESOURCES = ("EnvironmentMetrics", "PowerSubsystem", "Power")
FIRST_READING_WAIT_S = 2.0


class RedfishError(Exception):
    """A failed exchange with the BMC. `kind` is auth, tls, timeout, http, network or protocol; `fix` is the advice
    logged with it."""

    def __init__(self, kind: str, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Reading:
    """The platform counter after one successful poll: cumulative µJ, the power read with it, and when."""

    energy_uj: int
    watts: float | None
    method: str
    at: float  # monotonic
    resource: str  # what was read, e.g. "EnvironmentMetrics.EnergykWh"


def _credential_file(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(4096).strip()
    except OSError as exc:
        raise RedfishError("auth", f"cannot read {path} ({exc.strerror})", "mount the BMC Secret there") from None


class RedfishClient:
    """One keep-alive connection to the BMC, authenticated by session or basic auth; not thread-safe (the poller
    owns it)."""

    def __init__(self, config: RedfishConfig) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.context: ssl.SSLContext | None = None
        if self.https:
            self.context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            if config.tls_insecure_skip_verify:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self._conn: http.client.HTTPConnection | None = None
        self._token: str | None = None
        self._session_uri: str | None = None
        self.sessions_path = f"{ROOT}/SessionService/Sessions"

    def username(self) -> str:
        config = self.config
        return _credential_file(config.username_file) if config.username_file else config.username

    def _password(self) -> str:
        assert self.config.password_file is not None  # the config requires it with a URL
        return _credential_file(self.config.password_file)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.config.timeout, context=self.context
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.config.timeout)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _exchange(
        self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        sent = {
            "Accept": "application/json",
            "OData-Version": "4.0",
            "User-Agent": f"wattlens/{__version__}",
            **headers,
        }
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=sent)
            response = conn.getresponse()
            data = response.read(MAX_BODY + 1)
            answer = (response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        except ssl.SSLCertVerificationError as exc:
            self._drop_connection()
            raise RedfishError(
                "tls",
                f"the BMC's certificate was refused ({exc.verify_message})",
                "set redfish.ca_file to the CA that signed it (or, on a trusted network only, "
                "redfish.tls_insecure_skip_verify: true)",
            ) from None
        except TimeoutError:
            self._drop_connection()
            raise RedfishError("timeout", f"no answer within {self.config.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise RedfishError("network", f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if len(data) > MAX_BODY:
            self._drop_connection()
            raise RedfishError("protocol", f"{method} {path}: response larger than {MAX_BODY} bytes")
        if answer[1].get("connection", "").lower() == "close":
            self._drop_connection()
        return answer

    def _auth_headers(self) -> dict[str, str]:
        if self.config.auth == "basic":
            pair = f"{self.username()}:{self._password()}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if self._token is None:
            self._login()
        assert self._token is not None
        return {"X-Auth-Token": self._token}

    def _login(self) -> None:
        status, headers, _ = self._exchange(
            "POST", self.sessions_path, {"UserName": self.username(), "Password": self._password()}, {}
        )
        if status in (401, 403):
            raise self._rejected(status)
        token = headers.get("x-auth-token")
        if status not in (200, 201) or not token:
            raise RedfishError(
                "auth",
                f"session login answered HTTP {status}{'' if token else ' without X-Auth-Token'}",
                "set redfish.auth: basic if this BMC has no session service",
            )
        self._token, self._session_uri = token, headers.get("location")

    def _rejected(self, status: int) -> RedfishError:
        return RedfishError(
            "auth",
            f"the BMC rejected the credentials of user '{self.username()}' (HTTP {status})",
            "check redfish.username (or username_file) and the password in redfish.password_file",
        )

    def get(self, path: str, public: bool = False) -> dict[str, Any]:
        """GET a resource as JSON (numbers with decimals as Decimal, so their precision is known)."""
        headers = {} if public else self._auth_headers()
        status, _, data = self._exchange("GET", path, None, headers)
        if status == 401 and not public and self.config.auth == "session":
            self._token = None  # the session expired (BMC timeout or reboot): log in once more
            status, _, data = self._exchange("GET", path, None, self._auth_headers())
        if status in (401, 403):
            self._token = None
            raise self._rejected(status)
        if status != 200:
            raise RedfishError("http", f"GET {path} answered HTTP {status}")
        try:
            document = json.loads(data, parse_float=Decimal)
        except ValueError:
            raise RedfishError("protocol", f"GET {path}: the answer is not JSON") from None
        if not isinstance(document, dict):
            raise RedfishError("protocol", f"GET {path}: the answer is not a JSON object")
        return document

    def close(self) -> None:
        """Log out (BMCs have few session slots) and close the connection; errors are ignored."""
        if self._session_uri and self._token:
            path = urlsplit(self._session_uri).path or self._session_uri
            with contextlib.suppress(RedfishError):
                self._exchange("DELETE", path, None, {"X-Auth-Token": self._token})
        self._token = self._session_uri = None
        self._drop_connection()


def _link(document: dict[str, Any], *keys: str) -> str | None:
    value: Any = document
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    target = value.get("@odata.id") if isinstance(value, dict) else None
    return target if isinstance(target, str) and target.startswith("/") else None


def _reading(document: dict[str, Any], prop: str) -> Decimal | None:
    """`prop.Reading` of an excerpt (EnvironmentMetrics, PowerSupplyMetrics), or None when absent or null."""
    value = document.get(prop)
    number = value.get("Reading") if isinstance(value, dict) else None
    if isinstance(number, bool) or not isinstance(number, (int, Decimal)):
        return None
    return Decimal(number)


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to read each poll, decided once at discovery: one resource (or every PSU's metrics) and a property."""

    chassis: str
    resource: str  # EnvironmentMetrics | PowerSubsystem | Power
    paths: tuple[str, ...]
    energy: str = ""  # EnergyJoules | EnergykWh | "" (integrate power)

    @property
    def name(self) -> str:
        return f"{self.resource}.{self.energy or 'power'}"


class Discovery:
    """Finds the chassis and the best reading it offers."""

    def __init__(self, client: RedfishClient, chassis: str, interval: float) -> None:
        self.client = client
        self.chassis = chassis
        self.interval = interval

    def plan(self) -> Plan:
        root = self.client.get(f"{ROOT}/", public=True)
        sessions = _link(root, "Links", "Sessions")
        if sessions:
            self.client.sessions_path = sessions
        collection = self.client.get(_link(root, "Chassis") or f"{ROOT}/Chassis")
        members = [m.get("@odata.id") for m in collection.get("Members") or [] if isinstance(m, dict)]
        paths = [m for m in members if isinstance(m, str)]
        chosen = self._choose(paths)
        chassis = self.client.get(chosen)
        name = str(chassis.get("Id") or chosen.rsplit("/", 1)[-1])
        metrics = _link(chassis, "EnvironmentMetrics")
        if metrics:
            document = self.client.get(metrics)
            energy = self._energy_property(document)
            if energy or _reading(document, "PowerWatts") is not None:
                return Plan(name, "EnvironmentMetrics", (metrics,), energy)
        subsystem = _link(chassis, "PowerSubsystem")
        if subsystem:
            supplies = _link(self.client.get(subsystem), "PowerSupplies")
            bays = self.client.get(supplies).get("Members", []) if supplies else []
            psu_metrics = []
            for bay in bays:
                path = bay.get("@odata.id") if isinstance(bay, dict) else None
                if isinstance(path, str):
                    link = _link(self.client.get(path), "Metrics")
                    if link:
                        psu_metrics.append(link)
            if psu_metrics:
                documents = [self.client.get(p) for p in psu_metrics]
                if all(_reading(d, "InputPowerWatts") is not None for d in documents):
                    energy = "EnergykWh" if all(self._energy_property(d) == "EnergykWh" for d in documents) else ""
                    return Plan(name, "PowerSubsystem", tuple(psu_metrics), energy)
        power = _link(chassis, "Power")
        if power:
            return Plan(name, "Power", (power,))
        raise RedfishError(
            "protocol",
            f"chassis {name} publishes no power reading (no EnvironmentMetrics, PowerSubsystem or Power)",
            "set redfish.chassis to the chassis that holds the node's power supplies",
        )

    def _choose(self, members: list[str]) -> str:
        if self.chassis:
            for path in members:
                if path.rstrip("/").rsplit("/", 1)[-1] == self.chassis:
                    return path
            for path in members:
                if str(self.client.get(path).get("Id")) == self.chassis:
                    return path
            raise RedfishError(
                "protocol",
                f"no chassis '{self.chassis}' (the BMC has: {', '.join(_ids(members)) or 'none'})",
                "set redfish.chassis to one of those",
            )
        if len(members) == 1:
            return members[0]
        # Several (an enclosure, a backplane, a blade): the one with power readings, else the one linked to the
        # computer system; with more than one of those the operator says which.
        documents = {path: self.client.get(path) for path in members}
        powered = [p for p, d in documents.items() if any(_link(d, k) for k in POWER_RESOURCES)]
        if len(powered) == 1:
            return powered[0]
        linked = [p for p in powered or members if (documents[p].get("Links") or {}).get("ComputerSystems")]
        if len(linked) == 1:
            return linked[0]
        raise RedfishError(
            "protocol",
            f"the BMC has {len(members)} chassis ({', '.join(_ids(members)) or 'none'}) and more than one with "
            "power readings",
            "set redfish.chassis to the one whose power is this node's",
        )

    def _energy_property(self, document: dict[str, Any]) -> str:
        """EnergyJoules when present; EnergykWh only with enough decimals to move every interval at the current
        power (a counter in whole kWh steps 3.6 MJ at a time), else "" (integrate the power)."""
        if _reading(document, "EnergyJoules") is not None:
            return "EnergyJoules"
        kwh = _reading(document, "EnergykWh")
        if kwh is None:
            return ""
        resolution_j = KWH_J / 10 ** _decimals(kwh)
        watts = _reading(document, "PowerWatts") or _reading(document, "InputPowerWatts")
        needed = float(watts) * self.interval if watts else 3600.0  # without a power reading: 1 Wh steps
        return "EnergykWh" if resolution_j <= needed else ""


def _ids(members: list[str]) -> list[str]:
    return [m.rstrip("/").rsplit("/", 1)[-1] for m in members]


class RedfishPoller:
    """The background reader: discovery, then one poll per interval; failures back off exponentially."""

    def __init__(self, config: RedfishConfig, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.interval = interval
        self.clock = clock
        self.client = RedfishClient(config)
        self.latest: Reading | None = None
        self.plan: Plan | None = None
        self.up = False
        self.error = "no answer from the BMC yet"
        self.errors = 0
        self._failures = 0
        self._integrated_uj = 0
        self._fraction_uj = 0.0
        self._last_power: tuple[float, float] | None = None  # (time, watts) of the previous good reading
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wattlens-redfish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(wait)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                delay = self.poll_once()
                self._stop.wait(delay)
        finally:
            self.client.close()

    def poll_once(self) -> float:
        """One attempt; returns the seconds to wait before the next."""
        try:
            if self.plan is None:
                self.plan = Discovery(self.client, self.config.chassis, self.interval).plan()
                log.info("redfish: reading chassis %s of %s (%s)", self.plan.chassis, self.config.url, self.plan.name)
            self.latest = self._read(self.plan)
        except RedfishError as exc:
            return self._failed(exc)
        except Exception as exc:  # a BMC answer shaped unlike any schema: keep polling, say what it was
            return self._failed(RedfishError("protocol", f"unexpected answer ({type(exc).__name__}: {exc})"))
        self.up, self.error, self._failures = True, "", 0
        return self.interval

    def _failed(self, exc: RedfishError) -> float:
        """Count the failure and back off. The error (with its fix) becomes the platform zone's, which the
        accounting logs once when the zone goes down; here it is only a debug line."""
        self.errors += 1
        self._failures += 1
        self._last_power = None  # the next reading starts a new integration: the gap is not guessed
        self.up, self.error = False, f"{exc}. Fix: {exc.fix}" if exc.fix else str(exc)
        log.debug("redfish: %s: %s", self.config.url, self.error)
        if exc.kind == "protocol":
            self.plan = None  # rediscover: the BMC may have been updated or reconfigured
        return float(min(self.interval * 2 ** min(self._failures, 16), RETRY_MAX_S))

    def _read(self, plan: Plan) -> Reading:
        documents = [self.client.get(path) for path in plan.paths]
        now = self.clock()
        power_prop = "InputPowerWatts" if plan.resource == "PowerSubsystem" else "PowerWatts"
        if plan.resource == "Power":
            watts = _legacy_watts(documents[0])
        else:
            values = [_reading(d, power_prop) for d in documents]
            watts = float(sum(v for v in values if v is not None)) if all(v is not None for v in values) else None
        if plan.energy:
            energies = [_reading(d, plan.energy) for d in documents]
            total = Decimal(0)
            for value in energies:
                if value is None:
                    raise RedfishError("protocol", f"{plan.name} has no reading")
                total += value
            joules = total * (KWH_J if plan.energy == "EnergykWh" else 1)
            return Reading(int(joules * 1_000_000), watts, ENERGY_COUNTER, now, plan.name)
        if watts is None:
            raise RedfishError("protocol", f"{plan.name} has no power reading")
        if self._last_power is not None:
            then, before = self._last_power
            exact = (before + watts) / 2 * max(0.0, now - then) * 1_000_000 + self._fraction_uj
            whole = int(exact)
            self._fraction_uj = exact - whole
            self._integrated_uj += whole
        self._last_power = (now, watts)
        return Reading(self._integrated_uj, watts, POWER_INTEGRATION, now, plan.name)


def _legacy_watts(document: dict[str, Any]) -> float | None:
    controls = document.get("PowerControl")
    first = controls[0] if isinstance(controls, list) and controls and isinstance(controls[0], dict) else {}
    value = first.get("PowerConsumedWatts")
    return float(value) if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else None


class RedfishMeter:
    """The platform domain from the BMC: the poller's latest reading, down once it is older than `stale_after`."""

    name = SOURCE

    def __init__(self, poller: RedfishPoller, zone: ZoneId, stale_after: float) -> None:
        self.poller = poller
        self.zone = zone
        self.stale_after = stale_after
        self.notes: list[str] = [f"platform: {poller.config.url} (auth {poller.config.auth})"]

    @classmethod
    def open(cls, config: RedfishConfig, tick_interval: float, node_name: str = "") -> RedfishMeter:
        """Start the poller; `{node}` in the URL is this node's name (one setting for a whole DaemonSet)."""
        if not config.url:
            raise MeterUnavailable("redfish.url is not set", "set redfish.url, username and password_file")
        config = config.model_copy(update={"url": config.url.replace("{node}", node_name)})
        interval = config.interval or tick_interval
        poller = RedfishPoller(config, interval)
        if not poller.client.https:
            log.warning("redfish: %s is plain HTTP: the BMC credentials cross the network in clear", config.url)
        poller.start()
        zone = ZoneId("platform", "", "", SOURCE, urlsplit(config.url).netloc)
        # Stale once several polls in a row have failed: the domain is down rather than silently flat.
        meter = cls(poller, zone, max(3 * interval + config.timeout, 30.0))
        meter.wait_first(min(config.timeout, FIRST_READING_WAIT_S))  # a healthy BMC is up from the first tick
        return meter

    def zones(self) -> Sequence[ZoneId]:
        return [self.zone]

    def read(self, now: float, cpu: CpuTimes | None) -> list[CounterSample]:  # noqa: ARG002
        reading = self.poller.latest
        if reading is None:
            return [CounterSample(self.zone, None, 0, self.poller.error)]
        age = now - reading.at
        if age > self.stale_after:
            error = f"no reading for {age:.0f} s ({self.poller.error or 'BMC slow'})"
            return [CounterSample(self.zone, None, 0, error, reading.method)]
        return [CounterSample(self.zone, reading.energy_uj, 0, "", reading.method, reading.at, reading.watts)]

    def wait_first(self, timeout: float) -> bool:
        """Block until the first poll has answered (for `wattlens check`); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poller.latest is not None or (self.poller.errors and not self.poller.up):
                return self.poller.latest is not None
            time.sleep(0.05)
        return False

    def idle_watts(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.poller.stop()


def open_platform(config: Config) -> RedfishMeter:
    return RedfishMeter.open(config.redfish, config.interval, config.node_name)
