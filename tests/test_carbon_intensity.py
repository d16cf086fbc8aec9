"""Carbon-intensity sources (exporter/carbon/intensity.py) against a fake API on loopback and real files/FIFOs."""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_intensity import FakeIntensityServer, Reply, Request

from exporter.carbon.intensity import (
    GRAMS_PER_KWH_PER_LB_PER_MWH,
    FileIntensity,
    HttpIntensity,
    IntensityError,
    PollTiming,
    StaticIntensity,
    electricity_maps,
    json_endpoint,
    json_path_parser,
    parse_electricity_maps,
    parse_timestamp,
    parse_uk_carbon_intensity,
    uk_carbon_intensity,
    watttime,
    watttime_parser,
)

FAST = PollTiming(interval_s=0.2, timeout_s=0.5, min_backoff_s=0.05, max_backoff_s=0.4)
EM_PATH = "/v3/carbon-intensity/latest"
LOGGER = "exporter.carbon.intensity"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def em_body(grams: object, when: str = "2026-11-27T05:00:00.000Z") -> dict[str, object]:
    return {"zone": "DE", "carbonIntensity": grams, "datetime": when, "updatedAt": when,
            "emissionFactorType": "lifecycle", "isEstimated": False}


@pytest.fixture
def server():
    with FakeIntensityServer(lifetime_s=30) as fake:
        yield fake


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- response shapes and units ----------------------------------------------------------------------------------

def test_timestamps_as_the_providers_write_them():
    base = 1_516_449_600.0  # 2018-01-20T12:00:00Z
    assert parse_timestamp("2018-01-20T12:00Z") == base  # GB API: minutes, no seconds
    assert parse_timestamp("2018-01-20T12:00:00.350Z") == pytest.approx(base + 0.35)  # Electricity Maps
    assert parse_timestamp("2018-01-20T12:00:00+00:00") == base  # WattTime
    assert parse_timestamp("2018-01-20T13:30:00+01:30") == base
    assert parse_timestamp("2018-01-20T12:00:00") == base  # no zone: UTC
    for bad in ("yesterday", "2018-13-20T12:00Z", "2018-01-20", 1516449600):
        with pytest.raises(IntensityError):
            parse_timestamp(bad)


def test_electricity_maps_shape():
    reading = parse_electricity_maps(em_body(302))
    assert reading.grams_per_kwh == 302
    assert reading.observed_at == parse_timestamp("2026-11-27T05:00:00Z")
    with pytest.raises(IntensityError, match="no carbonIntensity for zone DE"):
        parse_electricity_maps(em_body(None))
    with pytest.raises(IntensityError, match="not a number"):
        parse_electricity_maps(em_body("302"))
    with pytest.raises(IntensityError, match=r"outside 0\.\.5000"):
        parse_electricity_maps(em_body(-1))
    with pytest.raises(IntensityError, match="not a JSON object"):
        parse_electricity_maps([302])


def watttime_doc(value: object, units: str = "lbs_co2_per_mwh", signal: str = "co2_moer") -> dict[str, object]:
    return {"data": [{"point_time": "2022-07-15T00:00:00+00:00", "value": value},
                     {"point_time": "2022-07-15T00:05:00+00:00", "value": 1.0}],
            "meta": {"region": "CAISO_NORTH", "signal_type": signal, "units": units,
                     "data_point_period_seconds": 300, "generated_at": "2022-07-15T00:00:00+00:00"}}


def test_watttime_converts_pounds_per_mwh_and_refuses_percentiles():
    parse = watttime_parser("co2_moer")
    reading = parse(watttime_doc(1000.0))
    assert reading.grams_per_kwh == pytest.approx(453.59237)
    assert pytest.approx(453.59237 / 1000) == GRAMS_PER_KWH_PER_LB_PER_MWH
    assert reading.observed_at == parse_timestamp("2022-07-15T00:00:00Z")
    with pytest.raises(IntensityError, match="percentile"):
        parse(watttime_doc(50, units="percentile"))  # the /v3/signal-index shape
    with pytest.raises(IntensityError, match="units 'usd_per_mwh'"):
        parse(watttime_doc(5, units="usd_per_mwh"))
    with pytest.raises(IntensityError, match="signal_type 'health_damage'"):
        parse(watttime_doc(5, signal="health_damage"))
    with pytest.raises(IntensityError, match=r"outside 0\.\.5000"):
        parse(watttime_doc(20000.0))  # 9072 g/kWh: a unit mistake, not a grid
    with pytest.raises(IntensityError, match="empty"):
        parse({"data": [], "meta": {"units": "lbs_co2_per_mwh"}})


def test_gb_carbon_intensity_national_and_regional_shapes():
    national = {"data": [{"from": "2018-01-20T12:00Z", "to": "2018-01-20T12:30Z",
                          "intensity": {"forecast": 266, "actual": 263, "index": "moderate"}}]}
    assert parse_uk_carbon_intensity(national).grams_per_kwh == 263
    national["data"][0]["intensity"]["actual"] = None  # the half-hour has not closed yet
    reading = parse_uk_carbon_intensity(national)
    assert reading.grams_per_kwh == 266
    assert reading.observed_at == 1_516_449_600.0
    regional = {"data": [{"regionid": 3, "dnoregion": "Electricity North West", "shortname": "North West England",
                          "data": [{"from": "2018-01-20T12:00Z", "to": "2018-01-20T12:30Z",
                                    "intensity": {"forecast": 120, "index": "low"}, "generationmix": []}]}]}
    assert parse_uk_carbon_intensity(regional).grams_per_kwh == 120
    with pytest.raises(IntensityError, match=r"intensity\.forecast"):
        parse_uk_carbon_intensity({"data": [{"intensity": {"actual": None, "forecast": None}}]})


def test_json_path_with_units():
    parse = json_path_parser("result.0.co2", units="kg_per_kwh", timestamp_path="result.0.t")
    reading = parse({"result": [{"co2": 0.25, "t": "2026-01-01T00:00:00Z"}]})
    assert reading.grams_per_kwh == 250
    assert reading.observed_at == parse_timestamp("2026-01-01T00:00Z")
    with pytest.raises(IntensityError, match="no key 'result'"):
        parse({"data": []})
    with pytest.raises(IntensityError, match="past the end"):
        parse({"result": []})
    with pytest.raises(IntensityError, match="holds 'x'"):
        parse({"result": [{"co2": "x"}]})
    with pytest.raises(IntensityError, match="empty segment"):
        json_path_parser("data..value")
    with pytest.raises(IntensityError, match="units 'mg'"):
        json_path_parser("value", units="mg")


# --- static and file sources ------------------------------------------------------------------------------------

def test_static_value():
    source = StaticIntensity(412.5, kind="marginal")
    status = source.latest()
    assert (status.grams_per_kwh, status.kind, status.up, status.errors) == (412.5, "marginal", True, 0)
    assert status.age_seconds(time.time()) is None
    with pytest.raises(IntensityError):
        StaticIntensity(float("nan"))


def test_file_source_follows_the_file_and_keeps_the_last_value(tmp_path: Path, caplog):
    path = tmp_path / "intensity"
    path.write_text("123.5 gCO2e/kWh\n")
    os.utime(path, (1_000, 1_000))
    source = FileIntensity(path)
    status = source.latest()
    assert (status.grams_per_kwh, status.updated_at, status.up) == (123.5, 1_000, True)
    assert status.age_seconds(1_060) == 60
    caplog.set_level(logging.DEBUG, LOGGER)
    for bad in ("", "lots", "-4", "9" * 5000):
        path.write_text(bad)
        status = source.latest()
        assert (status.grams_per_kwh, status.up) == (123.5, False)
    assert status.errors == 4
    assert "more than the 4096" in (status.last_error or "")
    path.unlink()
    assert "No such file" in (source.latest().last_error or "")
    path.write_text("200\n")
    status = source.latest()
    assert (status.grams_per_kwh, status.up, status.errors) == (200, True, 5)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last value, 123.5" in warnings[0].getMessage()
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1


def test_file_source_never_blocks_on_a_fifo_or_directory(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a FIFO with no writer: a blocking open would wait forever
    source = FileIntensity(fifo)
    started = time.monotonic()
    status = source.latest()
    assert time.monotonic() - started < 0.5
    assert not status.up and "not a regular file" in (status.last_error or "")
    # A writer holding the FIFO open does not help either: still refused without reading.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert "not a regular file" in (source.latest().last_error or "")
    finally:
        os.close(fd)
    assert "not a regular file" in (FileIntensity(tmp_path).latest().last_error or "")


# --- the HTTP source --------------------------------------------------------------------------------------------

def test_http_source_follows_the_values(server: FakeIntensityServer):
    value = {"grams": 100}
    server.route(EM_PATH, lambda _r: Reply.json(em_body(value["grams"])))
    source = electricity_maps("DE", "secret-token", base_url=server.url(""), timing=FAST)
    source.start()
    try:
        wait_until(lambda: source.latest().grams_per_kwh == 100)
        value["grams"] = 250
        wait_until(lambda: source.latest().grams_per_kwh == 250)
        status = source.latest()
        assert (status.up, status.errors, status.kind) == (True, 0, "average")
        assert status.observed_at == parse_timestamp("2026-11-27T05:00Z")
        assert status.age_seconds(time.time()) < 1.0
    finally:
        source.close()
    requests = server.requests(EM_PATH)
    assert all(r.headers.get("auth-token") == "secret-token" for r in requests)
    assert "zone=DE" in requests[0].query and "emissionFactorType=lifecycle" in requests[0].query
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert gaps and min(gaps) >= FAST.interval_s - 0.02  # healthy: polled at the interval, not faster


def test_outage_keeps_the_last_value_with_its_age(server: FakeIntensityServer, caplog):
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = Clock(1_000.0)
    source = HttpIntensity(name="em", url=server.url(EM_PATH), parser=parse_electricity_maps, kind="average",
                           timing=FAST, wall=clock)
    server.route(EM_PATH, Reply.json(em_body(321)))
    assert source.poll_once() == FAST.interval_s
    server.route(EM_PATH, Reply(503, b"maintenance"))
    for step in range(3):
        clock.now += 60
        assert source.poll_once() <= FAST.max_backoff_s
        status = source.latest()
        assert (status.grams_per_kwh, status.up, status.errors) == (321, False, step + 1)
        assert status.age_seconds(clock.now) == 60 * (step + 1)  # the value ages through the outage
        assert status.last_error == f"HTTP 503 from {server.url(EM_PATH)}"
    server.route(EM_PATH, Reply.json(em_body(280)))
    clock.now += 60
    assert source.poll_once() == FAST.interval_s
    status = source.latest()
    assert (status.grams_per_kwh, status.up, status.errors, status.age_seconds(clock.now)) == (280, True, 3, 0)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert warnings == [f"carbon intensity em unusable (HTTP 503 from {server.url(EM_PATH)}); "
                        "keeping the last value, 321 gCO2e/kWh"]


def test_backoff_grows_with_jitter_and_resets(server: FakeIntensityServer):
    server.route(EM_PATH, Reply(503))
    source = HttpIntensity(name="em", url=server.url(EM_PATH), parser=parse_electricity_maps, kind="average",
                           timing=FAST, rng=random.Random(7))
    expected = random.Random(7)
    for failures in range(1, 8):
        bound = min(FAST.max_backoff_s, FAST.min_backoff_s * 2 ** (failures - 1))
        assert source.poll_once() == pytest.approx(bound * expected.uniform(0.5, 1.0))
    server.route(EM_PATH, Reply(429, headers={"Retry-After": "3"}))
    assert source.poll_once() == FAST.max_backoff_s  # Retry-After honoured up to the cap
    server.route(EM_PATH, Reply.json(em_body(100)))
    assert source.poll_once() == FAST.interval_s
    server.route(EM_PATH, Reply(503))
    assert source.poll_once() <= FAST.min_backoff_s  # the count starts again after a success


def test_backoff_measured_from_the_request_log(server: FakeIntensityServer):
    server.route(EM_PATH, Reply(503))
    source = electricity_maps("DE", "t", base_url=server.url(""), timing=FAST)
    source.start()
    try:
        wait_until(lambda: len(server.requests(EM_PATH)) >= 8, timeout=10)
    finally:
        source.close()
    arrivals = [r.at for r in server.requests(EM_PATH)][:8]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    for failures, gap in enumerate(gaps, start=1):
        bound = min(FAST.max_backoff_s, FAST.min_backoff_s * 2 ** (failures - 1))
        # the drawn delay is within [bound/2, bound]; the request itself and scheduling add a little
        assert bound / 2 - 0.01 <= gap <= bound + 0.15, (failures, gap, gaps)
    assert gaps[-1] > 2 * FAST.min_backoff_s  # it grew


def test_a_hanging_server_never_delays_the_caller(server: FakeIntensityServer):
    server.route(EM_PATH, Reply.json(em_body(150)))
    source = electricity_maps("DE", "t", base_url=server.url(""), timing=FAST)
    source.start()
    try:
        wait_until(lambda: source.latest().grams_per_kwh == 150)
        server.route(EM_PATH, Reply(hang=True))
        hung_from = time.monotonic()
        slowest = 0.0
        while source.latest().up and time.monotonic() - hung_from < 3:
            started = time.perf_counter()
            status = source.latest()  # what the tick calls
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.002)
        status = source.latest()
        failed_after = time.monotonic() - server.requests(EM_PATH)[-1].at
        assert not status.up and status.grams_per_kwh == 150
        assert status.last_error == f"no complete response from {server.url(EM_PATH)} within 0.5 s"
        assert failed_after < FAST.timeout_s + 0.5  # the deadline held
        assert slowest < 0.01, f"latest() took {slowest * 1000:.1f} ms while the server hung"
        # close() aborts the request in flight instead of waiting for its deadline
        wait_until(lambda: len(server.requests(EM_PATH)) >= 3)
        started = time.monotonic()
    finally:
        source.close()
        server.release()
    assert time.monotonic() - started < 0.4


def test_a_trickling_server_is_cut_off_at_the_deadline(server: FakeIntensityServer):
    # Each byte arrives well within the socket timeout, so only the whole-request deadline stops it.
    server.route(EM_PATH, Reply(200, b'{"zone": "DE", "carbonIntensity": 100}', trickle_s=0.1))
    source = electricity_maps("DE", "t", base_url=server.url(""), timing=FAST)
    started = time.monotonic()
    try:
        source.poll_once()
    finally:
        server.release()
    assert time.monotonic() - started < FAST.timeout_s + 0.3
    assert source.latest().last_error == f"no complete response from {server.url(EM_PATH)} within 0.5 s"


def test_bad_json_logs_one_line_and_counts_every_failure(server: FakeIntensityServer, caplog):
    caplog.set_level(logging.DEBUG, LOGGER)
    source = HttpIntensity(name="em", url=server.url(EM_PATH), parser=parse_electricity_maps, kind="average",
                           timing=FAST)
    server.route(EM_PATH, Reply.json(em_body(90)))
    source.poll_once()
    server.route(EM_PATH, Reply(200, b'{"zone": "DE", "carbonIntensity": 9'))
    for _ in range(5):
        source.poll_once()
    status = source.latest()
    assert (status.grams_per_kwh, status.up, status.errors) == (90, False, 5)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is not JSON" in warnings[0]
    server.route(EM_PATH, Reply(200, b"\xff\xfe not even text"))
    source.poll_once()
    server.route(EM_PATH, Reply(200, b"x" * (2 << 20)))
    source.poll_once()
    assert "larger than 1048576 bytes" in (source.latest().last_error or "")
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1


def test_watttime_logs_in_converts_units_and_logs_in_again_on_401(server: FakeIntensityServer, caplog):
    caplog.set_level(logging.DEBUG, LOGGER)
    tokens = {"current": "jwt-1"}

    def login(request: Request) -> Reply:
        if request.headers.get("authorization") != "Basic dXNlcjpwYXNz":  # user:pass
            return Reply(403)
        return Reply.json({"token": tokens["current"]})

    def forecast(request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {tokens['current']}":
            return Reply(401)
        return Reply.json(watttime_doc(1000.0))

    server.route("/login", login)
    server.route("/v3/forecast", forecast)
    source = watttime("CAISO_NORTH", "user", "pass", base_url=server.url(""), timing=FAST)
    assert source.poll_once() == FAST.interval_s
    status = source.latest()
    assert (status.grams_per_kwh, status.kind) == (pytest.approx(453.59237), "marginal")
    query = server.requests("/v3/forecast")[0].query
    assert "region=CAISO_NORTH" in query and "signal_type=co2_moer" in query and "horizon_hours=0" in query
    source.poll_once()
    assert len(server.requests("/login")) == 1  # the token is reused
    tokens["current"] = "jwt-2"  # the old token is refused from now on
    assert source.poll_once() == FAST.interval_s
    assert len(server.requests("/login")) == 2 and source.latest().up
    server.route("/v3/forecast", lambda _r: Reply.json(watttime_doc(50, units="percentile")))
    source.poll_once()
    source.poll_once()
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "percentile" in warnings[0]
    assert "pass" not in warnings[0]


def test_watttime_bad_credentials(server: FakeIntensityServer):
    server.route("/login", Reply(403))
    source = watttime("CAISO_NORTH", "user", "wrong", base_url=server.url(""), timing=FAST)
    source.poll_once()
    status = source.latest()
    assert (status.grams_per_kwh, status.up) == (None, False)
    assert status.last_error == f"login at {server.url('/login')} failed: HTTP 403"


def test_gb_api_and_generic_json_over_http(server: FakeIntensityServer):
    server.route("/regional/regionid/3", Reply.json(
        {"data": [{"regionid": 3, "data": [{"from": "2018-01-20T12:00Z", "intensity": {"forecast": 120}}]}]}))
    source = uk_carbon_intensity(region_id=3, base_url=server.url(""), timing=FAST)
    source.poll_once()
    assert (source.latest().grams_per_kwh, source.name) == (120, "carbonintensity.org.uk:region3")
    server.route("/co2", Reply.json({"now": {"kg_per_mwh": 75}}))
    generic = json_endpoint(server.url("/co2?key=abc"), "now.kg_per_mwh", units="kg_per_mwh", kind="marginal",
                            headers={"X-Api-Key": "k"}, timing=FAST)
    generic.poll_once()
    assert (generic.latest().grams_per_kwh, generic.kind) == (75, "marginal")
    assert server.requests("/co2")[0].headers["x-api-key"] == "k"
    server.route("/co2", Reply(500))
    generic.poll_once()
    assert generic.latest().last_error == f"HTTP 500 from {server.url('/co2')}"  # the query (a key) is not logged
    with pytest.raises(IntensityError, match="region_id 18"):
        uk_carbon_intensity(region_id=18)


def test_connection_refused_is_a_failure_not_a_crash():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = electricity_maps("DE", "t", base_url=f"http://127.0.0.1:{port}", timing=FAST)
    source.poll_once()
    status = source.latest()
    assert (status.up, status.errors, status.grams_per_kwh) == (False, 1, None)
    assert "refused" in (status.last_error or "").lower()


def test_bad_settings_are_refused_up_front():
    with pytest.raises(IntensityError, match="http:// or https://"):
        json_endpoint("file:///etc/passwd", "value")
    with pytest.raises(IntensityError, match="interval_s"):
        PollTiming(interval_s=0)
    with pytest.raises(IntensityError, match="below min_backoff_s"):
        PollTiming(min_backoff_s=10, max_backoff_s=1)
