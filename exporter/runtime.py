"""The serving daemon's entry: `wattlens serve` once its settings are valid (docs/architecture.md, "Process
model"). The CLI exec()s into this with the settings handed over (exporter/handover.py); it never imports
pydantic, argparse or YAML, so the long-running process holds only what serving needs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, cast

from exporter.daemon import StartupError, run
from exporter.handover import HandoverError, receive
from exporter.logs import setup_logging
from exporter.runtime_config import EXIT_CONFIG, ConfigError

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.webconfig_file import WebConfig


def serve(config: Config, web: WebConfig | None) -> int:
    """Serve until SIGTERM; a startup problem is one line and exit 2. `web`: the loaded web config file, if any."""
    setup_logging(config.log_level, config.log_format)
    try:
        return run(config, web)
    except (StartupError, ConfigError) as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def main() -> int:
    """The exec()ed daemon: the handed-over records stand in for the models (same names, values and rules)."""
    try:
        config, web = receive()
    except HandoverError as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(cast("Config", config), cast("WebConfig | None", web))
