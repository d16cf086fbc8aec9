"""scripts/test.sh makes its own virtualenv from an interpreter the unprivileged test user can run, whatever
`python3` is first on PATH and whatever the README's install command left in .venv; with no such
interpreter it fails with one line that names the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, require
from interpreters import find

NOBODY = ["runuser", "-u", "nobody", "--"]


def _per_user_python() -> str:
    """An interpreter that only root can run (pyenv's, under /root with mode 0700), the README's trap."""
    require(os.geteuid() == 0, "needs root: the test runs interpreters as an unprivileged user")
    found = find("3.11") or find("3.12") or find("3.10")
    require(found is not None and subprocess.run([*NOBODY, found[0], "-c", "pass"], capture_output=True).returncode
            != 0, "no CPython here that an unprivileged user cannot run (pyenv under /root)")
    assert found is not None
    return found[0]


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory the unprivileged user can traverse (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="wattlens-test-script-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _checkout(tmp_path: Path) -> Path:
    """What scripts/test.sh needs."""
    copy = tmp_path / "wattlens"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "test.sh", copy / "scripts" / "test.sh")
    shutil.copy2(REPO / "pyproject.toml", copy / "pyproject.toml")
    return copy


def _run(copy: Path, per_user: str, **env: str) -> subprocess.CompletedProcess[str]:
    # pyenv's interpreter first on PATH, as on this machine kind
    path = f"{Path(per_user).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run([str(copy / "scripts" / "test.sh")], capture_output=True, text=True, timeout=300,
                          env={"PATH": path, "HOME": str(copy), "TEST_SETUP_ONLY": "venv", **env})


@pytest.mark.slow
def test_either_order_with_a_per_user_python_first_on_path(outside: Path) -> None:
    per_user = _per_user_python()
    copy = _checkout(outside)
    # The README's install command first: .venv from the per-user interpreter.
    subprocess.run([per_user, "-m", "venv", "--without-pip", str(copy / ".venv")], check=True, timeout=120)
    readme_venv = (copy / ".venv" / "pyvenv.cfg").read_text()
    # A stale test venv from the per-user interpreter too (an older test.sh, or TEST_PYTHON set once).
    subprocess.run([per_user, "-m", "venv", "--without-pip", str(copy / ".venv-test")], check=True, timeout=120)
    result = _run(copy, per_user)
    assert result.returncode == 0, result.stderr
    assert "remaking .venv-test: an unprivileged user cannot run its interpreter" in result.stderr
    test_python = copy / ".venv-test" / "bin" / "python"
    assert subprocess.run([*NOBODY, str(test_python), "-c", "import venv"], capture_output=True).returncode == 0
    assert (copy / ".venv" / "pyvenv.cfg").read_text() == readme_venv  # the README's venv is left alone
    # And the install command still works after the test command: .venv is not the test script's.
    again = subprocess.run([per_user, "-m", "venv", "--without-pip", str(copy / ".venv")], capture_output=True,
                           timeout=120)
    assert again.returncode == 0


def test_no_usable_interpreter_is_one_line_with_the_fix(outside: Path) -> None:
    per_user = _per_user_python()
    copy = _checkout(outside)
    result = _run(copy, per_user, TEST_PYTHON=per_user)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("scripts/test.sh: no Python >= 3.10 that an unprivileged user can run")
    assert "Fix: apt-get install python3-venv, or set TEST_PYTHON" in lines[0]
    assert not (copy / ".venv-test").exists()


def test_a_checkout_others_cannot_reach_is_one_line_with_the_fix(tmp_path: Path) -> None:
    per_user = _per_user_python()
    copy = _checkout(tmp_path)  # under pytest's 0700 directory
    result = _run(copy, per_user)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "an unprivileged user cannot reach .venv-test (a directory above it" in lines[0]
    assert not (copy / ".venv-test").exists()  # found out before making it
    assert "Fix: clone into a directory others can traverse" in lines[0]
