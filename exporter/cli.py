"""Command line: `wattlens [serve]`, `wattlens once`, `wattlens check`.

Every setting of the configuration model has a flag, generated from the model (`exporter.config.settings`),
grouped as the model groups them. Configuration errors, flag errors included, print one line and exit 2,
with no traceback. A reader that goes away (`wattlens check | head`) ends the command quietly.

`serve` validates here, then exec()s into the daemon (exporter/handover.py, exporter/runtime.py): the
long-running process never holds pydantic (docs/architecture.md, "Process model").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from exporter import __version__
from exporter.config import Config, Setting, load_config, record_of, settings
from exporter.handover import RUNTIME_FD_ENV, exec_runtime
from exporter.logs import setup_logging
from exporter.meters.select import MeterReport, open_accelerators, select_meter
from exporter.nodeinfo import read_node_info
from exporter.runtime_config import EXIT_CONFIG, ConfigError
from exporter.webconfig import WebConfigError
from exporter.webconfig_file import load_web_config
from exporter.zones import ZONES, role_of

if TYPE_CHECKING:
    from exporter.engine import Engine
    from exporter.runtime_config import ConfigRecord
    from exporter.snapshot import Snapshot

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a filter whose reader went away
COMMANDS = ("serve", "once", "check")
ALIASES = {"sys_path": ("--sys",), "proc_path": ("--proc",)}  # short forms kept from the first releases
METAVARS = {
    "duration": "DURATION",
    "path": "PATH",
    "map": "ZONE=WATTS,...",
    "number": "NUMBER",
    "text": "TEXT",
    "bool": "BOOL",
    "list": "A,B,...",
}
METAVAR_OF_KEY = {"listen": "[HOST:]PORT", "pod_labels": "KEY,...", "node_name": "NAME", "kubernetes_api_server": "URL"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line with a fix (and exit 2), like every other configuration error."""

    command = "serve"  # the subcommand being parsed, for the suggestions

    def error(self, message: str) -> NoReturn:
        fix = f"see 'wattlens {self.command} --help'"
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split(maxsplit=1)[0].split("=", 1)[0]
            import difflib  # noqa: PLC0415 - only for a mistyped flag

            close = difflib.get_close_matches(unknown, self._flags_of(self.command), n=1)
            if close:
                fix = f"did you mean {close[0]}? Otherwise {fix}"
            elif not unknown.startswith("-"):
                fix = f"the commands are {', '.join(COMMANDS)}; {fix}"
        self.exit(EXIT_CONFIG, f"wattlens: {message}. Fix: {fix}\n")

    def _flags_of(self, command: str) -> list[str]:
        flags = [s for a in self._actions for s in a.option_strings]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                flags += [s for a in action.choices[command]._actions for s in a.option_strings]
        return flags


def _metavar(setting: Setting) -> str:
    if setting.choices:
        joined = ",".join(setting.choices)
        return f"{{{joined}}}" if setting.kind == "choice" else f"{{{joined}}},..."
    return METAVAR_OF_KEY.get(setting.key) or METAVARS.get(setting.kind, "VALUE")


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file [WATTLENS_CONFIG]")
    groups: dict[str, Any] = {}
    for setting in settings():
        if setting.group not in groups:
            groups[setting.group] = parser.add_argument_group(setting.group)
        group = groups[setting.group]
        names = (setting.flag, *ALIASES.get(setting.key, ()))
        text = f"{setting.help} [{setting.env}]"
        if setting.kind == "bool":
            # --gpus, --gpus=false or --no-gpus; the model parses the value, so yes/no/1/0 work too.
            group.add_argument(*names, dest=setting.key, nargs="?", const="true", metavar="BOOL", help=text)
            group.add_argument(
                f"--no-{setting.flag[2:]}",
                dest=setting.key,
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(*names, dest=setting.key, metavar=_metavar(setting), help=text)


DESCRIPTION = "Node power exporter for Prometheus."
EPILOG = (
    "Every setting can also be set in the YAML file (--config) and as an environment variable (in brackets). "
    "Precedence: flags > environment > file > defaults. Durations take units: 500ms, 5s, 2m, 1h. "
    "Switches take an optional value: --gpus, --gpus=false, --no-gpus."
)


def build_parser() -> _Parser:
    parser = _Parser(prog="wattlens", description=DESCRIPTION + " Commands: serve (default), once, check.")
    parser.add_argument("--version", action="version", version=f"wattlens {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> _Parser:
        sub = commands.add_parser(name, help=summary, description=description, epilog=EPILOG, allow_abbrev=False)
        sub.command = name
        return sub

    serve = command(
        "serve",
        "run the exporter (default)",
        DESCRIPTION + " serve (the default command) runs the exporter; 'wattlens once --help' and "
        "'wattlens check --help' describe the others.",
    )
    once = command(
        "once",
        "measure over a short interval and print the metrics",
        "Read twice, --wait seconds apart, and print the exposition (or JSON) of the second tick.",
    )
    once.add_argument("--wait", type=float, default=1.0, help="seconds between the two readings (default 1)")
    once.add_argument("--json", action="store_true", help="print JSON instead of the Prometheus text format")
    check = command(
        "check",
        "explain which energy sources work here, and how to fix the rest",
        "Which meters and GPUs work here, why the others do not and the fix, then a short measurement.",
    )
    check.add_argument("--seconds", type=float, default=2.0, help="how long to measure (default 2)")
    for sub in (serve, once, check):
        _add_settings(sub)
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {s.key: getattr(args, s.key) for s in settings() if getattr(args, s.key, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """The `wattlens` program (argv None: the process's own arguments; `serve` then exec()s into the daemon), or
    the same commands in this process for the arguments given."""
    if argv is None and RUNTIME_FD_ENV in os.environ:  # exec()ed by an entry other than exporter/__main__.py
        from exporter.runtime import main as serve_handed_over  # noqa: PLC0415 - only then

        return serve_handed_over()
    try:
        status = _main(list(sys.argv[1:] if argv is None else argv), exec_to_serve=argv is None)
        sys.stdout.flush()  # inside the try: a reader that left shows up here at the latest
    except BrokenPipeError:
        # `wattlens check | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not complain, and exit as a filter killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _main(argv: list[str], exec_to_serve: bool) -> int:
    if not argv or (argv[0] not in COMMANDS and argv[0] != "--version"):
        argv.insert(0, "serve")  # `wattlens --help` is serve's help, which lists every flag
    parser = build_parser()
    parser.command = argv[0] if argv[0] in COMMANDS else "serve"
    args = parser.parse_args(argv)
    try:
        config = load_config(_flags(args), args.config)
    except ConfigError as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:  # a setting that names a file found unusable at start (a credential) is a config error too
        if args.command == "once":
            setup_logging(config.log_level if config.log_level != "info" else "warning", config.log_format)
            return once(config, args.wait, args.json)
        if args.command == "check":
            setup_logging("error", config.log_format)
            return check(config, args.seconds)
    except ConfigError as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return _serve(config, exec_to_serve)


def _serve(config: Config, exec_to_serve: bool) -> int:
    """Validate the web config file too, then become the daemon (or serve in this process)."""
    setup_logging(config.log_level, config.log_format)
    try:
        web = load_web_config(config.web_config_file) if config.web_config_file is not None else None
    except WebConfigError as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if exec_to_serve:
        config_record = cast("ConfigRecord", record_of(config))
        why = exec_runtime(config_record, record_of(web) if web is not None else None)  # returns only if it failed
        logging.getLogger(__name__).warning("serving in the CLI's process (more memory): %s", why)
    from exporter.runtime import serve  # noqa: PLC0415 - the daemon's modules: not imported by the CLI to exec

    return serve(config, web)


def measure(config: Config, seconds: float) -> tuple[Engine, Snapshot]:
    from exporter.engine import Engine  # noqa: PLC0415 - once and check only: `serve` execs without it

    engine = Engine.start(config)
    engine.tick(time.monotonic())
    time.sleep(max(0.0, seconds))
    return engine, engine.tick(time.monotonic())


def once(config: Config, wait: float, as_json: bool) -> int:
    engine, snapshot = measure(config, wait)
    engine.close()
    if as_json:
        from exporter.snapshot_json import snapshot_document  # noqa: PLC0415 - `once --json` only

        print(json.dumps(snapshot_document(snapshot), indent=2))
    else:
        from exporter.exposition import Renderer  # noqa: PLC0415 - once only

        sys.stdout.buffer.write(Renderer().render(snapshot).text)
    return 0


def _print_reports(reports: list[MeterReport]) -> None:
    for report in reports:
        mark = "ok " if report.available else "no "
        if not report.available:
            what = report.reason
        elif report.roles:
            what = "available; measures " + ", ".join(ROLE_NAMES[r] for r in report.roles)
        else:
            what = "available; not needed here"
        print(f"  [{mark}] {report.name}: {what}")
        for note in report.notes:
            print(f"        note: {note}")
        if report.fix:
            print(f"        fix: {report.fix}")


ROLE_NAMES = {"cpu": "CPU energy", "module": "superchip modules", "platform": "the platform", "accelerator": "GPUs"}


def check(config: Config, seconds: float) -> int:
    """Human-readable diagnosis: every meter, what it found, the role it serves, why the others do not work and
    the fix; then a short measurement of every domain and how they nest."""
    info = read_node_info(config.node_name, config.proc_path, config.cgroup_root)
    print(
        f"wattlens {__version__} on {info.node}: {info.cpu_model}, {info.cpus} CPUs, "
        f"{info.sockets} socket(s), kernel {info.kernel}, cgroups {info.cgroup_version}"
    )
    probe, reports = select_meter(config, info.cpus, try_all=True)
    chosen = probe.name if probe is not None else ""
    if probe is not None:
        probe.close()
    print(f"\nMeters, in the configured order ({', '.join(config.meters)}):")
    _print_reports(reports)
    print("\nGPUs:")
    if config.gpus:
        accelerators, accelerator_reports = open_accelerators(config)
        for meter in accelerators:
            print(f"  [ok ] {meter.name}: {len(meter.devices)} GPU(s), driver {meter.driver}")
            for device in meter.devices:
                scope = " (its energy counter counts the whole module)" if device.scope else ""
                print(f"        GPU {device.index}: {device.model} {device.uuid}{scope}")
            meter.close()
        _print_reports([r for r in accelerator_reports if not r.available])
    else:
        print("  off (gpus: false)")
    if probe is None:
        print("\nNo meter works: wattlens would serve no node energy. See the fixes above.")
        return 1
    print(f"\nwattlens would measure with: {chosen}. Measuring for {seconds:g} s ...")
    engine, snap = measure(config, seconds)
    engine.close()
    _print_domains(snap)
    _top_services(config, snap, seconds)
    _check_fds(engine, snap)
    return 0


def _nesting(top_level: bool, parent: str) -> str:
    if top_level:
        return "top-level"
    return f"inside {parent}" if parent else "the node's total"


def _print_domains(snap: Snapshot) -> None:
    print("\nDomains (top-level ones add up; the others are inside their parent):")
    nesting = {(i.zone, i.source): _nesting(i.top_level, i.parent) for i in snap.zone_info}
    for z in snap.zones:
        power = f"{z.watts:8.2f} W" if z.watts is not None else "   (no reading)"
        where = f"socket {z.zone.socket}" if z.zone.socket else "node"
        place = nesting.get((z.zone.zone, z.zone.source), "")
        print(f"  {z.zone.zone:9} {where:10} {z.zone.source:8} {role_of(z.zone.zone):12} {place:18} {power}")
    for a in snap.accelerators:
        power = f"{a.watts:8.2f} W" if a.watts is not None else "   (no reading)"
        place = nesting.get(("gpu", a.source), "")
        scope = " (counts its module)" if a.device.scope else ""
        where = f"GPU {a.device.index}"
        device = f"{a.device.model} {a.device.uuid}{scope}"
        print(f"  {'gpu':9} {where:10} {a.source:8} {'accelerator':12} {place:18} {power}  {device}")
    if snap.ready and snap.tick_seconds > 0:
        print(f"  node total over the measurement: {snap.node.total_uj / 1e6 / snap.tick_seconds:.2f} W")
    for d in snap.domains:
        idle = f"{d.idle_watts:.2f} W ({d.idle_method})" if d.idle_watts is not None else "unknown"
        print(f"  idle baseline for {d.zone}: {idle}")


def _check_fds(engine: Engine, snap: Snapshot) -> None:
    budget = engine.fd_budget
    over = f"; OVER BUDGET for {', '.join(snap.fd_degraded)}" if snap.fd_degraded else ""
    print(
        f"\nFile descriptors: open-files limit {budget.limit}; wattlens holds at most {budget.budget} across ticks"
        f" (the rest is kept for HTTP connections); this node needed {snap.fds_held}{over}"
    )


TOP_SERVICES = 10


def _top_services(config: Config, snap: Snapshot, seconds: float) -> None:
    """The systemd services that drew the most power during the measurement: their energy in the measured
    tick over its length, per zone, ranked by the sum of the CPU zones no other CPU zone contains (psys, or
    package + dram, or grace; core and uncore are inside package) plus their GPUs."""
    print(f"\nTop services by power over the last {seconds:g} s:")
    if not config.workloads:
        print("  off (workloads: false)")
        return
    length = snap.tick_seconds if snap.tick_seconds > 0 else seconds
    outermost = (i.zone for i in snap.zone_info if i.role == "cpu" and (not i.parent or role_of(i.parent) != "cpu"))
    summed = sorted(set(outermost), key=list(ZONES).index)  # in the zone table's order: package before dram
    gpu_zones = {f"gpu:{g.device.uuid}" for g in snap.accelerators}
    rows = []
    for w in snap.workloads:
        if w.kind != "service" or not w.last_uj:
            continue
        watts = {zone: uj / 1e6 / length for zone, uj in w.last_uj}
        gpu = sum(v for zone, v in watts.items() if zone in gpu_zones)
        total = sum(watts.get(zone, 0.0) for zone in summed) + gpu
        rows.append((total, w.label("unit"), [watts.get(zone, 0.0) for zone in summed], gpu))
    if not rows:
        version = snap.info.cgroup_version
        hint = ""
        if version == "hybrid":
            hint = (
                "; a hybrid host may account services only in its unified hierarchy: "
                "try --cgroup-root /sys/fs/cgroup/unified"
            )
        print(f"  none: no system.slice/*.service cgroup under {config.cgroup_root} (cgroups {version}){hint}")
        return
    rows.sort(key=lambda row: (-row[0], row[1]))
    width = max(24, *(len(row[1]) for row in rows[:TOP_SERVICES]))
    columns = [*summed, *(["GPU"] if gpu_zones else [])]
    header = "".join(f"{name + ' W':>11}" for name in columns)
    what = " + ".join(columns)
    print(f"  {'unit':{width}} {'total W':>9}{header}   ({what}; {len(rows)} services in all)")
    for total, unit, values, gpu in rows[:TOP_SERVICES]:
        cells = "".join(f"{v:11.2f}" for v in [*values, *([gpu] if gpu_zones else [])])
        print(f"  {unit:{width}} {total:9.2f}{cells}")
