"""The dev PKI services (OCSP, CRL, TSA) in a process of their own, for the bench.

`python -m bench.pki_server PKI_DIR` serves until SIGTERM. A separate process, so
that what the TSA and OCSP responder cost shows apart from the driver's CPU, as a
real TSA's would not be on the signing machine at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from daemon.dev import pki_services


async def serve(pki: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with pki_services.running(pki):
        print("ready", flush=True)
        await stop.wait()


@contextlib.asynccontextmanager
async def started(pki: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """The services' process, once it serves; stopped with SIGTERM afterwards."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.pki_server", str(pki), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"The dev PKI services did not start (exit {process.returncode}).")
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
