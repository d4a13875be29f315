"""A soak: the private cluster at a steady rate, with no faults, reporting over time.

    python -m tests.chaos.soak --minutes 10 --rate 4      # make soak

Every interval it prints the daemons' memory (RSS of each process group, HSM workers
included), the sign queue backlog, the outbox backlog and the p50/p99 latency from a
request's publication to its status event; at the end, whether memory stayed flat
(the least-squares slope of each instance's RSS after `--warmup-minutes`), the backlog
did not grow and p99 stayed stable, and as its last line one JSON document: per
instance and per process kind (main, hsm_worker) RSS and PSS at the end of warm-up, at
the end and their slope in MB/h, open fds, the main process's glibc allocator
statistics (the daemons run with HOCBA_DEBUG_MEMORY) and Prometheus sample count; p99
over the first and the last minutes. `--samples-out FILE` keeps every sample (JSON
lines). The daemons inherit this process's environment, and the allocator settings
the systemd unit gives production (its `MALLOC_*` variables, unless set here already;
`--no-unit-env` for glibc's defaults), so the soak measures what a district runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from daemon import topology
from tests.chaos import memory
from tests.chaos.cluster import SIZES, Cluster, Size, start_cluster, stop_cluster
from tests.chaos.driver import Driver

SLOPE_LIMIT_MB_PER_H = 2.0
KINDS = (memory.MAIN, memory.HSM_WORKER)
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hocba-signer@.service"
ENVIRONMENT_SHOWN = ("MALLOC_", "PYTHONMALLOC", "HOCBA_HSM__", "HOCBA_DEBUG_MEMORY")


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
    # instance → kind → usage; "total" is the instance with all its processes.
    instances: dict[str, dict[str, memory.Usage]] = field(default_factory=dict)
    allocator: dict[str, dict[str, int] | None] = field(default_factory=dict)
    metrics_samples: dict[str, int | None] = field(default_factory=dict)
    p11kit: memory.Usage = field(default_factory=memory.Usage)


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


async def soak(
    minutes: float,
    rate: float,
    interval_s: float,
    warmup_minutes: float,
    samples_out: Path | None,
    instance_env: dict[int, dict[str, str]] | None = None,
) -> int:
    size: Size = SIZES["small"]
    seed = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix="hocba-soak-"))
    os.chmod(base, 0o755)
    # The daemons inherit the environment: their allocator statistics every interval.
    os.environ.setdefault("HOCBA_DEBUG_MEMORY", str(max(int(interval_s), 1)))
    cluster = None
    samples: list[Sample] = []
    out = samples_out.open("w") if samples_out else None
    try:
        cluster = await start_cluster(
            base, size, random.Random(seed), small_store=False, instance_env=instance_env
        )
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
                    if out is not None:
                        out.write(json.dumps(asdict(samples[-1])) + "\n")
                        out.flush()
            window_s = min(300.0, minutes * 60 / 4)
            p99 = _p99_first_last(driver.latencies, started, time.monotonic(), window_s)
        verdict = _verdict(samples, warmup_minutes * 60)
        for line in verdict:
            print(line)
        summary = report(samples, warmup_minutes * 60, p99, window_s)
        summary |= {"minutes": minutes, "rate": rate, "warmup_minutes": warmup_minutes}
        if instance_env:
            summary["instance_environment"] = {f"chaos-{n}": e for n, e in instance_env.items()}
        summary["ok"] = all(line.endswith("holds") for line in verdict)
        print(json.dumps(summary), flush=True)
        return 0 if summary["ok"] else 1
    finally:
        if out is not None:
            out.close()
        if cluster is not None:
            await cluster.gate.stop()
        await asyncio.to_thread(stop_cluster, cluster, base, False)


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[q - 1]


def _p99_first_last(
    latencies: list[tuple[float, float]], started: float, ended: float, window_s: float
) -> tuple[float, float]:
    first = [lat for at, lat in latencies if at < started + window_s]
    last = [lat for at, lat in latencies if at >= ended - window_s]
    return _quantile(first, 99), _quantile(last, 99)


def _usage_now(cluster: Cluster) -> tuple[dict[str, dict[str, memory.Usage]], dict[str, Any]]:
    instances: dict[str, dict[str, memory.Usage]] = {}
    allocator: dict[str, Any] = {}
    for d in cluster.daemons:
        if not (d.running and d.process):
            continue
        kinds = memory.group_usage(d.process.pid)
        instances[d.name] = {**kinds, "total": memory.total(kinds.values())}
        allocator[d.name] = memory.last_allocator_stats(d.log)
    return instances, allocator


async def _sample(
    cluster: Cluster, driver: Driver, started: float, window_s: float, records_started: int
) -> Sample:
    now = time.monotonic()
    recent = [lat for at, lat in driver.latencies if at >= now - window_s]
    instances, allocator = await asyncio.to_thread(_usage_now, cluster)
    p11kit_pid = cluster.p11kit.process.pid if cluster.p11kit.process else 0
    scrapes = await asyncio.gather(
        *(asyncio.to_thread(memory.scrape_samples, d.http_port) for d in cluster.daemons)
    )
    return Sample(
        at_s=round(now - started),
        rss_mb=sum(kinds["total"].rss_mb for kinds in instances.values()),
        queue=await queue_depth(cluster.env.settings.amqp.url),
        outbox=await outbox_backlog(cluster.env.settings.database.dsn),
        p50_s=_quantile(recent, 50),
        p99_s=_quantile(recent, 99),
        done=driver.finals().get("issued", 0),
        started=records_started,
        instances=instances,
        allocator=allocator,
        metrics_samples={d.name: n for d, n in zip(cluster.daemons, scrapes, strict=True)},
        p11kit=await asyncio.to_thread(memory.group_total, p11kit_pid),
    )


def _print(s: Sample) -> None:
    print(
        f"{s.at_s:>7} {s.rss_mb:>7.1f} {s.queue:>7} {s.outbox:>7} "
        f"{s.p50_s:>7.3f} {s.p99_s:>7.3f} {s.done:>7}",
        flush=True,
    )


def _after_warmup(samples: list[Sample], warmup_s: float) -> list[Sample]:
    return [s for s in samples if s.at_s >= warmup_s]


def _series(samples: list[Sample], name: str, kind: str, attr: str) -> list[tuple[float, float]]:
    return [
        (s.at_s, float(getattr(s.instances[name][kind], attr)))
        for s in samples
        if name in s.instances and kind in s.instances[name]
    ]


def _trend(points: list[tuple[float, float]], digits: int = 1) -> dict[str, float | None]:
    slope = memory.slope_mb_per_h(points)
    return {
        "warmup_end": round(points[0][1], digits) if points else None,
        "end": round(points[-1][1], digits) if points else None,
        "slope_mb_per_h": None if slope is None else round(slope, 2),
    }


def report(
    samples: list[Sample], warmup_s: float, p99: tuple[float, float], window_s: float
) -> dict[str, Any]:
    """The soak's JSON: memory per instance and kind after warm-up, p99 first and last."""
    after = _after_warmup(samples, warmup_s)
    names = sorted({name for s in samples for name in s.instances})
    instances: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {}
        for kind in ("total", *KINDS):
            rss = _series(after, name, kind, "rss_mb")
            fds = _series(after, name, kind, "fds")
            entry[kind] = {
                "rss_mb": _trend(rss),
                "pss_mb": _trend(_series(after, name, kind, "pss_mb")),
                # Where the resident pages are: which of these grows says who holds it.
                **{
                    region: _trend(_series(after, name, kind, region))
                    for region in ("heap_mb", "anon_mb", "file_mb")
                },
                "fds": {"warmup_end": fds[0][1], "end": fds[-1][1]} if fds else None,
            }
        with_stats = [s for s in after if s.allocator.get(name)]
        if with_stats:
            first, last = with_stats[0].allocator[name], with_stats[-1].allocator[name]
            entry[memory.MAIN]["allocator"] = {"warmup_end": first, "end": last}
        scraped = [s.metrics_samples.get(name) for s in after if s.metrics_samples.get(name)]
        if scraped:
            entry[memory.MAIN]["metrics_samples"] = {"warmup_end": scraped[0], "end": scraped[-1]}
        instances[name] = entry
    p11 = [(s.at_s, s.p11kit.rss_mb) for s in after if s.p11kit.processes]
    return {
        "instances": instances,
        "p11kit_server": {"rss_mb": _trend(p11)},
        "p99_s": {
            "first": round(p99[0], 3),
            "last": round(p99[1], 3),
            "window_minutes": round(window_s / 60, 1),
        },
        "issued": samples[-1].done if samples else 0,
        # What the daemons inherited that shapes their memory.
        "environment": {
            k: v for k, v in sorted(os.environ.items()) if k.startswith(ENVIRONMENT_SHOWN)
        },
    }


def _verdict(samples: list[Sample], warmup_s: float) -> list[str]:
    after = _after_warmup(samples, warmup_s)
    if len(samples) < 4 or len(after) < 4:
        return ["too few samples after warm-up for a verdict (run longer) — VIOLATED"]
    half = len(samples) // 2
    first, second = samples[1:half] or samples[:1], samples[half:]
    names = sorted({name for s in after for name in s.instances})
    slopes = {
        name: memory.slope_mb_per_h(_series(after, name, "total", "rss_mb")) or 0.0
        for name in names
    }
    worst = max(slopes.values(), default=0.0)
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
            "memory flat",
            worst < SLOPE_LIMIT_MB_PER_H,
            "RSS slope after warm-up per instance "
            + ", ".join(f"{n} {v:+.2f}" for n, v in slopes.items())
            + f" MB/h (limit {SLOPE_LIMIT_MB_PER_H})",
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


def unit_allocator_env(unit: str) -> dict[str, str]:
    """The `MALLOC_*` variables of the unit's `Environment=` lines."""
    found: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                name, _, value = item.partition("=")
                if name.startswith("MALLOC_"):
                    found[name] = value
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=4, help="new records per second")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples")
    parser.add_argument(
        "--warmup-minutes", type=float, default=10, help="not counted in the memory slope"
    )
    parser.add_argument("--samples-out", type=Path, help="every sample, as JSON lines")
    parser.add_argument(
        "--instance-env",
        action="append",
        default=[],
        metavar="N:NAME=VALUE",
        help="more environment for daemon N (from 1), to compare a setting side by side",
    )
    parser.add_argument(
        "--no-unit-env", action="store_true", help="glibc's defaults, not the unit's MALLOC_*"
    )
    args = parser.parse_args()
    if not args.no_unit_env:
        for name, value in unit_allocator_env(UNIT.read_text()).items():
            os.environ.setdefault(name, value)
    if args.warmup_minutes >= args.minutes:
        # `make soak`'s default 10 minutes: half of it still gives a slope.
        args.warmup_minutes = args.minutes / 2
        print(f"soak: warm-up shortened to {args.warmup_minutes:g} min for this run")
    logging.basicConfig(level=logging.WARNING)
    for name in ("aiormq", "aio_pika", "aiomqtt"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    instance_env: dict[int, dict[str, str]] = {}
    for item in args.instance_env:
        number, _, assignment = item.partition(":")
        name, _, value = assignment.partition("=")
        instance_env.setdefault(int(number), {})[name] = value
    return asyncio.run(
        soak(
            args.minutes,
            args.rate,
            args.interval,
            args.warmup_minutes,
            args.samples_out,
            instance_env,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
