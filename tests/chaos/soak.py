"""A soak: the private cluster at a steady rate, with no faults, reporting over time.

    python -m tests.chaos.soak --minutes 10 --rate 4      # make soak

Every interval it prints the daemons' memory (RSS of each process group, HSM workers
included), the sign queue backlog, the outbox backlog and the p50/p99 latency from a
request's publication to its status event; at the end, whether memory stayed flat,
the backlog did not grow and p99 stayed stable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg

from daemon import topology
from tests.chaos.driver import Driver
from tests.chaos.run import SIZES, Size, start_cluster, stop_cluster


@dataclass
class Sample:
    at_s: float
    rss_mb: float
    queue: int
    outbox: int
    p50_s: float
    p99_s: float
    done: int
    started: int


def group_rss_mb(pgid: int) -> float:
    total_kb = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


async def queue_depth(url: str) -> int:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.SIGN_QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def outbox_backlog(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE amqp_published_at IS NULL "
                "OR mqtt_published_at IS NULL"
            )
        )
    finally:
        await conn.close()


async def soak(minutes: float, rate: float, interval_s: float) -> int:
    size: Size = SIZES["small"]
    seed = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix="hocba-soak-"))
    os.chmod(base, 0o755)
    cluster = None
    samples: list[Sample] = []
    try:
        cluster = await start_cluster(base, size, random.Random(seed), small_store=False)
        env = cluster.env
        print(f"soak: {minutes} min at {rate} records/s ({3 * rate} signatures/s), {base}")
        heads = ("at_s", "rss_mb", "queue", "outbox", "p50_s", "p99_s", "issued")
        print(" ".join(f"{h:>7}" for h in heads))
        async with Driver(env, env.settings.amqp.url, seed) as driver:
            started = time.monotonic()
            end = started + minutes * 60
            next_sample = started + interval_s
            n = 0
            while time.monotonic() < end:
                await driver.start_record(env.schools[n % len(env.schools)])
                n += 1
                await asyncio.sleep(1 / rate)
                if time.monotonic() >= next_sample:
                    next_sample += interval_s
                    samples.append(await _sample(cluster, driver, started, interval_s, n))
                    _print(samples[-1])
        verdict = _verdict(samples)
        for line in verdict:
            print(line)
        return 0 if all(line.endswith("holds") for line in verdict) else 1
    finally:
        if cluster is not None:
            await cluster.gate.stop()
        await asyncio.to_thread(stop_cluster, cluster, base, False)


async def _sample(
    cluster, driver: Driver, started: float, window_s: float, records_started: int
) -> Sample:
    now = time.monotonic()
    recent = [lat for at, lat in driver.latencies if at >= now - window_s]
    quantiles = statistics.quantiles(recent, n=100) if len(recent) >= 2 else [0.0] * 99
    rss = sum(group_rss_mb(d.process.pid) for d in cluster.daemons if d.running and d.process)
    return Sample(
        at_s=round(now - started),
        rss_mb=rss,
        queue=await queue_depth(cluster.env.settings.amqp.url),
        outbox=await outbox_backlog(cluster.env.settings.database.dsn),
        p50_s=quantiles[49],
        p99_s=quantiles[98],
        done=driver.finals().get("issued", 0),
        started=records_started,
    )


def _print(s: Sample) -> None:
    print(
        f"{s.at_s:>7} {s.rss_mb:>7.1f} {s.queue:>7} {s.outbox:>7} "
        f"{s.p50_s:>7.3f} {s.p99_s:>7.3f} {s.done:>7}",
        flush=True,
    )


def _verdict(samples: list[Sample]) -> list[str]:
    if len(samples) < 4:
        return ["too few samples for a verdict (run longer) — VIOLATED"]
    half = len(samples) // 2
    first, second = samples[1:half] or samples[:1], samples[half:]
    rss_growth = max(s.rss_mb for s in second) / max(max(s.rss_mb for s in first), 1)
    queue_end = statistics.mean(s.queue for s in second[-3:])
    p99_first = statistics.median(s.p99_s for s in first)
    p99_second = statistics.median(s.p99_s for s in second)
    # Queues can look empty while requests wait in retry queues: what counts is that
    # records keep being issued as fast as they are started.
    tail = second[-3:]
    span_s = max(tail[-1].at_s - tail[0].at_s, 1)
    issued_rate = (tail[-1].done - tail[0].done) / span_s
    started_rate = (tail[-1].started - tail[0].started) / span_s

    def line(name: str, ok: bool, detail: str) -> str:
        return f"{name}: {detail} — {'holds' if ok else 'VIOLATED'}"

    return [
        line(
            "memory flat", rss_growth < 1.15, f"peak RSS second half / first half {rss_growth:.2f}"
        ),
        line("no growing backlog", queue_end < 50, f"sign queue at the end {queue_end:.0f}"),
        line(
            "keeps up",
            issued_rate >= 0.8 * started_rate,
            f"{issued_rate:.2f} records/s issued at the end for {started_rate:.2f} started",
        ),
        line(
            "p99 stable",
            p99_second < max(2 * p99_first, 1.0),
            f"p99 {p99_first:.3f}s first half, {p99_second:.3f}s second half",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=4, help="new records per second")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("aiormq", "aio_pika", "aiomqtt"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return asyncio.run(soak(args.minutes, args.rate, args.interval))


if __name__ == "__main__":
    raise SystemExit(main())
