"""The attacks of issue 17, each against the real server over loopback, bounded in clients, count and time.

Idle sockets, clients that never read, half-open TLS handshakes, a wrong-password flood, certificate rotation,
probes with a web config, and operator files that are not regular files. Each asserts what a kubelet, a
Prometheus and an operator would see: probes answered (≥ 99 %), scrapes served, sockets and fds under the cap
plus a small constant, RSS back near where it started, one clear line for a bad file.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
from attacks import (
    Attack,
    AttackStats,
    Prober,
    Sampler,
    Scraper,
    held_server_sockets,
    idle_sockets,
    probe_once,
    process_fds,
    process_rss_kib,
    process_sockets,
    slow_readers,
    tcp_memory_pages,
    tls_half_open,
    wrong_passwords,
)
from helpers import REPO, Daemon, RaplTree

CAP = 256  # the server's default max_connections
RESERVE = 8  # and its health reserve
SLACK = 48  # the prober's and scraper's, those accepted or aborted within the same loop iteration


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(pki: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=pki)


def make_cert(pki: Path, name: str, ca: str, server: bool = True, rsa: bool = False) -> None:
    key = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl("req", *key, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=pki)
    (pki / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=pki)


def daemon(tmp: Path, *args: str, env: dict[str, str] | None = None, interval: str = "0.5") -> Daemon:
    rapl = RaplTree.copy("unreadable", tmp)
    return Daemon("--sys", str(rapl.root), "--interval", interval, *args, env=env)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Endpoint:
    """tests/endpoint.py: the server alone, with shrunk limits (see there)."""

    def __init__(self, limits: dict[str, float], body_bytes: int) -> None:
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "endpoint.py"), json.dumps(limits),
                                         str(body_bytes)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("port "), line
        self.port = int(line.split()[1])
        self.pid = self.process.pid

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


# --- idle sockets and slow readers ----------------------------------------------------------------------


def test_idle_sockets_starve_neither_probes_nor_scrapes(tmp_path: Path) -> None:
    """300 clients that connect, say nothing and reconnect when dropped, against the 256-connection cap."""
    with daemon(tmp_path) as d:
        d.wait_ready()
        time.sleep(0.5)
        fds_before, sockets_before = process_fds(d.process.pid), process_sockets(d.process.pid)
        stats = AttackStats()
        until = time.monotonic() + 8
        attack = Attack(idle_sockets(d.port, 300, until, stats)).start()
        time.sleep(1.5)  # the attackers hold every slot by now
        sockets = Sampler(lambda: process_sockets(d.process.pid) + held_server_sockets(d.port, orphans_only=True))
        sockets.start()
        fds = Sampler(lambda: process_fds(d.process.pid)).start()
        prober = Prober(d.port, period=0.1, timeout=2.0).start()
        scraper = Scraper(d.port, period=0.5).start()  # keep-alive, like Prometheus
        time.sleep(max(0.0, until - 0.5 - time.monotonic()))
        probes, scrapes, peak, peak_fds = prober.stop(), scraper.stop(), sockets.stop(), fds.stop()
        attack.join(15)
        assert stats.connections > 300, stats  # they were dropped and came back: the server made room
        assert probes.sent >= 40
        assert probes.ratio >= 0.99, probes
        assert scrapes and all(status == 200 for status in scrapes), scrapes
        assert peak <= sockets_before + CAP + RESERVE + SLACK, (sockets_before, peak)
        assert peak_fds <= fds_before + CAP + RESERVE + SLACK, (fds_before, peak_fds)
        assert d.stop()[0] == 0  # and SIGTERM still ends it at once, with whatever is left open


def test_clients_that_never_read_are_cut_off_and_leave_nothing_behind() -> None:
    """Two waves of 260 clients that pipeline requests for a 4 MB response and never read (write timeout 2 s)."""
    endpoint = Endpoint({"write_timeout_s": 2.0}, body_bytes=4_000_000)
    try:
        assert probe_once(endpoint.port)[0] == 200  # libuv opens /dev/null once, at the first connection
        fds_before, tcp_before = process_fds(endpoint.pid), tcp_memory_pages()
        sockets_before = process_sockets(endpoint.pid)
        sockets = Sampler(
            lambda: process_sockets(endpoint.pid) + held_server_sockets(endpoint.port, orphans_only=True)
        ).start()
        fds = Sampler(lambda: process_fds(endpoint.pid)).start()
        tcp = Sampler(tcp_memory_pages).start()
        # The kubelet probes from the node's address, not from the attacker's (a pod's): 127.0.0.2 here.
        prober = Prober(endpoint.port, period=0.1, timeout=2.0, source="127.0.0.2").start()
        scraper = Scraper(endpoint.port, period=0.5, timeout=5.0, source="127.0.0.3").start()  # Prometheus's pod
        first, second = AttackStats(), AttackStats()
        began = time.monotonic()
        waves = Attack(slow_readers(endpoint.port, 260, began + 4.5, first)).start()
        time.sleep(3.0)  # the second wave arrives while the first still holds its slots
        second_wave = Attack(slow_readers(endpoint.port, 260, began + 9.0, second)).start()
        waves.join(15)
        second_wave.join(15)
        probes, scrapes = prober.stop(), scraper.stop()
        peak_sockets, peak_fds, peak_tcp = sockets.stop(), fds.stop(), tcp.stop()
        # Everything goes within a few write timeouts (2 s each); 15 s leaves room for a loaded 2-core machine.
        deadline = time.monotonic() + 15
        while held_server_sockets(endpoint.port) or process_fds(endpoint.pid) > fds_before:
            assert time.monotonic() < deadline, (held_server_sockets(endpoint.port), process_fds(endpoint.pid))
            time.sleep(0.1)
        assert first.cut_off > 0 and second.cut_off > 0  # the server aborted them at its write timeout
        assert peak_sockets <= sockets_before + CAP + RESERVE + SLACK, (sockets_before, peak_sockets)
        assert peak_fds <= fds_before + CAP + RESERVE + SLACK, (fds_before, peak_fds)
        # Kernel send buffers are bounded per socket (128 KiB, doubled by the kernel): at most ~64 MiB for all.
        assert (peak_tcp - tcp_before) * 4096 <= (CAP + RESERVE + SLACK) * 300 * 1024, (tcp_before, peak_tcp)
        assert probes.sent >= 60
        assert probes.ratio >= 0.99, probes
        assert len(scrapes) >= 12 and all(status == 200 for status in scrapes), scrapes
    finally:
        assert endpoint.stop() == 0


# --- TLS ---------------------------------------------------------------------------------------------------


def test_half_open_tls_handshakes_leave_rss_where_it_was(tmp_path: Path) -> None:
    """7,500 connections in 15 s that send a ClientHello and never finish; RSS must come back within 20 MB."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_cert(pki, "server", "ca", rsa=True)  # RSA, as most operators have: the costlier handshake
    config = pki / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with daemon(tmp_path, env={"WATTLENS_WEB_CONFIG_FILE": str(config)}) as d:
        for _ in range(20):  # warm: the first handshakes and ticks allocate what a running daemon keeps
            assert probe_once(d.port, "/healthz", 5.0, context)[0] == 200
        time.sleep(1.0)
        before = process_rss_kib(d.process.pid)
        rss = Sampler(lambda: process_rss_kib(d.process.pid)).start()
        stats = AttackStats()
        Attack(tls_half_open(d.port, 7500, 15.0, stats, hold_s=2.0)).start().join(60)
        assert stats.connections >= 7000, stats
        assert probe_once(d.port, "/healthz", 5.0, context)[0] == 200  # it still serves TLS
        time.sleep(1.5)  # a tick or two: the daemon gives freed heap back after bursts of connections
        after = process_rss_kib(d.process.pid)
        peak = rss.stop()
        assert after - before <= 20 * 1024, (before, peak, after)
        assert peak - before <= 40 * 1024, (before, peak, after)  # handshakes in flight are capped too
        assert d.stop()[0] == 0


def test_rotation_never_drops_a_handshake_and_a_removed_ca_is_revoked(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    for ca in ("ca1", "ca2"):
        make_ca(pki, ca)
    for name in ("a", "b", "c"):
        make_cert(pki, name, "ca1")
    make_cert(pki, "client1", "ca1", server=False)
    make_cert(pki, "client2", "ca2", server=False)
    for name in ("a", "b", "c"):
        (pki / f"{name}.der").write_bytes(ssl.PEM_cert_to_DER_cert((pki / f"{name}.crt").read_text()))
    live = {"cert": pki / "live.crt", "key": pki / "live.key", "ca": pki / "clients.crt"}
    live["cert"].write_bytes((pki / "a.crt").read_bytes())
    live["key"].write_bytes((pki / "a.key").read_bytes())
    live["ca"].write_text((pki / "ca1.crt").read_text() + (pki / "ca2.crt").read_text())
    config = pki / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: live.crt\n  key_file: live.key\n"
                      "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients.crt\n")

    def client(cert: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki / "ca1.crt"))
        context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
        return context

    def served(context: ssl.SSLContext) -> bytes:
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert tls.recv(64).startswith(b"HTTP/1.1 200")  # a client CA check failing shows up here in TLS 1.3
            cert = tls.getpeercert(binary_form=True)
            assert cert is not None
            return cert

    def settle() -> None:
        time.sleep(1.5)  # three ticks: the daemon re-reads the files after each

    one = client("client1")
    with daemon(tmp_path, env={"WATTLENS_WEB_CONFIG_FILE": str(config)}) as d:
        handshakes = Prober(d.port, period=0.02, timeout=5.0, context=one, count=100_000).start()
        assert served(one) == (pki / "a.der").read_bytes()
        live["cert"].write_bytes((pki / "b.crt").read_bytes())  # cert first: it does not match the live key
        settle()
        assert served(one) == (pki / "a.der").read_bytes()  # so the old pair is still served, whole
        live["key"].write_bytes((pki / "b.key").read_bytes())
        settle()
        assert served(one) == (pki / "b.der").read_bytes()
        live["key"].write_bytes((pki / "c.key").read_bytes())  # key first
        settle()
        assert served(one) == (pki / "b.der").read_bytes()
        live["cert"].write_bytes((pki / "c.crt").read_bytes())
        settle()
        assert served(one) == (pki / "c.der").read_bytes()
        result = handshakes.stop()
        assert result.sent >= 100 and result.ok == result.sent, result  # not one handshake dropped
        live["ca"].write_text((pki / "ca2.crt").read_text())  # revoke every client certificate ca1 signed
        settle()
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            served(one)
        assert served(client("client2")) == (pki / "c.der").read_bytes()
        code, log = d.stop()
        assert code == 0
        assert log.count("do not load") == 2  # each half-written rotation reported once, not on every tick


def test_an_expired_certificate_is_served_with_a_warning_and_its_expiry_exported(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.cnf").write_text("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n"
                                "serial = serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n")
    (pki / "index.txt").write_text("")
    (pki / "serial").write_text("01\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "old.key",
            "-out", "old.csr", "-subj", "/CN=old", cwd=pki)
    openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "old.key", "-in", "old.csr",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-out", "old.crt", cwd=pki)
    config = pki / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: old.crt\n  key_file: old.key\n")
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    with daemon(tmp_path, env={"WATTLENS_WEB_CONFIG_FILE": str(config)}) as d:
        assert "TLS certificate" in "".join(d.log) and "EXPIRED (not after 2020-01-02 00:00:00 UTC)" in "".join(d.log)
        deadline = time.monotonic() + 20
        while True:
            conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=5, context=unverified)
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            status, body = response.status, response.read()
            conn.close()
            if status == 200 and b"tls_certificate_expiry" in body:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert re.search(rb"wattlens_tls_certificate_expiry_timestamp_seconds\{node=\"[^\"]+\"\} 1\.5779232e\+09", body)
        assert d.stop()[0] == 0


# --- basic auth ----------------------------------------------------------------------------------------


def test_a_wrong_password_flood_does_not_starve_real_scrapes(tmp_path: Path) -> None:
    """200 keep-alive connections, each request a new wrong password, against bcrypt cost 10 (~60 ms)."""
    prometheus = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(rounds=10)).decode()
    grafana = bcrypt.hashpw(b"other-secret", bcrypt.gensalt(rounds=10)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: {prometheus}\n  grafana: {grafana}\n")
    with daemon(tmp_path, env={"WATTLENS_WEB_CONFIG_FILE": str(config)}) as d:
        deadline = time.monotonic() + 20
        while d.get("/metrics", basic("prometheus", "scrape-secret"))[0] != 200:  # logged in before the flood
            assert time.monotonic() < deadline
            time.sleep(0.1)
        stats = AttackStats()
        until = time.monotonic() + 7
        attack = Attack(wrong_passwords(d.port, 200, until, stats, "prometheus")).start()
        time.sleep(1.0)
        # Prometheus, a new connection for every scrape (the worst case), 2 s timeout.
        known = Prober(d.port, "/metrics", period=0.5, timeout=2.0, headers=basic("prometheus", "scrape-secret"))
        known.start()
        # A client that never logged in before, from another address: bcrypt, queued behind a bounded share.
        fresh = Scraper(d.port, period=1.0, timeout=3.0, headers=basic("grafana", "other-secret"),
                        source="127.0.0.2").start()
        time.sleep(max(0.0, until - 0.5 - time.monotonic()))
        known_result, fresh_statuses = known.stop(), fresh.stop()
        attack.join(20)
        # The flood was real: wrong passwords checked (401) as fast as one thread can, the rest turned away
        # at once (503) because one address may queue only a share of the bounded queue.
        assert stats.responses[401] > 20 and stats.responses[503] > 500, stats
        assert known_result.sent >= 8 and known_result.ok == known_result.sent, known_result
        assert fresh_statuses and all(status == 200 for status in fresh_statuses), fresh_statuses
        assert d.stop()[0] == 0


# --- probes with a web config -------------------------------------------------------------------------------


def test_probes_get_a_plain_health_listener_when_the_metrics_port_needs_tls_and_auth(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_cert(pki, "server", "ca")
    make_cert(pki, "scraper", "ca", server=False)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    config = pki / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                      "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                      f"basic_auth_users:\n  prom: {hashed}\n")
    env = {"WATTLENS_WEB_CONFIG_FILE": str(config), "WATTLENS_HEALTH_LISTEN": "127.0.0.1:0"}
    with daemon(tmp_path, env=env) as d:
        assert d.process.stderr is not None
        line = d.process.stderr.readline()
        d.log.append(line)
        health = int(re.search(r"serving health probes on http://127\.0\.0\.1:(\d+)/healthz", line).group(1))
        assert probe_once(health, "/healthz")[0] == 200  # plain HTTP, no certificate, no password: a kubelet
        deadline = time.monotonic() + 20
        while probe_once(health, "/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert probe_once(health, "/metrics")[0] == 404  # no data on it
        assert probe_once(health, "/")[0] == 404
        try:  # the metrics port still wants a client certificate (TLS 1.3 says so after the handshake)
            status = probe_once(d.port, "/healthz", context=ssl.create_default_context(cafile=str(pki / "ca.crt")))[0]
        except (ssl.SSLError, ConnectionError):
            status = 0
        assert status == 0
        assert d.stop()[0] == 0


# --- operator files ---------------------------------------------------------------------------------------


def exporter_exit(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", "--meters", "model", *args],
                          capture_output=True, text=True, timeout=20, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "directory", "huge"])
@pytest.mark.parametrize("setting", ["config", "web_config_file", "cert_file"])
def test_an_operator_file_that_is_no_regular_file_is_one_clear_line(tmp_path: Path, setting: str,
                                                                    target: str) -> None:
    if target == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif target == "directory":
        path = tmp_path / "dir"
        path.mkdir()
    elif target == "huge":
        path = tmp_path / "huge"
        path.write_bytes(b"#" * (2 << 20))
    else:
        path = Path(target)
    env: dict[str, str] = {}
    args: list[str] = []
    if setting == "config":
        args = ["--config", str(path)]
    elif setting == "web_config_file":
        env["WATTLENS_WEB_CONFIG_FILE"] = str(path)
    else:
        web = tmp_path / "web.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {path}\n  key_file: {path}\n")
        env["WATTLENS_WEB_CONFIG_FILE"] = str(web)
    began = time.monotonic()
    result = exporter_exit(tmp_path, *args, env=env)
    assert time.monotonic() - began < 15  # neither a FIFO nor /dev/zero wedges it
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()[-1:]
    assert "Traceback" not in result.stderr and lines[0].startswith("wattlens: "), result.stderr
    why = {"fifo": "it is a FIFO", "/dev/zero": "it is a character device", "directory": "it is a directory",
           "huge": "larger than"}[target]
    assert why in lines[0] and str(path) in lines[0] and "Fix:" in lines[0], lines[0]


def test_a_fifo_as_carbon_intensity_file_does_not_wedge_the_tick(tmp_path: Path) -> None:
    fifo = tmp_path / "carbon"
    os.mkfifo(fifo)
    with daemon(tmp_path, env={"WATTLENS_CARBON_INTENSITY_FILE": str(fifo)}) as d:
        d.wait_ready()
        before = d.wait_ticks(1)
        after = d.wait_ticks(4, timeout=10)  # ticks keep coming
        key = next(k for k in after if k.startswith("wattlens_source_up{") and 'source="carbon"' in k)
        assert after[key] == 0.0
        assert after[next(k for k in after if k.startswith("wattlens_ticks_total"))] > \
            before[next(k for k in before if k.startswith("wattlens_ticks_total"))]
        code, log = d.stop()
        assert code == 0
        assert log.count("carbon intensity file") == 1 and "it is a FIFO" in log
