"""The verification server under load: records verified per second, and latency, 8 uploads at once.

The real server (daemon.verification.server: process pool of one worker per core,
the registry look-up against the bench's database) on a free port, fed the records
the end-to-end run issued (so each is registered) over HTTP by 8 concurrent clients
as a school office would, then by one client alone. Figures count only when every
answer is `issued` and registered as such.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from typing import Any

import aiohttp

from daemon.database import Database
from daemon.settings import Settings
from daemon.verification import server


async def measure(settings: Settings, pdfs: list[bytes], uploads: int) -> dict[str, Any]:
    workers = os.cpu_count() or 1
    section = settings.verify_server.model_copy(
        update={"workers": workers, "rate_per_minute": 1e9, "rate_burst": 1_000_000}
    )
    settings = settings.model_copy(update={"verify_server": section})
    db = Database(settings.database)
    await db.open()
    checker = server.PoolChecker(settings)
    try:
        await checker.start()
        app = server.build_app(section, checker, server.DatabaseRegistry(db))
        runner = await server.start(app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.bound_port(runner)}/v1/verify"
        try:
            async with aiohttp.ClientSession() as http:
                await _run(http, url, pdfs, min(8, uploads), 1)  # warm-up
                eight = await _run(http, url, pdfs, uploads, 8)
                one = await _run(http, url, pdfs, max(4, uploads // 4), 1)
        finally:
            await runner.cleanup()
    finally:
        checker.close()
        await db.close()
    kb = statistics.mean(len(p) for p in pdfs) / 1024
    return {"workers": workers, "mean_pdf_kb": round(kb, 1), "concurrency_8": eight,
            "concurrency_1": one}  # fmt: skip


async def _run(
    http: aiohttp.ClientSession, url: str, pdfs: list[bytes], uploads: int, concurrency: int
) -> dict[str, Any]:
    latencies_ms: list[float] = []
    outcomes: Counter[str] = Counter()
    next_upload = iter(range(uploads))

    async def client() -> None:
        for n in next_upload:
            started = time.perf_counter()
            async with http.post(
                url, data=pdfs[n % len(pdfs)], headers={"Content-Type": "application/pdf"}
            ) as response:
                report = await response.json()
            latencies_ms.append((time.perf_counter() - started) * 1000)
            registered = (report.get("registered") or {}).get("state")
            outcomes[f"{report.get('verdict')}/{registered}"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    latencies_ms.sort()
    return {
        "uploads": uploads,
        "records_per_s": round(uploads / wall_s, 1),
        "latency_ms": {
            "p50": round(_quantile(latencies_ms, 0.50), 1),
            "p95": round(_quantile(latencies_ms, 0.95), 1),
            "p99": round(_quantile(latencies_ms, 0.99), 1),
        },
        "outcomes": dict(outcomes),
        "valid": set(outcomes) == {"issued/issued"},
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]
