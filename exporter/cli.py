"""Command line: `wattlens [serve]`, `wattlens once`, `wattlens check`.

Configuration errors print one line and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import DEFAULT_PORT, Config, ConfigError, load_config
from exporter.daemon import StartupError, run
from exporter.engine import Engine, Snapshot
from exporter.exposition import Renderer
from exporter.meters.base import MeterUnavailable
from exporter.meters.nvml_loader import open_nvml
from exporter.meters.select import select_meter
from exporter.nodeinfo import read_node_info

EXIT_CONFIG = 2
COMMANDS = ("serve", "once", "check")


def _common(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="YAML configuration file (also WATTLENS_CONFIG)")
    add("--interval", help="seconds between ticks (default 5)")
    add("--listen", help=f"HOST:PORT to serve on (default :{DEFAULT_PORT})")
    add("--sys-path", "--sys", dest="sys_path", help="host sysfs root (default /sys)")
    add("--proc-path", "--proc", dest="proc_path", help="host procfs root (default /proc)")
    add("--cgroup-root", help="host cgroup mount (default /sys/fs/cgroup)")
    add("--meters", help="meters to try in order (default rapl,model)")
    add("--idle-policy", help="baseline or ratio (default baseline)")
    add("--idle-watts", help="configured idle power per zone, e.g. package=40,dram=6")
    add("--node-name", help="value of the node label (default $NODE_NAME or the hostname)")
    add("--log-level", help="debug, info, warning or error (default info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattlens", description="Node power exporter for Prometheus (default command: serve)."
    )
    parser.add_argument("--version", action="version", version=f"wattlens {__version__}")
    commands = parser.add_subparsers(dest="command")
    _common(commands.add_parser("serve", help="run the exporter (default)"))
    once = commands.add_parser("once", help="measure over a short interval and print the metrics")
    _common(once)
    once.add_argument("--wait", type=float, default=1.0, help="seconds between the two readings (default 1)")
    once.add_argument("--json", action="store_true", help="print JSON instead of the Prometheus text format")
    check = commands.add_parser("check", help="explain which energy sources work here, and how to fix the rest")
    _common(check)
    check.add_argument("--seconds", type=float, default=2.0, help="how long to measure (default 2)")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "interval",
        "listen",
        "sys_path",
        "proc_path",
        "cgroup_root",
        "meters",
        "idle_policy",
        "idle_watts",
        "node_name",
        "log_level",
    )
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    try:
        config = load_config(_flags(args), args.config)
    except ConfigError as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "once":
        _setup_logging(config.log_level if config.log_level != "info" else "warning")
        return once(config, args.wait, args.json)
    if args.command == "check":
        _setup_logging("error")
        return check(config, args.seconds)
    _setup_logging(config.log_level)
    try:
        return run(config)
    except StartupError as exc:
        print(f"wattlens: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def measure(config: Config, seconds: float) -> tuple[Engine, Snapshot]:
    engine = Engine.start(config)
    engine.tick(time.monotonic())
    time.sleep(max(0.0, seconds))
    return engine, engine.tick(time.monotonic())


def once(config: Config, wait: float, as_json: bool) -> int:
    engine, snapshot = measure(config, wait)
    engine.close()
    if as_json:
        print(json.dumps(snapshot_json(snapshot), indent=2))
    else:
        sys.stdout.buffer.write(Renderer().render(snapshot).text)
    return 0


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "node": snap.info.node,
        "meter": snap.meter,
        "zones": [
            {
                "zone": z.zone.zone,
                "socket": z.zone.socket,
                "die": z.zone.die,
                "source": z.zone.source,
                "device": z.zone.device,
                "joules": z.joules_uj / 1e6,
                "watts": z.watts,
                "up": z.up,
                "wraps": z.wraps,
                "resets": z.resets,
            }
            for z in snap.zones
        ],
        "domains": [
            {
                "zone": d.zone,
                "source": d.source,
                "idle_joules": d.idle_uj / 1e6,
                "active_joules": d.active_uj / 1e6,
                "idle_watts": d.idle_watts,
                "idle_method": d.idle_method,
            }
            for d in snap.domains
        ],
        "sources": [{"source": s, "device": dev, "up": up} for s, dev, up in snap.sources],
    }


def _check_gpus(config: Config) -> None:
    print("\nGPUs:")
    if not config.gpus:
        print("  off (gpus: false)")
        return
    try:
        meter = open_nvml(config.nvml_timeout)
    except MeterUnavailable as exc:
        print(f"  [no ] nvml: {exc.reason}")
        if exc.fix:
            print(f"        fix: {exc.fix}")
        return
    print(f"  [ok ] nvml: {len(meter.gpus)} GPU(s), driver {meter.driver}")
    for gpu in meter.gpus:
        print(f"        GPU {gpu.index}: {gpu.model} {gpu.uuid}")
    meter.close()


def check(config: Config, seconds: float) -> int:
    """Human-readable diagnosis: every configured meter, why it does or does not work, and the fix."""
    info = read_node_info(config.node_name, config.proc_path, config.cgroup_root)
    print(
        f"wattlens {__version__} on {info.node}: {info.cpu_model}, {info.cpus} CPUs, "
        f"{info.sockets} socket(s), kernel {info.kernel}, cgroups {info.cgroup_version}"
    )
    probe, reports = select_meter(config, info.cpus, try_all=True)
    if probe is not None:
        probe.close()
    print(f"\nMeters, in the configured order ({', '.join(config.meters)}):")
    for report in reports:
        mark = "ok " if report.available else "no "
        print(f"  [{mark}] {report.name}: " + ("available" if report.available else report.reason))
        for note in report.notes:
            print(f"        note: {note}")
        if report.fix:
            print(f"        fix: {report.fix}")
    _check_gpus(config)
    if probe is None:
        print("\nNo meter works: wattlens would serve no node energy. See the fixes above.")
        return 1
    print(f"\nwattlens would measure with: {probe.name}. Measuring for {seconds:g} s ...")
    engine, snap = measure(config, seconds)
    engine.close()
    for z in snap.zones:
        where = f"socket {z.zone.socket}" if z.zone.socket else "node"
        power = f"{z.watts:8.2f} W" if z.watts is not None else "   (no reading)"
        print(f"  {z.zone.zone:8} {where:10} {z.zone.device:18} {power}")
    for d in snap.domains:
        idle = f"{d.idle_watts:.2f} W ({d.idle_method})" if d.idle_watts is not None else "unknown"
        print(f"  idle baseline for {d.zone}: {idle}")
    _top_services(config, snap, seconds)
    _check_fds(engine, snap)
    return 0


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
    tick over its length, per zone, ranked by the sum of zones that do not overlap (psys, or package + dram;
    core and uncore are inside package) plus their GPUs."""
    print(f"\nTop services by power over the last {seconds:g} s:")
    if not config.workloads:
        print("  off (workloads: false)")
        return
    length = snap.tick_seconds if snap.tick_seconds > 0 else seconds
    zones = [d.zone for d in snap.domains]
    summed = ["psys"] if "psys" in zones else [z for z in ("package", "dram") if z in zones] or zones[:1]
    gpu_zones = {f"gpu:{g.gpu.uuid}" for g in snap.gpus}
    rows = []
    for w in snap.workloads:
        if w.kind != "service" or not w.last_uj:
            continue
        watts = {zone: uj / 1e6 / length for zone, uj in w.last_uj}
        gpu = sum(v for zone, v in watts.items() if zone in gpu_zones)
        total = sum(watts.get(zone, 0.0) for zone in summed) + gpu
        rows.append((total, w.labels[0], [watts.get(zone, 0.0) for zone in summed], gpu))
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
