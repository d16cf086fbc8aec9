"""deploy/prometheus/: the recording rules and alerts pass `promtool check rules` (lint fatal), their unit tests
pass `promtool test rules`, every rule has a unit test, recording rules follow level:metric:operations, and
every wattlens metric and label the rules use exists in the exporter's catalogue (exporter/metrics.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, tool

from exporter import metrics

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "wattlens-rules.yaml"
ALERTS = PROMETHEUS_DIR / "wattlens-alerts.yaml"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yaml"))
# Labels that Prometheus or other exporters add: target labels, and vLLM's own.
FOREIGN_LABELS = {"job", "instance", "model_name", "engine"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool("promtool", "apt-get install -y --no-install-recommends prometheus")


def _rules(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES), str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2, result.stdout


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, test_file: Path) -> None:
    result = _run(promtool, "test", "rules", test_file.name, cwd=test_file.parent)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output
    # promtool only warns when a rule_files entry matches nothing: that would test no rules at all.
    assert "no file match" not in output, output


def test_there_are_unit_tests_for_both_files() -> None:
    tested = set()
    for test_file in UNIT_TESTS:
        for entry in yaml.safe_load(test_file.read_text())["rule_files"]:
            tested.add((test_file.parent / entry).resolve())
    assert tested == {RULES.resolve(), ALERTS.resolve()}


def test_every_rule_has_a_unit_test() -> None:
    records = {rule["record"] for rule in _rules(RULES)}
    alerts = {rule["alert"] for rule in _rules(ALERTS)}
    assert all("alert" not in rule for rule in _rules(RULES)) and all("record" not in r for r in _rules(ALERTS))
    tested_exprs, tested_alerts = set(), set()
    for test_file in UNIT_TESTS:
        for test in yaml.safe_load(test_file.read_text())["tests"]:
            for case in test.get("promql_expr_test", []):
                if case.get("exp_samples"):
                    tested_exprs.add(case["expr"].strip())
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    tested_alerts.add(case["alertname"])
    assert records - tested_exprs == set(), "recording rules whose value no unit test checks"
    assert alerts - tested_alerts == set(), "alerts that no unit test sees firing"


def test_recording_rule_names_follow_level_metric_operations() -> None:
    names = [rule["record"] for rule in _rules(RULES)]
    assert len(names) == len(set(names)), "duplicate record names"
    for name in names:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name
        level, metric, operations = name.split(":")
        # The level names the labels the result is aggregated by ("cluster": the label the sending Prometheus
        # adds, its external_labels).
        assert set(level.split("_")) <= {"node", "zone", "source", "socket", "gpu", "namespace", "pod", "unit",
                                         "owner", "cluster", "kind", "part"}, name
        assert metric.startswith(("wattlens_", "vllm_")), name
        assert not metric.endswith("_total"), f"{name}: drop _total once rate/increase has been applied"
        assert operations.endswith(("rate5m", "increase5m")) or operations in ("count", "sum"), name


def _catalogue() -> tuple[set[str], set[str]]:
    names, labels = set(), set()
    for family in metrics.CATALOGUE:
        names.add(family.full_name + ("_info" if family.kind == "info" else ""))
        labels.update(family.labels)
    for family in metrics.WORKLOAD_GPU_FAMILIES.values():
        labels.update(family.labels)
    return names, labels


def _used(expr: str) -> tuple[set[str], set[str]]:
    """Metric names (wattlens_*, and recording rules level:metric:operations) and label names (selectors,
    by/on/group_left lists) an expression uses."""
    names = set(re.findall(r"(?<![:\w])(?:wattlens_\w+|[a-z_]+:[a-z_]+:[a-z0-9_]+)(?![:\w])", expr))
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(part.strip() for part in group.split(",") if part.strip())
    for selector in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    return names, labels


def test_rules_use_only_metrics_and_labels_wattlens_exports() -> None:
    known_names, known_labels = _catalogue()
    known_names |= {rule["record"] for rule in _rules(RULES)}
    for rule in _rules(RULES) + _rules(ALERTS):
        names, labels = _used(rule["expr"])
        assert names <= known_names, (rule.get("record") or rule.get("alert"), names - known_names)
        unknown = {label for label in labels - known_labels - FOREIGN_LABELS if not label.startswith("label_")}
        assert not unknown, (rule.get("record") or rule.get("alert"), unknown)
