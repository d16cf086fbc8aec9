"""What the stub-library builders (tests/nvml_stub, tests/amdsmi_stub) share: compiling a C stub with gcc once
per source version, writing state files atomically, percent-encoding strings, reading call logs."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

__all__ = [
    "HEADER",
    "check_uint",
    "compile_library",
    "make_env",
    "percent_encode",
    "read_call_log",
    "render_line",
    "write_atomic",
]

HEADER = Path(__file__).resolve().parent / "stub_common.h"
_tmp_counter = itertools.count()


def compile_library(
    source: Path,
    lib_path: Path,
    *,
    soname: str,
    omit: Collection[str] = (),
    what: str = "stub",
) -> Path:
    """Compile `source` (which includes stub_common.h) into `lib_path`, unless an identical build is already
    there (same source, header, compiler, flags and omit set: recorded in a stamp file next to it).

    omit: exported symbols to make local with a linker version script, so the library looks like one
    without them.  The library is written to a temporary name first and renamed into place, so a
    concurrent loader never sees a half-written file.
    """
    gcc = shutil.which("gcc") or "/usr/bin/gcc"
    lib_path = Path(lib_path)
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    cflags = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parent}", f"-Wl,-soname,{soname}")
    omit = sorted(set(omit))
    key = hashlib.sha256(
        b"\0".join(
            [source.read_bytes(), HEADER.read_bytes(), gcc.encode(), *(f.encode() for f in cflags)]
            + [s.encode() for s in omit]
        )
    ).hexdigest()
    stamp = lib_path.with_name(f".{lib_path.name}.build")
    if lib_path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return lib_path

    unique = f"{os.getpid()}.{next(_tmp_counter)}"
    tmp_lib = lib_path.with_name(f".{lib_path.name}.{unique}.tmp")
    cmd = [gcc, *cflags, "-o", str(tmp_lib), str(source)]
    version_script = None
    if omit:
        version_script = lib_path.with_name(f".omit.{unique}.map")
        version_script.write_text("{ global: *; local: " + " ".join(f"{s};" for s in omit) + " };\n")
        cmd.insert(-1, f"-Wl,--version-script={version_script}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building the {what} failed ({' '.join(cmd)}):\n{proc.stderr}")
        os.replace(tmp_lib, lib_path)
        stamp.write_text(key)
    finally:
        tmp_lib.unlink(missing_ok=True)
        if version_script is not None:
            version_script.unlink(missing_ok=True)
    return lib_path


def percent_encode(value: str) -> str:
    """Percent-encode everything that is not printable ASCII, plus '%', '#' and '=' (the state file's syntax)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in b"%#=" else f"%{b:02X}" for b in value.encode())


def write_atomic(path: Path, text: str) -> Path:
    """Replace `path` atomically: a temporary file in the same directory, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_call_log(path: Path) -> list[tuple[str, int | None]]:
    """(symbol, device index or None) per logged call, in call order; [] when nothing was logged yet."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    calls: list[tuple[str, int | None]] = []
    for line in text.splitlines():
        sym, _, dev = line.partition(" ")
        calls.append((sym, int(dev) if dev else None))
    return calls


def check_uint(name: str, value: object, bits: int) -> None:
    """Raise ValueError unless value is an int in [0, 2**bits)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**bits:
        raise ValueError(f"{name} must be an unsigned {bits}-bit int, got {value!r}")


def render_line(kind: str, fields: Sequence[tuple[str, object]]) -> str:
    """One state-file line: strings percent-encoded, bools as 0/1, floats with repr, ints in decimal."""
    parts = [kind]
    for key, value in fields:
        if isinstance(value, str):
            text = percent_encode(value)
        elif isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def make_env(base: Mapping[str, str] | None, changes: Mapping[str, str | None]) -> dict[str, str]:
    """base (default os.environ) with `changes` applied: a value sets the variable, None removes it."""
    env = dict(os.environ if base is None else base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
