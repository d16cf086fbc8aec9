"""Helpers shared by the benchmark scripts (benchmarks/run.py, benchmarks/attribution.py).

The scripts are run as files (`.venv/bin/python benchmarks/run.py`), so Python puts this directory first on
sys.path and they import this module as `common`. Importing it also puts the repository root on sys.path, for
a plain checkout without an editable install: import it before anything from `exporter`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a plain checkout without an editable install
    sys.path.insert(0, str(REPO))

from exporter import __version__  # noqa: E402

FIXTURE = REPO / "fixtures" / "sysfs" / "intel-2socket-server"


class Deadline(Exception):
    """The hard timeout of the whole run fired."""


@contextlib.contextmanager
def hard_deadline(seconds: int) -> Iterator[None]:
    """Raise Deadline in the main thread if the block runs longer than `seconds` (SIGALRM)."""

    def on_deadline(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        raise Deadline(f"benchmark exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_deadline)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run_bench(
    bench: Callable[[argparse.Namespace], int], args: argparse.Namespace, errors: tuple[type[Exception], ...]
) -> int:
    """bench(args)'s exit code; 1, with one line on stderr, where it raises one of `errors`."""
    try:
        return bench(args)
    except errors as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float, places: int = 2) -> str:
    """Seconds as milliseconds, 8 characters wide with `places` decimals."""
    return f"{seconds * 1e3:8.{places}f}"


def heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 100 - len(title)))


def machine() -> str:
    """One line on where the benchmark runs: CPUs, CPU model, Python, kernel, wattlens version."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"nproc {nproc} ({model}), Python {platform.python_version()} ({platform.python_implementation()}),"
        f" {platform.system()} {platform.release()}, wattlens {__version__}"
    )


def timed(
    pieces: Sequence[tuple[str, Callable[[], object]]], reps: int, *, median: bool = False
) -> list[tuple[str, float]]:
    """Thread CPU seconds per call of each piece (after one untimed call): the mean over `reps` calls timed
    together, or with `median` the median of `reps` calls timed one by one."""
    out = []
    for label, fn in pieces:
        fn()
        if median:
            samples = []
            for _ in range(reps):
                t0 = time.thread_time()
                fn()
                samples.append(time.thread_time() - t0)
            out.append((label, statistics.median(samples)))
        else:
            t0 = time.thread_time()
            for _ in range(reps):
                fn()
            out.append((label, (time.thread_time() - t0) / reps))
    return out


def copy_rapl_fixture(into: Path) -> list[tuple[Path, str, int]]:
    """Copy the RAPL fixture's sysfs tree to `into`; its zones as (energy_uj file, zone name, max_energy_range_uj)."""
    shutil.copytree(FIXTURE, into, symlinks=True)
    zones = []
    for energy in sorted((into / "devices" / "virtual" / "powercap").rglob("energy_uj")):
        name = (energy.parent / "name").read_text().strip()
        zones.append((energy, name.split("-", 1)[0], int((energy.parent / "max_energy_range_uj").read_text())))
    return zones


def add_energy(path: Path, step_uj: int, max_uj: int) -> None:
    """Add `step_uj` to an energy_uj counter, wrapping like the hardware does.

    The reader's wrap rule is cur + (max - prev): wrap modulo max exactly."""
    value = int(path.read_bytes()) + step_uj
    if value >= max_uj:
        value -= max_uj
    path.write_bytes(f"{value}\n".encode())
