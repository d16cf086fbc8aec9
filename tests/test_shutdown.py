"""SIGTERM with clients still connected, on every supported CPython installed here: Debian's and the
python3.X / pyenv builds (3.10 to 3.13). Prometheus keeps its connection alive between scrapes, so at
shutdown there is always an idle keep-alive connection; add a client that stalls half-way through reading a
large response and one that stalls half-way through sending its request. The daemon must exit 0 within its
grace period, with no ERROR and no traceback in its log (CPython 3.11.5-3.12.x log one per cancelled
connection unless the server prevents it)."""

from __future__ import annotations

import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import CgroupFixture, Daemon, ProcTree, RaplTree, require
from interpreters import SUPPORTED, find, runtime_venv

SERVICES = 1000  # 2000 series (package, dram): a response of ~220 KB, far more than the socket buffers hold
INTERPRETERS = [("debian", "3.11"), *(("other", minor) for minor in SUPPORTED)]


@pytest.fixture(scope="module")
def pythons() -> dict[tuple[str, str], tuple[str, str] | None]:
    """(python with the runtime dependencies, its version) per interpreter found; virtualenvs made in parallel."""

    def prepare(kind: str, minor: str) -> tuple[str, str] | None:
        found = find(minor, debian=kind == "debian")
        if found is None:
            return None
        path, version = found
        if os.path.realpath(path) == os.path.realpath(sys._base_executable):  # this very interpreter
            return sys.executable, version
        return str(runtime_venv(path)), version

    with ThreadPoolExecutor(len(INTERPRETERS)) as pool:
        futures = {key: pool.submit(prepare, *key) for key in INTERPRETERS}
        return {key: future.result() for key, future in futures.items()}


def _busy_node(tmp_path: Path) -> tuple[RaplTree, ProcTree, CgroupFixture]:
    rapl = RaplTree.copy("intel-2socket-server", tmp_path)
    proc = ProcTree(tmp_path / "proc")
    cgroups = CgroupFixture(tmp_path / "cgroup")
    for i in range(SERVICES):
        cgroups.add(f"system.slice/svc{i:04d}.service")
    return rapl, proc, cgroups


def _work(rapl: RaplTree, proc: ProcTree, cgroups: CgroupFixture) -> None:
    """One round of energy and CPU use in every service, so that each gets series of its own."""
    for i in range(SERVICES):
        cgroups.burn(f"system.slice/svc{i:04d}.service", 1000)
    proc.advance_usec(SERVICES * 1000, 0)
    for zone in ("intel-rapl:0", "intel-rapl:0:0", "intel-rapl:1", "intel-rapl:1:0"):
        rapl.advance(zone, 5_000_000)


def _drain(sock: socket.socket) -> bytes:
    """Whatever the server sent before it closed the connection."""
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except OSError:
        pass
    return data


def _connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        # Loopback's 64 KiB MSS lets the server's kernel buffer megabytes; a small MSS keeps its send buffer
        # small too, so the response really waits in the server (as it would for a slow remote scraper).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "minor"), INTERPRETERS, ids=[f"{k}-{m}" for k, m in INTERPRETERS])
def test_sigterm_with_clients_connected_is_clean(
    kind: str, minor: str, pythons: dict[tuple[str, str], tuple[str, str] | None], tmp_path: Path
) -> None:
    found = pythons[(kind, minor)]
    require(found is not None, f"no {'Debian' if kind == 'debian' else 'pyenv or python' + minor} CPython {minor} "
                               "installed here")
    assert found is not None
    python, version = found
    rapl, proc, cgroups = _busy_node(tmp_path)
    with Daemon("--sys", str(rapl.root), "--proc", str(proc.root), "--cgroup-root", str(cgroups.root),
                "--meters", "rapl", "--idle-watts", "package=0,dram=0", "--interval", "0.5", "--node-name", "bye",
                "--kubelet-log-path", str(tmp_path / "nolog"), "--gpus=false", "--max-series", "0",  # a large response
                python=python) as daemon:
        daemon.wait_ready()
        _work(rapl, proc, cgroups)
        samples = daemon.wait_ticks(2, timeout=30)
        assert sum(1 for k in samples if k.startswith("wattlens_service_cpu_joules_total{")) == 2 * SERVICES

        keep_alive = _connect(daemon.port)  # Prometheus between two scrapes
        keep_alive.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        assert keep_alive.recv(64).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # the rest of that response arrives; the connection is now idle, kept alive
        keep_alive.recv(1 << 20)
        mid_response = _connect(daemon.port, receive_buffer=4096)
        mid_response.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head = mid_response.recv(1024)  # then it stops reading
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        mid_request = _connect(daemon.port)
        mid_request.sendall(b"GET /metrics HTTP/1.1\r\nHost:")
        time.sleep(0.3)

        stopping = time.monotonic()
        code, log = daemon.stop()
        took = time.monotonic() - stopping
        received = len(head) + len(_drain(mid_response))
        for sock in (keep_alive, mid_response, mid_request):
            sock.close()
    print(f"\nmid-response client got {received} of {length} bytes before the shutdown")
    assert received < length, "the large response was not in flight at shutdown: the test proves nothing"
    assert code == 0, log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "stopped" in log
    assert took < 8, f"shutdown took {took:.1f} s"
    assert version.startswith(minor)
