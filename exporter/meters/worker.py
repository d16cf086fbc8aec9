"""The one thread an accelerator meter's library calls run on (NVML, AMD SMI), and its between-tick polls.

Vendor calls can block (a GPU falling off the bus), so they never run on the tick thread or the event loop:
the tick's read waits at most `timeout_s` for its call and, while that call is still stuck, every later read
fails at once instead of queueing. Polls (the processes between ticks, every `gpu_poll_interval`) run on the
same thread, so calls into the library never overlap, and are skipped while any call there is running.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class MeterWorker(Generic[T]):
    """`read(now)` runs the meter's read on the worker within the time limit; `poll(now)` its poll."""

    def __init__(
        self,
        library: str,
        timeout_s: float,
        read: Callable[[float], T],
        poll: Callable[[float], None],
        poll_s: float = 0.0,
    ) -> None:
        self.library = library
        self.timeout_s = timeout_s
        self._read, self._poll = read, poll
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wattlens-{library}")
        self._reading: concurrent.futures.Future[T] | None = None
        self._polling: concurrent.futures.Future[None] | None = None
        self._stop = threading.Event()
        if poll_s > 0:
            name = f"wattlens-{library}-poll"
            threading.Thread(target=self._poll_loop, args=(poll_s,), name=name, daemon=True).start()

    def read(self, now: float) -> T | str:
        """The read's result, or why there is none (a call still stuck, or no answer within the limit)."""
        if self._reading is not None and not self._reading.done():
            return f"an earlier {self.library} call has not returned"
        self._reading = self._executor.submit(self._read, now)
        try:
            return self._reading.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            return f"{self.library} did not answer within {self.timeout_s:g} s"
        except Exception as exc:  # an answer the meter did not expect: this tick's GPUs are down, not the daemon
            log.debug("%s read failed", self.library, exc_info=True)
            return f"{self.library} read failed ({type(exc).__name__}: {exc})"

    def poll(self, now: float, wait: bool = False) -> None:
        """One poll on the worker, unless a call is running there; `wait` until it is done (tests drive time)."""
        running: list[concurrent.futures.Future[Any]] = [f for f in (self._reading, self._polling) if f is not None]
        if any(not f.done() for f in running):
            return
        self._polling = self._executor.submit(self._poll, now)
        if wait:
            self._polling.result(timeout=self.timeout_s)

    def _poll_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(RuntimeError):  # the executor was shut down meanwhile
                self.poll(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
