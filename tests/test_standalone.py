"""The self-contained build (scripts/build-standalone.sh: PyInstaller) on a host with no Python at all.

The host is the cached debootstrap Debian with every python package purged, seen through an overlay mount in
a private mount namespace, so the shared rootfs is never changed and nothing outlives the test. There the
program must start, serve exact RAPL joules from a fixture tree, per-service energy from a fixture cgroup
tree and GPU energy from the stub NVML library, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import REPO, CgroupFixture, ProcTree, RaplTree, require, tool
from nvml_stub.stub import StubState, build_stub
from rootfs import debian_rootfs

import exporter

# Runs inside `unshare --mount`: its mounts vanish with the process. Purges python from an overlay of the
# rootfs, proves none is left, installs the program as docs/bare-metal.md says and execs it (same PID: the
# test signals it directly).
IN_NAMESPACE = r"""
set -euo pipefail
rootfs=$1 work=$2 tarball=$3 nvml=$4 install=$5; shift 5
merged=$work/merged
mkdir -p "$work/upper" "$work/ovl" "$merged"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl" "$merged"
chroot "$merged" sh -c 'dpkg-query -W -f "\${Package}\n" | grep python | xargs dpkg --purge --force-depends \
    --force-remove-essential' >/dev/null 2>&1
left=$(chroot "$merged" sh -c 'dpkg-query -W -f "\${Package}\n" | grep python; ls -d /usr/bin/python* \
    /usr/lib/python3* /usr/lib/*/libpython3* 2>/dev/null' || true)
[ -z "$left" ] || { echo "python is still installed: $left" >&2; exit 3; }
mkdir -p "$merged/root/download" && cp "$tarball" "$tarball.sha256" "$merged/root/download/"
chroot "$merged" sh -euc "cd /root/download && $install" >&2  # the documented install, as written
cp "$nvml" "$merged/usr/lib/" && chroot "$merged" ldconfig
mkdir -p "$merged/fixture" && mount --bind "$work/fixture" "$merged/fixture"
mount -t proc proc "$merged/proc"
echo "no python in the rootfs; starting" >&2
exec chroot "$merged" /usr/bin/env -i STUB_NVML_STATE=/fixture/nvml.state /opt/wattlens/bin/wattlens "$@"
"""


@pytest.fixture(scope="module")
def tarball() -> Path:
    require(importlib.util.find_spec("PyInstaller") is not None, "PyInstaller is not installed (pip install '.[dev]')")
    started = time.monotonic()
    build = subprocess.run([str(REPO / "scripts" / "build-standalone.sh")], cwd=REPO, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert build.returncode == 0, build.stdout + build.stderr
    path = REPO / "dist" / f"wattlens-{exporter.__version__}-linux-{os.uname().machine}.tar.gz"
    print(f"\nbuilt {path.name} in {time.monotonic() - started:.1f} s: {path.stat().st_size / 2**20:.1f} MiB")
    return path


def test_the_archive_unpacks_to_the_path_the_unit_runs(tarball: Path) -> None:
    with tarfile.open(tarball) as archive:
        members = {m.name: m for m in archive.getmembers()}
    program = members["wattlens/bin/wattlens"]
    assert program.isfile() and program.mode & 0o111 and program.uid == 0
    assert all(name.startswith("wattlens/bin/") or name in ("wattlens", "wattlens/bin") for name in members)
    assert "ExecStart=/opt/wattlens/bin/wattlens" in (REPO / "systemd" / "wattlens.service").read_text()
    unpacked = sum(m.size for m in members.values())
    print(f"\n{tarball.name}: {tarball.stat().st_size / 2**20:.1f} MiB compressed, {unpacked / 2**20:.1f} MiB unpacked")


@pytest.mark.slow
def test_it_serves_metrics_on_a_host_without_python(tarball: Path, tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root: overlay mount and chroot")
    unshare = tool("unshare", "apt-get install util-linux")
    tool("debootstrap", "apt-get install debootstrap")
    rootfs = debian_rootfs()
    fixture = tmp_path / "fixture"
    rapl = RaplTree.copy("intel-2socket-server", fixture)
    ProcTree(fixture / "proc")
    cgroups = CgroupFixture(fixture / "cgroup")
    cgroups.add("system.slice/database.service")
    StubState().device(0, "NVIDIA A100-SXM4-40GB", energy_mj=5_000, power_mw=90_000).write(fixture / "nvml.state")
    nvml = build_stub(tmp_path / "nvml") / "libnvidia-ml.so.1"
    doc = (REPO / "docs" / "bare-metal.md").read_text()
    install = re.findall(r"<!-- standalone: install -->\n```sh\n(.*?)```", doc, flags=re.DOTALL)
    assert len(install) == 1, "docs/bare-metal.md lost its standalone install block"
    args = ["--listen", "127.0.0.1:0", "--interval", "0.5", "--node-name", "standalone", "--sys", "/fixture/rapl",
            "--proc", "/fixture/proc", "--cgroup-root", "/fixture/cgroup", "--meters", "rapl", "--gpu-idle-watts", "0"]
    rapl.root.rename(fixture / "rapl")
    rapl = RaplTree(fixture / "rapl")
    process = subprocess.Popen(
        [unshare, "--mount", "--propagation", "private", "bash", "-c", IN_NAMESPACE, "bash", str(rootfs),
         str(tmp_path), str(tarball), str(nvml), install[0], *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    log: list[str] = []
    try:
        assert process.stderr is not None
        deadline, started, port = time.monotonic() + 120, 0.0, 0
        while not port and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "exited early:\n" + "".join(log)
            log.append(line)
            if line.startswith("no python in the rootfs"):
                started = time.monotonic()
            if match := re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", line):
                port = int(match.group(1))
        assert port, "did not start:\n" + "".join(log)
        print(f"\nstart to serving: {time.monotonic() - started:.2f} s")
        # The program exec()ed itself into the daemon (same PID) without the CLI's pydantic.
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libpython" in maps and "pydantic_core" not in maps

        def get(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

        def metrics() -> dict[str, float]:
            status, body = get("/metrics")
            assert status == 200, body
            return {k: float(v) for k, _, v in (line.rpartition(" ") for line in body.splitlines()
                                                 if line and not line.startswith("#"))}

        while get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        print(f"start to ready: {time.monotonic() - started:.2f} s")

        package = ('wattlens_node_cpu_joules_total{die="",method="energy_counter",node="standalone",socket="0",'
                   'source="rapl",zone="package"}')
        ticks = 'wattlens_ticks_total{node="standalone"}'

        def after_ticks(count: int) -> dict[str, float]:
            target = metrics()[ticks] + count
            while (samples := metrics())[ticks] < target:
                assert time.monotonic() < deadline, "ticks stalled"
                time.sleep(0.05)
            return samples

        before = after_ticks(2)
        rapl.advance("intel-rapl:0", 1_234_567)
        after = after_ticks(2)
        assert round((after[package] - before[package]) * 1e6) == 1_234_567
        assert any(k.startswith("wattlens_service_cpu_joules_total{") and 'unit="database.service"' in k for k in after)
        gpu = [k for k in after if k.startswith("wattlens_node_gpu_joules_total{")]
        assert gpu and 'gpu_model="NVIDIA A100-SXM4-40GB"' in gpu[0]
        assert any(k.startswith("wattlens_build_info{") and 'node="standalone"' in k for k in after)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
        log.append(rest)
        text = "".join(log)
        assert process.returncode == 0, text
        assert "Traceback" not in text and " ERROR " not in text, text
        assert "stopped" in text
        assert f"wattlens {exporter.__version__}" in text  # the documented --version
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
