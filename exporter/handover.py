"""How the CLI hands the validated settings to the daemon it becomes (docs/architecture.md, "Process model").

`wattlens serve` validates with pydantic, then exec()s the same program (same PID: a container's PID 1,
systemd's main PID and its notify socket stay) with `_WATTLENS_RUNTIME_FD` naming an inherited memfd that holds
the settings as records (exporter/runtime_config.py), pickled: the daemon reads them back without importing
pydantic. The variable does not start with WATTLENS_ (every such variable is a setting); the daemon removes it
from its environment and closes the fd once read. The data comes from our own parent and never touches a disk;
still, only the record classes and paths are accepted when it is read back.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import sys
from typing import Any

from exporter import __version__
from exporter.runtime_config import ConfigRecord, Record

RUNTIME_FD_ENV = "_WATTLENS_RUNTIME_FD"
FORMAT = 1  # of the handed-over data; with the version, a mismatch is an error rather than a misreading
_ALLOWED = (Record, ConfigRecord, pathlib.PosixPath, pathlib.PurePosixPath)


class HandoverError(Exception):
    """The settings could not be read back; the message is the one line to show."""


def payload(config: ConfigRecord, web: Record | None) -> bytes:
    """What `exec_runtime` hands over and `receive` reads back."""
    data = {"format": FORMAT, "version": __version__, "config": config, "web": web}
    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


def exec_runtime(config: ConfigRecord, web: Record | None) -> str:
    """Replace this process with the daemon, handing it `config` and the loaded web config. Returns only if that
    cannot be done, with the reason (the caller then serves in this process)."""
    data = payload(config, web)
    if not sys.executable:
        return "the interpreter's path is unknown"
    # The standalone program's entry (exporter/__main__.py) dispatches; an interpreter gets its own options and
    # what it ran again: -m exporter, or the wattlens script.
    frozen = getattr(sys, "frozen", False)
    argv = [sys.executable, *(sys.argv if frozen else sys.orig_argv)[1:]]
    try:
        fd = os.memfd_create("wattlens-settings", 0)  # inherited across exec (no MFD_CLOEXEC)
    except (AttributeError, OSError) as exc:
        return f"no memfd ({exc})"
    try:
        _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        for stream in (sys.stdout, sys.stderr):  # what Python still buffers would be lost
            if stream is not None:
                stream.flush()
        os.execve(sys.executable, argv, {**os.environ, RUNTIME_FD_ENV: str(fd)})  # noqa: S606 - ourselves, no shell
    except OSError as exc:
        os.close(fd)
        return f"cannot exec {sys.executable} ({exc.strerror or exc})"
    raise AssertionError("unreachable: exec returned")  # pragma: no cover


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _SettingsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if found not in _ALLOWED:
            raise HandoverError(f"the handed-over settings hold a {module}.{name}, which is not a setting's type")
        return found


def receive() -> tuple[ConfigRecord, Record | None]:
    """The settings handed over by `exec_runtime` (config, web config or None); removes the variable, closes the fd."""
    text = os.environ.pop(RUNTIME_FD_ENV, "")
    try:
        fd = int(text)
        with open(fd, "rb", closefd=True) as file:
            data = _SettingsUnpickler(io.BytesIO(file.read())).load()
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise HandoverError(
            f"{RUNTIME_FD_ENV}={text!r}: no settings to read ({exc}). Fix: start wattlens as usual, without setting "
            f"{RUNTIME_FD_ENV} (wattlens sets it for itself)"
        ) from None
    if not isinstance(data, dict) or (data.get("format"), data.get("version")) != (FORMAT, __version__):
        raise HandoverError(
            f"the handed-over settings are not this wattlens' (version {__version__}, format {FORMAT}). "
            "Fix: start wattlens again"
        )
    config, web = data["config"], data["web"]
    if not isinstance(config, ConfigRecord) or not (web is None or isinstance(web, Record)):
        raise HandoverError("the handed-over settings are incomplete. Fix: start wattlens again")
    return config, web
