"""A Debian bookworm root filesystem made once with debootstrap and shared by the tests that need a real
systemd (systemd-nspawn) or a container image (docker import): no registry is reachable here.

The tree is cached under /var/tmp/wattlens-test-rootfs ($TEST_ROOTFS_CACHE) and rebuilt when
the package list changes. Callers copy it (cp -a --reflink=auto) before changing anything in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates", "curl")
CACHE = Path(os.environ.get("TEST_ROOTFS_CACHE", "/var/tmp/wattlens-test-rootfs"))


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def debian_rootfs() -> Path:
    """The cached rootfs (built on first use: ~80-90 s). Needs root and debootstrap."""
    key = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:12]
    root = CACHE / f"bookworm-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not debootstrap the same tree
        if (root / ".complete").exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        partial = CACHE / f"partial-{key}"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm",
                        str(partial), _mirror()], check=True, capture_output=True, timeout=900)
        partial.rename(root)
        (root / ".complete").touch()
        return root
