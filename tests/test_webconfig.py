"""Endpoint security with an exporter-toolkit web-config.yml: real TLS, client certificates, bcrypt users."""

from __future__ import annotations

import base64
import calendar
import http.client
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
from helpers import REPO, Daemon, RaplTree

from exporter.webconfig import BasicAuth


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_cert(pki: Path, name: str, ca: str, san: str | None) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=pki)
    extensions = pki / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", str(extensions), cwd=pki)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pki = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=test-ca", cwd=pki)
    make_cert(pki, "server", "ca", "IP:127.0.0.1")
    make_cert(pki, "client", "ca", None)
    return pki


ALICE = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def web_config(pki: Path, tmp: Path, client_auth: str = "NoClientCert", users: bool = True) -> Path:
    lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key",
             f"  client_auth_type: {client_auth}", "  client_ca_file: ca.crt",
             "http_server_config:", "  headers:", "    X-Content-Type-Options: nosniff"]
    if users:
        lines += ["basic_auth_users:", f"  alice: {ALICE}"]
    path = pki / f"web-{client_auth}.yml"  # relative paths resolve against the file's directory
    path.write_text("\n".join(lines) + "\n")
    return path


def get(port: int, context: ssl.SSLContext, user: str | None = None, password: str = "") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def ready(port: int, context: ssl.SSLContext, user: str | None = None, password: str = "") -> None:
    """Wait (bounded) until the first tick is served: 503 until then."""
    deadline = time.monotonic() + 20
    while get(port, context, user, password)[0] == 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def plain_http(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 400
        return response.read()
    finally:
        conn.close()


def client_context(pki: Path, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if with_cert:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


def test_tls_and_basic_auth(pki: Path, tmp_path: Path) -> None:
    rapl = RaplTree.copy("unreadable", tmp_path)
    config = web_config(pki, tmp_path)
    with Daemon("--sys", str(rapl.root), "--interval", "0.5", env={"WATTLENS_WEB_CONFIG_FILE": str(config)}) as daemon:
        assert "serving https://127.0.0.1:" in "".join(daemon.log)
        context = client_context(pki)
        ready(daemon.port, context, "alice", "s3cret")
        status, headers, body = get(daemon.port, context, "alice", "s3cret")
        assert status == 200
        assert b"wattlens_node_cpu_joules_total" in body
        assert headers["x-content-type-options"] == "nosniff"
        for user, password in (("alice", "wrong"), ("bob", "s3cret"), (None, "")):
            status, headers, body = get(daemon.port, context, user, password)
            assert status == 401
            assert headers["www-authenticate"].startswith("Basic")
            assert b"wattlens" not in body  # no data at all
        # Plain HTTP to the TLS port gets a plain 400 that says why, no data, and one line in the log.
        for _ in range(3):
            assert plain_http(daemon.port) == b"Client sent an HTTP request to an HTTPS server.\n"
        code, log = daemon.stop()
        assert code == 0
        assert log.count("plain HTTP from 127.0.0.1 on the TLS port") == 1


def test_client_certificates_are_required_when_configured(pki: Path, tmp_path: Path) -> None:
    rapl = RaplTree.copy("unreadable", tmp_path)
    config = web_config(pki, tmp_path, client_auth="RequireAndVerifyClientCert", users=False)
    with Daemon("--sys", str(rapl.root), "--interval", "0.5", env={"WATTLENS_WEB_CONFIG_FILE": str(config)}) as daemon:
        ready(daemon.port, client_context(pki, with_cert=True))
        assert get(daemon.port, client_context(pki, with_cert=True))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(daemon.port, client_context(pki, with_cert=False))
        assert daemon.stop()[0] == 0


@pytest.mark.parametrize(("content", "expected"), [
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n", "TLS file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [X]\n", "cipher_suites"),
    ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice is not a bcrypt hash"),
    ("basic_auth_users:\n  alice: $2b$10$tooshort\n", "basic_auth_users.alice is not a bcrypt hash"),
    ("basic_auth_users:\n  alice: $2b$31$" + "a" * 53 + "\n", "basic_auth_users.alice has bcrypt cost 31"),
    ("basic_auth_users:\n  alice: $2b$15$" + "a" * 53 + "\n", "outside 4..14"),
    ("basic_auth_users:\n  alice: $2b$03$" + "a" * 53 + "\n", "has bcrypt cost 3"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
     "needs client_ca_file"),
    ("tls_server_config: [\n", "not valid YAML"),
])
def test_bad_web_config_is_one_line_and_exit_2(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "web.yml"
    config.write_text(content)
    result = subprocess.run([sys.executable, "-m", "exporter", "--listen", "127.0.0.1:0", "--meters", "model"],
                            capture_output=True, text=True, timeout=30, cwd=REPO,
                            env={"PATH": "/usr/bin:/bin", "WATTLENS_WEB_CONFIG_FILE": str(config)})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wattlens: web_config_file") and expected in last and "Fix:" in last
    assert "Traceback" not in result.stderr


def test_basic_auth_checks() -> None:
    auth = BasicAuth({"alice": ALICE})
    good = auth.credentials("Basic " + base64.b64encode(b"alice:s3cret").decode())
    bad = auth.credentials("Basic " + base64.b64encode(b"alice:nope").decode())
    assert good is not None and bad is not None
    assert good.password not in good.digest  # the caches hold a keyed hash, not the password
    assert auth.cached(good) is None  # unknown yet: the server queues it for the bcrypt worker
    assert auth.check(good).ok
    assert auth.cached(good) is True  # answered on the event loop from now on
    assert not auth.check(bad).ok
    assert auth.cached(bad) is False  # a repeated wrong password costs no second bcrypt run
    for header in ("Bearer xyz", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert auth.credentials(header) is None


def test_failures_cannot_evict_good_credentials() -> None:
    auth = BasicAuth({"alice": ALICE})
    good = auth.credentials("Basic " + base64.b64encode(b"alice:s3cret").decode())
    assert good is not None and auth.check(good).ok
    for i in range(2000):  # more wrong passwords than both caches hold
        wrong = auth.credentials("Basic " + base64.b64encode(f"alice:wrong{i}".encode()).decode())
        assert wrong is not None
        auth._bad[wrong.digest] = None  # what check() records, without 2000 bcrypt runs
        while len(auth._bad) > 1024:
            auth._bad.popitem(last=False)
    assert auth.cached(good) is True


def test_passwords_longer_than_bcrypt_reads_are_checked_not_crashed() -> None:
    long_password = b"p" * 100  # bcrypt 5 raises ValueError past 72 bytes; htpasswd hashes the first 72
    auth = BasicAuth({"alice": bcrypt.hashpw(long_password[:72], bcrypt.gensalt(rounds=4)).decode()})
    credentials = auth.credentials("Basic " + base64.b64encode(b"alice:" + long_password).decode())
    assert credentials is not None and auth.check(credentials).ok
    other = auth.credentials("Basic " + base64.b64encode(b"alice:" + b"q" * 200).decode())
    assert other is not None and not auth.check(other).ok


def test_unknown_users_and_cheap_hashes_fail_as_slowly_as_the_costliest_user() -> None:
    """Response time must not tell which users exist, or their cost: every failure takes the longest cost."""
    cheap = bcrypt.hashpw(b"a", bcrypt.gensalt(rounds=4)).decode()
    costly = bcrypt.hashpw(b"b", bcrypt.gensalt(rounds=10)).decode()
    auth = BasicAuth({"cheap": cheap, "costly": costly})
    totals: dict[str, list[float]] = {"cheap": [], "costly": [], "nobody": []}
    for i in range(3):
        for user, times in totals.items():
            credentials = auth.credentials("Basic " + base64.b64encode(f"{user}:wrong{i}".encode()).decode())
            assert credentials is not None
            started = time.perf_counter()
            verdict = auth.check(credentials)
            times.append(time.perf_counter() - started + verdict.pad_s)  # what the server waits
            assert not verdict.ok
    floor = auth.failure_floor_s
    assert floor > 0.01  # cost 10 is tens of milliseconds
    for user, times in totals.items():
        assert min(times) >= 0.95 * floor, (user, times, floor)




def test_expiry_is_warned_when_it_comes_close_and_again_when_it_passes(
    pki: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from exporter import webconfig
    from exporter.webconfig_file import TlsServerConfig

    config = TlsServerConfig(cert_file=pki / "server.crt", key_file=pki / "server.key")
    with caplog.at_level("WARNING", logger="exporter.webconfig"):
        tls = webconfig.TlsContext(pki / "web.yml", config)  # valid for 2 days: within the 14-day warning
        assert [r.message for r in caplog.records if "expires in" in r.message]
        expiry = subprocess.run(["openssl", "x509", "-in", str(pki / "server.crt"), "-noout", "-enddate"],
                                capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
        assert tls.not_after == calendar.timegm(time.strptime(expiry, "%b %d %H:%M:%S %Y GMT"))  # as openssl reads it
        caplog.clear()
        for _ in range(3):
            assert tls.reload_if_changed() is False
        assert caplog.records == []  # said once, not on every tick
        monkeypatch.setattr(webconfig.time, "time", lambda: tls.not_after + 1)
        for _ in range(3):
            tls.reload_if_changed()
        assert [r.message for r in caplog.records if "EXPIRED" in r.message] and len(caplog.records) == 1
