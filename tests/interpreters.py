"""The CPython builds installed here (Debian's, python3.X on PATH, pyenv's), each with a virtualenv of
wattlens' runtime dependencies, for tests that run the daemon on every supported version.

The virtualenvs are cached under build/interpreters/ (per interpreter and dependency list) and run the
checkout's `exporter` package from the working directory, so a code change needs no reinstall.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

from helpers import REPO

SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
CACHE = REPO / "build" / "interpreters"


def _version(python: str) -> str | None:
    """'3.12.1' for a working interpreter, else None (a pyenv shim of a version not selected fails here)."""
    try:
        result = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def find(minor: str, debian: bool = False) -> tuple[str, str] | None:
    """(path, full version) of a CPython `minor` ("3.12"): Debian's own if `debian`, else another build."""
    if debian:
        candidates = [f"/usr/bin/python{minor}"]
    else:
        root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
        candidates = [str(p) for p in sorted((root / "versions").glob(f"{minor}.*/bin/python{minor}"))]
        on_path = shutil.which(f"python{minor}")
        if on_path and not on_path.startswith("/usr/bin/"):
            candidates.insert(0, on_path)
    for candidate in candidates:
        version = _version(candidate)
        if version and version.startswith(minor + "."):
            return candidate, version
    return None


def runtime_requirements() -> list[str]:
    """wattlens' runtime dependencies, as installed in the running environment's metadata."""
    requirements = importlib.metadata.requires("wattlens") or []
    return [r for r in requirements if "extra ==" not in r]


def runtime_venv(python: str) -> Path:
    """A virtualenv of `python` with the runtime dependencies (made once, then reused); returns its python."""
    requirements = runtime_requirements()
    key = hashlib.sha256("\n".join([os.path.realpath(python), *requirements]).encode()).hexdigest()[:12]
    venv = CACHE / key
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "--only-binary=:all:", *requirements], check=True, capture_output=True, timeout=600)
            (venv / ".complete").touch()
    return venv / "bin" / "python"
