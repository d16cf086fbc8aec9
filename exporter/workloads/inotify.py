"""Directory births and deaths from the kernel's inotify, through ctypes on the C library already loaded.

Python has no inotify in its standard library. The wrapper needed is this small file: the well-known
`inotify_simple` package finds libc with `ctypes.util.find_library`, which runs `ldconfig`/`gcc` in a
subprocess at start — not something a read-only, least-privilege daemon (or a distroless image) should do.
`CDLL(None)` gives the symbols of the running interpreter, which links the C library.

cgroup directories (v2, and v1 hierarchies) report IN_CREATE/IN_DELETE for child cgroups, and IN_MOVED_* for
renames (v1 only); their mtimes do not change when children come and go, so events are the only cheap signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from dataclasses import dataclass

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
CHILDREN = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_ONLYDIR
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


@dataclass(frozen=True, slots=True)
class Event:
    wd: int  # -1 for IN_Q_OVERFLOW
    mask: int
    name: bytes


class Inotify:
    """One non-blocking inotify instance. Raises OSError where inotify is unavailable or a limit is hit."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, f"no inotify in the C library: {exc}") from None
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = self._init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int | None = fd

    def watch(self, path: str | bytes, mask: int = CHILDREN) -> int:
        """The watch descriptor for `path` (the same one again if it is already watched)."""
        if self.fd is None:
            raise OSError(errno.EBADF, "inotify is closed")
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch {os.fsdecode(path)}: {os.strerror(code)}")
        return wd

    def unwatch(self, wd: int) -> None:
        if self.fd is not None:
            self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it (directory removed): fine

    def read(self) -> list[Event]:
        """Every event queued so far (never blocks)."""
        if self.fd is None:
            return []
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, size = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                events.append(Event(wd, mask, data[start : start + size].rstrip(b"\0")))
                offset = start + size

    def close(self) -> None:
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # Instances are few (fs.inotify.max_user_instances, 128 by default, for every process of the user):
        # one forgotten without close() must not keep its slot.
        with contextlib.suppress(Exception):  # at interpreter exit, modules may already be gone
            self.close()
