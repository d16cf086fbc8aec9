"""A non-root wattlens facing root-only energy_uj (Linux ≥ 5.10) explains why, falls back and keeps serving.

As root (CI), the daemon runs as an unprivileged test user against a copy of the fixture whose energy_uj
files are root-owned 0400, exactly as the kernel makes them. As a non-root developer, mode 000 on one's own
files gives the same EACCES.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FIXTURES, REPO, Daemon

TEST_USER = "wattlens-test"


def _unprivileged_user() -> str | None:
    """The user to run as: None when already unprivileged; as root, a system user (created if needed)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True)
    return TEST_USER


@pytest.fixture
def root_only_tree() -> Iterator[Path]:
    # tempfile dirs are 0700: open them up so the unprivileged user can traverse to the tree.
    base = Path(tempfile.mkdtemp(prefix="wattlens-perm-"))
    base.chmod(0o755)
    tree = base / "sys"
    shutil.copytree(FIXTURES / "unreadable", tree, symlinks=True)
    for energy in tree.rglob("energy_uj"):
        if os.geteuid() == 0:
            os.chown(energy, 0, 0)
            energy.chmod(0o400)
        else:
            energy.chmod(0o000)
    yield tree
    shutil.rmtree(base)


def _gid(user: str | None) -> int | None:
    return pwd.getpwnam(user).pw_gid if user else None


def _check_runnable(user: str | None) -> None:
    if user is None:
        return
    probe = subprocess.run([sys.executable, "-c", "import exporter"], user=user, group=_gid(user),
                           extra_groups=[], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert probe.returncode == 0, (
        f"{sys.executable} cannot run as {user} ({probe.stderr.strip()}): build the venv from /usr/bin/python3 "
        "in a world-readable directory, as .ci/run does"
    )


def test_root_only_energy_falls_back_to_model_with_the_reason(root_only_tree: Path) -> None:
    user = _unprivileged_user()
    _check_runnable(user)
    with Daemon("--sys", str(root_only_tree), "--interval", "0.5", "--node-name", "perm", user=user) as daemon:
        daemon.wait_ready()
        log = "".join(daemon.log)
        assert "meter rapl: unavailable: RAPL energy counters under" in log
        assert "readable by root only" in log and "CVE-2020-8694" in log
        assert "Fix: run wattlens as UID 0 with read-only host mounts" in log
        assert "systemd/wattlens-powercap.conf" in log
        assert "measuring node energy with the model meter" in log
        first = daemon.metrics()
        later = daemon.wait_ticks(2)
        model = ('wattlens_node_cpu_joules_total{die="",method="power_integration",node="perm",socket="",'
                 'source="model",zone="package"}')
        assert later[model] > first[model] >= 0
        assert later['wattlens_source_up{device="",node="perm",source="rapl"}'] == 0
        assert 'meter="model"' in next(k for k in later if k.startswith("wattlens_node_info"))
        assert daemon.stop()[0] == 0


def test_check_explains_the_same(root_only_tree: Path) -> None:
    user = _unprivileged_user()
    _check_runnable(user)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--sys", str(root_only_tree), "--seconds", "0.5"],
        user=user, group=_gid(user), extra_groups=[] if user else None, capture_output=True, text=True,
        timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[no ] rapl: RAPL energy counters under" in out and "readable by root only" in out
    assert "fix: run wattlens as UID 0" in out
    assert "[ok ] model: available" in out
    assert "wattlens would measure with: model" in out
    assert "package" in out and " W" in out


def test_shipped_group_rule_lets_an_unprivileged_user_read_rapl(root_only_tree: Path) -> None:
    """The fix the message names: systemd-tmpfiles applies systemd/wattlens-powercap.conf, the user holds the
    powercap group, and RAPL is read without root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the fixture and apply the rule (CI runs as root)")
    user = _unprivileged_user()
    _check_runnable(user)
    if subprocess.run(["getent", "group", "powercap"], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", "--system", "powercap"], check=True)
    # systemd-tmpfiles --root resolves the rule's paths and group names inside that root.
    root = root_only_tree.parent
    (root / "etc" / "tmpfiles.d").mkdir(parents=True)
    shutil.copy(REPO / "systemd" / "wattlens-powercap.conf", root / "etc" / "tmpfiles.d")
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", root / "etc")
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", "wattlens-powercap.conf"], check=True)
    modes = {oct(p.stat().st_mode & 0o777) for p in root_only_tree.rglob("energy_uj")}
    assert modes == {"0o440"}
    with Daemon("--sys", str(root_only_tree), "--interval", "0.5", "--node-name", "perm", user=user,
                extra_groups=["powercap"]) as daemon:
        daemon.wait_ready()
        assert "measuring node energy with the rapl meter" in "".join(daemon.log)
        samples = daemon.metrics()
        assert samples['wattlens_source_up{device="intel-rapl:0",node="perm",source="rapl"}'] == 1
        assert ('wattlens_node_cpu_joules_total{die="",method="energy_counter",node="perm",socket="0",source="rapl",'
                'zone="package"}') in samples
        assert daemon.stop()[0] == 0
