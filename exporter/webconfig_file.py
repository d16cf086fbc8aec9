"""The exporter-toolkit `web-config.yml` file (exporter/webconfig.py says what it configures): its pydantic
models and its loader, used where the configuration is validated (the CLI, before the daemon starts; see
docs/architecture.md, "Process model"). The daemon gets the loaded file as a record (exporter/config.py
`record_of`) and never imports this module or pydantic."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter.files import CONFIG_FILE_LIMIT, read_operator_text
from exporter.webconfig import MAX_BCRYPT_COST, MIN_BCRYPT_COST, ClientAuth, TlsVersion, WebConfigError, bcrypt_cost


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
    import yaml  # noqa: PLC0415 - only with a web config file

    try:
        data = yaml.safe_load(read_operator_text(path, CONFIG_FILE_LIMIT)) or {}
    except OSError as exc:
        raise WebConfigError(
            f"web_config_file {path}: cannot be read ({exc.strerror or exc}). Fix: point "
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
        cost = bcrypt_cost(hashed)
        if cost is None:
            raise WebConfigError(
                f"web_config_file {path}: basic_auth_users.{user} is not a bcrypt hash ($2y$, a two-digit "
                f"cost, $, 53 characters). Fix: generate one with htpasswd -nBC 10 {user} (the part after the colon)"
            )
        if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
            raise WebConfigError(
                f"web_config_file {path}: basic_auth_users.{user} has bcrypt cost {cost}, outside "
                f"{MIN_BCRYPT_COST}..{MAX_BCRYPT_COST} (each step doubles the time of a login; 14 is ~1 s). "
                f"Fix: generate a new hash with htpasswd -nBC 10 {user}"
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
