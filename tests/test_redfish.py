"""The Redfish platform meter against the fake BMC (tests/fake_bmc.py, shaped after DMTF's public-rackmount1):
which reading it chooses, exact joules, authentication, TLS, and that a slow or hostile BMC never delays a tick."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_bmc import FakeBmc, TlsFiles, make_tls
from helpers import ProcTree, make_config, tool
from test_once_json import compare

from exporter.config import ConfigError, RedfishConfig, load_config
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.meters.redfish import RedfishMeter, RedfishPoller
from exporter.meters.select import NodeMeters
from exporter.snapshot import SourceUp
from exporter.snapshot_json import snapshot_document

PASSWORD = "pa55-w0rd"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    tool("openssl", "Debian package openssl")
    return make_tls(tmp_path_factory.mktemp("bmc-tls"))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A mounted Kubernetes Secret: one file per key."""
    directory = tmp_path / "bmc-secret"
    directory.mkdir()
    (directory / "username").write_text("admin\n")
    (directory / "password").write_text(PASSWORD + "\n")
    return directory


def settings(bmc: FakeBmc, secret: Path, **extra: Any) -> RedfishConfig:
    values: dict[str, Any] = {"url": bmc.url, "username_file": str(secret / "username"),
                              "password_file": str(secret / "password")}
    if bmc.ca_file is not None:
        values["ca_file"] = str(bmc.ca_file)
    values.update(extra)
    return load_config({"redfish": values}, None, environ={}).redfish


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def poller(bmc: FakeBmc, secret: Path, clock: Clock, interval: float = 5.0, **extra: Any) -> RedfishPoller:
    return RedfishPoller(settings(bmc, secret, **extra), interval, clock)


@pytest.fixture
def bmc(tls: TlsFiles) -> Iterator[FakeBmc]:
    with FakeBmc(tls=tls, energy_joules=987_654.321, energy_joules_property=True, lifetime_s=60) as server:
        yield server


# --- which reading, and exact joules ----------------------------------------------------------------------------


def test_energy_joules_counter_is_followed_exactly(bmc: FakeBmc, secret: Path, clock: Clock) -> None:
    reader = poller(bmc, secret, clock)
    assert reader.poll_once() == 5.0
    assert reader.plan is not None and reader.plan.name == "EnvironmentMetrics.EnergyJoules"
    assert reader.latest is not None and reader.latest.energy_uj == 987_654_321_000
    assert reader.latest.method == "energy_counter" and reader.latest.watts == 374.0
    bmc.set_power(420.0)
    bmc.advance(5.0)
    reader.poll_once()
    assert reader.latest.energy_uj == 987_654_321_000 + 2_100_000_000
    reader.client.close()


def test_fine_kwh_counter_is_used_and_converted(tls: TlsFiles, secret: Path, clock: Clock) -> None:
    with FakeBmc(tls=tls, energy_joules=55_555_555.5, lifetime_s=60) as bmc:
        reader = poller(bmc, secret, clock)
        reader.poll_once()
        assert reader.plan is not None and reader.plan.name == "EnvironmentMetrics.EnergykWh"
        assert reader.latest is not None
        first = reader.latest.energy_uj
        assert first == pytest.approx(55_555_555.5e6, rel=1e-12)
        bmc.advance(10.0)  # 374 W x 10 s
        reader.poll_once()
        assert reader.latest.energy_uj - first == pytest.approx(3_740_000_000, abs=10)  # float kWh: µJ rounding
        reader.client.close()


@pytest.mark.parametrize(("resources", "energy", "decimals", "plan"), [
    ({"EnvironmentMetrics"}, 8_000_000.0, 1, "EnvironmentMetrics.power"),  # 0.1 kWh steps: too coarse
    ({"EnvironmentMetrics"}, None, None, "EnvironmentMetrics.power"),  # no energy sensor
    ({"PowerSubsystem"}, None, None, "PowerSubsystem.power"),  # the PSUs' input power summed
    ({"Power"}, 8_000_000.0, None, "Power.power"),  # the deprecated resource: power only
])
def test_power_is_integrated_by_the_trapezoid_rule(tls: TlsFiles, secret: Path, clock: Clock,
                                                   resources: set[str], energy: float | None,
                                                   decimals: int | None, plan: str) -> None:
    with FakeBmc(tls=tls, resources=resources, energy_joules=energy, kwh_decimals=decimals, power_watts=300.0,
                 lifetime_s=60) as bmc:
        reader = poller(bmc, secret, clock)
        reader.poll_once()
        assert reader.plan is not None and reader.plan.name == plan
        assert reader.latest is not None and reader.latest.energy_uj == 0
        bmc.set_power(500.0)
        clock.now += 10.0
        reader.poll_once()
        assert reader.latest.energy_uj == 4_000_000_000  # (300 + 500) / 2 W x 10 s
        assert reader.latest.method == "power_integration" and reader.latest.watts == 500.0
        clock.now += 4.0
        reader.poll_once()
        assert reader.latest.energy_uj == 6_000_000_000
        reader.client.close()


def test_psu_energy_counters_are_summed(tls: TlsFiles, secret: Path, clock: Clock) -> None:
    with FakeBmc(tls=tls, resources={"PowerSubsystem"}, energy_joules=12_345_678.9, psu_shares=(0.25, 0.75),
                 lifetime_s=60) as bmc:
        reader = poller(bmc, secret, clock)
        reader.poll_once()
        assert reader.plan is not None and reader.plan.name == "PowerSubsystem.EnergykWh"
        assert reader.latest is not None and reader.latest.energy_uj == pytest.approx(12_345_678.9e6, rel=1e-12)
        assert reader.latest.watts == 374.0
        reader.client.close()


def test_node_name_in_the_url(bmc: FakeBmc, secret: Path) -> None:
    port = bmc.url.rsplit(":", 1)[1]
    config = settings(bmc, secret, url=f"https://{{node}}:{port}")
    meter = RedfishMeter.open(config, 5.0, node_name="127.0.0.1")
    try:
        assert meter.zone.device == f"127.0.0.1:{port}" and meter.poller.latest is not None
    finally:
        meter.close()


def test_several_chassis_need_a_choice(bmc: FakeBmc, secret: Path, clock: Clock) -> None:
    reader = poller(bmc, secret, clock, chassis="2U")
    reader.poll_once()
    assert not reader.up and "no chassis '2U' (the BMC has: 1U)" in reader.error
    reader.client.close()
    reader = poller(bmc, secret, clock, chassis="1U")
    reader.poll_once()
    assert reader.up and reader.plan is not None and reader.plan.chassis == "1U"
    reader.client.close()


# --- authentication and TLS -------------------------------------------------------------------------------------


def test_session_auth_logs_in_once_relogs_after_expiry_and_logs_out(bmc: FakeBmc, secret: Path,
                                                                    clock: Clock) -> None:
    reader = poller(bmc, secret, clock)
    for _ in range(3):
        reader.poll_once()
    assert [r.method for r in bmc.requests].count("POST") == 1 and bmc.sessions == 1
    bmc.expire_sessions()
    reader.poll_once()
    assert reader.up and [r.method for r in bmc.requests].count("POST") == 2
    reader.client.close()
    assert bmc.sessions == 0 and bmc.requests[-1].method == "DELETE"
    assert {r.auth for r in bmc.requests if r.method == "GET" and r.path != "/redfish/v1"} <= {"session",
                                                                                              "bad-session"}


def test_basic_auth_sends_credentials_every_time(bmc: FakeBmc, secret: Path, clock: Clock) -> None:
    reader = poller(bmc, secret, clock, auth="basic")
    reader.poll_once()
    reader.poll_once()
    assert reader.up and bmc.sessions == 0
    assert {r.auth for r in bmc.requests if r.path != "/redfish/v1"} == {"basic"}
    reader.client.close()


def test_password_is_reread_from_the_secret(bmc: FakeBmc, secret: Path, clock: Clock) -> None:
    reader = poller(bmc, secret, clock, auth="basic")
    reader.poll_once()
    bmc.password = "rotated"
    reader.poll_once()
    assert not reader.up
    (secret / "password").write_text("rotated\n")  # the Secret was updated: the kubelet rewrote the file
    reader.poll_once()
    assert reader.up
    reader.client.close()


def test_wrong_credentials_one_log_line_backoff_and_source_down(bmc: FakeBmc, secret: Path, clock: Clock,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exporter.meters.redfish")
    bmc.password = "not-what-the-secret-says"
    reader = poller(bmc, secret, clock, interval=2.0)
    delays = [reader.poll_once() for _ in range(6)]
    assert delays == [4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "the accounting logs the zone down"
    assert "rejected the credentials of user 'admin' (HTTP 401)" in reader.error
    assert "Fix: check redfish.username" in reader.error
    assert not reader.up and reader.errors == 6
    assert all(r.status == 401 for r in bmc.requests if r.method == "POST")
    reader.client.close()


def test_wrong_credentials_in_the_engine_source_down_and_retried_with_backoff(
        bmc: FakeBmc, secret: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bmc.password = "not-what-the-secret-says"
    proc = ProcTree(tmp_path / "proc")
    config = make_config(proc_path=proc.root, sys_path=tmp_path, meters="model", workloads=False, gpus=False,
                         redfish={"url": bmc.url, "username_file": str(secret / "username"),
                                  "password_file": str(secret / "password"), "ca_file": str(bmc.ca_file),
                                  "interval": 1})
    engine = Engine.start(config)
    started = time.monotonic()
    while time.monotonic() - started < 3.5:
        snap = engine.tick(time.monotonic())
        time.sleep(0.25)
    engine.close()
    platform = next(s for s in snap.sources if s.source == "redfish")
    assert platform == SourceUp("redfish", bmc.url.removeprefix("https://"), False)
    logins = [r.at for r in bmc.requests if r.method == "POST"]
    assert len(logins) == 2, "1 s interval: retried after 2 s, then not before 4 s more"
    assert logins[1] - logins[0] == pytest.approx(2.0, abs=0.5)
    lines = [r.getMessage() for r in caplog.records if "redfish" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "(platform) is down: the BMC rejected the credentials of user 'admin' (HTTP 401). Fix:" in lines[0]


def test_untrusted_certificate_is_refused_with_the_fix(bmc: FakeBmc, secret: Path, clock: Clock) -> None:
    config = settings(bmc, secret).model_copy(update={"ca_file": None})
    reader = RedfishPoller(config, 5.0, clock)
    reader.poll_once()
    assert not reader.up and "certificate was refused" in reader.error
    assert not bmc.requests, "nothing was sent to a BMC that could not prove who it is"
    insecure = RedfishPoller(config.model_copy(update={"tls_insecure_skip_verify": True}), 5.0, clock)
    insecure.poll_once()
    assert insecure.up
    insecure.client.close()


def test_settings_errors_are_one_line() -> None:
    cases = {
        ("url", "ftp://bmc"): "must be https://HOST[:PORT]",
        ("url", "https://admin:pw@bmc"): "credentials go in username/password_file",
        ("url", "https://bmc/redfish/v1"): "must be only the scheme, host and port",
    }
    for (key, value), message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as caught:
            load_config({"redfish": {key: value, "username": "a", "password_file": "/p"}}, None, environ={})
        assert "\n" not in str(caught.value) and "Fix:" in str(caught.value)
    with pytest.raises(ConfigError, match=r"redfish.password_file is not.* Fix: set redfish.password_file to a file"):
        load_config({"redfish": {"url": "https://bmc", "username": "a"}}, None, environ={})
    with pytest.raises(ConfigError, match=r"neither redfish.username nor .* Fix: set redfish.username_file to a file"):
        load_config({"redfish": {"url": "https://bmc", "password_file": "/p"}}, None, environ={})
    assert load_config({"redfish": {"username": "a"}}, None, environ={}).redfish.url == "", "off without a URL"


# --- a slow or hanging BMC never delays a tick ------------------------------------------------------------------


def bmc_meter(engine: Engine) -> RedfishMeter:
    assert isinstance(engine.meter, NodeMeters)
    meter = engine.meter.get("redfish")
    assert isinstance(meter, RedfishMeter)
    return meter


def test_a_hanging_bmc_never_stretches_a_tick(bmc: FakeBmc, secret: Path, tmp_path: Path) -> None:
    proc = ProcTree(tmp_path / "proc")
    config = make_config(proc_path=proc.root, sys_path=tmp_path, meters="model", workloads=False, gpus=False,
                         interval=0.5, redfish={"url": bmc.url, "username_file": str(secret / "username"),
                                                "password_file": str(secret / "password"),
                                                "ca_file": str(bmc.ca_file), "timeout": 1, "interval": 1})
    engine = Engine.start(config)
    engine.tick(time.monotonic())
    bmc.hang(30.0, count=None)  # from now on every request waits 30 s (ended when the fake closes)
    durations = []
    started = time.monotonic()
    while time.monotonic() - started < 4.0:
        before = time.monotonic()
        snap = engine.tick(before)
        durations.append(time.monotonic() - before)
        time.sleep(0.5)
    assert max(durations) < 0.25, durations  # the tick never waits for the BMC
    redfish = bmc_meter(engine)
    assert redfish.poller.error.startswith("no answer within 1 s")
    # Still the last good reading with its timestamp, until it is older than stale_after: then down.
    platform = next(z for z in snap.zones if z.zone.source == "redfish")
    assert platform.up
    reading = redfish.poller.latest
    assert reading is not None
    [stale] = redfish.read(reading.at + redfish.stale_after + 1, None)
    assert stale.energy_uj is None and stale.error.startswith("no reading for")
    engine.close()


def test_platform_joules_in_the_engine_follow_the_bmc(bmc: FakeBmc, secret: Path, tmp_path: Path) -> None:
    proc = ProcTree(tmp_path / "proc")
    config = make_config(proc_path=proc.root, sys_path=tmp_path, meters="model", workloads=False, gpus=False,
                         redfish={"url": bmc.url, "username_file": str(secret / "username"),
                                  "password_file": str(secret / "password"), "ca_file": str(bmc.ca_file),
                                  "interval": 1})
    engine = Engine.start(config)
    engine.tick(time.monotonic())
    poller = bmc_meter(engine).poller
    first = poller.latest
    bmc.advance(5.0)  # 374 W x 5 s
    deadline = time.monotonic() + 5
    while poller.latest is first and time.monotonic() < deadline:
        time.sleep(0.02)
    snap = engine.tick(time.monotonic())
    engine.close()
    platform = next(z for z in snap.zones if z.zone.source == "redfish")
    assert (platform.zone.zone, platform.up, platform.joules_uj) == ("platform", True, 1_870_000_000)
    assert platform.watts == 374.0 and platform.reading_age_s is not None and 0 <= platform.reading_age_s < 5
    # The exposition and `once --json` say the same, the reading's age included.
    text = Renderer().render(snap).text.decode()
    assert "wattlens_node_platform_reading_age_seconds" in compare(text, snapshot_document(snap))


class DocumentClient:
    """A client answering GETs from a dict of documents (for the chassis choice, which the fake BMC's single
    chassis cannot show)."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        self.documents = documents
        self.sessions_path = ""

    def get(self, path: str, public: bool = False) -> dict[str, Any]:
        return self.documents[path.rstrip("/")]


def _chassis(ident: str, power: bool, system: bool) -> dict[str, Any]:
    document: dict[str, Any] = {"Id": ident, "Links": {"ComputerSystems": [{"@odata.id": "/redfish/v1/Systems/1"}]
                                                       if system else []}}
    if power:
        document["Power"] = {"@odata.id": f"/redfish/v1/Chassis/{ident}/Power"}
    return document


@pytest.mark.parametrize(("chassis", "chosen"), [
    ({"Enclosure": (False, False), "System": (True, True)}, "System"),  # the one with power readings
    ({"Blade": (True, True), "Backplane": (True, False)}, "Blade"),  # both: the one linked to the system
    ({"A": (True, True), "B": (True, True)}, None),  # the operator must say which
])
def test_several_chassis_the_one_with_power(chassis: dict[str, tuple[bool, bool]], chosen: str | None) -> None:
    from exporter.meters.redfish import Discovery, RedfishError

    members = [f"/redfish/v1/Chassis/{name}" for name in chassis]
    client = DocumentClient({path: _chassis(name, *chassis[name]) for path, name in zip(members, chassis, strict=True)})
    discovery = Discovery(client, "", 5.0)  # type: ignore[arg-type]
    if chosen is None:
        with pytest.raises(RedfishError, match="more than one with power readings"):
            discovery._choose(members)
    else:
        assert discovery._choose(members) == f"/redfish/v1/Chassis/{chosen}"
