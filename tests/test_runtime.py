"""The process model (docs/architecture.md): the CLI validates with pydantic, then exec()s into the daemon, which
gets the settings as records and never imports pydantic; same PID, same values, the same derived rules."""

from __future__ import annotations

import base64
import http.client
import inspect
import os
import pickle
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from helpers import REPO, RaplTree, make_config
from pydantic import BaseModel

from exporter import handover
from exporter.config import CarbonConfig, Config, ModelConfig, RedfishConfig, load_config, record_of
from exporter.handover import RUNTIME_FD_ENV, HandoverError, payload, receive
from exporter.runtime_config import ConfigRecord, ConfigRules, Record
from exporter.webconfig_file import load_web_config

MODELS = (Config, CarbonConfig, ModelConfig, RedfishConfig)
RULES = ("exports_processes", "walks_workloads", "otlp_url", "listen_address", "health_listen_address")
ALICE = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()  # the cheapest cost bcrypt allows


def every_nested_setting(tmp_path: Path) -> Config:
    """A configuration that sets something in every nested model, and values of every kind."""
    for name in ("user", "password", "token"):
        (tmp_path / name).write_text("x\n")
    return load_config({
        "listen": "127.0.0.1:9999", "health_listen": "[::1]:9998", "meters": "model,rapl", "idle_watts": "package=40",
        "pod_labels": "app,team", "otlp_endpoint": "https://collector:4318", "otlp_headers": "X-Org=a",
        "process_metrics": "true", "series_level": "processes", "gpu_idle_watts": "30", "interval": "2s",
        "model.cpus": "8", "model.max_watts_per_cpu": "4",
        "redfish.url": "https://{node}-bmc:8443", "redfish.username_file": str(tmp_path / "user"),
        "redfish.password_file": str(tmp_path / "password"), "redfish.interval": "10",
        "carbon.provider": "electricity_maps", "carbon.region": "DE", "carbon.token_file": str(tmp_path / "token"),
        "carbon.gpu_embodied_kg": "H100=600", "carbon.gpu_lifetime": "1095d",
    }, None, environ={"WATTLENS_NODE_NAME": "n1"})


def handed_over(config: Config, monkeypatch: pytest.MonkeyPatch, web: Any = None) -> tuple[ConfigRecord, Any]:
    """The records as the daemon reads them: through a memfd named by the variable, like exec_runtime does."""
    fd = os.memfd_create("test-settings", 0)
    os.write(fd, payload(record_of(config), record_of(web) if web is not None else None))  # type: ignore[arg-type]
    os.lseek(fd, 0, os.SEEK_SET)
    monkeypatch.setenv(RUNTIME_FD_ENV, str(fd))
    config_record, web_record = receive()
    assert RUNTIME_FD_ENV not in os.environ  # removed once read
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # and its fd closed
    return config_record, web_record


def assert_same(model: Any, record: Any, where: str = "config") -> None:
    """Every field of the model, by name, has the same value (and type) in the record; nothing else is there."""
    fields = type(model).model_fields
    assert set(vars(record)) == set(fields), where
    for name in fields:
        mine, theirs = getattr(model, name), getattr(record, name)
        if isinstance(mine, BaseModel):
            assert_same(mine, theirs, f"{where}.{name}")
        else:
            assert theirs == mine and type(theirs) is type(mine), (f"{where}.{name}", mine, theirs)


@pytest.mark.parametrize("which", ["defaults", "every nested model"])
def test_the_daemon_gets_every_setting_with_its_value(which: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config({}, None, environ={}) if which == "defaults" else every_nested_setting(tmp_path)
    record, web = handed_over(config, monkeypatch)
    assert type(record) is ConfigRecord and web is None
    assert_same(config, record)
    for name in RULES:
        rule = getattr(record, name)
        assert (rule() if callable(rule) else rule) == (
            getattr(config, name)() if callable(getattr(config, name)) else getattr(config, name)), name


@pytest.mark.parametrize("flags", [
    {},
    {"process_metrics": "true"},
    {"series_level": "processes"},
    {"series_level": "node"},
    {"workloads": "false"},
    {"series_level": "pods", "listen": "[::1]:0", "health_listen": "9876"},
    {"otlp_endpoint": "http://c:4318"},
    {"otlp_endpoint": "http://c:4318/"},
    {"otlp_endpoint": "http://vm:8428/opentelemetry/v1/metrics"},
    {"otlp_endpoint": "https://c:4317", "otlp_protocol": "grpc"},
    {"listen": "9875"},
    {"listen": "0.0.0.0:1"},
])
def test_the_shared_rules_agree_on_the_model_and_the_record(flags: dict[str, str]) -> None:
    config = make_config(**flags)
    record = record_of(config)
    for name in RULES:
        mine, theirs = getattr(config, name), getattr(record, name)
        assert (theirs() if callable(theirs) else theirs) == (mine() if callable(mine) else mine), (name, flags)


def test_the_rules_are_written_once_in_the_pydantic_free_mixin() -> None:
    for name in RULES:
        shared = inspect.getattr_static(ConfigRules, name)
        assert inspect.getattr_static(Config, name) is shared and inspect.getattr_static(ConfigRecord, name) is shared
    for model in MODELS:  # a property or method a model grows belongs in exporter/runtime_config.py
        extra = [n for n in vars(model) if not n.startswith("_") and n not in model.model_fields]
        assert set(extra) <= {"model_config", "record_type"}, (model.__name__, extra)


def test_the_record_is_read_only_and_copies_like_the_model(tmp_path: Path) -> None:
    config = every_nested_setting(tmp_path)
    record = record_of(config)
    with pytest.raises(AttributeError, match="read-only"):
        record.interval = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError, match="read-only"):
        record.redfish.url = ""  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="read-only"):
        del record.listen  # type: ignore[misc]
    # exporter/meters/redfish.py puts the node name into the BMC URL with model_copy(update=...), on either.
    for redfish in (config.redfish, record.redfish):  # type: ignore[attr-defined]
        copy = redfish.model_copy(update={"url": "https://n1-bmc:8443"})
        assert (copy.url, copy.username_file, redfish.url) == ("https://n1-bmc:8443", tmp_path / "user",
                                                                "https://{node}-bmc:8443")
    assert record == record_of(config) and record != record.model_copy(update={"interval": 1.0})


def test_the_web_config_is_handed_over_as_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  min_version: TLS13\n"
                        f"http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                        f"basic_auth_users:\n  alice: '{ALICE}'\n")
    web = load_web_config(web_file)
    _, record = handed_over(make_config(web_config_file=web_file), monkeypatch, web)
    assert type(record) is Record
    assert_same(web, record, "web")


def test_foreign_or_stale_handed_over_data_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def offer(data: bytes) -> None:
        fd = os.memfd_create("test-settings", 0)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        monkeypatch.setenv(RUNTIME_FD_ENV, str(fd))

    offer(pickle.dumps({"format": handover.FORMAT, "config": os.system}))  # a class outside the allow-list
    with pytest.raises(HandoverError, match="not a setting's type"):
        receive()
    offer(pickle.dumps({"format": handover.FORMAT + 1, "version": "0", "config": None, "web": None}))
    with pytest.raises(HandoverError, match="not this wattlens'"):
        receive()
    monkeypatch.setenv(RUNTIME_FD_ENV, "not-a-number")
    with pytest.raises(HandoverError, match="no settings to read"):
        receive()


def test_a_stray_runtime_variable_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter"], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={"PATH": "/usr/bin:/bin", RUNTIME_FD_ENV: "97"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"wattlens: {RUNTIME_FD_ENV}='97'")
    assert "Fix:" in result.stderr


# --- the real processes -------------------------------------------------------------------------------------


def start(command: list[str], *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([*command, "--listen", "127.0.0.1:0", "--interval", "0.5", "--node-name", "rt",
                                "--gpus=false", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert process.stderr is not None
    log = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        log.append(line)
        match = re.search(r"serving https?://127\.0\.0\.1:(\d+)/metrics", line)
        if match:
            return process, int(match.group(1))
        if not line:
            break
    process.kill()
    raise AssertionError("wattlens did not start:\n" + "".join(log))


def listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def assert_lean_daemon(process: subprocess.Popen[str], port: int) -> None:
    """The process that was started is the one serving, and it holds no pydantic, no YAML, no handed-over fd."""
    pid = process.pid
    fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert f"socket:[{listening_inode(port)}]" in fds  # the PID that was started serves: exec kept it
    assert not any("wattlens-settings" in fd for fd in fds)  # the memfd was closed once read
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "uvloop" in maps  # the serving runtime, for sure...
    assert "pydantic_core" not in maps and "_yaml" not in maps  # ...without the validator's libraries
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--node-name" in cmdline  # `ps` still shows how it was started


@pytest.mark.parametrize("entry", ["python -m exporter", "wattlens"])
def test_the_serving_daemon_is_the_started_process_without_pydantic(entry: str) -> None:
    script = Path(sys.executable).parent / "wattlens"
    command = [sys.executable, "-m", "exporter"] if entry != "wattlens" else [str(script)]
    assert entry != "wattlens" or script.exists(), "the venv has no wattlens console script (pip install -e .)"
    process, port = start(command, "--meters", "model")
    try:
        assert_lean_daemon(process, port)
        deadline = time.monotonic() + 20
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status == 200 and b'wattlens_ticks_total{node="rt"}' in body
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_a_config_file_tls_and_basic_auth_still_leave_the_daemon_lean(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "s.key", "-out", "s.crt",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    (tmp_path / "web.yml").write_text(f"tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n"
                                      f"basic_auth_users:\n  alice: '{ALICE}'\n")
    (tmp_path / "wattlens.yml").write_text(
        f"web_config_file: {tmp_path / 'web.yml'}\nmeters: [rapl, model]\nmodel:\n  cpus: 4\n"
        "carbon:\n  host_embodied_kg: 900\ncarbon_intensity: 300\n")
    rapl = RaplTree.copy("unreadable", tmp_path)
    process, port = start([sys.executable, "-m", "exporter"], "--config", str(tmp_path / "wattlens.yml"),
                          "--sys", str(rapl.root))
    try:
        assert_lean_daemon(process, port)
        context = ssl.create_default_context(cafile=str(tmp_path / "s.crt"))
        auth = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
        deadline = time.monotonic() + 20
        while True:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            conn.request("GET", "/metrics", headers=auth)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status == 200
        assert b'wattlens_node_cpu_joules_total{' in body and b'node="rt"' in body
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_the_daemon_entry_imports_none_of_the_validator() -> None:
    """What the exec()ed daemon imports (exporter/__main__.py → exporter.runtime): no pydantic, YAML, argparse,
    nor the modules that hold the models."""
    cli_only = ("pydantic", "pydantic_core", "yaml", "argparse", "importlib.metadata", "exporter.config",
                "exporter.cli", "exporter.webconfig_file")
    code = f"import sys, exporter.__main__, exporter.runtime; print([m for m in {cli_only!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_when_exec_is_impossible_the_cli_is_told_why_and_nothing_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    record = record_of(make_config())
    monkeypatch.setattr(sys, "executable", "")
    assert handover.exec_runtime(record, None) == "the interpreter's path is unknown"  # type: ignore[arg-type]
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    fds = set(os.listdir("/proc/self/fd"))
    why = handover.exec_runtime(record, None)  # type: ignore[arg-type]
    assert why.startswith("cannot exec /nonexistent/python3 (No such file")
    assert set(os.listdir("/proc/self/fd")) == fds  # the memfd was closed again
    assert RUNTIME_FD_ENV not in os.environ
