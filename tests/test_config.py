"""Configuration: layering, and one clear line (exit 2, no traceback) for every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import Config, ConfigError, ModelConfig, load_config


def test_defaults() -> None:
    config = load_config({}, None, environ={"NODE_NAME": "n1"})
    assert (config.interval, config.listen_address(), config.meters) == (5.0, (None, 9875), ("rapl", "hwmon", "model"))
    assert config.node_name == "n1"
    assert config.idle_policy == "baseline"


def test_layers_in_order(tmp_path: Path) -> None:
    file = tmp_path / "wattlens.yaml"
    file.write_text("interval: 2\nlisten: 127.0.0.1:1\nnode_name: from-file\nmodel:\n  max_watts_per_cpu: 9\n")
    env = {"WATTLENS_LISTEN": "127.0.0.1:2", "WATTLENS_NODE_NAME": "from-env",
           "WATTLENS_MODEL__IDLE_WATTS_PER_CPU": "1.5"}
    config = load_config({"node_name": "from-flag"}, file, environ=env)
    assert config.interval == 2.0  # file only
    assert config.listen == "127.0.0.1:2"  # env beats file
    assert config.node_name == "from-flag"  # flag beats env
    assert (config.model.idle_watts_per_cpu, config.model.max_watts_per_cpu) == (1.5, 9.0)  # merged, not replaced


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("idle_policy: ratio\n")
    assert load_config({}, None, environ={"WATTLENS_CONFIG": str(file)}).idle_policy == "ratio"


def test_list_and_map_settings_from_strings() -> None:
    config = load_config({"meters": "model", "idle_watts": "package=40, dram=6.5"}, None, environ={})
    assert config.meters == ("model",)
    assert config.idle_watts == {"package": 40.0, "dram": 6.5}


@pytest.mark.parametrize(("flags", "env", "expected"), [
    ({"interval": "-1"}, {}, "invalid setting interval='-1' (from flag --interval)"),
    ({"interval": "fast"}, {}, "invalid setting interval='fast'"),
    ({}, {"WATTLENS_INTERVAL": "600"}, "(from environment WATTLENS_INTERVAL)"),
    ({"listen": "localhost"}, {}, "invalid setting listen='localhost'"),
    ({"listen": ":99999"}, {}, "port from 0 to 65535"),
    ({"meters": "rapl,gpu"}, {}, "invalid setting meters"),
    ({"meters": "rapl,rapl"}, {}, "a meter is listed twice"),
    ({"idle_policy": "none"}, {}, "invalid setting idle_policy='none'"),
    ({"idle_watts": "gpu=5"}, {}, "unknown zone 'gpu'"),
    ({"idle_watts": "package"}, {}, "'package' is not ZONE=WATTS"),
    ({}, {"WATTLENS_MODEL__MAX_WATTS_PER_CPU": "0.1"}, "must not be below model.idle_watts_per_cpu"),
    ({}, {"WATTLENS_INTERVALL": "3"}, "unknown setting 'intervall' (from environment WATTLENS_INTERVALL). "
                                      "Fix: did you mean 'interval'?"),
    ({}, {"WATTLENS_MODEL__CPU": "3"}, "unknown setting 'model.cpu'"),
])
def test_bad_values_name_the_setting_source_and_fix(flags: dict[str, str], env: dict[str, str],
                                                     expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(flags, None, environ=env)
    message = str(caught.value)
    assert expected in message
    assert "Fix:" in message
    assert "\n" not in message


@pytest.mark.parametrize(("content", "expected"), [
    ("interval: [1\n", "not valid YAML at line"),
    ("- a\n- b\n", "top level is a list"),
    ("meter: rapl\n", "unknown setting 'meter' (from config file"),
    ("model:\n  idle_watts_per_cpu: lots\n", "invalid setting model.idle_watts_per_cpu='lots'"),
])
def test_bad_files(tmp_path: Path, content: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=None) as caught:
        load_config({}, file, environ={})
    assert expected in str(caught.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, Path("/nonexistent/wattlens.yaml"), environ={})
    assert "cannot be read" in str(caught.value)


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    file = tmp_path / "empty.yaml"
    file.write_text("")
    assert load_config({}, file, environ={}).interval == Config.model_fields["interval"].default


@pytest.mark.parametrize("argv", [
    ["--interval", "0"],
    ["once", "--meters", "nvml"],
    ["check", "--listen", "nowhere"],
    ["--config", "/nonexistent.yaml"],
])
def test_cli_exits_2_with_one_line_and_no_traceback(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True,
                            timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wattlens: ") and "Fix:" in lines[0]
    assert "Traceback" not in result.stderr


def test_address_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "--listen", f"127.0.0.1:{port}", "--meters", "model"],
            capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("key", "text", "seconds"), [
    ("interval", "5s", 5.0), ("interval", "500ms", 0.5), ("interval", "2.5", 2.5), ("interval", " 7 ", 7.0),
    ("workload_ttl", "2m", 120.0), ("workload_ttl", "0", 0.0), ("idle_window", "1h30m", 5400.0),
    ("idle_window", "1d", 86400.0), ("nvml_timeout", "1500ms", 1.5),
])
def test_durations_take_units(key: str, text: str, seconds: float) -> None:
    assert getattr(load_config({key: text}, None, environ={}), key) == seconds
    assert getattr(load_config({}, None, environ={f"WATTLENS_{key.upper()}": text}), key) == seconds


@pytest.mark.parametrize("text", ["5x", "s", "5 s", "1h-5m", "5sm", "inf", "nan"])
def test_a_bad_duration_is_named_with_the_fix(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"interval": text}, None, environ={})
    message = str(caught.value)
    assert message.startswith(f"invalid setting interval={text!r} (from flag --interval)")
    assert "Fix: set interval to seconds between ticks (5, 2.5, 500ms)" in message


@pytest.mark.parametrize(("listen", "address"), [
    (9875, (None, 9875)), ("9875", (None, 9875)), (":9875", (None, 9875)), ("[::]:9875", ("::", 9875)),
    ("127.0.0.1:9875", ("127.0.0.1", 9875)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80)),
])
def test_listen_forms(listen: int | str, address: tuple[str | None, int], tmp_path: Path) -> None:
    file = tmp_path / "wattlens.yaml"
    file.write_text(f"listen: {listen if isinstance(listen, int) else repr(listen)}\n")
    assert load_config({}, file, environ={}).listen_address() == address
    assert load_config({"listen": str(listen)}, None, environ={}).listen_address() == address


@pytest.mark.parametrize(("listen", "expected"), [
    ("::1:9875", "an IPv6 address needs brackets"), ("localhost", "must be PORT, :PORT, HOST:PORT"),
    ("70000", "port from 0 to 65535"), (":-1", "port from 0 to 65535"),
])
def test_bad_listen_addresses(listen: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config({"listen": listen}, None, environ={})


def test_an_unquoted_bracket_in_yaml_gets_a_hint(tmp_path: Path) -> None:
    file = tmp_path / "wattlens.yaml"
    file.write_text("interval: 5\nlisten: [::]:9875\n")
    with pytest.raises(ConfigError) as caught:
        load_config({}, file, environ={})
    assert "not valid YAML at line 2" in str(caught.value)
    assert 'listen: "[::]:9875"' in str(caught.value)


@pytest.mark.parametrize(("source", "where"), [
    ("file", "config file"), ("env", "environment WATTLENS_MODEL__CPU"), ("flag", "flag --model.cpu"),
])
def test_a_nested_typo_names_the_full_dotted_key(source: str, where: str, tmp_path: Path) -> None:
    file = tmp_path / "wattlens.yaml"
    file.write_text("model:\n  cpu: 3\n" if source == "file" else "")
    flags = {"model.cpu": "3"} if source == "flag" else {}
    env = {"WATTLENS_MODEL__CPU": "3"} if source == "env" else {}
    with pytest.raises(ConfigError) as caught:
        load_config(flags, file, environ=env)
    message = str(caught.value)
    assert message.startswith(f"unknown setting 'model.cpu' (from {where}")
    assert "did you mean 'model.cpus'?" in message
    assert "one of: idle_watts_per_cpu, max_watts_per_cpu, cpus" in message


def test_nested_values_are_named_in_full(tmp_path: Path) -> None:
    file = tmp_path / "wattlens.yaml"
    file.write_text("model:\n  cpus: lots\n")
    with pytest.raises(ConfigError, match=r"^invalid setting model\.cpus='lots' \(from config file"):
        load_config({}, file, environ={})
    file.write_text("model: 5\n")
    with pytest.raises(ConfigError, match=r"^invalid setting model=5 .*Fix: set model to a mapping"):
        load_config({}, file, environ={})


# What the kubelet injects into every container of a namespace with Services named wattlens and
# wattlens-metrics (enableServiceLinks defaults to true).
SERVICE_LINKS = {
    "WATTLENS_SERVICE_HOST": "10.96.0.12",
    "WATTLENS_SERVICE_PORT": "9875",
    "WATTLENS_SERVICE_PORT_METRICS": "9875",
    "WATTLENS_PORT": "tcp://10.96.0.12:9875",
    "WATTLENS_PORT_9875_TCP": "tcp://10.96.0.12:9875",
    "WATTLENS_PORT_9875_TCP_PROTO": "tcp",
    "WATTLENS_PORT_9875_TCP_PORT": "9875",
    "WATTLENS_PORT_9875_TCP_ADDR": "10.96.0.12",
    "WATTLENS_METRICS_SERVICE_HOST": "fd00:10:96::c",
    "WATTLENS_METRICS_SERVICE_PORT": "443",
    "WATTLENS_METRICS_PORT": "tcp://[fd00:10:96::c]:443",
    "WATTLENS_METRICS_PORT_443_TCP_ADDR": "fd00:10:96::c",
}


def test_kubernetes_service_links_are_ignored() -> None:
    config = load_config({}, None, environ={**SERVICE_LINKS, "WATTLENS_INTERVAL": "2"})
    assert config.interval == 2.0
    assert config.listen == ":9875"


@pytest.mark.parametrize(("name", "value"), [
    ("WATTLENS_INTERVALL", "3"),  # a typo
    ("WATTLENS_LISTEN_PORT", "9875"),  # looks like a port, is not a service link's shape
    ("WATTLENS_PORT", "9875"),  # a service link's _PORT is always proto://host:port
    ("WATTLENS_SERVICE_HOST", "not an address"),
])
def test_other_unknown_variables_stay_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, None, environ={name: value})
    assert f"(from environment {name})" in str(caught.value)
    assert str(caught.value).startswith("unknown setting ")


def test_every_setting_has_a_group_help_flag_and_variable() -> None:
    from exporter.config import OTHER_GROUP, CarbonConfig, RedfishConfig, settings

    found = settings()
    # model.*, redfish.* and carbon.* instead of model, redfish and carbon
    sections = len(ModelConfig.model_fields) + len(RedfishConfig.model_fields) + len(CarbonConfig.model_fields)
    assert len(found) == len(Config.model_fields) - 3 + sections
    assert "redfish.password_file" in {s.key for s in found}
    for setting in found:
        assert setting.group != OTHER_GROUP, f"{setting.key} has no help group"
        assert setting.help, f"{setting.key} has no help text"
        assert setting.env == "WATTLENS_" + setting.key.upper().replace(".", "__")
