"""A Redfish BMC for tests: HTTPS on loopback, basic and session auth, a power/energy state the test controls, and
the failures real BMCs show (slow or hanging answers, 5xx, dropped connections, expired sessions).

Resource shapes follow DMTF's public mockup `public-rackmount1` (DMTF/Redfish-Mockup-Server, DSP2043): ServiceRoot,
Chassis/1U with EnvironmentMetrics (PowerWatts, EnergykWh), PowerSubsystem with PowerSupplies/BayN/Metrics,
Sensors/TotalPower and TotalEnergy, the deprecated Power resource (PowerControl[0].PowerConsumedWatts) and
SessionService/Sessions. Unlike the mockup, every reading is derived from one state, so they agree with each other.
Session login follows DSP0266: POST {"UserName", "Password"} to the Sessions collection, 201 with X-Auth-Token and
Location, DELETE the Location to log out. The service root (and /redfish, odata, $metadata) needs no credentials.

Bounded: it serves on daemon threads, binds 127.0.0.1 only and stops by itself after `lifetime_s`.
Typical use:

    tls = make_tls(tmp_path)
    with FakeBmc(tls=tls) as bmc:            # bmc.url = "https://127.0.0.1:<port>", bmc.ca_file = tls.ca_cert
        bmc.set_power(420.0)                 # watts
        bmc.advance(5.0)                     # energy += 420 W x 5 s
        bmc.hang(30.0, count=1)              # the next request waits 30 s before answering
        bmc.fail(503, count=2)               # the next two answer 503
        bmc.drop(count=1)                    # the next one loses its connection without an answer
        bmc.password = "rotated"             # wrong credentials from now on: 401
        ... bmc.requests ...                 # (time, method, path, auth, status, fault) of every request
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_UTC = timezone.utc
SESSIONS = "/redfish/v1/SessionService/Sessions"
PUBLIC = {"/redfish", "/redfish/v1", "/redfish/v1/odata", "/redfish/v1/$metadata"}
ALL_RESOURCES = frozenset({"EnvironmentMetrics", "PowerSubsystem", "Power", "Sensors"})
COPYRIGHT = "Shaped after DMTF Redfish-Mockup-Server public-rackmount1 (Copyright 2014-2022 DMTF)."


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca_cert: Path
    cert: Path
    key: Path


def make_tls(directory: Path, common_name: str = "fake-bmc") -> TlsFiles:
    """Create a test CA and a server certificate with the openssl command (no Python dependency).

    Extensions are what strict verifiers (Python 3.13's VERIFY_X509_STRICT) require: a critical CA basic
    constraint with keyCertSign on the CA, and on the leaf subjectAltName, serverAuth and key identifiers."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "bmc.key", directory / "bmc.csr", directory / "bmc.pem"
    ext = directory / "bmc.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # P-256, unencrypted
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-x509", *new_key, "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "2",
            "-subj", "/CN=wattlens test CA", *ca_ext)  # fmt: skip
    openssl("req", *new_key, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return TlsFiles(ca_cert=ca_cert, cert=cert, key=key)


@dataclass
class Fault:
    """What happens to the next `remaining` matching requests (None: all of them until cleared)."""

    kind: str  # "status" | "hang" | "drop"
    path: str | None  # only requests whose path starts with this (None: any)
    remaining: int | None
    status: int = 500
    seconds: float = 0.0


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.monotonic() when the request line arrived
    method: str
    path: str
    auth: str  # "none" | "basic" | "session" | "bad-basic" | "bad-session"
    status: int | None  # None: the connection was dropped without an answer
    fault: str | None
    finished: float  # time.monotonic() when the answer (or the drop) went out


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] | None = None


@dataclass
class _Session:
    id: str
    token: str
    user: str
    created: float = field(default_factory=time.monotonic)


def _error(message_id: str, message: str, resolution: str = "None.") -> dict[str, Any]:
    return {
        "error": {
            "code": "Base.1.8.GeneralError",
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [
                {
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": f"Base.1.8.{message_id}",
                    "Message": message,
                    "Severity": "Critical",
                    "Resolution": resolution,
                }
            ],
        }
    }


class FakeBmc:
    def __init__(
        self,
        username: str = "admin",
        password: str = "pa55-w0rd",
        *,
        tls: TlsFiles | None = None,
        lifetime_s: float = 120.0,
        chassis_id: str = "1U",
        power_watts: float = 374.0,
        energy_joules: float | None = 0.0,
        resources: Iterable[str] = ALL_RESOURCES,
        basic_auth: bool = True,
        session_auth: bool = True,
        kwh_decimals: int | None = None,
        energy_joules_property: bool = False,
        psu_shares: tuple[float, ...] = (0.5, 0.5),
    ) -> None:
        self.username = username
        self.password = password
        self.chassis_id = chassis_id
        self.resources = frozenset(resources)
        unknown = self.resources - ALL_RESOURCES
        if unknown:
            raise ValueError(f"unknown resources {sorted(unknown)}")
        self.basic_auth = basic_auth
        self.session_auth = session_auth
        self.kwh_decimals = kwh_decimals
        self.energy_joules_property = energy_joules_property
        self.psu_shares = psu_shares
        self._lock = threading.Lock()
        self._power = float(power_watts)
        self._energy: float | None = energy_joules
        self._reset_time = datetime.now(_UTC)
        self._sessions: dict[str, _Session] = {}
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._logged = threading.Condition(self._lock)
        self._closing = threading.Event()
        self.handshake_failures = 0
        self.ca_file = tls.ca_cert if tls else None
        context: ssl.SSLContext | None = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
        self.httpd = _Server(("127.0.0.1", 0), _handler_for(self), context, self)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self) -> FakeBmc:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._timer.cancel()
        self._closing.set()  # ends every hang at once
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- what tests do --------------------------------------------------------------------------------------

    @property
    def power_watts(self) -> float:
        with self._lock:
            return self._power

    @property
    def energy_joules(self) -> float | None:
        with self._lock:
            return self._energy

    def set_power(self, watts: float) -> None:
        with self._lock:
            self._power = float(watts)

    def set_energy(self, joules: float | None) -> None:
        """Set the energy counter (None: the BMC has no energy reading at all)."""
        with self._lock:
            self._energy = joules

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass at the current power: the energy counter grows by power x seconds."""
        with self._lock:
            if self._energy is not None:
                self._energy += self._power * seconds

    def reset_energy(self) -> None:
        """The counter restarts from 0, as after Sensor.ResetMetrics or a BMC reboot."""
        with self._lock:
            self._energy = 0.0
            self._reset_time = datetime.now(_UTC)

    def expire_sessions(self) -> None:
        """Every session token stops working (BMC session timeout or reboot): the next use gets 401."""
        with self._lock:
            self._sessions.clear()

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def fail(self, status: int, count: int | None = 1, path: str | None = None) -> None:
        self._add(Fault("status", path, count, status=status))

    def hang(self, seconds: float, count: int | None = 1, path: str | None = None) -> None:
        """Accept the request, then say nothing for `seconds` (at most until close()), then answer normally."""
        self._add(Fault("hang", path, count, seconds=seconds))

    def drop(self, count: int | None = 1, path: str | None = None) -> None:
        """Close the connection without an answer."""
        self._add(Fault("drop", path, count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def wait_for(self, predicate: Callable[[list[LoggedRequest]], bool], timeout: float = 10.0) -> list[LoggedRequest]:
        """Block until the request log satisfies `predicate` (or fail after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        with self._logged:
            while not predicate(self._log):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake BMC: condition not met in {timeout}s; log: {self._log}")
                self._logged.wait(left)
            return list(self._log)

    # --- state as Redfish ------------------------------------------------------------------------------------

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path is None or path.startswith(fault.path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _record(self, entry: LoggedRequest) -> int:
        with self._logged:
            self._log.append(entry)
            self._logged.notify_all()
            return len(self._log) - 1

    def _kwh(self, joules: float) -> float:
        kwh = joules / 3.6e6
        return round(kwh, self.kwh_decimals) if self.kwh_decimals is not None else kwh

    def _resources(self) -> dict[str, Callable[[], dict[str, Any]]]:
        c = f"/redfish/v1/Chassis/{self.chassis_id}"
        with self._lock:
            power, energy, reset = self._power, self._energy, self._reset_time
        now = datetime.now(_UTC).isoformat(timespec="seconds")
        status = {"State": "Enabled", "Health": "OK"}

        def odata(path: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
            return {"@odata.id": path, "@odata.type": kind, **body, "@Redfish.Copyright": COPYRIGHT}

        def excerpt(reading: float, source: str) -> dict[str, Any]:
            return {"Reading": reading, "DataSourceUri": f"{c}/Sensors/{source}"}

        def collection(path: str, kind: str, name: str, members: list[str]) -> Callable[[], dict[str, Any]]:
            body = {"Name": name, "Members@odata.count": len(members), "Members": [{"@odata.id": m} for m in members]}
            return lambda: odata(path, f"#{kind}.{kind}", body)

        chassis_links: dict[str, Any] = {}
        if "EnvironmentMetrics" in self.resources:
            chassis_links["EnvironmentMetrics"] = {"@odata.id": f"{c}/EnvironmentMetrics"}
        if "PowerSubsystem" in self.resources:
            chassis_links["PowerSubsystem"] = {"@odata.id": f"{c}/PowerSubsystem"}
        if "Sensors" in self.resources:
            chassis_links["Sensors"] = {"@odata.id": f"{c}/Sensors"}
        if "Power" in self.resources:
            chassis_links["Power@Redfish.Deprecated"] = f"Please migrate to use {c}/PowerSubsystem"
            chassis_links["Power"] = {"@odata.id": f"{c}/Power"}

        routes: dict[str, Callable[[], dict[str, Any]]] = {
            "/redfish": lambda: {"v1": "/redfish/v1/"},
            "/redfish/v1": lambda: odata(
                "/redfish/v1/",
                "#ServiceRoot.v1_15_0.ServiceRoot",
                {
                    "Id": "RootService",
                    "Name": "Root Service",
                    "RedfishVersion": "1.15.0",
                    "UUID": "92384634-2938-2342-8820-489239905423",
                    "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
                    "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                    "Links": {"Sessions": {"@odata.id": SESSIONS}},
                },
            ),
            "/redfish/v1/odata": lambda: {
                "@odata.context": "/redfish/v1/$metadata",
                "value": [
                    {"name": "Chassis", "kind": "Singleton", "url": "/redfish/v1/Chassis"},
                    {"name": "SessionService", "kind": "Singleton", "url": "/redfish/v1/SessionService"},
                ],
            },
            "/redfish/v1/SessionService": lambda: odata(
                "/redfish/v1/SessionService",
                "#SessionService.v1_1_8.SessionService",
                {
                    "Id": "SessionService",
                    "Name": "Session Service",
                    "Status": status,
                    "ServiceEnabled": self.session_auth,
                    "SessionTimeout": 30,
                    "Sessions": {"@odata.id": SESSIONS},
                },
            ),
            SESSIONS: lambda: odata(SESSIONS, "#SessionCollection.SessionCollection", self._session_members()),
            "/redfish/v1/Chassis": collection("/redfish/v1/Chassis", "ChassisCollection", "Chassis Collection", [c]),
            c: lambda: odata(
                c,
                "#Chassis.v1_22_0.Chassis",
                {
                    "Id": self.chassis_id,
                    "Name": "Computer System Chassis",
                    "ChassisType": "RackMount",
                    "Manufacturer": "Contoso",
                    "Model": "3500RX",
                    "PowerState": "On",
                    "Status": status,
                    **chassis_links,
                },
            ),
        }
        if "EnvironmentMetrics" in self.resources:
            metrics: dict[str, Any] = {
                "Name": "Chassis Environment Metrics",
                "PowerWatts": excerpt(power, "TotalPower"),
            }
            if energy is not None:
                metrics["EnergykWh"] = excerpt(self._kwh(energy), "TotalEnergy")
                if self.energy_joules_property:
                    metrics["EnergyJoules"] = excerpt(energy, "TotalEnergyJoules")
            routes[f"{c}/EnvironmentMetrics"] = lambda: odata(
                f"{c}/EnvironmentMetrics", "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics", metrics
            )
        if "Sensors" in self.resources:
            sensors = [f"{c}/Sensors/TotalPower"] + ([f"{c}/Sensors/TotalEnergy"] if energy is not None else [])
            routes[f"{c}/Sensors"] = collection(f"{c}/Sensors", "SensorCollection", "Chassis sensors", sensors)
            routes[f"{c}/Sensors/TotalPower"] = lambda: odata(
                f"{c}/Sensors/TotalPower",
                "#Sensor.v1_6_0.Sensor",
                {
                    "Id": "TotalPower",
                    "Name": "Power reading for the Chassis",
                    "ReadingType": "Power",
                    "ElectricalContext": "Total",
                    "Status": status,
                    "Reading": power,
                    "ReadingUnits": "W",
                    "ReadingTime": now,
                    "SensingInterval": "PT0.25S",
                    "PhysicalContext": "Chassis",
                },
            )
            if energy is not None:
                routes[f"{c}/Sensors/TotalEnergy"] = lambda: odata(
                    f"{c}/Sensors/TotalEnergy",
                    "#Sensor.v1_6_0.Sensor",
                    {
                        "Id": "TotalEnergy",
                        "Name": "Total Energy",
                        "ReadingType": "EnergykWh",
                        "Status": status,
                        "Reading": self._kwh(energy),
                        "ReadingUnits": "kW.h",
                        "ReadingTime": now,
                        "SensorResetTime": reset.isoformat(timespec="seconds"),
                        "PhysicalContext": "Chassis",
                    },
                )
        if "PowerSubsystem" in self.resources:
            ps = f"{c}/PowerSubsystem"
            bays = [f"{ps}/PowerSupplies/Bay{i + 1}" for i in range(len(self.psu_shares))]
            routes[ps] = lambda: odata(
                ps,
                "#PowerSubsystem.v1_1_0.PowerSubsystem",
                {
                    "Id": "PowerSubsystem",
                    "Name": "Power Subsystem for Chassis",
                    "CapacityWatts": 2000,
                    "Status": status,
                    "PowerSupplies": {"@odata.id": f"{ps}/PowerSupplies"},
                },
            )
            routes[f"{ps}/PowerSupplies"] = collection(
                f"{ps}/PowerSupplies", "PowerSupplyCollection", "Power Supply Collection", bays
            )
            for i, (bay, share) in enumerate(zip(bays, self.psu_shares, strict=True)):
                routes[bay] = self._psu(bay, i + 1, status, odata)
                psu_metrics: dict[str, Any] = {
                    "Id": "Metrics",
                    "Name": f"Metrics for Power Supply {i + 1}",
                    "Status": status,
                    "InputPowerWatts": {"Reading": power * share},
                }
                if energy is not None:
                    psu_metrics["EnergykWh"] = {"Reading": self._kwh(energy * share)}
                routes[f"{bay}/Metrics"] = self._fixed(
                    odata(f"{bay}/Metrics", "#PowerSupplyMetrics.v1_0_1.PowerSupplyMetrics", psu_metrics)
                )
        if "Power" in self.resources:
            routes[f"{c}/Power"] = lambda: odata(
                f"{c}/Power",
                "#Power.v1_7_1.Power",
                {
                    "Id": "Power",
                    "Name": "Power",
                    "PowerControl": [
                        {
                            "@odata.id": f"{c}/Power#/PowerControl/0",
                            "MemberId": "0",
                            "Name": "System Input Power",
                            "PowerConsumedWatts": power,
                            "PowerCapacityWatts": 800,
                            "PowerMetrics": {
                                "IntervalInMin": 1,
                                "MinConsumedWatts": power,
                                "MaxConsumedWatts": power,
                                "AverageConsumedWatts": power,
                            },
                            "Status": status,
                        }
                    ],
                },
            )
        return routes

    @staticmethod
    def _fixed(body: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        return lambda: body

    def _psu(
        self, bay: str, n: int, status: dict[str, str], odata: Callable[[str, str, dict[str, Any]], dict[str, Any]]
    ) -> Callable[[], dict[str, Any]]:
        return self._fixed(
            odata(
                bay,
                "#PowerSupply.v1_5_0.PowerSupply",
                {
                    "Id": f"Bay{n}",
                    "Name": f"Power Supply Bay {n}",
                    "Status": status,
                    "PowerSupplyType": "AC",
                    "PowerCapacityWatts": 1000,
                    "Metrics": {"@odata.id": f"{bay}/Metrics"},
                },
            )
        )

    def _session_members(self) -> dict[str, Any]:
        with self._lock:
            ids = sorted(s.id for s in self._sessions.values())
        return {
            "Name": "Session Collection",
            "Members@odata.count": len(ids),
            "Members": [{"@odata.id": f"{SESSIONS}/{i}"} for i in ids],
        }

    # --- serving ------------------------------------------------------------------------------------------------

    def _authenticate(self, headers: Any) -> str:
        token = headers.get("X-Auth-Token")
        if token is not None:
            with self._lock:
                known = any(s.token == token for s in self._sessions.values())
            return "session" if known and self.session_auth else "bad-session"
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return "bad-basic"
            ok = self.basic_auth and user == self.username and password == self.password
            return "basic" if ok else "bad-basic"
        return "none"

    def handle(self, h: _Handler, method: str) -> None:
        started = time.monotonic()
        path = h.path.split("?", 1)[0].split("#", 1)[0]
        path = path.rstrip("/") or "/"
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""  # read it all, or keep-alive desynchronises
        auth = self._authenticate(h.headers)
        fault = self._take_fault(path)
        fault_name = None
        answer = None
        if fault is not None:
            fault_name = f"{fault.kind}:{fault.status if fault.kind == 'status' else fault.seconds}"
            if fault.kind == "drop" or (fault.kind == "hang" and self._closing.wait(fault.seconds)):
                self._record(LoggedRequest(started, method, path, auth, None, fault_name, time.monotonic()))
                h.drop()
                return
            if fault.kind == "status":
                answer = _Answer(
                    fault.status,
                    _error(
                        "InternalError",
                        "The request failed due to an internal service error.  The service is still operational.",
                    ),
                )
        if answer is None:
            answer = self._serve(method, path, body, auth)
        # Logged before the answer goes out, so a client that has its answer always finds it in the log.
        index = self._record(LoggedRequest(started, method, path, auth, answer.status, fault_name, time.monotonic()))
        try:
            self._send(h, answer)
        except OSError:  # the client gave up (timed out) before the answer: nothing was delivered
            with self._logged:
                self._log[index] = replace(self._log[index], status=None, fault=fault_name or "client-gone")

    def _serve(self, method: str, path: str, body: bytes, auth: str) -> _Answer:
        if method == "POST" and path == SESSIONS:
            return self._login(body)
        if path not in PUBLIC and auth not in ("basic", "session"):
            extra = {"WWW-Authenticate": 'Basic realm="Redfish"'} if self.basic_auth else {}
            if auth in ("none", "bad-session"):
                message = _error(
                    "NoValidSession",
                    "There is no valid session established with the implementation.",
                    "Establish a session before attempting any operations.",
                )
            else:
                message = _error(
                    "ResourceAtUriUnauthorized",
                    f"While accessing the resource at '{path}', the "
                    "service received an authorization error 'Invalid username or password'.",
                )
            return _Answer(401, message, extra)
        if method == "DELETE" and path.startswith(SESSIONS + "/"):
            with self._lock:
                found = self._sessions.pop(path.rsplit("/", 1)[1], None)
            if found is None:
                return _Answer(404, _error("ResourceMissingAtURI", f"The resource at the URI '{path}' was not found."))
            return _Answer(204, None)
        if method != "GET":
            return _Answer(405, _error("OperationNotAllowed", "The HTTP method is not allowed on this resource."))
        if path.startswith(SESSIONS + "/"):
            with self._lock:
                session = self._sessions.get(path.rsplit("/", 1)[1])
            if session is not None:
                return _Answer(200, self._session_body(session))
        route = self._resources().get(path)
        if route is None:
            return _Answer(404, _error("ResourceMissingAtURI", f"The resource at the URI '{path}' was not found."))
        return _Answer(200, route())

    def _login(self, body: bytes) -> _Answer:
        try:
            credentials = json.loads(body or b"{}")
            user, password = credentials["UserName"], credentials["Password"]
        except (ValueError, KeyError, TypeError):
            return _Answer(
                400,
                _error(
                    "PropertyMissing",
                    "The property UserName or Password is a required property and must be included in the request.",
                ),
            )
        if not self.session_auth:
            return _Answer(405, _error("OperationNotAllowed", "Session creation is disabled."))
        if user != self.username or password != self.password:
            return _Answer(
                401,
                _error(
                    "ResourceAtUriUnauthorized",
                    f"While accessing the resource at "
                    f"'{SESSIONS}', the service received an authorization error "
                    "'Invalid username or password'.",
                ),
            )
        session = _Session(id=secrets.token_hex(8), token=secrets.token_hex(16), user=user)
        with self._lock:
            self._sessions[session.id] = session
        location = f"{SESSIONS}/{session.id}"
        return _Answer(201, self._session_body(session), {"X-Auth-Token": session.token, "Location": location})

    @staticmethod
    def _session_body(session: _Session) -> dict[str, Any]:
        return {
            "@odata.id": f"{SESSIONS}/{session.id}",
            "@odata.type": "#Session.v1_6_0.Session",
            "Id": session.id,
            "Name": "User Session",
            "UserName": session.user,
        }

    @staticmethod
    def _send(h: _Handler, answer: _Answer) -> None:
        data = json.dumps(answer.body).encode() if answer.body is not None else b""
        h.send_response(answer.status)
        if answer.body is not None:
            h.send_header("Content-Type", "application/json;charset=utf-8")
        h.send_header("OData-Version", "4.0")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Content-Length", str(len(data)))
        for name, value in (answer.headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext | None,
        bmc: FakeBmc,
    ) -> None:
        self.context = context
        self.bmc = bmc
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.context is not None:
            # The handshake happens on the handler's thread (do_handshake_on_connect), so a client that stalls
            # in it cannot block accept() for everyone else.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections and failed handshakes are part of the tests, not errors of the fake


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as BMCs do
    timeout = 30  # an idle kept-alive connection is closed after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    bmc: FakeBmc

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                with self.bmc._lock:
                    self.bmc.handshake_failures += 1
                raise
        super().setup()

    def log_message(self, *_: object) -> None:
        pass

    def drop(self) -> None:
        self.close_connection = True
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        self.bmc.handle(self, "GET")

    def do_POST(self) -> None:
        self.bmc.handle(self, "POST")

    def do_DELETE(self) -> None:
        self.bmc.handle(self, "DELETE")

    def do_PATCH(self) -> None:
        self.bmc.handle(self, "PATCH")


def _handler_for(bmc: FakeBmc) -> type[_Handler]:
    return type("Handler", (_Handler,), {"bmc": bmc})
