"""The configuration as the running daemon holds it: the validated settings as plain, read-only attributes,
and what is derived from them, without pydantic.

pydantic validates (exporter/config.py, in the CLI process); the daemon process never imports it (about 12 MiB
of resident memory: docs/architecture.md, "Process model"). `record_of` (exporter/config.py) turns a validated
model into a `Record` with the same attribute names and values, nested models into nested records; what is
computed from the settings (`ConfigRules`) is defined here once and inherited by both the pydantic `Config` and
its record, so the two cannot disagree. A nested model that grows a property gets a mixin here the same way.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

EXIT_CONFIG = 2  # the exit status of a configuration error, or of a setting found unusable at start


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line the user sees."""


def parse_listen(value: str) -> tuple[str | None, int]:
    """`PORT`, `:PORT`, `HOST:PORT` or `[V6]:PORT` → (host or None for every interface, port)."""
    host, _, port_text = value.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be PORT, :PORT, HOST:PORT or [IPV6]:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets, e.g. [::]:9875 or [::1]:9875")
    return (host or None), int(port_text)


class ConfigRules:
    """What the settings of `Config` imply: shared by the pydantic model and the daemon's record."""

    if TYPE_CHECKING:  # the settings these read (declared by Config, set by the record)
        process_metrics: bool
        series_level: str
        workloads: bool
        otlp_endpoint: str
        otlp_protocol: str
        listen: str
        health_listen: str | None

    @property
    def exports_processes(self) -> bool:
        return self.process_metrics or self.series_level == "processes"

    @property
    def walks_workloads(self) -> bool:
        return self.workloads and self.series_level != "node"

    def otlp_url(self) -> str:
        """otlp_endpoint with /v1/metrics where an HTTP endpoint has no path (the OTLP base-URL convention)."""
        url = urllib.parse.urlsplit(self.otlp_endpoint)
        if self.otlp_protocol == "http/protobuf" and url.path in ("", "/"):
            return urllib.parse.urlunsplit(url._replace(path="/v1/metrics"))
        return self.otlp_endpoint

    def listen_address(self) -> tuple[str | None, int]:
        return parse_listen(self.listen)

    def health_listen_address(self) -> tuple[str | None, int] | None:
        return parse_listen(self.health_listen) if self.health_listen else None


R = TypeVar("R", bound="Record")


class Record:
    """A validated model's fields as read-only attributes (nested models as nested records), made from the model
    by exporter.config.record_of: the field names and values are the model's, so nothing here lists them."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot set {name}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot delete {name}")

    def model_copy(self: R, *, update: Mapping[str, Any]) -> R:
        """A copy with some values changed, as the frozen pydantic model's `model_copy(update=...)` gives."""
        return type(self)({**vars(self), **update})

    def __reduce__(self) -> tuple[type[Record], tuple[dict[str, Any]]]:
        return type(self), (dict(vars(self)),)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]  # like the models: equal by value, and dict values are unhashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class ConfigRecord(ConfigRules, Record):
    """`Config` as the daemon holds it."""
