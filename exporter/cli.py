"""Command line: `wattlens [serve]`, `wattlens once`, `wattlens check`.

Configuration errors print one line and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from exporter.engine import Engine
from exporter.exposition import Renderer
from exporter.meters.select import MeterReport, open_accelerators, select_meter
from exporter.nodeinfo import read_node_info
from exporter.snapshot import Snapshot
from exporter.zones import ZONES, role_of

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
    add("--meters", help="meters to try in order (default rapl,hwmon,model)")
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
    """The snapshot as JSON: joules instead of µJ, every record by its field names."""
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
                "method": z.method,
                "joules": z.joules_uj / 1e6,
                "watts": z.watts,
                "up": z.up,
                "wraps": z.wraps,
                "resets": z.resets,
            }
            for z in snap.zones
        ],
        "containment": [dataclasses.asdict(i) for i in snap.zone_info],
        "node_energy": {
            "joules": snap.node.total_uj / 1e6,
            "rest_of_node_joules": None if snap.node.rest_uj is None else snap.node.rest_uj / 1e6,
        },
        "domains": [
            {
                "zone": d.zone,
                "source": d.source,
                "idle_joules": d.idle_uj / 1e6,
                "active_joules": d.active_uj / 1e6,
                "unattributed_joules": d.unattributed_uj / 1e6,
                "idle_watts": d.idle_watts,
                "idle_method": d.idle_method,
            }
            for d in snap.domains
        ],
        "accelerators": [
            {
                **dataclasses.asdict(a.device),
                "method": a.method,
                "joules": a.joules_uj / 1e6,
                "idle_joules": a.idle_uj / 1e6,
                "active_joules": a.active_uj / 1e6,
                "watts": a.watts,
                "up": a.up,
            }
            for a in snap.accelerators
        ],
        "sources": [dataclasses.asdict(s) for s in snap.sources],
    }


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
    return 0


def _print_domains(snap: Snapshot) -> None:
    print("\nDomains (top-level ones add up; the others are inside their parent):")
    watts = {(z.zone.zone, z.zone.socket, z.zone.source): z.watts for z in snap.zones}
    gpus = {str(a.device.index): a for a in snap.accelerators}
    for i in snap.zone_info:
        gpu = gpus.get(i.socket) if i.zone == "gpu" else None
        power = gpu.watts if gpu is not None else watts.get((i.zone, i.socket, i.source))
        shown = f"{power:8.2f} W" if power is not None else "   (no reading)"
        if gpu is not None:
            where = f"GPU {gpu.device.index}"
            shown += f"  {gpu.device.model} {gpu.device.uuid}" + (" (counts its module)" if gpu.device.scope else "")
        else:
            where = f"socket {i.socket}" if i.socket else "node"
        nesting = "top-level" if i.top_level else f"inside {i.parent}" if i.parent else "the node's total"
        print(f"  {i.zone:9} {where:10} {i.source:8} {i.role:12} {nesting:18} {shown}")
    if snap.ready and snap.tick_seconds > 0:
        print(f"  node total over the measurement: {snap.node.total_uj / 1e6 / snap.tick_seconds:.2f} W")
    for d in snap.domains:
        idle = f"{d.idle_watts:.2f} W ({d.idle_method})" if d.idle_watts is not None else "unknown"
        print(f"  idle baseline for {d.zone}: {idle}")


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
