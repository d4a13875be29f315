"""Does one connection's store statement slow down as it stores? Before and after 0013.

Against the real PostgreSQL, a database of its own per way (dropped after), each
migrated and given one school and signer; then `stores` first-stage signatures through
`record_store.store_signature` (record, versions, signature, request, audit entry,
outbox row: one statement), on ONE connection per way, opened while its `records` is
as the way says; the ways take turns, `chunk` statements at a time, so that all see
the same load:

* `before`: records_progress as 0001 made it (school_id first), an empty table;
* `after`: as migrated now (0013: the round's columns first), an empty table;
* `before_started_large`: as `before`, with `preload` records inserted before the
  connection opened (no ANALYZE): the plans are made on a table that is not small;
* `before_analyzed_midway`: as `before`, with ANALYZE run from another session after
  half the stores (what autovacuum's first analyze of the table would do).

Prints one JSON line: per way, the PostgreSQL backend's CPU per statement (from
/proc; the database must run on this machine) and the wall mean and p50 per statement
in the first and the last `window` stores, and the ratio last / first of the CPU; and
whether autovacuum is on (if it analyzed a `before` table during the run, that way's
plans were made again, and its drift is cut short).

    .venv/bin/python -m bench.store_drift [--dsn postgresql://postgres@127.0.0.1/postgres]
        [--stores 10000] [--window 1000] [--chunk 100] [--preload 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.audit_chain import SCHOOL, _backend_cpu_s, _store
from daemon import migrate

# 0013 undone: the index as 0001 made it.
_BEFORE = """
CREATE INDEX records_progress ON records (school_id, academic_year, submission_round, state);
DROP INDEX records_progress_by_round;
"""
_PRELOAD = """
INSERT INTO records (school_id, record_id, student_id, academic_year, grade, class_name,
                     submission_round, state, signatures, current_sha256)
SELECT $1, 'P-' || g, 'P-' || g, '2024-2025', 5, '5A', 1, 'issued', 3, md5(g::text)
FROM generate_series(1, $2) AS g
"""
WAYS = ("before", "after", "before_started_large", "before_analyzed_midway")


@dataclass
class Way:
    name: str
    url: str
    conn: asyncpg.Connection | None = None
    backend: int = 0
    wall_ms: list[float] = field(default_factory=list)
    # (statements stored before the chunk, CPU seconds the chunk took), per chunk.
    cpu_s: list[tuple[int, float]] = field(default_factory=list)


async def _database(admin: asyncpg.Connection, dsn: str, way: str, preload: int) -> Way:
    name = f"hocba_bench_drift_{secrets.token_hex(3)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    setup = await asyncpg.connect(url)
    try:
        await migrate.migrate(setup)
        if way != "after":
            await setup.execute(_BEFORE)
        await setup.execute("INSERT INTO schools VALUES ($1, 'b', 'HS256', '\\x00')", SCHOOL)
        await setup.execute(
            "INSERT INTO signers (school_id, signer_id, stage, token_label, key_label, "
            "cert_serial, cert_not_after) VALUES ($1, 'GV-1', 'homeroom_teacher', 't', "
            "$1 || '/GV-1', '0a', now() + interval '1 year')",
            SCHOOL,
        )
        if way == "before_started_large":
            await setup.execute(_PRELOAD, SCHOOL, preload)
    finally:
        await setup.close()
    return Way(way, url)


async def _chunk(way: Way, first: int, chunk: int) -> None:
    assert way.conn is not None
    before = _backend_cpu_s(way.backend)
    for n in range(first, first + chunk):
        way.wall_ms.append(await _store(way.conn, n))
    after = _backend_cpu_s(way.backend)
    if before is None or after is None:
        raise SystemExit("store_drift: the database must run on this machine (/proc).")
    way.cpu_s.append((first, after - before))


def _window(way: Way, start: int, stop: int) -> dict[str, float]:
    cpu = sum(s for first, s in way.cpu_s if start <= first < stop)
    wall = way.wall_ms[start:stop]
    return {
        "backend_cpu_ms": round(cpu * 1000 / len(wall), 4),
        "wall_mean_ms": round(statistics.fmean(wall), 4),
        "wall_p50_ms": round(statistics.median(wall), 4),
    }


async def main(dsn: str, stores: int, window: int, chunk: int, preload: int) -> dict[str, object]:
    admin = await asyncpg.connect(dsn)
    ways: list[Way] = []
    try:
        autovacuum = await admin.fetchval("SHOW autovacuum")
        for name in WAYS:
            ways.append(await _database(admin, dsn, name, preload))
        for way in ways:
            way.conn = await asyncpg.connect(way.url)
            # Without waiting for the disk, what is left is the work (CPU, locks).
            await way.conn.execute("SET synchronous_commit = off")
            way.backend = await way.conn.fetchval("SELECT pg_backend_pid()")
        for first in range(0, stores, chunk):
            if first == stores // 2:
                (midway,) = [w for w in ways if w.name == "before_analyzed_midway"]
                other = await asyncpg.connect(midway.url)
                await other.execute("ANALYZE records")
                await other.close()
            for way in ways:
                await _chunk(way, first, chunk)
        result: dict[str, object] = {
            "stores_each_way": stores,
            "window": window,
            "preload": preload,
            "autovacuum": autovacuum,
        }
        for way in ways:
            assert way.conn is not None
            first_w, last_w = _window(way, 0, window), _window(way, stores - window, stores)
            result[way.name] = {
                "first": first_w,
                "last": last_w,
                "cpu_last_over_first": round(
                    last_w["backend_cpu_ms"] / max(first_w["backend_cpu_ms"], 1e-9), 2
                ),
                "autoanalyzed": await way.conn.fetchval(
                    "SELECT autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'records'"
                ),
            }
            await way.conn.close()
        return result
    finally:
        for way in ways:
            if way.conn is not None and not way.conn.is_closed():
                await way.conn.close()
            await admin.execute(f'DROP DATABASE "{urlsplit(way.url).path[1:]}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--stores", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--preload", type=int, default=2000)
    args = parser.parse_args()
    if args.stores < 2 * args.window or args.window % args.chunk or args.stores % args.chunk:
        parser.error("--stores must be at least 2 windows, both multiples of --chunk")
    started = time.perf_counter()
    out = asyncio.run(main(args.dsn, args.stores, args.window, args.chunk, args.preload))
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
