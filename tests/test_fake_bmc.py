"""The fake BMC behaves like a Redfish service: to the standard library, and to DMTF's own client library.

The first group talks HTTP with http.client/ssl only, so it pins the protocol details a meter relies on
(unauthenticated service root, basic and session auth per DSP0266, verified TLS, readings derived from one state,
faults, request log). The second group drives DMTF's `redfish` package (python-redfish-library) against the fake:
if the reference client logs in both ways and reads the resources, the fake is faithful enough to test a meter.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import itertools
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_bmc import SESSIONS, FakeBmc, TlsFiles, make_tls
from helpers import require, tool

PASSWORD = "pa55-w0rd"
CHASSIS = "/redfish/v1/Chassis/1U"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    tool("openssl", "Debian package openssl")
    return make_tls(tmp_path_factory.mktemp("bmc-tls"))


@pytest.fixture
def bmc(tls: TlsFiles) -> Iterator[FakeBmc]:
    with FakeBmc(tls=tls, lifetime_s=60) as server:
        yield server


def connect(server: FakeBmc, tls: TlsFiles | None, timeout: float = 5.0) -> http.client.HTTPConnection:
    port = int(server.url.rsplit(":", 1)[1])
    if tls is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)


def call(
    server: FakeBmc,
    tls: TlsFiles | None,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], Any]:
    conn = connect(server, tls, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers={**all_headers, **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else None
    finally:
        conn.close()


def basic(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- protocol, with the standard library only -------------------------------------------------------------------


def test_service_root_is_public_and_names_the_sessions_collection(bmc: FakeBmc, tls: TlsFiles) -> None:
    assert bmc.url.startswith("https://127.0.0.1:")
    status, headers, root = call(bmc, tls, "GET", "/redfish/v1/")
    assert status == 200
    assert headers["odata-version"] == "4.0"
    assert root["@odata.type"].startswith("#ServiceRoot.")
    assert root["Links"]["Sessions"]["@odata.id"] == SESSIONS
    assert call(bmc, tls, "GET", "/redfish")[2] == {"v1": "/redfish/v1/"}
    assert call(bmc, tls, "GET", CHASSIS)[0] == 401, "everything but the root needs credentials"


def test_tls_is_verified_against_the_test_ca(bmc: FakeBmc, tls: TlsFiles) -> None:
    port = int(bmc.url.rsplit(":", 1)[1])
    untrusting = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.request("GET", "/redfish/v1/")
    untrusting.close()
    deadline = time.monotonic() + 5
    while bmc.handshake_failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bmc.handshake_failures == 1
    assert call(bmc, tls, "GET", "/redfish/v1/")[0] == 200


def test_basic_auth_accepts_the_right_password_only(bmc: FakeBmc, tls: TlsFiles) -> None:
    status, _, metrics = call(bmc, tls, "GET", f"{CHASSIS}/EnvironmentMetrics", headers=basic())
    assert status == 200
    assert metrics["PowerWatts"]["Reading"] == 374.0
    status, headers, error = call(bmc, tls, "GET", f"{CHASSIS}/EnvironmentMetrics", headers=basic(password="x"))
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic")
    assert error["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("ResourceAtUriUnauthorized")
    assert [r.auth for r in bmc.requests] == ["basic", "bad-basic"]


def test_session_login_use_expiry_and_logout(bmc: FakeBmc, tls: TlsFiles) -> None:
    status, _, _ = call(bmc, tls, "POST", SESSIONS, body={"UserName": "admin", "Password": "wrong"})
    assert status == 401
    status, headers, session = call(bmc, tls, "POST", SESSIONS, body={"UserName": "admin", "Password": PASSWORD})
    assert status == 201
    token, location = headers["x-auth-token"], headers["location"]
    assert location == session["@odata.id"] and location.startswith(SESSIONS + "/")
    assert bmc.sessions == 1
    assert call(bmc, tls, "GET", f"{CHASSIS}/Power", headers={"X-Auth-Token": token})[0] == 200
    assert call(bmc, tls, "GET", SESSIONS, headers={"X-Auth-Token": token})[2]["Members@odata.count"] == 1
    bmc.expire_sessions()
    status, _, error = call(bmc, tls, "GET", f"{CHASSIS}/Power", headers={"X-Auth-Token": token})
    assert status == 401
    assert error["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("NoValidSession")
    _, headers, _ = call(bmc, tls, "POST", SESSIONS, body={"UserName": "admin", "Password": PASSWORD})
    token, location = headers["x-auth-token"], headers["location"]
    assert call(bmc, tls, "DELETE", location, headers={"X-Auth-Token": token})[0] == 204
    assert bmc.sessions == 0
    assert call(bmc, tls, "GET", CHASSIS, headers={"X-Auth-Token": token})[0] == 401
    assert [r.auth for r in bmc.requests if r.method == "GET"] == ["session", "session", "bad-session", "bad-session"]


def test_readings_follow_the_state_and_agree_with_each_other(bmc: FakeBmc, tls: TlsFiles) -> None:
    bmc.set_energy(3_600_000.0)  # 1 kWh
    bmc.set_power(420.0)
    bmc.advance(3600.0)  # 420 Wh more
    assert bmc.energy_joules == pytest.approx(3_600_000.0 + 420.0 * 3600.0)
    get = lambda path: call(bmc, tls, "GET", path, headers=basic())[2]  # noqa: E731
    env = get(f"{CHASSIS}/EnvironmentMetrics")
    assert env["PowerWatts"]["Reading"] == 420.0
    assert env["EnergykWh"]["Reading"] == pytest.approx(1.42, rel=1e-12)
    assert "EnergyJoules" not in env
    assert get(env["EnergykWh"]["DataSourceUri"])["Reading"] == env["EnergykWh"]["Reading"]
    assert get(env["EnergykWh"]["DataSourceUri"])["ReadingUnits"] == "kW.h"
    assert get(env["PowerWatts"]["DataSourceUri"])["Reading"] == 420.0
    legacy = get(f"{CHASSIS}/Power")
    assert legacy["PowerControl"][0]["PowerConsumedWatts"] == 420.0
    bays = [m["@odata.id"] for m in get(f"{CHASSIS}/PowerSubsystem/PowerSupplies")["Members"]]
    psus = [get(f"{bay}/Metrics") for bay in bays]
    assert sum(p["InputPowerWatts"]["Reading"] for p in psus) == pytest.approx(420.0)
    assert sum(p["EnergykWh"]["Reading"] for p in psus) == pytest.approx(1.42)
    chassis = get(CHASSIS)
    for name in ("EnvironmentMetrics", "PowerSubsystem", "Power", "Sensors"):
        assert get(chassis[name]["@odata.id"])["@odata.id"] == chassis[name]["@odata.id"]
    bmc.reset_energy()
    assert get(f"{CHASSIS}/EnvironmentMetrics")["EnergykWh"]["Reading"] == 0.0


def test_variants_legacy_only_no_energy_coarse_kwh_and_joules(tls: TlsFiles) -> None:
    with FakeBmc(tls=tls, resources={"Power"}, energy_joules=None, lifetime_s=30) as old:
        chassis = call(old, tls, "GET", CHASSIS, headers=basic())[2]
        assert "Power" in chassis and "EnvironmentMetrics" not in chassis and "PowerSubsystem" not in chassis
        assert call(old, tls, "GET", f"{CHASSIS}/EnvironmentMetrics", headers=basic())[0] == 404
    with FakeBmc(tls=tls, resources={"EnvironmentMetrics"}, energy_joules=None, lifetime_s=30) as no_energy:
        assert "EnergykWh" not in call(no_energy, tls, "GET", f"{CHASSIS}/EnvironmentMetrics", headers=basic())[2]
    with FakeBmc(
        tls=tls, kwh_decimals=0, energy_joules=5_000_000.0, energy_joules_property=True, lifetime_s=30
    ) as coarse:
        env = call(coarse, tls, "GET", f"{CHASSIS}/EnvironmentMetrics", headers=basic())[2]
        assert env["EnergykWh"]["Reading"] == 1.0, "a BMC that reports whole kWh hides 1.39 kWh as 1"
        assert env["EnergyJoules"]["Reading"] == 5_000_000.0
    with FakeBmc(tls=tls, basic_auth=False, lifetime_s=30) as session_only:
        assert call(session_only, tls, "GET", CHASSIS, headers=basic())[0] == 401
    with FakeBmc(tls=None, lifetime_s=30) as plain:
        assert plain.url.startswith("http://127.0.0.1:")
        assert call(plain, None, "GET", CHASSIS, headers=basic())[0] == 200


def test_status_faults_then_recovery(bmc: FakeBmc, tls: TlsFiles) -> None:
    bmc.fail(503, count=2, path=f"{CHASSIS}/EnvironmentMetrics")
    codes = [call(bmc, tls, "GET", f"{CHASSIS}/EnvironmentMetrics", headers=basic())[0] for _ in range(3)]
    assert codes == [503, 503, 200]
    assert call(bmc, tls, "GET", "/redfish/v1/")[0] == 200, "faults only hit the paths they name"
    bmc.fail(500, count=None)
    assert call(bmc, tls, "GET", "/redfish/v1/")[0] == 500
    bmc.clear_faults()
    assert call(bmc, tls, "GET", "/redfish/v1/")[0] == 200


def test_dropped_connection_gives_no_answer(bmc: FakeBmc, tls: TlsFiles) -> None:
    bmc.drop(count=1)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, ssl.SSLError)):
        call(bmc, tls, "GET", "/redfish/v1/")
    assert call(bmc, tls, "GET", "/redfish/v1/")[0] == 200
    log = bmc.wait_for(lambda entries: len(entries) >= 2)
    assert (log[0].status, log[0].fault) == (None, "drop:0.0")


def test_hang_outlasts_the_client_timeout_and_ends_at_close(tls: TlsFiles) -> None:
    server = FakeBmc(tls=tls, lifetime_s=30)
    try:
        server.hang(0.4, count=1)
        started = time.monotonic()
        assert call(server, tls, "GET", "/redfish/v1/")[0] == 200
        assert time.monotonic() - started >= 0.4
        server.hang(30.0, count=None)
        started = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout)):
            call(server, tls, "GET", "/redfish/v1/", timeout=0.3)
        assert time.monotonic() - started < 2.0
    finally:
        closing = time.monotonic()
        server.close()
    log = server.wait_for(lambda entries: len(entries) >= 2, timeout=5)
    assert time.monotonic() - closing < 5.0, "close() ends a 30 s hang at once"
    assert log[1].fault == "hang:30.0" and log[1].status is None


def test_request_log_times_requests_for_backoff_assertions(bmc: FakeBmc, tls: TlsFiles) -> None:
    for pause in (0.0, 0.1, 0.2):
        time.sleep(pause)
        call(bmc, tls, "GET", "/redfish/v1/")
    log = bmc.requests
    gaps = [b.at - a.at for a, b in itertools.pairwise(log)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2
    assert all(entry.finished >= entry.at for entry in log)


def test_lifetime_is_bounded(tls: TlsFiles) -> None:
    server = FakeBmc(tls=tls, lifetime_s=0.2)
    port = int(server.url.rsplit(":", 1)[1])
    time.sleep(0.6)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_make_tls_certificate_is_for_loopback_only(bmc: FakeBmc, tls: TlsFiles) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    port = int(bmc.url.rsplit(":", 1)[1])
    for name in ("127.0.0.1", "localhost"):
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=name):
            pass
    with pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="bmc.example")


# --- fidelity: DMTF's python-redfish-library against the fake -----------------------------------------------------


@pytest.fixture
def redfish_lib() -> Any:
    require(importlib.util.find_spec("redfish") is not None, "DMTF redfish package not installed (pip install redfish)")
    import redfish

    return redfish


@pytest.mark.parametrize("auth", ["basic", "session"])
def test_redfish_library_logs_in_and_reads_power(redfish_lib: Any, bmc: FakeBmc, tls: TlsFiles, auth: str) -> None:
    bmc.set_power(512.5)
    bmc.set_energy(7_200_000.0)
    client = redfish_lib.redfish_client(
        base_url=bmc.url, username="admin", password=PASSWORD, cafile=str(tls.ca_cert), timeout=5, max_retry=0
    )
    client.login(auth=auth)
    assert bmc.sessions == (1 if auth == "session" else 0)
    env = client.get(f"{CHASSIS}/EnvironmentMetrics").dict
    assert env["PowerWatts"]["Reading"] == 512.5
    assert env["EnergykWh"]["Reading"] == pytest.approx(2.0)
    assert client.get(f"{CHASSIS}/Power").dict["PowerControl"][0]["PowerConsumedWatts"] == 512.5
    members = client.get(f"{CHASSIS}/PowerSubsystem/PowerSupplies").dict["Members"]
    assert len(members) == 2
    client.logout()
    assert bmc.sessions == 0
    used = {r.auth for r in bmc.requests if r.path.startswith(CHASSIS)}
    assert used == {auth}
    if auth == "session":
        assert [r.method for r in bmc.requests if r.path.startswith(SESSIONS + "/")] == ["DELETE"]


@pytest.mark.parametrize("auth", ["basic", "session"])
def test_redfish_library_reports_wrong_credentials(redfish_lib: Any, bmc: FakeBmc, tls: TlsFiles, auth: str) -> None:
    from redfish.rest.v1 import InvalidCredentialsError

    client = redfish_lib.redfish_client(
        base_url=bmc.url, username="admin", password="wrong", cafile=str(tls.ca_cert), timeout=5, max_retry=0
    )
    with pytest.raises(InvalidCredentialsError):
        client.login(auth=auth)
    assert bmc.requests[-1].status == 401


def test_redfish_library_times_out_on_a_hanging_bmc_and_retries_after_a_fixed_second(
    redfish_lib: Any, bmc: FakeBmc, tls: TlsFiles
) -> None:
    from redfish.rest.v1 import RetriesExhaustedError

    client = redfish_lib.redfish_client(
        base_url=bmc.url, username="admin", password=PASSWORD, cafile=str(tls.ca_cert), timeout=5, max_retry=0
    )
    client.login(auth="basic")
    bmc.hang(10.0, count=None, path=f"{CHASSIS}/EnvironmentMetrics")
    started = time.monotonic()
    with pytest.raises(RetriesExhaustedError):
        client.get(f"{CHASSIS}/EnvironmentMetrics", timeout=0.2, max_retry=1)
    elapsed = time.monotonic() - started
    # two attempts of 0.2 s with the library's fixed time.sleep(1) between them: blocking, no backoff
    assert 1.4 <= elapsed < 3.0
    bmc.clear_faults()


def test_redfish_library_skips_tls_verification_without_cafile(redfish_lib: Any, bmc: FakeBmc) -> None:
    # Evidence for the client choice (docs/research/redfish.md): the library passes verify=False to requests
    # unless cafile is given, so a BMC with an untrusted certificate is accepted silently.
    with pytest.warns(Warning, match="Unverified HTTPS request"):
        client = redfish_lib.redfish_client(
            base_url=bmc.url, username="admin", password=PASSWORD, timeout=5, max_retry=0
        )
    assert client.root["RedfishVersion"] == "1.15.0"
    assert bmc.handshake_failures == 0
