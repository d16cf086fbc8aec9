"""Log output: `text` for a terminal or the journal, `json` and `logfmt` for log shippers (Loki, Elasticsearch,
Vector). Every format writes one record per line: a traceback stays inside its record instead of spilling
over lines a shipper would take for separate records.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _timestamp(record: logging.LogRecord) -> str:
    """RFC 3339 in UTC with milliseconds, the form Loki, Elasticsearch and Vector parse without configuration."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, str]:
    fields = {
        "time": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["error"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(self, record), ensure_ascii=False)


_BARE = re.compile(r"[^\s\"=\\]+")


def _logfmt_value(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(self, record).items())


class TextFormatter(logging.Formatter):
    """The classic line; a traceback is indented under it, as a terminal reader expects."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
}


def setup_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Route every logger (ours, asyncio's, the Kubernetes client's) to `stream` in one format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
