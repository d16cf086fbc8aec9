"""Endpoint security in the Prometheus exporter-toolkit `web-config.yml` format, so operators reuse the files
they already have for node_exporter and friends: TLS (certificate, key, client CA, client-auth policy, TLS
versions) and basic-auth users with bcrypt hashes.

Supported keys are the toolkit's; unknown keys are errors (the toolkit reads the file strictly too). Keys the
toolkit has that wattlens does not implement (cipher_suites, curve_preferences, http2…) are rejected with a
message rather than silently ignored (exporter/webconfig_file.py reads and validates the file, with pydantic,
before the daemon starts). Here is what the daemon runs with it, without pydantic: certificates and the client CA
are re-read when their files change: each change builds a fresh SSLContext, and new handshakes switch to it only
once it loaded completely; and the bcrypt basic-auth checks.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from exporter.files import CREDENTIAL_FILE_LIMIT, read_operator_file

if TYPE_CHECKING:
    from exporter.webconfig_file import TlsServerConfig

log = logging.getLogger(__name__)

ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERIFY = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# bcrypt's cost doubles the work per step: cost 10 is ~60 ms on a server core, 14 ~1 s. Above 14 one login
# would hold the (single) auth thread for seconds to minutes, so such hashes are refused at start.
MAX_BCRYPT_COST = 14
MIN_BCRYPT_COST = 4  # bcrypt's own lower bound
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd and older bcrypt releases truncate there too
GOOD_CACHE_SIZE = 64  # credentials that passed: failures live elsewhere and cannot evict them
BAD_CACHE_SIZE = 1024
EXPIRY_WARNING_S = 14 * 86400


class WebConfigError(Exception):
    """The web config is unusable; the message is the one line to show."""


def bcrypt_cost(hashed: str) -> int | None:
    """The cost of a well-formed bcrypt hash ($2a$, $2b$ or $2y$, two-digit cost, 53 characters), else None."""
    match = _BCRYPT_HASH.fullmatch(hashed)
    return int(match.group(1)) if match else None


def _resolve(base: Path, path: Path) -> Path:
    """The toolkit resolves relative paths against the config file's directory."""
    return path if path.is_absolute() else base.parent / path


# --- certificates ------------------------------------------------------------------------------------------


def _der_element(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `at`."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        octets = length & 0x7F
        length = int.from_bytes(data[at : at + octets], "big")
        at += octets
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _der_time(tag: int, text: str) -> float:
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; RFC 5280: YY < 50 is 20YY
        year = int(text[:2])
        text = f"{2000 + year if year < 50 else 1900 + year}{text[2:]}"
    if not text.endswith("Z") or len(text) != 15:
        raise ValueError(f"unexpected certificate time {text!r}")
    parsed = time.strptime(text[:14], "%Y%m%d%H%M%S")
    return float(calendar.timegm(parsed))


def certificate_not_after(pem: str) -> float:
    """Unix time at which the first certificate in a PEM chain expires (X.509 validity.notAfter)."""
    start = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(pem[start : end + len("-----END CERTIFICATE-----")])
    _, at, _ = _der_element(der, 0)  # Certificate
    _, at, _ = _der_element(der, at)  # TBSCertificate: its fields follow
    tag, _, end_of = _der_element(der, at)
    if tag == 0xA0:  # [0] version
        at = end_of
    for _ in range(3):  # serialNumber, signature, issuer
        at = _der_element(der, at)[2]
    _, at, _ = _der_element(der, at)  # validity
    at = _der_element(der, at)[2]  # notBefore
    tag, start_of, end_of = _der_element(der, at)
    return _der_time(tag, der[start_of:end_of].decode("ascii"))


@dataclass(frozen=True, slots=True)
class _Loaded:
    context: ssl.SSLContext
    stamp: tuple[bytes, ...]  # the files' contents (hashed) this context was built from
    not_after: float


class TlsContext:
    """TLS for the server, following its files: every change to the certificate, key or client CA builds a fresh
    SSLContext; new handshakes switch to it (SNI callback) only once certificate and key loaded and match, so a
    half-written rotation never reaches a client, and a CA removed from client_ca_file stops being trusted."""

    def __init__(self, config_path: Path, tls: TlsServerConfig) -> None:
        self.cert = _resolve(config_path, tls.cert_file)
        self.key = _resolve(config_path, tls.key_file)
        self.client_ca = _resolve(config_path, tls.client_ca_file) if tls.client_ca_file else None
        self._settings = tls
        self._failing = False
        self._expiry_warned = ""  # "", "soon" or "expired": what was last warned about
        try:
            self._current = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            file = getattr(exc, "filename", None)
            which = f"file {file}" if file else f"certificate {self.cert} / key {self.key}"
            raise WebConfigError(
                f"web_config_file: TLS {which} unusable ({getattr(exc, 'strerror', None) or exc}). Fix: point "
                "cert_file and key_file at a PEM certificate and its private key (and client_ca_file at a PEM "
                "CA bundle), regular files"
            ) from None
        # The context the listener uses: the first one, which hands each handshake to the newest good one.
        self.context = self._current.context
        self.context.sni_callback = self._switch
        self._note_expiry()

    @property
    def not_after(self) -> float:
        """Unix time at which the certificate being served expires."""
        return self._current.not_after

    def _files(self) -> tuple[bytes, bytes, bytes | None]:
        cert = read_operator_file(self.cert, CREDENTIAL_FILE_LIMIT)
        key = read_operator_file(self.key, CREDENTIAL_FILE_LIMIT)
        ca = read_operator_file(self.client_ca, CREDENTIAL_FILE_LIMIT) if self.client_ca is not None else None
        return cert, key, ca

    @staticmethod
    def _stamp(files: tuple[bytes, bytes, bytes | None]) -> tuple[bytes, ...]:
        return tuple(hashlib.sha256(content).digest() for content in files if content is not None)

    def _build(self) -> _Loaded:
        files = self._files()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[self._settings.min_version]
        context.maximum_version = _VERSIONS[self._settings.max_version]
        context.verify_mode = _VERIFY[self._settings.client_auth_type]
        # load_cert_chain also checks that the key matches the certificate.
        context.load_cert_chain(self.cert, self.key)
        if files[2] is not None:
            context.load_verify_locations(cadata=files[2].decode("ascii", "replace"))
        not_after = certificate_not_after(files[0].decode("ascii", "replace"))
        return _Loaded(context, self._stamp(files), not_after)

    def _switch(self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, used: ssl.SSLContext) -> None:
        if self._current.context is not used:
            connection.context = self._current.context

    def reload_if_changed(self) -> bool:
        """Re-read the files; switch new handshakes to a fresh context if they changed and load. True if switched."""
        try:
            files = self._files()
            if self._stamp(files) == self._current.stamp:
                self._note_expiry()  # a certificate that was fine at start can come close to expiry, or expire
                return False
            fresh = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            # A rotation in progress (one file written, not the other) or a broken file: keep the last good pair.
            if not self._failing:
                log.warning("TLS files changed but do not load (%s); still serving the previous certificate", exc)
            self._failing = True
            return False
        self._current, self._failing = fresh, False
        self._expiry_warned = ""
        log.info("TLS certificate, key or client CA changed; new handshakes use them")
        self._note_expiry()
        return True

    def _note_expiry(self) -> None:
        """Warn once when the certificate comes within 14 days of expiry, and once more when it expires."""
        left = self._current.not_after - time.time()
        state = "expired" if left <= 0 else "soon" if left < EXPIRY_WARNING_S else ""
        if state and state != self._expiry_warned:
            self._expiry_warned = state
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self._current.not_after))
            state = "EXPIRED" if left <= 0 else f"expires in {left / 86400:.1f} days"
            log.warning("TLS certificate %s %s (not after %s): replace it", self.cert, state, when)


# --- basic auth --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: bytes
    digest: bytes  # keyed hash of user and password: what the caches hold, never the password itself


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    pad_s: float  # how much longer to wait before answering a failure, so every failure takes as long


class BasicAuth:
    """Checks `Authorization: Basic …` against bcrypt hashes.

    bcrypt costs tens of milliseconds by design. Credentials that passed are cached apart from failures, so a
    flood of wrong passwords cannot push a real scraper back onto bcrypt; `cached()` answers known credentials on
    the event loop, and the server queues the rest (bounded) for one worker thread. Unknown users are checked
    against a decoy hash at the highest configured cost, and every failure is answered no sooner than that
    cost takes, so response times do not tell which users exist or what their cost is.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {user: hashed.encode() for user, hashed in users.items()}
        self._key = secrets.token_bytes(32)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        import bcrypt  # noqa: PLC0415 - only with basic auth configured (its import costs resident memory)

        self._checkpw = bcrypt.checkpw
        cost = max((bcrypt_cost(h.decode()) or MIN_BCRYPT_COST for h in self.users.values()), default=10)
        started = time.perf_counter()
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        self.failure_floor_s = time.perf_counter() - started  # what the costliest check takes here

    def credentials(self, header: str) -> Credentials | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        secret = password.encode()
        digest = hmac.new(self._key, user.encode() + b"\0" + secret, hashlib.sha256).digest()
        return Credentials(user, secret, digest)

    def cached(self, credentials: Credentials) -> bool | None:
        """The answer without bcrypt when it is known, else None."""
        with self._lock:
            if credentials.digest in self._good:
                self._good.move_to_end(credentials.digest)
                return True
            if credentials.digest in self._bad:
                self._bad.move_to_end(credentials.digest)
                return False
        return None

    def check(self, credentials: Credentials) -> Verdict:
        """bcrypt (slow: call it off the event loop), caching the answer."""
        known = self.cached(credentials)
        if known is not None:
            return Verdict(known, 0.0)
        hashed = self.users.get(credentials.user)
        started = time.perf_counter()
        try:
            matched = self._checkpw(credentials.password[:_BCRYPT_MAX_PASSWORD], hashed or self._decoy)
        except ValueError:  # a hash of the right shape that bcrypt still refuses: a failed login, not a crash
            log.warning("basic_auth_users.%s: bcrypt refuses its hash; that user cannot log in", credentials.user)
            matched = False
        ok = matched and hashed is not None
        took = time.perf_counter() - started
        with self._lock:
            cache = self._good if ok else self._bad
            cache[credentials.digest] = None
            while len(cache) > (GOOD_CACHE_SIZE if ok else BAD_CACHE_SIZE):
                cache.popitem(last=False)
        return Verdict(ok, 0.0 if ok else max(0.0, self.failure_floor_s - took))
