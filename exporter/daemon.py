"""The long-running service: a fixed-cadence tick loop plus the HTTP server, on one uvloop event loop.

Each tick (read, account, render) runs in a single worker thread so the loop keeps answering scrapes; the
loop only swaps in the new exposition when a tick finishes. A tick that overruns its interval makes the
loop skip the missed slots instead of queueing them. SIGTERM/SIGINT stop the loop and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import uvloop

from exporter.engine import Engine
from exporter.exposition import EndpointStats, Exposition, Renderer
from exporter.server import Limits, MetricsServer, release_free_memory
from exporter.webconfig import BasicAuth, TlsContext, WebConfigError
from exporter.workloads import pod_watch

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.otlp.push import OtlpPush
    from exporter.webconfig_file import WebConfig

log = logging.getLogger(__name__)


GC_THRESHOLDS = (50_000, 20, 100)


def settle_heap() -> None:
    """After the first tick: the start-up heap (modules, configuration, the first walk of the cgroup tree) lives
    as long as the process, so it is frozen out of the collector's way; and a young collection waits for 50,000
    more live container objects instead of 700. Python counts allocations less deallocations: a tick's garbage
    is acyclic and freed as it goes, so in steady state the count barely moves and no collection runs; with the
    default (700) a 1,000-pod tick ran ~70 young and ~0.6 full collections, 6.6 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class StartupError(Exception):
    """The service cannot start; the message is the one line to show."""


class Daemon:
    def __init__(self, config: Config, engine: Engine, web: WebConfig | None = None) -> None:
        """`web`: the web config file as the CLI loaded and validated it (a record), or None to load it here."""
        self.config = config
        self.engine = engine
        # Scrapes have variants rendered here, on demand, so neither the loop nor the next tick waits on a render.
        self._render_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wattlens-render")
        self.renderer = Renderer(self._render_pool)
        self.exposition: Exposition | None = None
        self.tls: TlsContext | None = None
        auth: BasicAuth | None = None
        headers: tuple[tuple[str, str], ...] = ()
        if config.web_config_file is not None:
            try:
                if web is None:  # started in-process (tests, tools): the CLI hands the daemon the loaded file
                    from exporter.webconfig_file import load_web_config  # noqa: PLC0415 - pydantic

                    web = load_web_config(config.web_config_file)
                if web.tls_server_config is not None:
                    self.tls = TlsContext(config.web_config_file, web.tls_server_config)
            except WebConfigError as exc:
                raise StartupError(str(exc)) from None
            auth = BasicAuth(web.basic_auth_users) if web.basic_auth_users else None
            headers = tuple(web.http_server_config.headers.items())
        limits = Limits(max_connections_per_peer=config.max_connections_per_peer)
        self.server = MetricsServer(lambda: self.exposition, self.healthy, limits, auth=auth, extra_headers=headers)
        self._trimmed_at = 0  # connections accepted when freed heap was last given back
        self._last_tick_end = time.monotonic()
        self._settled = False  # the heap is settled after the first tick that finishes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wattlens-tick")
        self.otlp: OtlpPush | None = None  # the OTLP push (otlp_endpoint): its own thread, fed by every tick
        if config.otlp_endpoint:
            from exporter.otlp.push import OtlpUnavailable, open_push  # noqa: PLC0415 - only when configured

            try:
                self.otlp = open_push(config, in_kubernetes="KUBERNETES_SERVICE_HOST" in os.environ)
            except OtlpUnavailable as exc:
                raise StartupError(str(exc)) from None

    def healthy(self) -> bool:
        """Live while ticks keep finishing; a wedged tick makes /healthz fail so the agent is restarted."""
        return time.monotonic() - self._last_tick_end < 3 * self.config.interval + 10

    def _tick(self, endpoint: EndpointStats) -> Exposition:
        """Read and account; the exposition it returns renders nothing until a scrape asks for it."""
        snapshot = self.engine.tick(time.monotonic())
        if self.otlp is not None:
            self.otlp.offer(snapshot)  # queued for the push thread; never waits on the receiver
        exposition = self.renderer.render(snapshot, endpoint)
        if self.server.accepted != self._trimmed_at:
            # New connections since the last tick (TLS handshakes above all) leave freed heap behind.
            self._trimmed_at = self.server.accepted
            release_free_memory()
        return exposition

    def _endpoint(self) -> EndpointStats:
        """The server's counters, copied here on the event loop that updates them."""
        return EndpointStats(
            scrapes=dict(self.server.scrapes),
            rejections=dict(self.server.dropped),
            tls_not_after=self.tls.not_after if self.tls is not None else None,
            otlp=self.otlp.stats() if self.otlp is not None else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        start = time.monotonic()
        slot = 0
        failing = False
        while not stop.is_set():
            try:
                self.exposition = await loop.run_in_executor(self._executor, self._tick, self._endpoint())
                self._last_tick_end = time.monotonic()
                if not self._settled:
                    settle_heap()
                    self._settled = True
                if self.tls is not None:
                    self.tls.reload_if_changed()  # certificate rotation: new handshakes get the new pair
                failing = False
            except Exception:
                # A bug, not a source failure (those are handled per source). Keep serving the last
                # exposition; /healthz turns unhealthy if ticks keep failing, so the agent gets restarted.
                if not failing:
                    log.exception("tick failed; serving the previous metrics")
                failing = True
            # Next slot on the fixed grid; slots that passed while the tick ran are skipped, not queued.
            due = math.floor((self._last_tick_end - start) / interval) + 1
            if due > slot + 1:
                skipped = due - slot - 1
                self.engine.note_skipped(skipped)
                log.warning("tick took longer than the %.1fs interval; skipping %d slot(s)", interval, skipped)
            slot = due
            delay = start + slot * interval - time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host, port = self.config.listen_address()
        try:
            bound = await self.server.start(host, port, self.tls.context if self.tls else None)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {self.config.listen}: {exc.strerror or exc}. "
                "Fix: set listen (--listen / WATTLENS_LISTEN) to a free port and an address of this host"
            ) from None
        health = self.config.health_listen_address()
        if health is not None:
            try:
                health_bound = await self.server.start_health(*health)
            except OSError as exc:
                await self.server.close()
                raise StartupError(
                    f"cannot listen on health_listen {self.config.health_listen}: {exc.strerror or exc}. "
                    "Fix: set health_listen to a free port and an address of this host, or unset it"
                ) from None
        scheme = "https" if self.tls else "http"
        urls = " and ".join(f"{scheme}://{_host(h)}:{p}/metrics" for h, p in bound)
        log.info("serving %s (node %s, every %.1fs)", urls, self.config.node_name, self.config.interval)
        if health is not None:
            urls = " and ".join(f"http://{_host(h)}:{p}/healthz" for h, p in health_bound)
            log.info("serving health probes on %s (and /readyz)", urls)
        if self.otlp is not None:
            self.otlp.start()
            log.info(
                "pushing OTLP (%s, %s) to %s every %d tick(s)",
                self.config.otlp_protocol,
                self.config.otlp_temporality,
                self.otlp.endpoint,
                self.otlp.every,
            )
        ticking = asyncio.create_task(self.run(stop))
        watching = asyncio.create_task(self.engine.pod_watch.run(stop)) if self.engine.pod_watch else None
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ticking, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await ticking  # let a tick in flight finish so nothing is left half-read
        if watching is not None:
            watching.cancel()
            (outcome,) = await asyncio.gather(watching, return_exceptions=True)
            if isinstance(outcome, Exception):  # a bug: PodWatch.run handles its own failures
                log.error("pod watch ended with %s: %s", type(outcome).__name__, outcome)
        await self.server.close()
        if self.otlp is not None:  # the final totals, within otlp_timeout
            await loop.run_in_executor(None, self.otlp.close, self.config.otlp_timeout + 5)
        self._executor.shutdown(wait=True)
        self._render_pool.shutdown(wait=True)
        log.info("stopped")
        return 0


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run(config: Config, web: WebConfig | None = None) -> int:
    """Start the engine and serve until SIGTERM; returns the process exit status. `web`: as for `Daemon`."""
    if config.kubernetes_api and not pod_watch.available():
        raise StartupError(
            "kubernetes_api=true needs the Kubernetes client. Fix: pip install 'wattlens[kubernetes]', "
            "or set kubernetes_api to false (pod names still come from the kubelet's log directories)"
        )
    engine = Engine.start(config)
    if config.kubernetes_api:
        engine.pod_watch = pod_watch.PodWatch(
            node_name=config.node_name,
            retain_s=config.workload_ttl + 60,
            api_server=config.kubernetes_api_server,
            token_file=config.kubernetes_token_file,
            ca_file=config.kubernetes_ca_file,
        )
    try:
        return uvloop.run(Daemon(config, engine, web).serve())
    finally:
        engine.close()
