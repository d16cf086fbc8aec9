"""Reading the files an operator points wattlens at: the config file, the web config, TLS certificates, keys and
client CAs, the carbon intensity file, the Kubernetes token.

One helper for all of them, so none can wedge or exhaust the daemon: only regular files are read (a FIFO would
block the reader forever, /dev/zero would never end), the open never blocks (O_NONBLOCK: opening a FIFO with no
writer returns at once, and the type check then refuses it), and at most `limit` bytes are read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Generous bounds for what each kind of file holds; a file over its bound is an error, not a truncated read.
CONFIG_FILE_LIMIT = 1 << 20
CREDENTIAL_FILE_LIMIT = 1 << 20  # certificate chains, keys, CA bundles, tokens
SMALL_VALUE_LIMIT = 4096  # a file holding one number

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotARegularFile(OSError):
    """The path is not a regular file or is too large; `strerror` says which, in words."""


def read_operator_file(path: Path, limit: int) -> bytes:
    """The whole content of a regular file of at most `limit` bytes; OSError (with strerror) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotARegularFile(errno.EINVAL, f"it is {kind}; only regular files are read", str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotARegularFile(errno.EFBIG, f"it is larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_operator_text(path: Path, limit: int) -> str:
    """read_operator_file as UTF-8 text; invalid UTF-8 is an OSError too (the caller reports it as unreadable)."""
    data = read_operator_file(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotARegularFile(errno.EILSEQ, "it is not UTF-8 text", str(path)) from None
