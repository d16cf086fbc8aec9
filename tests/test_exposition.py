"""The exposition passes promtool's linter, follows Prometheus naming, and escapes label values."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FIXTURES, REPO, RaplTree, make_config, tool

from exporter import metrics
from exporter.engine import Engine
from exporter.exposition import EndpointStats, Renderer


def _promtool() -> str:
    return tool("promtool", "apt-get install prometheus")


@pytest.mark.parametrize("tree", ["intel-2socket-server", "intel-laptop", "amd-epyc-2socket", "near-wrap", "empty"])
def test_promtool_check_metrics_is_clean(tree: str, tmp_path: Path) -> None:
    promtool = _promtool()
    copy = RaplTree.copy(tree, tmp_path)
    once = subprocess.run([sys.executable, "-m", "exporter", "once", "--sys", str(copy.root), "--wait", "0.2",
                           "--node-name", "lint"], capture_output=True, timeout=60, cwd=REPO)
    assert once.returncode == 0, once.stderr
    assert b"wattlens_node_cpu_joules_total" in once.stdout
    lint = subprocess.run([promtool, "check", "metrics"], input=once.stdout, capture_output=True, timeout=60)
    assert lint.returncode == 0, lint.stderr.decode() + lint.stdout.decode()
    assert lint.stdout == b"" and lint.stderr == b""


def test_catalogue_follows_naming_conventions() -> None:
    names = [f.full_name for f in metrics.CATALOGUE]
    assert len(names) == len(set(names))
    for family in metrics.CATALOGUE:
        assert re.fullmatch(r"wattlens_[a-z0-9_]+", family.full_name)
        if family.kind == "counter":
            assert family.name.endswith("_total"), family.name
        else:
            assert not family.name.endswith("_total"), family.name
        if "joules" in family.name:
            assert family.kind == "counter" and family.name.endswith("_joules_total")
        if "watts" in family.name:
            assert family.kind == "gauge" and family.name.endswith("_watts")
        assert family.labels[0] == "node", f"{family.full_name}: every series carries the constant node label"
        assert "uid" not in family.labels or family.name.startswith(("pod_", "container_")), (
                "uid is a pod's UID (a container's: its pod's), nothing else's"
            )


def test_every_catalogued_family_is_rendered(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-laptop", tmp_path)
    engine = Engine.start(make_config(sys_path=tree.root, meters="rapl"))
    engine.tick(0.0)
    tree.advance("intel-rapl:0", 1_000_000)
    endpoint = EndpointStats(scrapes={("text", "identity"): 3}, rejections={"evicted_idle": 2}, tls_not_after=1.9e9)
    text = Renderer().render(engine.tick(5.0), endpoint).text.decode()
    for family in metrics.CATALOGUE:
        name = family.full_name + ("_info" if family.kind == "info" else "")
        if family.full_name in metrics.CONDITIONAL:
            continue  # rendered by the GPU and process-metrics tests
        assert f"# TYPE {name} " in text, name
    assert 'wattlens_http_rejections_total{node="' in text and 'reason="evicted_idle"} 2.0' in text
    assert "wattlens_tls_certificate_expiry_timestamp_seconds{" in text
    assert len(metrics.CATALOGUE) == len({f.full_name for f in metrics.CATALOGUE})


def test_every_rendered_series_has_the_node_label(tmp_path: Path) -> None:
    tree = RaplTree.copy("intel-laptop", tmp_path)
    engine = Engine.start(make_config(sys_path=tree.root, meters="rapl", node_name="n9"))
    engine.tick(0.0)
    text = Renderer().render(engine.tick(5.0)).text.decode()
    wattlens = [line for line in text.splitlines() if line.startswith("wattlens_")]
    assert any(line.startswith("wattlens_build_info{") for line in wattlens)
    for line in wattlens:
        assert 'node="n9"' in line, line


def test_label_values_are_escaped(tmp_path: Path) -> None:
    tree = RaplTree.copy("near-wrap", tmp_path)
    node = 'a"b\\c\nd'
    engine = Engine.start(make_config(sys_path=tree.root, meters="rapl", node_name=node))
    exposition = Renderer().render(engine.tick(0.0))
    assert 'node="a\\"b\\\\c\\nd"' in exposition.text.decode()
    assert 'node="a\\"b\\\\c\\nd"' in exposition.openmetrics.decode()


def test_readme_documents_every_metric_and_setting() -> None:
    readme = (REPO / "README.md").read_text()
    for family in metrics.CATALOGUE:
        name = family.full_name + ("_info" if family.kind == "info" else "")
        assert f"`{name}`" in readme, f"README metric table lacks {name}"
    from exporter.config import Config, ModelConfig, RedfishConfig

    for key in Config.model_fields:
        if key not in ("model", "redfish"):  # sections: their keys are checked below
            assert f"`{key}`" in readme, f"README configuration table lacks {key}"
    for key in ModelConfig.model_fields:
        assert f"`model.{key}`" in readme, f"README configuration table lacks model.{key}"
    for key in RedfishConfig.model_fields:
        assert f"`redfish.{key}`" in readme, f"README configuration table lacks redfish.{key}"
    assert (FIXTURES.parent / "README.md").exists()


def test_metric_reference_is_generated_from_the_code() -> None:
    assert (REPO / "docs" / "metrics.md").read_text() == metrics.reference_markdown(), (
        "docs/metrics.md is stale: run python -m exporter.metrics > docs/metrics.md")
