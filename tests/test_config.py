"""Configuration: layering, and one clear line (exit 2, no traceback) for every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import Config, ConfigError, load_config


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
