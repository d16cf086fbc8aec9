"""Scrape bodies' gzip (exporter/deflate.py): ISA-L where it is installed, zlib where it is not; either way one
gzip member any reader takes, the same bytes for the same body."""

from __future__ import annotations

import gzip
import platform
import subprocess
import sys
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import deflate


def test_isal_serves_where_the_dependency_installs_it() -> None:
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.fail(f"no isal wheel for {platform.machine()}: this test expects the project's own machine kinds")
    assert deflate.LIBRARY == "isa-l"


@given(st.lists(st.text(max_size=200), max_size=20))
def test_parts_compress_to_one_gzip_member_of_their_utf8(parts: list[str]) -> None:
    body = deflate.gzip_parts(parts)
    assert gzip.decompress(body) == "".join(parts).encode()
    assert zlib.decompress(body, 31) == "".join(parts).encode()  # one member: nothing after its trailer
    assert body[:2] == b"\x1f\x8b" and body[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0
    assert deflate.gzip_parts(parts) == body  # the same body, the same bytes (ETag-free caching downstream)


def test_a_real_scrape_body_compresses_smaller_than_zlib_does() -> None:
    line = 'wattlens_container_cpu_joules_total{container="app",namespace="ns",pod="p-%d",zone="package"} %d.5\n'
    text = "".join(line % (n, n * 7919) for n in range(3000)).encode()
    ours = deflate.gzip_bytes(text)
    assert gzip.decompress(ours) == text
    assert len(ours) < len(text) / 4
    if deflate.LIBRARY == "isa-l":
        assert len(ours) <= len(gzip.compress(text, 1, mtime=0))


def test_without_isal_zlib_serves_the_same_format() -> None:
    code = (
        "import sys; sys.modules['isal'] = None\n"  # as on a machine without the wheel: import fails
        "import gzip; from exporter import deflate\n"
        "body = deflate.gzip_parts(['a' * 1000, 'b'])\n"
        "assert gzip.decompress(body) == b'a' * 1000 + b'b', body\n"
        "print(deflate.LIBRARY)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "zlib"
