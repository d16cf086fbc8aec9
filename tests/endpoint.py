"""The real MetricsServer alone in a process, on uvloop as in the daemon, with limits an attack test can shrink
(a 2 s write timeout instead of 30 s) and a fixed exposition of a chosen size. Prints `port N` (and `health N`)
on stdout once listening; SIGTERM stops it. Limits this version of the server does not know are ignored, so
the same test can be run against older code.

    python tests/endpoint.py '{"write_timeout_s": 2}' BODY_BYTES [CERT KEY]
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from exporter.exposition import Exposition
from exporter.server import Limits, MetricsServer


def exposition(size: int) -> Exposition:
    line = b'wattlens_test_joules_total{zone="package",pod="p"} 12345.678\n'
    text = b"# TYPE wattlens_test_joules_total counter\n" + line * max(1, size // len(line))
    om = text + b"# EOF\n"
    return Exposition.of(text, om, ready=True)


async def main(argv: list[str]) -> None:
    known = {f.name for f in dataclasses.fields(Limits)}
    limits = Limits(**{k: v for k, v in json.loads(argv[0]).items() if k in known})
    current = exposition(int(argv[1]))
    tls = None
    if len(argv) >= 4:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(argv[2], argv[3])
    server = MetricsServer(lambda: current, lambda: True, limits)
    bound = await server.start("127.0.0.1", 0, tls)
    print(f"port {bound[0][1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
