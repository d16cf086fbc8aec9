"""A child Python process that evaluates snippets against a library wrapper loaded from a stub library.

The stub libraries only take effect in a process started with their environment (LD_LIBRARY_PATH or
ROCM_PATH are read when the library is first loaded), so tests talk to such a child: it runs `prelude`
(imports and helpers), then answers one JSON line per request, so one child can also outlive several
rewrites of the stub's state file.  The prelude must define LIB_ERROR, the wrapper's base exception class.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

CALL_TIMEOUT_S = 20.0

_LOOP = r"""
ns = dict(globals())
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["mode"] == "eval":
            value = eval(req["src"], ns)
        else:
            exec(req["src"], ns)
            value = ns.get("result")
        reply = {"ok": value}
    except Exception as e:
        reply = {
            "exc": type(e).__name__,
            "value": getattr(e, "value", getattr(e, "err_code", None)),
            "msg": str(e),
            "is_lib_error": isinstance(e, LIB_ERROR),
        }
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


class Child:
    """A Python process running `prelude`, then serving eval/exec requests."""

    def __init__(self, env: dict[str, str], stderr_path: Path, prelude: str) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import json, sys\n" + prelude + _LOOP],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )

    def request(self, src: str, mode: str = "eval", timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """The raw reply: {"ok": value} or {"exc", "value", "msg", "is_lib_error"}."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"src": src, "mode": mode}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            pytest.fail(f"child did not answer {src!r} within {timeout} s; stderr: {self.stderr()}")
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"child died on {src!r}; stdout/stderr: {self.stderr()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ok(self, src: str, *, mode: str = "eval", timeout: float = CALL_TIMEOUT_S) -> Any:
        reply = self.request(src, mode, timeout)
        assert "exc" not in reply, f"{src!r} raised {reply}"
        return reply["ok"]

    def raises(self, src: str, *, mode: str = "eval", timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        reply = self.request(src, mode, timeout)
        assert "exc" in reply, f"{src!r} returned {reply['ok']!r} instead of raising"
        return reply

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Children:
    """Starts Child processes for one test and closes them all at the end (use as a context manager)."""

    def __init__(self, tmp_path: Path, prelude: str) -> None:
        self.tmp_path = tmp_path
        self.prelude = prelude
        self.children: list[Child] = []

    def start(self, env: dict[str, str]) -> Child:
        child = Child(env, self.tmp_path / f"child{len(self.children)}.stderr", self.prelude)
        self.children.append(child)
        return child

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in self.children:
            child.close()
