"""The command line: a flag for every setting (generated from the model, help grouped), flag mistakes as one
line, log formats for log shippers, and a pipe reader that leaves early."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, Daemon, RaplTree

from exporter.carbon.embodied import GPU_EMBODIED_KG
from exporter.cli import build_parser
from exporter.config import Config, load_config, settings
from exporter.logs import JsonFormatter, LogfmtFormatter

# A value for every setting, different from its default, as a flag or variable would give it, and what it
# becomes. A new setting fails test_every_setting_has_a_working_flag_and_variable until it is listed here.
SAMPLES: dict[str, tuple[str, Any]] = {
    "interval": ("2s", 2.0),
    "listen": ("127.0.0.1:1234", "127.0.0.1:1234"),
    "health_listen": ("9876", ":9876"),
    "max_connections_per_peer": ("16", 16),
    "sys_path": ("/host/sys", Path("/host/sys")),
    "proc_path": ("/host/proc", Path("/host/proc")),
    "cgroup_root": ("/host/cgroup", Path("/host/cgroup")),
    "meters": ("model", ("model",)),
    "idle_policy": ("ratio", "ratio"),
    "idle_watts": ("package=40,dram=6", {"package": 40.0, "dram": 6.0}),
    "idle_window": ("2h", 7200.0),
    "idle_quantile": ("0.1", 0.1),
    "max_zone_watts": ("900", 900.0),
    "idle_attribution": ("cpu", "cpu"),
    "workloads": ("false", False),
    "workload_ttl": ("1m", 60.0),
    "gpus": ("false", False),
    "gpu_idle_watts": ("55", 55.0),
    "gpu_poll_interval": ("500ms", 0.5),
    "gpu_tail": ("2s", 2.0),
    "nvml_timeout": ("500ms", 0.5),
    "process_metrics": ("true", True),
    "process_top_n": ("7", 7),
    "max_series": ("200", 200),
    "series_level": ("pods", "pods"),
    "kubelet_log_path": ("/host/log", Path("/host/log")),
    "kubernetes_api": ("true", True),
    "kubernetes_api_server": ("https://api:6443", "https://api:6443"),
    "kubernetes_token_file": ("/t", Path("/t")),
    "kubernetes_ca_file": ("/ca", Path("/ca")),
    "pod_labels": ("app,team", ("app", "team")),
    "carbon_intensity": ("300", 300.0),
    "carbon_intensity_file": ("/run/carbon", Path("/run/carbon")),
    "cluster_name": ("fleet-1", "fleet-1"),
    "otlp_endpoint": ("http://collector:4318/v1/metrics", "http://collector:4318/v1/metrics"),
    "otlp_protocol": ("grpc", "grpc"),
    "otlp_interval": ("1m", 60.0),
    "otlp_temporality": ("delta", "delta"),
    "otlp_timeout": ("2s", 2.0),
    "otlp_compression": ("none", "none"),
    "otlp_queue": ("9", 9),
    "otlp_headers": ("X-Scope-OrgID=fleet-1", {"X-Scope-OrgID": "fleet-1"}),
    "otlp_resource_attributes": ("deployment.environment=prod", {"deployment.environment": "prod"}),
    "otlp_ca_file": ("/etc/ca.pem", Path("/etc/ca.pem")),
    "otlp_client_cert_file": ("/etc/c.pem", Path("/etc/c.pem")),
    "otlp_client_key_file": ("/etc/k.pem", Path("/etc/k.pem")),
    "web_config_file": ("/etc/web.yml", Path("/etc/web.yml")),
    "node_name": ("n7", "n7"),
    "log_level": ("debug", "debug"),
    "log_format": ("json", "json"),
    "model.idle_watts_per_cpu": ("0.5", 0.5),
    "model.max_watts_per_cpu": ("4.5", 4.5),
    "model.cpus": ("8", 8),
    "meter_failover_after": ("5m", 300.0),
    "max_platform_watts": ("12000", 12000.0),
    "redfish.url": ("https://bmc.example:8443", "https://bmc.example:8443"),
    "redfish.chassis": ("1U", "1U"),
    "redfish.username": ("admin", "admin"),
    "redfish.username_file": ("/run/bmc/username", Path("/run/bmc/username")),
    "redfish.password_file": ("/run/bmc/password", Path("/run/bmc/password")),
    "redfish.auth": ("basic", "basic"),
    "redfish.ca_file": ("/run/bmc/ca.pem", Path("/run/bmc/ca.pem")),
    "redfish.tls_insecure_skip_verify": ("true", True),
    "redfish.timeout": ("2s", 2.0),
    "redfish.interval": ("30s", 30.0),
    "carbon.provider": ("uk_carbon_intensity", "uk_carbon_intensity"),
    "carbon.kind": ("marginal", "marginal"),
    "carbon.url": ("https://intensity.example/v1", "https://intensity.example/v1"),
    "carbon.region": ("DE", "DE"),
    "carbon.token_file": ("/run/em/token", Path("/run/em/token")),
    "carbon.username": ("wt-user", "wt-user"),
    "carbon.password_file": ("/run/wt/password", Path("/run/wt/password")),
    "carbon.signal_type": ("co2_aoer", "co2_aoer"),
    "carbon.emission_factor_type": ("direct", "direct"),
    "carbon.value_path": ("data.0.value", "data.0.value"),
    "carbon.units": ("lb_per_mwh", "lb_per_mwh"),
    "carbon.timestamp_path": ("data.0.point_time", "data.0.point_time"),
    "carbon.poll_interval": ("1m", 60.0),
    "carbon.timeout": ("2s", 2.0),
    "carbon.max_backoff": ("1h", 3600.0),
    "carbon.embodied": ("false", False),
    "carbon.host_embodied_kg": ("1633", 1633.0),
    "carbon.lifetime": ("2191.5d", 2191.5 * 86400),
    "carbon.gpu_embodied_kg": ("H100=600", {**GPU_EMBODIED_KG, "H100": 600.0}),
    "carbon.gpu_default_embodied_kg": ("150", 150.0),
    "carbon.gpu_lifetime": ("1095d", 1095 * 86400.0),
}
# Settings that are only valid with others (a BMC URL needs its credentials), given alongside in each layer.
COMPANIONS: dict[str, dict[str, str]] = {
    "carbon.username": {"carbon.provider": "watttime", "carbon.region": "CAISO_NORTH",
                        "carbon.password_file": "/run/wt/password"},
    "redfish.url": {"redfish.username": "admin", "redfish.password_file": "/run/bmc/password"},
}


def _value(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_every_setting_has_a_working_flag_and_variable() -> None:
    keys = [s.key for s in settings()]
    assert sorted(keys) == sorted(SAMPLES), "list the new setting in SAMPLES"
    default = load_config({}, None, environ={})
    for setting in settings():
        text, expected = SAMPLES[setting.key]
        assert _value(default, setting.key) != expected, setting.key
        companions = {s.flag: v for s in settings() for k, v in COMPANIONS.get(setting.key, {}).items() if s.key == k}
        for command in ("serve", "once", "check"):
            argv = [command, f"{setting.flag}={text}", *(f"{flag}={value}" for flag, value in companions.items())]
            args = build_parser().parse_args(argv)
            flags = {s.key: getattr(args, s.key) for s in settings() if getattr(args, s.key) is not None}
            assert _value(load_config(flags, None, environ={}), setting.key) == expected, (command, setting.flag)
        env = {s.env: v for s in settings() for k, v in COMPANIONS.get(setting.key, {}).items() if s.key == k}
        from_env = load_config({}, None, environ={setting.env: text, **env})
        assert _value(from_env, setting.key) == expected, setting.env


@pytest.mark.parametrize(("argv", "expected"), [
    (["--gpus"], "true"), (["--gpus=no"], "no"), (["--no-gpus"], "false"), (["--gpus", "0"], "0"),
])
def test_switches_take_an_optional_value(argv: list[str], expected: str) -> None:
    assert build_parser().parse_args(["serve", *argv]).gpus == expected


def test_help_lists_every_flag_under_its_group_with_its_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True,
                            timeout=30, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"}, cwd=REPO)
    assert result.returncode == 0
    text = result.stdout
    headings = {match.group(1): match.start() for match in re.finditer(r"^([A-Z][A-Za-z ]+):$", text, re.M)}
    groups = list(dict.fromkeys(s.group for s in settings()))
    assert [g for g in headings if g in groups] == groups  # every group, in the model's order
    for setting in settings():
        at = text.index(f"  {setting.flag} ")
        group_start = headings[setting.group]
        later = [start for start in headings.values() if start > group_start]
        assert group_start < at < min(later, default=len(text)), f"{setting.flag} is not under {setting.group}"
        assert f"[{setting.env}]" in text
    assert "Durations take units" in text


@pytest.mark.parametrize(("argv", "expected"), [
    (["--intervall", "3"], "unrecognized arguments: --intervall 3. Fix: did you mean --interval?"),
    (["once", "--jsn"], "Fix: did you mean --json? Otherwise see 'wattlens once --help'"),
    (["check", "--secs", "1"], "Fix: did you mean --seconds?"),
    (["--listen"], "argument --listen: expected one argument. Fix: see 'wattlens serve --help'"),
    (["start"], "Fix: the commands are serve, once, check"),
])
def test_a_bad_flag_is_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin"}, cwd=REPO)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("wattlens: ") and expected in result.stderr


def _record(message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("exporter.test", logging.WARNING, __file__, 1, message, None, exc_info)
    record.created, record.msecs = 1_700_000_000.25, 250.0
    return record


def test_json_log_records_are_one_line_each() -> None:
    line = JsonFormatter().format(_record('reading "x"\nfailed', exc=True))
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["time"] == "2023-11-14T22:13:20.250Z"
    assert (fields["level"], fields["logger"], fields["msg"]) == ("warning", "exporter.test", 'reading "x"\nfailed')
    assert "ValueError: boom" in fields["error"]


def test_logfmt_quotes_what_needs_quoting() -> None:
    line = LogfmtFormatter().format(_record('meter rapl: unavailable "x=1"\nnext', exc=True))
    assert "\n" not in line
    assert line.startswith('time=2023-11-14T22:13:20.250Z level=warning logger=exporter.test msg="meter rapl: '
                           'unavailable \\"x=1\\"\\nnext" error="Traceback')
    assert LogfmtFormatter().format(_record("plain")).endswith(" msg=plain")


@pytest.mark.parametrize("log_format", ["json", "logfmt", "text"])
def test_the_daemon_logs_in_the_chosen_format(log_format: str, tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-laptop", tmp_path)
    with Daemon("--sys", str(tree.root), "--interval", "0.5", "--node-name", "logs",
                env={"WATTLENS_LOG_FORMAT": log_format}) as daemon:
        daemon.wait_ready()
        code, log = daemon.stop()
    assert code == 0
    lines = log.strip().splitlines()
    assert any("serving http://127.0.0.1:" in line for line in lines)
    for line in lines:
        if log_format == "json":
            assert json.loads(line)["level"] in ("info", "warning")
        elif log_format == "logfmt":
            assert re.match(r'time=\S+Z level=(info|warning) logger=exporter\.\S+ msg=', line), line
        else:
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) exporter\.", line), line


@pytest.mark.parametrize("argv", [
    ["check", "--meters", "model", "--seconds", "0.2"],
    ["once", "--meters", "model", "--wait", "0.1"],
    ["once", "--json", "--meters", "model", "--wait", "0.1"],
])
def test_a_reader_that_leaves_early_ends_the_command_quietly(argv: list[str]) -> None:
    # `wattlens check | head -n 1`, made deterministic: the reader is gone before wattlens writes anything.
    command = [sys.executable, "-m", "exporter", *argv]
    result = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | true', "bash", *command],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert result.stderr == ""
    assert result.returncode == 141  # as a shell reports a filter that SIGPIPE ended
