"""The one configuration model and how it is assembled.

Precedence, lowest first: defaults < YAML file (--config / WATTLENS_CONFIG) < environment (WATTLENS_*)
< command-line flags. Unknown keys and bad values are errors reported as one line that names the setting
(its full dotted key), the value, where it came from and how to fix it (`ConfigError`); the CLI turns that
into exit status 2. Every field carries its help text and its group in `json_schema_extra`: the CLI
generates one flag per setting from them, so a new setting gets its flag, variable and help by itself.

Why not pydantic-settings: its sources hand pydantic a merged dict, so a validation error cannot say whether
the value came from the file, a variable or a flag; it ignores unknown prefixed variables (a misspelt
WATTLENS_INTERVALL would silently do nothing); and it reads list and dict variables as JSON. The layering
below is short and keeps the origin of every key.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import socket
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo

from exporter.budget import MIN_SERIES
from exporter.carbon.embodied import GPU_DEFAULT_EMBODIED_KG, GPU_EMBODIED_KG, HOST_EMBODIED_KG, LIFETIME_S
from exporter.files import CONFIG_FILE_LIMIT, read_operator_text
from exporter.meters.registry import DEFAULT_ORDER, NODE_METERS
from exporter.runtime_config import ConfigError, ConfigRecord, ConfigRules, Record, parse_listen
from exporter.zones import ZONES

ENV_PREFIX = "WATTLENS_"
ENV_CONFIG_FILE = "WATTLENS_CONFIG"
DEFAULT_PORT = 9875
ZONE_NAMES = tuple(name for name, kind in ZONES.items() if kind.role == "cpu")
OTHER_GROUP = "Other"
# Maps a layer replaces whole (not merged key by key).
MAP_SETTINGS = frozenset({"idle_watts", "gpu_embodied_kg", "otlp_headers", "otlp_resource_attributes"})
SECRET_SETTINGS = frozenset({"otlp_headers"})  # never shown in an error


def _pairs(value: object, shape: str = "NAME=VALUE") -> object:
    """`a=1,b=2` (a flag or variable) → {"a": "1", "b": "2"}; a mapping (YAML) is left as it is."""
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, text = part.partition("=")
        if not sep:
            raise ValueError(f"'{part}' is not {shape}")
        pairs[name.strip()] = text.strip()
    return pairs


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def _hint(group: str, text: str) -> dict[str, Any]:
    """A setting's help group and its text (the --help line, and what the error's "Fix: set X to ..." says)."""
    return {"group": group, "fix": text}


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """`5`, `0.5`, `500ms`, `5s`, `2m`, `1h30m`, `1d` → seconds. Anything else is left for pydantic to reject."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(
            f"'{value}' is not a duration: give seconds (5, 0.5) or a number with a unit: 500ms, 5s, 2m, 1h"
        )
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"'{value}' is not a finite duration")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _listen_text(value: object) -> object:
    """YAML reads `listen: 9875` as a number; a bare port means every interface, as `:9875` does."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return ":" + value.strip()
    return value


class ModelConfig(BaseModel):
    """Coefficients of the no-sensor power model (per logical CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_watts_per_cpu: float = Field(
        0.74,
        ge=0,
        le=50,
        json_schema_extra=_hint("Power model", "watts one idle logical CPU draws, 0 to 50 (default 0.74)"),
    )
    max_watts_per_cpu: float = Field(
        3.5,
        gt=0,
        le=100,
        json_schema_extra=_hint("Power model", "watts one fully busy logical CPU draws (default 3.5)"),
    )
    cpus: int | None = Field(
        None,
        ge=1,
        le=65536,
        json_schema_extra=_hint("Power model", "logical CPUs to model, or leave unset to count them"),
    )

    @field_validator("max_watts_per_cpu")
    @classmethod
    def _max_not_below_idle(cls, value: float, info: ValidationInfo) -> float:
        idle = info.data.get("idle_watts_per_cpu")
        if idle is not None and value < idle:
            raise ValueError(f"must not be below model.idle_watts_per_cpu ({idle})")
        return value


REDFISH = "Platform power"


class RedfishConfig(BaseModel):
    """The BMC whose chassis power is the node's platform domain (optional: off while `url` is empty)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        "",
        json_schema_extra=_hint(
            REDFISH,
            "the BMC's base URL, e.g. https://10.0.0.5 or https://{node}-bmc.example:8443 ({node}: the node name)",
        ),
    )
    chassis: str = Field(
        "",
        json_schema_extra=_hint(REDFISH, "the Chassis Id to read (e.g. 1U), or empty for the only chassis the BMC has"),
    )
    username: str = Field(
        "", max_length=256, json_schema_extra=_hint(REDFISH, "the BMC user name (or use redfish.username_file)")
    )
    username_file: Path | None = Field(
        None,
        validate_default=True,
        json_schema_extra=_hint(
            REDFISH, "a file holding the BMC user name (a mounted Secret's key), or set redfish.username"
        ),
    )
    password_file: Path | None = Field(
        None,
        validate_default=True,
        json_schema_extra=_hint(
            REDFISH, "a file holding the BMC password (a mounted Secret's key); re-read at every login"
        ),
    )
    auth: Literal["session", "basic"] = Field(
        "session",
        json_schema_extra=_hint(
            REDFISH, "'session' (X-Auth-Token, one login) or 'basic' (credentials on every request)"
        ),
    )
    ca_file: Path | None = Field(
        None,
        json_schema_extra=_hint(
            REDFISH, "a PEM CA bundle that signed the BMC's certificate, or unset for the system's trust store"
        ),
    )
    tls_insecure_skip_verify: bool = Field(
        False,
        json_schema_extra=_hint(REDFISH, "false (verify the BMC's certificate), or true to accept any certificate"),
    )
    timeout: Seconds = Field(
        5.0,
        ge=0.5,
        le=60,
        json_schema_extra=_hint(REDFISH, "how long one BMC request may take (5, 500ms), 0.5 to 60 s (default 5)"),
    )
    interval: Seconds | None = Field(
        None,
        ge=1,
        le=600,
        json_schema_extra=_hint(REDFISH, "time between BMC reads (10, 1m), 1 s to 10 min (default: the tick interval)"),
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be https://HOST[:PORT] (or http:// for a BMC without TLS)")
        if parts.query or parts.fragment or parts.path.strip("/") or parts.username or parts.password:
            raise ValueError("must be only the scheme, host and port: credentials go in username/password_file")
        return value.rstrip("/")

    @field_validator("username_file")
    @classmethod
    def _user_with_url(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("url") and value is None and not info.data.get("username"):
            raise ValueError("redfish.url is set but neither redfish.username nor redfish.username_file is")
        return value

    @field_validator("password_file")
    @classmethod
    def _password_with_url(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("url") and value is None:
            raise ValueError("redfish.url is set but redfish.password_file is not")
        return value


CARBON = "Carbon"
_YEAR_S = 365.25 * 86400


class CarbonConfig(BaseModel):
    """Where the grid intensity comes from (besides carbon_intensity / carbon_intensity_file) and the hardware's
    embodied carbon (docs/carbon.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["none", "electricity_maps", "watttime", "uk_carbon_intensity", "json"] = Field(
        "none",
        json_schema_extra=_hint(
            CARBON,
            "an intensity API polled in the background: none, electricity_maps, watttime, uk_carbon_intensity or "
            "json (default none: carbon_intensity or carbon_intensity_file)",
        ),
    )
    kind: Literal["average", "marginal"] = Field(
        "average",
        json_schema_extra=_hint(
            CARBON, "average or marginal: what a configured value, file or json endpoint gives (default average)"
        ),
    )
    url: str = Field(
        "",
        validate_default=True,
        json_schema_extra=_hint(
            CARBON, "the json endpoint's URL, or another base URL for a provider (e.g. a proxy), or empty"
        ),
    )
    region: str = Field(
        "",
        max_length=64,
        validate_default=True,
        json_schema_extra=_hint(
            CARBON,
            "Electricity Maps zone (DE), WattTime region (CAISO_NORTH), or for uk_carbon_intensity a region id "
            "1..17 or an outward postcode (empty: national)",
        ),
    )
    token_file: Path | None = Field(
        None,
        validate_default=True,
        json_schema_extra=_hint(
            CARBON, "a file holding the Electricity Maps auth-token (or a json endpoint's bearer token), or unset"
        ),
    )
    username: str = Field("", max_length=256, json_schema_extra=_hint(CARBON, "the WattTime user name"))
    password_file: Path | None = Field(
        None,
        validate_default=True,
        json_schema_extra=_hint(CARBON, "a file holding the WattTime password (a mounted Secret's key)"),
    )
    signal_type: Literal["co2_moer", "co2_aoer"] = Field(
        "co2_moer",
        json_schema_extra=_hint(CARBON, "WattTime signal: co2_moer (marginal, default) or co2_aoer (average)"),
    )
    emission_factor_type: Literal["lifecycle", "direct"] = Field(
        "lifecycle", json_schema_extra=_hint(CARBON, "Electricity Maps factors: lifecycle (default) or direct")
    )
    value_path: str = Field(
        "",
        validate_default=True,
        json_schema_extra=_hint(CARBON, "for json: the dotted path of the value in the answer, e.g. data.0.value"),
    )
    units: str = Field(
        "g_per_kwh",
        json_schema_extra=_hint(CARBON, "for json: g_per_kwh, kg_per_mwh, kg_per_kwh or lb_per_mwh"),
    )
    timestamp_path: str = Field(
        "", json_schema_extra=_hint(CARBON, "for json: the dotted path of the value's ISO 8601 time, or empty")
    )
    poll_interval: Seconds = Field(
        300.0,
        ge=1,
        le=86400,
        json_schema_extra=_hint(
            CARBON, "time between polls of the intensity API (300, 5m), 1 s (a local endpoint) to 1 d (default 5m)"
        ),
    )
    timeout: Seconds = Field(
        10.0,
        ge=0.5,
        le=120,
        json_schema_extra=_hint(CARBON, "how long one intensity request may take in all (10, 500ms), 0.5 to 120 s"),
    )
    max_backoff: Seconds = Field(
        600.0,
        ge=1,
        le=86400,
        json_schema_extra=_hint(
            CARBON,
            "the longest wait between retries after failures (600, 10m), 1 s to 1 d; the first is an eighth "
            "of it, at most 5 s",
        ),
    )
    embodied: bool = Field(
        True,
        json_schema_extra=_hint(CARBON, "true to export embodied carbon per workload (default), or false"),
    )
    host_embodied_kg: float = Field(
        HOST_EMBODIED_KG,
        ge=0,
        le=1_000_000,
        json_schema_extra=_hint(
            CARBON, f"kgCO2e to make this node without its GPUs, 0 to 1000000 (default {HOST_EMBODIED_KG:g})"
        ),
    )
    lifetime: Seconds = Field(
        LIFETIME_S,
        ge=86400,
        le=30 * _YEAR_S,
        json_schema_extra=_hint(CARBON, "the node's service life (1461d = 4 years, the default), 1 d to 30 years"),
    )
    gpu_embodied_kg: dict[str, float] = Field(
        default_factory=lambda: dict(GPU_EMBODIED_KG),
        json_schema_extra=_hint(
            CARBON,
            "MODEL=KG pairs added to the defaults, matched in the GPU's model name (longest first), e.g. H100=600",
        ),
    )
    gpu_default_embodied_kg: float = Field(
        GPU_DEFAULT_EMBODIED_KG,
        ge=0,
        le=100_000,
        json_schema_extra=_hint(
            CARBON, f"kgCO2e of a GPU whose model no gpu_embodied_kg key matches (default {GPU_DEFAULT_EMBODIED_KG:g})"
        ),
    )
    gpu_lifetime: Seconds | None = Field(
        None,
        ge=86400,
        le=30 * _YEAR_S,
        json_schema_extra=_hint(CARBON, "the GPUs' service life (1095d), or unset for the node's lifetime"),
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
        elif info.data.get("provider") == "json":
            raise ValueError("carbon.provider is json but carbon.url is empty")
        return value

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str, info: ValidationInfo) -> str:
        provider = info.data.get("provider")
        if provider in ("electricity_maps", "watttime") and not value:
            raise ValueError(f"carbon.provider is {provider}, which needs a region")
        if provider == "uk_carbon_intensity" and value.isdigit() and not 1 <= int(value) <= 17:
            raise ValueError("a GB region id is 1 to 17")
        return value

    @field_validator("token_file")
    @classmethod
    def _token_for_electricity_maps(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("provider") == "electricity_maps" and value is None:
            raise ValueError("carbon.provider is electricity_maps, which needs its auth-token in carbon.token_file")
        return value

    @field_validator("password_file")
    @classmethod
    def _login_for_watttime(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("provider") == "watttime" and (value is None or not info.data.get("username")):
            raise ValueError("carbon.provider is watttime, which needs carbon.username and carbon.password_file")
        return value

    @field_validator("value_path")
    @classmethod
    def _path_for_json(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("provider") == "json" and not value:
            raise ValueError("carbon.provider is json, which needs the value's path (e.g. data.0.value)")
        if value and any(not part for part in value.split(".")):
            raise ValueError("a path has an empty segment (write it as data.0.value)")
        return value

    @field_validator("units")
    @classmethod
    def _known_units(cls, value: str) -> str:
        from exporter.carbon.intensity import IntensityError, unit_factor  # noqa: PLC0415 - http.client: only for json

        try:
            unit_factor(value)
        except IntensityError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("gpu_embodied_kg", mode="before")
    @classmethod
    def _split_gpu_kg(cls, value: object) -> object:
        return _pairs(value, "MODEL=KG")

    @field_validator("gpu_embodied_kg")
    @classmethod
    def _over_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        for model, kg in value.items():
            if not model.strip():
                raise ValueError("a GPU model key is empty")
            if not (math.isfinite(kg) and 0 <= kg <= 100_000):
                raise ValueError(f"kgCO2e for {model} must be between 0 and 100000")
        return {**GPU_EMBODIED_KG, **value}


class Config(ConfigRules, BaseModel):
    """Everything wattlens can be told. Field names are the YAML keys and the WATTLENS_* names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    record_type: ClassVar[type[Record]] = ConfigRecord  # what the daemon holds instead (record_of)

    interval: Seconds = Field(
        5.0,
        ge=0.5,
        le=60,
        json_schema_extra=_hint("HTTP and ticks", "seconds between ticks (5, 2.5, 500ms), 0.5 to 60 (default 5)"),
    )
    listen: Annotated[str, BeforeValidator(_listen_text)] = Field(
        f":{DEFAULT_PORT}",
        json_schema_extra=_hint(
            "HTTP and ticks",
            f"PORT, :PORT (every interface), HOST:PORT or [IPV6]:PORT, e.g. {DEFAULT_PORT}, 127.0.0.1:{DEFAULT_PORT} "
            f"or [::1]:{DEFAULT_PORT}",
        ),
    )
    health_listen: Annotated[str | None, BeforeValidator(_listen_text)] = Field(
        None,
        json_schema_extra=_hint(
            "HTTP and ticks",
            "PORT, :PORT or HOST:PORT of a plain-HTTP listener for /healthz and /readyz only (probes that cannot do "
            "TLS or basic auth), e.g. :9876, or unset",
        ),
    )
    max_connections_per_peer: int = Field(
        0,
        ge=0,
        le=65536,
        json_schema_extra=_hint(
            "HTTP and ticks", "the most connections one client address may hold, or 0 for no per-client cap"
        ),
    )
    sys_path: Path = Field(
        Path("/sys"), json_schema_extra=_hint("Host paths", "the host's sysfs mount, e.g. /sys or /host/sys")
    )
    proc_path: Path = Field(
        Path("/proc"), json_schema_extra=_hint("Host paths", "the host's procfs mount, e.g. /proc or /host/proc")
    )
    cgroup_root: Path = Field(
        Path("/sys/fs/cgroup"), json_schema_extra=_hint("Host paths", "the host's cgroup mount, e.g. /sys/fs/cgroup")
    )
    meters: tuple[str, ...] = Field(
        DEFAULT_ORDER,
        min_length=1,
        json_schema_extra=_hint(
            "Node energy", "a comma-separated list of meters to try in order, from: " + ", ".join(NODE_METERS)
        ),
    )
    meter_failover_after: Seconds = Field(
        60.0,
        ge=5,
        le=86400,
        json_schema_extra=_hint(
            "Node energy",
            "how long every CPU zone of the meter in use may be down before the next meter takes over (60, 5m)",
        ),
    )
    idle_policy: Literal["baseline", "ratio"] = Field(
        "baseline", json_schema_extra=_hint("Node energy", "'baseline' (learned or configured idle watts) or 'ratio'")
    )
    idle_watts: dict[str, float] = Field(
        default_factory=dict,
        json_schema_extra=_hint(
            "Node energy", "ZONE=WATTS pairs, e.g. package=40,dram=6 (zones: " + ", ".join(ZONE_NAMES) + ")"
        ),
    )
    idle_window: Seconds = Field(
        3600.0,
        ge=60,
        le=7 * 86400,
        json_schema_extra=_hint(
            "Node energy", "history for the learned idle baseline (3600, 1h), 60 s to 7 d (default 1h)"
        ),
    )
    idle_quantile: float = Field(
        0.05, ge=0, le=0.5, json_schema_extra=_hint("Node energy", "quantile of interval power taken as idle, 0 to 0.5")
    )
    max_zone_watts: float = Field(
        2500.0,
        gt=0,
        le=100000,
        json_schema_extra=_hint("Node energy", "the most watts one zone can draw; larger steps are counter resets"),
    )
    max_platform_watts: float = Field(
        50000.0,
        gt=0,
        le=1000000,
        json_schema_extra=_hint(
            "Node energy", "the most watts the whole node (platform, module) can draw (default 50000)"
        ),
    )
    idle_attribution: Literal["none", "cpu"] = Field(
        "none",
        json_schema_extra=_hint(
            "Node energy", "'none' (idle energy stays at node level) or 'cpu' (spread like active)"
        ),
    )
    workloads: bool = Field(
        True, json_schema_extra=_hint("Workloads", "true to attribute energy to workloads, false not to")
    )
    workload_ttl: Seconds = Field(
        600.0,
        ge=0,
        le=86400,
        json_schema_extra=_hint(
            "Workloads", "how long an ended workload's series stay exported (600, 10m), 0 to 1d (default 10m)"
        ),
    )
    gpus: bool = Field(
        True,
        json_schema_extra=_hint("GPUs", "true to read NVIDIA (NVML) and AMD (AMD SMI) GPUs when present, or false"),
    )
    gpu_idle_watts: float | None = Field(
        None,
        ge=0,
        le=5000,
        json_schema_extra=_hint(
            "GPUs", "idle watts of each GPU, or leave unset to estimate it (from unused intervals, else from load)"
        ),
    )
    gpu_poll_interval: Seconds = Field(
        1.0,
        ge=0,
        le=60,
        json_schema_extra=_hint(
            "GPUs",
            "how often GPU processes are polled between ticks so that a job that exits keeps its energy "
            "(1, 500ms), 0 to poll only at ticks (default 1)",
        ),
    )
    gpu_tail: Seconds = Field(
        5.0,
        ge=0,
        le=60,
        json_schema_extra=_hint(
            "GPUs",
            "how long after its last users leave a GPU's active energy (its ramp-down) still goes to them "
            "(5, 2s), 0 to give it to nobody (default 5)",
        ),
    )
    nvml_timeout: Seconds = Field(
        2.0,
        ge=0.1,
        le=30,
        json_schema_extra=_hint("GPUs", "how long a tick waits for NVML (2, 500ms), 0.1 to 30 s (default 2)"),
    )
    process_metrics: bool = Field(
        False, json_schema_extra=_hint("Workloads", "true to export per-process energy (top process_top_n + 'other')")
    )
    process_top_n: int = Field(
        20,
        ge=1,
        le=1000,
        json_schema_extra=_hint("Workloads", "how many processes get a series of their own, 1 to 1000"),
    )
    max_series: int = Field(
        1500,
        ge=0,
        le=1_000_000,
        json_schema_extra=_hint(
            "Series budget",
            "the most workload series to export, 0 (no budget) or 100 to 1000000 (default 1500); past nine tenths "
            "of it the weakest workloads fold into per-namespace and per-kind rollups",
        ),
    )
    series_level: Literal["node", "pods", "containers", "processes"] = Field(
        "containers",
        json_schema_extra=_hint(
            "Series budget",
            "node (no workload series), pods (top-level workloads: pods, services, VMs...), containers (and the "
            "containers inside them; default) or processes (and per-process series, as process_metrics)",
        ),
    )
    kubelet_log_path: Path = Field(
        Path("/var/log"),
        json_schema_extra=_hint(
            "Host paths", "the directory holding the kubelet's pods/ and containers/ log directories"
        ),
    )
    kubernetes_api: bool = Field(
        False,
        json_schema_extra=_hint("Kubernetes API", "true to watch this node's pods in the API server (labels, owners)"),
    )
    kubernetes_api_server: str = Field(
        "", json_schema_extra=_hint("Kubernetes API", "the API server URL, or empty for the in-cluster service")
    )
    kubernetes_token_file: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        json_schema_extra=_hint("Kubernetes API", "the service-account token file (re-read on every request)"),
    )
    kubernetes_ca_file: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
        json_schema_extra=_hint("Kubernetes API", "the API server's CA bundle"),
    )
    pod_labels: tuple[str, ...] = Field(
        (),
        json_schema_extra=_hint(
            "Kubernetes API", "comma-separated pod label keys exported in wattlens_pod_labels (allow-list)"
        ),
    )
    carbon_intensity: float | None = Field(
        None,
        ge=0,
        le=5000,
        json_schema_extra=_hint("Carbon", "grid carbon intensity in gCO2e/kWh, 0 to 5000, or unset"),
    )
    carbon_intensity_file: Path | None = Field(
        None, json_schema_extra=_hint("Carbon", "a file holding the current gCO2e/kWh, re-read every tick, or unset")
    )
    cluster_name: str = Field(
        "",
        max_length=253,
        json_schema_extra=_hint(
            "OpenTelemetry", "the cluster's name for the OTLP resource attribute k8s.cluster.name, or empty"
        ),
    )
    otlp_endpoint: str = Field(
        "",
        max_length=2048,
        json_schema_extra=_hint(
            "OpenTelemetry",
            "the OTLP receiver's URL: http(s)://HOST:4318/v1/metrics (a URL without a path gets /v1/metrics; "
            "VictoriaMetrics: http://HOST:8428/opentelemetry/v1/metrics), http(s)://HOST:4317 with grpc, or empty "
            "(no push)",
        ),
    )
    otlp_protocol: Literal["http/protobuf", "grpc"] = Field(
        "http/protobuf",
        json_schema_extra=_hint(
            "OpenTelemetry", "http/protobuf (pip install 'wattlens[otlp]') or grpc (pip install 'wattlens[otlp-grpc]')"
        ),
    )
    otlp_interval: Seconds = Field(
        30.0,
        ge=1,
        le=3600,
        json_schema_extra=_hint("OpenTelemetry", "seconds between pushes (30, 1m), 1 to 3600 (default 30)"),
    )
    otlp_temporality: Literal["cumulative", "delta"] = Field(
        "cumulative",
        json_schema_extra=_hint(
            "OpenTelemetry",
            "cumulative (totals since start; what Prometheus-style receivers such as VictoriaMetrics and Mimir "
            "keep) or delta (energy since the last delivered push)",
        ),
    )
    otlp_timeout: Seconds = Field(
        10.0,
        ge=0.5,
        le=120,
        json_schema_extra=_hint("OpenTelemetry", "seconds one push may take, retries included, 0.5 to 120"),
    )
    otlp_compression: Literal["gzip", "none"] = Field(
        "gzip", json_schema_extra=_hint("OpenTelemetry", "gzip (default) or none")
    )
    otlp_queue: int = Field(
        4,
        ge=1,
        le=100,
        json_schema_extra=_hint(
            "OpenTelemetry",
            "pushes kept while the receiver is unreachable, 1 to 100 (default 4); beyond it the oldest is dropped",
        ),
    )
    otlp_headers: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra=_hint(
            "OpenTelemetry",
            "NAME=VALUE pairs sent with every push, e.g. X-Scope-OrgID=fleet-1 (put credentials in "
            "WATTLENS_OTLP_HEADERS from a secret, not in a config file)",
        ),
    )
    otlp_resource_attributes: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra=_hint(
            "OpenTelemetry", "extra resource attributes as KEY=VALUE pairs, e.g. deployment.environment=prod"
        ),
    )
    otlp_ca_file: Path | None = Field(
        None,
        json_schema_extra=_hint("OpenTelemetry", "a CA bundle to verify the receiver's certificate, or unset"),
    )
    otlp_client_cert_file: Path | None = Field(
        None,
        json_schema_extra=_hint("OpenTelemetry", "a client certificate for mutual TLS, or unset"),
    )
    otlp_client_key_file: Path | None = Field(
        None,
        json_schema_extra=_hint("OpenTelemetry", "the client certificate's key, or unset"),
    )
    web_config_file: Path | None = Field(
        None,
        json_schema_extra=_hint(
            "HTTP and ticks", "a Prometheus exporter-toolkit web-config.yml (TLS, basic auth), or unset"
        ),
    )
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=253,
        json_schema_extra=_hint("HTTP and ticks", "a non-empty node name (default: $NODE_NAME, else the hostname)"),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", json_schema_extra=_hint("Logging", "one of debug, info, warning, error (default info)")
    )
    log_format: Literal["text", "json", "logfmt"] = Field(
        "text",
        json_schema_extra=_hint(
            "Logging",
            "text (for a terminal or the journal), json or logfmt (one record per line for Loki, Elasticsearch)",
        ),
    )
    carbon: CarbonConfig = Field(
        default_factory=CarbonConfig,
        json_schema_extra=_hint(CARBON, "a mapping of provider, region, token_file, ..., host_embodied_kg, lifetime"),
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        json_schema_extra=_hint("Power model", "a mapping of idle_watts_per_cpu, max_watts_per_cpu and cpus"),
    )
    redfish: RedfishConfig = Field(
        default_factory=RedfishConfig,
        json_schema_extra=_hint(REDFISH, "a mapping of url, chassis, username(_file), password_file, auth, ..."),
    )

    @field_validator("listen", "health_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value:  # health_listen: empty means unset
            parse_listen(value)
        return value

    @field_validator("meters", "pod_labels", mode="before")
    @classmethod
    def _split_meters(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("meters")
    @classmethod
    def _known_meters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in NODE_METERS:
                raise ValueError(f"unknown meter '{name}'")
        if len(set(value)) != len(value):
            raise ValueError("a meter is listed twice")
        return value

    @field_validator("idle_watts", mode="before")
    @classmethod
    def _split_idle_watts(cls, value: object) -> object:
        return _pairs(value, "ZONE=WATTS")

    @field_validator("idle_watts")
    @classmethod
    def _known_zones(cls, value: dict[str, float]) -> dict[str, float]:
        for zone, watts in value.items():
            if zone not in ZONE_NAMES:
                raise ValueError(f"unknown zone '{zone}'")
            if not 0 <= watts <= 100000:
                raise ValueError(f"idle watts for {zone} must be between 0 and 100000")
        return value

    @field_validator("max_series")
    @classmethod
    def _budget_floor(cls, value: int) -> int:
        if 0 < value < MIN_SERIES:
            raise ValueError(f"must be 0 (no budget) or at least {MIN_SERIES} (room for the rollups)")
        return value

    @field_validator("otlp_headers", "otlp_resource_attributes", mode="before")
    @classmethod
    def _split_pairs(cls, value: object) -> object:
        return _pairs(value)

    @field_validator("otlp_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"'{name}' is not an HTTP header name")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of {name} holds a line break")
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str) -> str:
        if not value:
            return value
        url = urllib.parse.urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("series_level")
    @classmethod
    def _levels_agree(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("process_metrics") and value in ("node", "pods"):
            raise ValueError("process_metrics=true asks for process series, which this level leaves out")
        return value


def record_of(model: BaseModel) -> Record:
    """A validated model as the daemon holds it (exporter/runtime_config.py): every field by its name with its
    value, nested models as records of their own; the model's `record_type` (default `Record`) brings the
    properties the two share."""
    fields = {name: getattr(model, name) for name in type(model).model_fields}
    values = {name: record_of(value) if isinstance(value, BaseModel) else value for name, value in fields.items()}
    record_type: type[Record] = getattr(type(model), "record_type", Record)
    return record_type(values)


# --- the settings as a list: flags, variables and help are generated from it -------------------------


SettingKind = Literal["bool", "duration", "path", "choice", "list", "map", "number", "text"]


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # dotted: interval, model.cpus
    group: str
    help: str
    kind: SettingKind
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return flag_name(self.key)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper().replace(".", "__")


_ORIGIN_KINDS: dict[type, SettingKind] = {tuple: "list", dict: "map"}
_TYPE_KINDS: dict[type, SettingKind] = {bool: "bool", Path: "path", int: "number", float: "number"}


def _kind(field: FieldInfo) -> tuple[SettingKind, tuple[str, ...]]:
    """How a setting is written on the command line (its metavar), and its choices if it has a fixed set."""
    if any(getattr(m, "func", None) is parse_duration for m in field.metadata):
        return "duration", ()
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):  # X | None: the X
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    origin = get_origin(annotation)
    if origin is Literal:
        return "choice", tuple(str(a) for a in get_args(annotation))
    if origin is tuple and get_origin(get_args(annotation)[0]) is Literal:
        return "list", tuple(str(a) for a in get_args(get_args(annotation)[0]))
    kind = _ORIGIN_KINDS.get(origin) if isinstance(origin, type) else None
    if kind is None:
        kind = _TYPE_KINDS.get(annotation, "text") if isinstance(annotation, type) else "text"
    return kind, ()


def settings(model: type[BaseModel] | None = None, prefix: str = "") -> list[Setting]:
    """Every setting, nested ones (model.*) by their dotted key, in the model's order."""
    found: list[Setting] = []
    for name, field in (model or Config).model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(settings(annotation, f"{prefix}{name}."))
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        kind, choices = _kind(field)
        found.append(
            Setting(
                key=prefix + name,
                group=str(extra.get("group", OTHER_GROUP)),
                help=str(extra.get("fix", "")),
                kind=kind,
                choices=choices,
            )
        )
    return found


# --- assembling the layers -------------------------------------------------------------------------

Origin = dict[tuple[str, ...], str]


def _merge(
    into: dict[str, Any], layer: Mapping[str, Any], origin: Origin, source: str, prefix: tuple[str, ...] = ()
) -> None:
    """Deep-merge `layer` into `into`, remembering which source set each key."""
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(into.get(key), dict) and key not in MAP_SETTINGS:
            _merge(into[key], value, origin, source, path)
            continue
        into[key] = dict(value) if isinstance(value, Mapping) else value
        origin[path] = source


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = read_operator_text(path, CONFIG_FILE_LIMIT)
    except OSError as exc:
        raise ConfigError(
            f"config file {path}: cannot be read ({exc.strerror or exc}). "
            "Fix: pass an existing, readable YAML file to --config / WATTLENS_CONFIG"
        ) from None
    import yaml  # noqa: PLC0415 - only with a config file (resident memory of a daemon set by flags)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError(
            f"config file {path}: not valid YAML{where}{f' ({problem})' if problem else ''}. Fix: correct the YAML "
            'syntax (a mapping of settings); quote a value that starts with [, {, *, & or !, e.g. listen: "[::]:9875"'
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: top level is a {type(data).__name__}, not a mapping. "
            "Fix: write settings as 'key: value' lines"
        )
    return data


# What the kubelet injects into every container of a namespace that has a Service named `wattlens` (or
# `wattlens-<anything>`), unless the pod sets enableServiceLinks: false: FOO_SERVICE_HOST=10.0.0.1,
# FOO_SERVICE_PORT[_NAME]=9875, FOO_PORT=tcp://10.0.0.1:9875, FOO_PORT_9875_TCP[_PROTO|_PORT|_ADDR]=...
_IP = r"[0-9a-fA-F.:]+"
_SERVICE_LINKS = tuple(
    (re.compile(r"(?:[A-Z0-9_]+_)?" + name), re.compile(value))
    for name, value in (
        ("SERVICE_HOST", _IP),
        (r"SERVICE_PORT(?:_[A-Z0-9_]+)?", r"\d+"),
        (r"PORT(?:_\d+_(?:TCP|UDP|SCTP))?", r"(?:tcp|udp|sctp)://\S+"),
        (r"PORT_\d+_(?:TCP|UDP|SCTP)_PROTO", r"(?:tcp|udp|sctp)"),
        (r"PORT_\d+_(?:TCP|UDP|SCTP)_PORT", r"\d+"),
        (r"PORT_\d+_(?:TCP|UDP|SCTP)_ADDR", _IP),
    )
)


def is_service_link(name: str, value: str) -> bool:
    """A Kubernetes service-link variable (ignored), not a setting: its name and value have that shape and
    the name is not one of wattlens' own settings."""
    rest = name[len(ENV_PREFIX) :]
    path = tuple(part.lower() for part in rest.split("__"))
    if _is_setting(path):
        return False
    return any(name_re.fullmatch(rest) and value_re.fullmatch(value) for name_re, value_re in _SERVICE_LINKS)


def _is_setting(path: tuple[str, ...]) -> bool:
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return True


def env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """WATTLENS_INTERVAL=5, WATTLENS_MODEL__MAX_WATTS_PER_CPU=4 → nested dict; returns names used.

    Every other WATTLENS_* variable is an unknown setting, an error like an unknown key in the file (a typo
    must not be silently ignored), except the Kubernetes service-link variables, which are skipped."""
    layer: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE or is_service_link(name, value):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        target = layer
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
        names[path] = name
    return layer, names


def load_config(
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config from all layers, or raise ConfigError with the one line to show."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_CONFIG_FILE):
        config_file = Path(environ[ENV_CONFIG_FILE])
    merged: dict[str, Any] = {}
    origin: Origin = {}
    if config_file is not None:
        _merge(merged, read_config_file(config_file), origin, f"config file {config_file}")
    env, env_names = env_layer(environ)
    _merge(merged, env, origin, "environment")
    for path, name in env_names.items():
        origin[path] = f"environment {name}"
    if "node_name" not in merged and environ.get("NODE_NAME"):
        # Kubernetes' downward API is commonly wired to NODE_NAME; WATTLENS_NODE_NAME still wins.
        _merge(merged, {"node_name": environ["NODE_NAME"]}, origin, "environment NODE_NAME")
    flag_values = {k: v for k, v in (flags or {}).items() if v is not None}
    for key, value in flag_values.items():  # dotted keys are nested settings: model.cpus
        path = tuple(key.split("."))
        nested: dict[str, Any] = {path[-1]: value}
        for part in reversed(path[:-1]):
            nested = {part: nested}
        _merge(merged, nested, origin, "command line")
        origin[path] = f"flag {flag_name(key)}"
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, merged, origin)) from None


def flag_name(key: str) -> str:
    """The command-line flag of a setting: interval → --interval, model.max_watts_per_cpu →
    --model.max-watts-per-cpu (dots for nesting, as Prometheus' own flags do)."""
    return "--" + key.replace("_", "-")


def _field_hint(path: tuple[str, ...]) -> str | None:
    model: type[BaseModel] = Config
    for depth, part in enumerate(path, start=1):
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if depth < len(path) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if depth < len(path):
            return None
        extra = field.json_schema_extra
        return str(extra.get("fix")) if isinstance(extra, dict) and "fix" in extra else None
    return None


def _known_keys(path: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in path:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(exc: ValidationError, merged: Mapping[str, Any], origin: Origin) -> str:
    error = exc.errors()[0]
    loc = tuple(str(p) for p in error["loc"])
    # Errors inside a list or dict carry an index after the setting's name; the name itself may be anything.
    path = loc[:1] + tuple(p for p in loc[1:] if not p.isdigit())
    # An unknown key is named in full (model.cpu); a bad value by the setting it belongs to (idle_watts, not
    # idle_watts.package).
    while error["type"] != "extra_forbidden" and path not in origin and _field_hint(path) is None and len(path) > 1:
        path = path[:-1]
    key = ".".join(path) or "config"
    where = next((origin[path[:i]] for i in range(len(path), 0, -1) if path[:i] in origin), "defaults")
    if error["type"] == "extra_forbidden":
        parent = path[:-1]
        known = _known_keys(parent)
        import difflib  # noqa: PLC0415 - only for a mistyped key

        close = difflib.get_close_matches(path[-1], known, n=1)
        suggestion = f"did you mean '{'.'.join((*parent, close[0]))}'? Otherwise " if close else ""
        return f"unknown setting '{key}' (from {where}). Fix: {suggestion}remove it or use one of: " + ", ".join(known)
    value: Any = merged
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    message = str(error["msg"]).removeprefix("Value error, ")
    hint = _field_hint(path)
    fix = f" Fix: set {key} to {hint}." if hint else ""
    shown = "(not shown: it may hold credentials)" if path[0] in SECRET_SETTINGS else _shown(value)
    return f"invalid setting {key}={shown} (from {where}): {message}.{fix}"


def _shown(value: Any, limit: int = 120) -> str:
    """The offending value as the one line shows it: its repr, cut short (a YAML alias bomb is millions long)."""
    shorten = reprlib.Repr()  # keyword arguments only from Python 3.12
    shorten.maxstring = shorten.maxother = limit
    shorten.maxlist = shorten.maxdict = shorten.maxtuple = 8
    shorten.maxlevel = 3
    text = shorten.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
