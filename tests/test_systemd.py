"""The hardened systemd unit: systemd-analyze verify and security offline, `wattlens check`'s top services,
and a real systemd (systemd-nspawn, a Debian 12 root filesystem) that installs wattlens exactly as
docs/bare-metal.md says, runs it as a dynamic user with no capability, scrapes it, and stops it.

CI runs everything as root (.ci/run installs systemd, systemd-container and debootstrap). Elsewhere the
tests that need root or those tools skip; with CI set they fail instead, so nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, CgroupFixture, ProcTree, RaplTree, make_config, python_with_pip, require
from nvml_stub.stub import LIB_NAME, StubState, build_stub

from exporter import cli
from exporter.config import Config
from exporter.engine import Engine
from exporter.snapshot import Snapshot

UNIT = REPO / "systemd" / "wattlens.service"
DOC = REPO / "docs" / "bare-metal.md"
EXPOSURE_TARGET = 1.2  # issue 6: at most 1.2 (Scaphandre's unit: 1.7)
# What `systemd-analyze security` still flags, each argued in a comment of the unit and in bare-metal.md.
ACCEPTED_EXPOSURES = {
    "RootDirectory=/RootImage=",
    "SupplementaryGroups=",
    "RestrictAddressFamilies=~AF_UNIX",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "ProtectProc=",
    "ProcSubset=",
    "PrivateNetwork=",
    "DeviceAllow=",
    "IPAddressDeny=",
}
BUSY_UNIT = "wattlens-busy.service"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _tool(name: str) -> None:
    require(shutil.which(name) is not None, f"{name} is not installed")


# ---- systemd-analyze ---------------------------------------------------------------------------------------


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A --root tree for systemd-analyze verify: the unit, the units it depends on (sysinit.target, ...,
    copied from this host) and a stand-in for the ExecStart binary, all inside tmp_path."""
    root = tmp_path / "root"
    units = Path("/usr/lib/systemd/system")
    if not units.is_dir():
        units = Path("/lib/systemd/system")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/wattlens.service").write_text(unit_text)
    binary = root / "opt/wattlens/bin/wattlens"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "wattlens.service"],
                          capture_output=True, text=True, timeout=60)


def test_verify_prints_nothing(tmp_path: Path) -> None:
    """Unknown keys and bad values are only warnings (rc 0): any output at all fails."""
    _tool("systemd-analyze")
    result = _verify(_verify_root(tmp_path / "good", UNIT.read_text()))
    assert (result.stdout + result.stderr) == "" and result.returncode == 0, result.stdout + result.stderr
    # The harness really reads the unit: a misspelt key is reported.
    broken = _verify(_verify_root(tmp_path / "bad", UNIT.read_text().replace("ProtectSystem=", "ProtectSytem=")))
    assert "Unknown key 'ProtectSytem'" in broken.stdout + broken.stderr


def test_security_exposure_is_at_most_1_2() -> None:
    _tool("systemd-analyze")
    threshold = round(EXPOSURE_TARGET * 10)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--threshold={threshold}", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    match = re.search(r"Overall exposure level for wattlens\.service: (\d+\.\d)", out)
    assert match, out
    assert float(match.group(1)) <= EXPOSURE_TARGET, out
    flagged = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("✗")}
    assert flagged <= ACCEPTED_EXPOSURES, f"newly exposed: {flagged - ACCEPTED_EXPOSURES}\n{out}"


def test_unit_keeps_what_wattlens_needs() -> None:
    """Stricter values of these would silently break a feature (see the unit's comments)."""
    settings = [line.strip() for line in UNIT.read_text().splitlines() if line and not line.startswith("#")]
    for needed in ("ProtectProc=default", "ProcSubset=all", "DynamicUser=yes", "SupplementaryGroups=powercap",
                   "CapabilityBoundingSet=", "AmbientCapabilities=", "MemoryDenyWriteExecute=yes",
                   "ExecStart=/opt/wattlens/bin/wattlens serve --config /etc/wattlens/wattlens.yaml",
                   "ConfigurationDirectory=wattlens", "Restart=on-failure", "RestartPreventExitStatus=2"):
        assert needed in settings, needed
    families = next(s for s in settings if s.startswith("RestrictAddressFamilies="))
    assert set(families.split("=", 1)[1].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


# ---- wattlens check: top services ----------------------------------------------------------------------------


def test_check_lists_the_top_services_by_power(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    proc = ProcTree(tmp_path / "proc", cpus=4)
    cgroups = CgroupFixture(tmp_path / "cgroup")
    burns = {f"system.slice/svc{i:02d}.service": (i + 1) * 10_000 for i in range(12)}
    burns["system.slice/system-getty.slice/getty@tty1.service"] = 5_000
    burns["user.slice/user-1000.slice/session-1.scope"] = 900_000  # a user, not a service
    for path in burns:
        cgroups.add(path)
    config = make_config(sys_path=rapl.root, proc_path=proc.root, cgroup_root=cgroups.root, meters="rapl",
                         kubelet_log_path=tmp_path / "log", idle_watts="package=20,dram=2", gpus=False)

    def measure(config: Config, seconds: float) -> tuple[Engine, Snapshot]:
        engine = Engine.start(config)
        engine.tick(100.0)
        for path, usec in burns.items():
            cgroups.burn(path, usec)
        proc.advance_usec(sum(burns.values()) + 100_000, 4 * 2_000_000)
        for zone in ("intel-rapl:0", "intel-rapl:1"):
            rapl.advance(zone, 80_000_000)  # 40 W each over 2 s
        for zone in ("intel-rapl:0:0", "intel-rapl:1:0"):
            rapl.advance(zone, 8_000_000)
        return engine, engine.tick(100.0 + seconds)

    monkeypatch.setattr(cli, "measure", measure)
    assert cli.check(config, 2.0) == 0
    out = capsys.readouterr().out
    section = out.split("Top services by power over the last 2 s:\n", 1)[1].splitlines()
    header, rows = section[0], section[1:11]
    assert header.split()[:4] == ["unit", "total", "W", "package"] and "dram W" in header
    assert "package + dram; 13 services in all" in header
    units = [row.split()[0] for row in rows]
    assert units == [f"svc{i:02d}.service" for i in range(11, 1, -1)]  # the 10 largest, largest first
    assert len(section) == 11 or not section[11].startswith("  svc")
    total, package, dram = (float(v) for v in rows[0].split()[1:4])
    assert package > 0 and dram > 0 and abs(total - package - dram) < 0.011
    assert total > float(rows[1].split()[1])


def test_check_says_why_no_service_is_seen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    cgroups = tmp_path / "cgroup"
    (cgroups / "unified").mkdir(parents=True)
    (cgroups / "unified" / "cgroup.controllers").write_text("")
    (cgroups / "cpuacct").mkdir()
    (cgroups / "cpuacct" / "cpuacct.usage").write_text("0\n")
    config = make_config(sys_path=rapl.root, proc_path=ProcTree(tmp_path / "proc").root, cgroup_root=cgroups,
                         meters="rapl", gpus=False)
    assert cli.check(config, 0.05) == 0
    out = capsys.readouterr().out
    assert f"none: no system.slice/*.service cgroup under {cgroups} (cgroups hybrid)" in out
    assert "try --cgroup-root /sys/fs/cgroup/unified" in out


# ---- a real systemd -------------------------------------------------------------------------------------------


def doc_steps() -> list[tuple[str, str]]:
    """(name, shell text) of each block docs/bare-metal.md marks `<!-- step: NAME -->`, in order."""
    found = re.findall(r"<!-- step: ([\w-]+) -->\n```sh\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [(name, body) for name, body in found]


def test_doc_has_the_steps_the_nspawn_test_follows() -> None:
    assert [name for name, _ in doc_steps()] == ["build", "install", "unit", "config", "start", "check"]


def test_doc_queries_are_valid_promql(tmp_path: Path) -> None:
    _tool("promtool")
    queries = re.findall(r"```promql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    panel = re.search(r'"expr": "(.*?)",\n', DOC.read_text())
    assert len(queries) >= 3 and panel
    grafana = panel.group(1).replace('\\"', '"').replace("$node", "n1").replace("$__rate_interval", "5m")
    rules = ["groups:", "  - name: doc", "    rules:"]
    for n, query in enumerate([*queries, grafana]):
        expr = " ".join(query.split()).replace("'", "''")
        rules += [f"      - record: doc:query{n}", f"        expr: '{expr}'"]
    (tmp_path / "rules.yaml").write_text("\n".join(rules) + "\n")
    result = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def _find(samples: dict[str, float], name: str, **labels: str) -> list[float]:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return [v for k, v in samples.items() if k.startswith(name + "{") and all(w in k for w in wanted)]


class Container:
    """systemd-nspawn booting a root directory, bounded by `timeout`, always torn down by close()."""

    def __init__(self, root: Path, name: str, log: Path, binds: list[str]) -> None:
        self.root, self.name, self.log = root, name, log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                ["timeout", "--kill-after=10", "300", "systemd-nspawn", "-D", str(root), "-b", "--register=no",
                 "--keep-unit", "--console=pipe", "-M", name, *binds],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = 0
        try:
            self.leader = self._find_leader()
        except BaseException:
            self._kill()
            raise

    def _children(self, pid: int) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return []

    def _inits(self) -> list[int]:
        """The container's PID 1 as the host sees it (timeout → systemd-nspawn → systemd), if there yet."""
        return [child for nspawn in self._children(self.process.pid) for child in self._children(nspawn)]

    def _find_leader(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited: {self.log.read_text(errors='replace')}")
            for child in self._inits():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
            time.sleep(0.1)
        raise AssertionError(f"no systemd in the container: {self.log.read_text(errors='replace')}")

    def run(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A shell script inside the container, as its root, in /root/wattlens."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-ec", f"cd /root/wattlens\n{script}"],
            capture_output=True, text=True, timeout=timeout,
            env={"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "TERM": "dumb"})
        if check and result.returncode != 0:
            raise AssertionError(f"in the container, rc {result.returncode}:\n{script}\n--- stdout\n{result.stdout}"
                                 f"\n--- stderr\n{result.stderr}")
        return result

    def wait_booted(self) -> None:
        """Until systemd has finished booting (its bus is not up the moment PID 1 exists)."""
        deadline = time.monotonic() + 90
        while True:
            state = self.run("systemctl is-system-running --wait 2>&1 || true", timeout=90).stdout.strip()
            if state in ("running", "degraded"):
                return
            assert time.monotonic() < deadline, f"{state}\n{self.log.read_text(errors='replace')}"
            time.sleep(0.2)

    def close(self) -> None:
        if self.process.poll() is not None:
            return
        poweroff = None
        with contextlib.suppress(Exception):
            poweroff = self.run("systemctl poweroff", check=False, timeout=20)
        if poweroff is not None and poweroff.returncode == 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
                return
        self._kill()

    def _kill(self) -> None:
        # The container's PID 1 first: killed, it takes every process of its PID namespace along. Killing
        # only systemd-nspawn would leave the container running, orphaned.
        for pid in {self.leader, *self._inits()} - {0}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # timeout and systemd-nspawn
        self.process.wait(timeout=30)


class Feeder(threading.Thread):
    """Advances the fixture's RAPL counters (as the hardware would) and the stub GPU's energy and the busy
    service's SM samples, every 0.2 s, until stopped."""

    def __init__(self, rapl: RaplTree, state_path: Path) -> None:
        super().__init__(daemon=True)
        self.rapl, self.state_path = rapl, state_path
        self.stop = threading.Event()
        self.gpu_pid: int | None = None
        self.errors: list[BaseException] = []
        self.energy_mj, self.ts_us = 1_000_000, 1_000_000_000
        self.write_gpu()

    def write_gpu(self) -> None:
        state = StubState().device(0, "NVIDIA H100 80GB HBM3", energy_mj=self.energy_mj, power_mw=60_000)
        if self.gpu_pid is not None:
            state.process(0, self.gpu_pid, "compute", 2**30).sample(0, self.gpu_pid, ts=self.ts_us, sm=60)
        state.write(self.state_path)

    def run(self) -> None:
        try:
            while not self.stop.wait(0.2):
                for zone, uj in (("intel-rapl:0", 9_000_000), ("intel-rapl:1", 7_000_000),
                                 ("intel-rapl:0:0", 1_000_000), ("intel-rapl:1:0", 800_000)):
                    self.rapl.set(zone, (self.rapl.energy(zone) + uj) % self.rapl.max_range(zone))
                self.energy_mj += 12_000  # 60 W
                self.ts_us += 200_000
                self.write_gpu()
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)


def _copy_source(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache",
                                    ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info", ".whl")
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"wattlens-nspawn-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir(parents=True)
    try:
        yield base
    finally:
        # rm is many times faster than shutil.rmtree on a root filesystem; never cross into a mount.
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], timeout=300)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_documented_install_runs_unprivileged_under_a_real_systemd(workdir: Path) -> None:
    require(os.geteuid() == 0, "needs root (systemd-nspawn, debootstrap)")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "systemd-tmpfiles", "gcc"):
        _tool(tool)
    from rootfs import debian_rootfs

    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    cached = debian_rootfs()
    root = workdir / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(root)], check=True, timeout=300)
    rootfs_python = subprocess.run(["chroot", str(root), "python3", "-c",
                                    "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    lap("rootfs")

    # Step "build", on the host, in a copy of the source tree, with a python3 that has pip.
    steps = dict(doc_steps())
    source = workdir / "src"
    _copy_source(source)
    shim = workdir / "bin"
    shim.mkdir()
    (shim / "python3").write_text(f'#!/bin/sh\nexec {python_with_pip(workdir)} "$@"\n')
    (shim / "python3").chmod(0o755)
    build = re.sub(r"(?m)^PYVER=\S+", f"PYVER={rootfs_python}", steps["build"])
    built = subprocess.run(["bash", "-euo", "pipefail", "-c", build], cwd=source, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', CLEAN_PATH)}"})
    assert built.returncode == 0, built.stdout + built.stderr
    assert list((source / "dist").glob("wattlens-*.whl")), built.stdout
    shutil.copytree(source, root / "root" / "wattlens", symlinks=True)
    lap("wheels")

    # What the test adds around the documented steps: a fixture RAPL tree (root-only, as the kernel makes
    # it) bound read-only at /srv/fakesys, a busy service, the stub NVML library with its state file, and a
    # drop-in that points wattlens at them and at a free loopback port.
    fake = workdir / "fake"
    (fake / "etc").mkdir(parents=True)
    shutil.copytree(REPO / "fixtures" / "sysfs" / "intel-2socket-server", fake / "sys", symlinks=True)
    rapl = RaplTree(fake / "sys")
    energy_files = sorted({p.resolve() for p in (fake / "sys").rglob("energy_uj")})
    for energy in energy_files:
        os.chown(energy, 0, 0)
        energy.chmod(0o400)
    (fake / "sys").chmod(0o755)
    stub = build_stub(workdir / "nvml-build")
    (root / "opt" / "nvml-stub").mkdir(parents=True)
    shutil.copy(stub / LIB_NAME, root / "opt" / "nvml-stub" / LIB_NAME)
    (root / "srv" / "nvml").mkdir(parents=True)
    (root / "srv" / "nvml").chmod(0o755)
    feeder = Feeder(rapl, root / "srv" / "nvml" / "state")
    system = root / "etc" / "systemd" / "system"
    (system / BUSY_UNIT).write_text(
        "[Unit]\nDescription=burns some CPU for the wattlens test\n[Service]\n"
        "ExecStart=/bin/sh -c 'while :; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 0.3; done'\n"
        "[Install]\nWantedBy=multi-user.target\n")
    (system / "multi-user.target.wants").mkdir(exist_ok=True)
    (system / "multi-user.target.wants" / BUSY_UNIT).symlink_to(f"/etc/systemd/system/{BUSY_UNIT}")
    port = _free_port()

    binds = [f"--bind-ro={fake / 'sys'}:/srv/fakesys"]
    if Path("/sys/class/powercap").is_dir():
        # The container's /sys is read-only: on a host with RAPL, the documented systemd-tmpfiles step would
        # fail there (EROFS). Hide the host's zones; the fixture stands in for them.
        binds.append("--tmpfs=/sys/class/powercap:mode=0755")
    container = Container(root, f"wattlens-t{os.getpid()}", workdir / "nspawn.log", binds)
    try:
        container.wait_booted()
        lap("boot")
        hybrid = container.run("test -e /sys/fs/cgroup/cgroup.controllers || echo hybrid").stdout.strip()
        # A container on a hybrid-cgroup host sees its services only in the unified hierarchy.
        cgroup_root = "/sys/fs/cgroup/unified" if hybrid else "/sys/fs/cgroup"
        dropin = system / "wattlens.service.d"
        dropin.mkdir()
        (dropin / "test.conf").write_text(
            "[Service]\n"
            f"Environment=WATTLENS_LISTEN=127.0.0.1:{port} WATTLENS_SYS_PATH=/srv/fakesys WATTLENS_INTERVAL=1\n"
            f"Environment=WATTLENS_CGROUP_ROOT={cgroup_root} WATTLENS_PROCESS_METRICS=true\n"
            f"Environment=LD_LIBRARY_PATH=/opt/nvml-stub STUB_NVML_STATE=/srv/nvml/state\n")
        feeder.gpu_pid = int(container.run(f"systemctl show -P MainPID {BUSY_UNIT}").stdout)
        assert feeder.gpu_pid > 0
        feeder.start()

        outputs = {}
        for name, body in doc_steps():
            if name == "build":
                continue
            if name == "start":
                # What the shipped tmpfiles rule does to /sys at boot, done to the fixture with the real
                # systemd-tmpfiles and the group that the documented systemd-sysusers step created.
                for db in ("passwd", "group"):
                    shutil.copy(root / "etc" / db, fake / "etc" / db)
                (fake / "etc" / "tmpfiles.d").mkdir(exist_ok=True)
                shutil.copy(REPO / "systemd" / "wattlens-powercap.conf", fake / "etc" / "tmpfiles.d")
                subprocess.run(["systemd-tmpfiles", "--create", f"--root={fake}", "wattlens-powercap.conf"],
                               check=True, timeout=30)
                assert {oct(p.stat().st_mode & 0o777) for p in energy_files} == {"0o440"}
            outputs[name] = container.run(body.replace("9875", str(port)), timeout=240)
            lap(name)
        assert "wattlens " in outputs["install"].stdout
        assert outputs["check"].stdout.startswith("active")
        assert "Top services by power" in outputs["check"].stdout

        # Scrape from the host until every kind of series has moved.
        deadline = time.monotonic() + 60
        while True:
            samples = {}
            with contextlib.suppress(OSError):
                samples = _scrape(port)
            busy = sum(_find(samples, "wattlens_service_cpu_joules_total", unit=BUSY_UNIT, source="rapl"))
            busy_gpu = sum(_find(samples, "wattlens_service_gpu_joules_total", unit=BUSY_UNIT))
            # /proc/<pid>/stat of processes of other users (the busy service's shell runs as root)
            processes = _find(samples, "wattlens_process_cpu_joules_total", comm="sh")
            if busy > 0 and busy_gpu > 0 and sum(processes) > 0:
                break
            assert time.monotonic() < deadline, (
                f"no service-level energy within 60 s; metrics:\n{samples}\njournal:\n"
                + container.run("journalctl -u wattlens -b --no-pager -o cat", check=False).stdout)
            time.sleep(0.5)
        lap("scraped")
        assert not feeder.errors, feeder.errors
        assert sum(_find(samples, "wattlens_node_cpu_joules_total", source="rapl", zone="package")) > 0
        assert _find(samples, "wattlens_source_up", source="rapl", device="intel-rapl:0") == [1.0]
        assert _find(samples, "wattlens_node_info", meter="rapl")
        assert _find(samples, "wattlens_service_cpu_joules_total", unit="systemd-journald.service", zone="package")
        assert sum(_find(samples, "wattlens_node_gpu_joules_total")) > 0

        # Who it runs as: a dynamic user, powercap its one extra group, no capability, no new privileges.
        props = dict(line.split("=", 1) for line in container.run(
            "systemctl show wattlens -p MainPID -p DynamicUser -p User -p ActiveState").stdout.split())
        assert props["DynamicUser"] == "yes" and props["ActiveState"] == "active"
        status = dict(line.split(":", 1) for line in container.run(
            f"cat /proc/{props['MainPID']}/status").stdout.splitlines() if ":" in line)
        uids = {int(u) for u in status["Uid"].split()}
        assert len(uids) == 1 and 61184 <= uids.pop() <= 65519, status["Uid"]
        powercap_gid = container.run("getent group powercap | cut -d: -f3").stdout.strip()
        own_gid = status["Gid"].split()[0]
        assert set(status["Groups"].split()) == {powercap_gid, own_gid}, (status["Gid"], status["Groups"])
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, (caps, status[caps])
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        online = container.run("systemd-analyze security --no-pager wattlens.service", check=False).stdout
        match = re.search(r"Overall exposure level for wattlens\.service: (\d+\.\d)", online)
        assert match and float(match.group(1)) <= EXPOSURE_TARGET, online

        # `wattlens check` as the service's user sees RAPL and ranks the services by power.
        check = container.run(
            "systemd-run --quiet --wait --pipe -p DynamicUser=yes -p SupplementaryGroups=powercap "
            f"-p PrivateUsers=yes -E WATTLENS_SYS_PATH=/srv/fakesys -E WATTLENS_CGROUP_ROOT={cgroup_root} "
            "-E LD_LIBRARY_PATH=/opt/nvml-stub -E STUB_NVML_STATE=/srv/nvml/state "
            "/opt/wattlens/bin/wattlens check --config /etc/wattlens/wattlens.yaml --seconds 2").stdout
        assert "[ok ] rapl: available" in check and "wattlens would measure with: rapl" in check, check
        assert "[ok ] nvml: 1 GPU(s)" in check, check
        top = check.split("Top services by power over the last 2 s:\n", 1)[1]
        assert BUSY_UNIT in top and "GPU W" in top, check
        lap("checked")

        # The group's read access gone (a RAPL driver reload restores 0400): the model, and the reason.
        for energy in energy_files:
            os.chown(energy, 0, 0)
            energy.chmod(0o400)
        container.run("systemctl restart wattlens")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                samples = _scrape(port)
                if _find(samples, "wattlens_node_info", meter="model"):
                    break
            assert time.monotonic() < deadline, samples
            time.sleep(0.3)
        assert _find(samples, "wattlens_source_up", source="rapl", device="") == [0.0]
        journal = container.run("journalctl -u wattlens -b --no-pager -o cat").stdout
        assert "meter rapl: unavailable: RAPL energy counters under" in journal, journal
        assert "readable by root only" in journal and "CVE-2020-8694" in journal
        assert "systemd/wattlens-powercap.conf" in journal
        assert "measuring node energy with the model meter" in journal
        lap("model")

        container.run("systemctl stop wattlens")
        stopped = dict(line.split("=", 1) for line in container.run(
            "systemctl show wattlens -p Result -p ExecMainStatus -p ActiveState").stdout.split())
        assert stopped == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, stopped
        journal = container.run("journalctl -u wattlens -b --no-pager -o cat").stdout
        assert "exporter.daemon: stopped" in journal, journal
        for line in journal.splitlines():  # systemd itself had nothing to complain about in the unit
            if line.startswith("wattlens.service:"):
                assert not re.search(r"ignoring|[Ff]ailed|[Uu]nknown|not supported", line), line
        container.run("systemctl poweroff", check=False, timeout=20)
        container.process.wait(timeout=30)
        assert container.process.returncode == 0, container.log.read_text(errors="replace")
        lap("poweroff")
    finally:
        feeder.stop.set()
        container.close()
    print(f"nspawn test timings (s since start): {timings}")
