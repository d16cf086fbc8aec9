"""Endpoint security in the Prometheus exporter-toolkit `web-config.yml` format, so operators reuse the files
they already have for node_exporter and friends: TLS (certificate, key, client CA, client-auth policy, TLS
versions) and basic-auth users with bcrypt hashes.

Supported keys are the toolkit's; unknown keys are errors (the toolkit reads the file strictly too). Keys the
toolkit has that wattlens does not implement (cipher_suites, curve_preferences, http2…) are rejected with a
message rather than silently ignored. Certificates are re-read when their files change, for rotation.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
_CACHE_SIZE = 128


class WebConfigError(Exception):
    """The web config is unusable; the message is the one line to show."""


class TlsServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path
    key_file: Path
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion = "TLS13"


class HttpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    headers: dict[str, str] = Field(default_factory=dict)


class WebConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = Field(default_factory=HttpServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)


def load_web_config(path: Path) -> WebConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(
            f"web_config_file {path}: cannot be read ({exc.strerror}). Fix: point "
            "web_config_file at a readable exporter-toolkit web-config.yml"
        ) from None
    except yaml.YAMLError:
        raise WebConfigError(f"web_config_file {path}: not valid YAML. Fix: correct its syntax") from None
    try:
        config = WebConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        unsupported = error["type"] == "extra_forbidden"
        hint = (
            (
                "wattlens supports tls_server_config (cert_file, key_file, client_auth_type, client_ca_file, "
                "min_version, max_version), http_server_config.headers and basic_auth_users"
            )
            if unsupported
            else "see https://prometheus.io/docs/prometheus/latest/configuration/https/"
        )
        raise WebConfigError(f"web_config_file {path}: {where}: {error['msg']}. Fix: {hint}") from None
    for user, hashed in config.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(
                f"web_config_file {path}: basic_auth_users.{user} is not a bcrypt hash. Fix: "
                "generate one with htpasswd -nBC 10 USER (the part after the colon)"
            )
    tls = config.tls_server_config
    if (
        tls is not None
        and tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
        and tls.client_ca_file is None
    ):
        raise WebConfigError(
            f"web_config_file {path}: client_auth_type {tls.client_auth_type} needs "
            "client_ca_file. Fix: add the CA that signs your scrapers' certificates"
        )
    return config


def _resolve(base: Path, path: Path) -> Path:
    """The toolkit resolves relative paths against the config file's directory."""
    return path if path.is_absolute() else base.parent / path


class TlsContext:
    """An SSL context for the server whose certificate and client CA are reloaded when their files change."""

    def __init__(self, config_path: Path, tls: TlsServerConfig) -> None:
        self.cert = _resolve(config_path, tls.cert_file)
        self.key = _resolve(config_path, tls.key_file)
        self.client_ca = _resolve(config_path, tls.client_ca_file) if tls.client_ca_file else None
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = _VERSIONS[tls.min_version]
        self.context.maximum_version = _VERSIONS[tls.max_version]
        self.context.verify_mode = _VERIFY[tls.client_auth_type]
        self._stamp: tuple[float, ...] = ()
        self._load(first=True)

    def _mtimes(self) -> tuple[float, ...]:
        return tuple(os.stat(p).st_mtime for p in (self.cert, self.key, self.client_ca) if p is not None)

    def _load(self, first: bool = False) -> None:
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return
            self.context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                self.context.load_verify_locations(self.client_ca)
            self._stamp = stamp
        except (OSError, ssl.SSLError) as exc:
            if first:
                raise WebConfigError(
                    f"web_config_file: TLS certificate {self.cert} / key {self.key} unusable ({exc}). Fix: "
                    "point cert_file and key_file at a PEM certificate and its private key"
                ) from None
            # A rotation in progress (one file written, not the other): keep serving the old pair.

    def reload_if_changed(self) -> None:
        self._load()


class BasicAuth:
    """Checks `Authorization: Basic …` against bcrypt hashes.

    bcrypt costs tens of milliseconds by design, so results — good and bad — are cached per (user, password)
    (bounded), `cached()` answers repeats without a thread, and the server runs uncached checks on one
    worker thread: a flood of wrong passwords can cost at most one core and never reaches the event loop.
    """

    def __init__(self, users: dict[str, str]) -> None:
        import bcrypt  # noqa: PLC0415 - only with basic auth configured (its import and hashing cost memory, ~80 ms)

        self._checkpw = bcrypt.checkpw
        # A valid hash to check unknown users against, so a wrong user costs as much as a wrong password.
        self._dummy_hash = bcrypt.hashpw(b"wattlens", bcrypt.gensalt(rounds=10))
        self.users = {user: hashed.encode() for user, hashed in users.items()}
        self._results: OrderedDict[tuple[str, bytes], bool] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _credentials(header: str) -> tuple[str, bytes] | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password.encode()) if sep else None

    def cached(self, header: str) -> bool | None:
        """The answer without bcrypt when it is known (malformed headers are always False), else None."""
        key = self._credentials(header)
        if key is None:
            return False
        with self._lock:
            result = self._results.get(key)
            if result is not None:
                self._results.move_to_end(key)
            return result

    def check(self, header: str) -> bool:
        known = self.cached(header)
        if known is not None:
            return known
        key = self._credentials(header)
        assert key is not None  # cached() answers False for anything unparsable
        hashed = self.users.get(key[0])
        ok = self._checkpw(key[1], hashed if hashed is not None else self._dummy_hash) and hashed is not None
        with self._lock:
            self._results[key] = ok
            while len(self._results) > _CACHE_SIZE:
                self._results.popitem(last=False)
        return ok
