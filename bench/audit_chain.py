"""The audit chain's cost per signature: the store statement with and without it.

Against the real PostgreSQL (a database of its own, dropped after): `rounds` records are
stored through `record_store.store_signature` (stage 1: record, two versions, signature,
request, audit entry, outbox row, in one statement) each way, alternating in batches so
that every way sees the same cache and load:

* `without_chain`: the chain trigger disabled (as before migration 0010);
* `chain_0010`: the trigger with the hash function as 0010 declared it (IMMUTABLE, so
  run as a separate SQL function, planned again in every transaction);
* `with_chain`: as migrated now (0012: STABLE, expanded into the trigger's plan).

A new session every round (one batch each way): a long session's store statement slows
down as it stores (README, the audit trail's "Cost"). Prints one JSON line: per way the
mean and p50 wall milliseconds per statement and the PostgreSQL backend's CPU per
statement (from /proc, when the database runs here); each chain's cost (its figure
minus `without_chain`'s), with `--end-to-end-ms` (CPU per signature end to end, README
"Throughput") also as a share of it; and the trigger's own time per entry each chain
way, as EXPLAIN ANALYZE reports it.

    .venv/bin/python -m bench.audit_chain [--dsn postgresql://postgres@127.0.0.1/postgres]
        [--end-to-end-ms 5.9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from daemon import migrate, record_store
from daemon.messages import RecordInfo, StatusEvent
from daemon.stages import Stage, State

SCHOOL = "31000999"
_HASH = "audit_entry_hash(text, bigint, text, timestamptz, text, text, uuid, text, jsonb)"
_TRIGGER = "audit_log_chain"
# Each way's setup: the trigger on or off, the hash function as 0010 or 0012 declared it.
WAYS = {
    "without_chain": ("DISABLE", "STABLE"),
    "chain_0010": ("ENABLE", "IMMUTABLE"),
    "with_chain": ("ENABLE", "STABLE"),
}


async def _store(conn: asyncpg.Connection, n: int) -> float:
    info = RecordInfo(
        record_id=f"B-{n}-{secrets.token_hex(3)}",
        student_id=secrets.token_hex(6),
        academic_year="2025-2026",
        grade=5,
        class_name="5A",
        submission_round=1,
    )
    sig = record_store.NewSignature(
        request_id=uuid.uuid4(),
        school_id=SCHOOL,
        info=info,
        stage=Stage.HOMEROOM_TEACHER,
        signer_id="GV-1",
        cert_serial="0a",
        signed_at=datetime.now(UTC),
        digest_before=secrets.token_hex(32),
        digest_after=secrets.token_hex(32),
        size_before=100_000,
        size_after=120_000,
        fingerprint=secrets.token_hex(8),
    )
    event = StatusEvent(
        event_id=uuid.uuid4(),
        request_id=sig.request_id,
        school_id=SCHOOL,
        record_id=info.record_id,
        state=State.SIGNED_BY_TEACHER,
        stage=Stage.HOMEROOM_TEACHER,
        document_sha256=sig.digest_after,
        signatures=1,
        reason=None,
        at=datetime.now(UTC),
    )
    started = time.perf_counter()
    await record_store.store_signature(conn, sig, event)
    return (time.perf_counter() - started) * 1000


def _backend_cpu_s(pid: int) -> float | None:
    """The CPU time (user + system) the PostgreSQL backend `pid` used so far; None when
    the database is not on this machine (or its /proc entry cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _session(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    # Without waiting for the disk, what is left is the work each way (CPU, locks).
    await conn.execute("SET synchronous_commit = off")
    return conn


async def main(
    dsn: str, rounds: int, batch: int, end_to_end_ms: float | None = None
) -> dict[str, object]:
    name = f"hocba_bench_audit_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    cpu: dict[str, float | None] = dict.fromkeys(WAYS, 0.0)
    try:
        conn = await _session(url)
        try:
            await migrate.migrate(conn)
            await conn.execute("INSERT INTO schools VALUES ($1, 'b', 'HS256', '\\x00')", SCHOOL)
            await conn.execute(
                "INSERT INTO signers (school_id, signer_id, stage, token_label, key_label, "
                "cert_serial, cert_not_after) VALUES ($1, 'GV-1', 'homeroom_teacher', 't', "
                "$1 || '/GV-1', '0a', now() + interval '1 year')",
                SCHOOL,
            )
            # Without the chain is as before migration 0010: the columns empty, no trigger.
            for column in ("chain", "seq", "prev_hash", "hash"):
                await conn.execute(f"ALTER TABLE audit_log ALTER COLUMN {column} DROP NOT NULL")
            for n in range(200):  # warm up
                await _store(conn, -n)
        finally:
            await conn.close()
        for b in range(rounds // batch):
            # A session per round: one connection's store statement grows slower the more
            # it has stored (README, audit trail "Cost"), which would blur every way alike.
            conn = await _session(url)
            try:
                await _round(conn, b, batch, times, cpu)
            finally:
                await conn.close()
        own_times = await _trigger_times(url, rounds // 2, batch)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return {**_summary(times, cpu, end_to_end_ms), **own_times}


async def _round(
    conn: asyncpg.Connection,
    b: int,
    batch: int,
    times: dict[str, list[float]],
    cpu: dict[str, float | None],
) -> None:
    """One batch each way, on one session, after a few unmeasured statements each way."""
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    for w, (way, (trigger, volatility)) in enumerate(WAYS.items()):
        # Both statements every time: each batch starts after the same invalidation.
        await conn.execute(f"ALTER TABLE audit_log {trigger} TRIGGER {_TRIGGER}")
        await conn.execute(f"ALTER FUNCTION {_HASH} {volatility}")
        for n in range(5):  # plans and the trigger's function compiled, not measured
            await _store(conn, -1000 - n)
        before = _backend_cpu_s(backend)
        for n in range(batch):
            times[way].append(await _store(conn, (b * len(WAYS) + w) * batch + n))
        after = _backend_cpu_s(backend)
        spent = cpu[way]
        if spent is None or before is None or after is None:
            cpu[way] = None
        else:
            cpu[way] = spent + after - before


_EXPLAIN = """EXPLAIN (ANALYZE, FORMAT JSON)
    INSERT INTO audit_log (school_id, record_id, request_id, action, detail)
    VALUES ($1, $2, $3, 'signed', $4::jsonb)"""


async def _trigger_times(url: str, rounds: int, batch: int) -> dict[str, float]:
    """The trigger's own time per entry, as PostgreSQL's EXPLAIN ANALYZE times it.

    The backend's clock runs only around the trigger's call, so this is the figure the
    machine's load disturbs least (a statement's wall time waits for the CPU at every
    round trip; its CPU time includes everything else in the statement).
    """
    samples: dict[str, list[float]] = {"chain_0010": [], "with_chain": []}
    detail = json.dumps({"stage": "homeroom_teacher", "signer_id": "GV-1", "cert_serial": "0a"})
    for b in range(max(rounds // batch, 1)):
        conn = await _session(url)
        try:
            await conn.execute(f"ALTER TABLE audit_log ENABLE TRIGGER {_TRIGGER}")
            for way in samples:
                await conn.execute(f"ALTER FUNCTION {_HASH} {WAYS[way][1]}")
                for n in range(-5, batch):  # the first five compile and plan, not counted
                    plan = json.loads(
                        await conn.fetchval(_EXPLAIN, SCHOOL, f"T-{b}-{n}", uuid.uuid4(), detail)
                    )
                    (found,) = [t for t in plan[0]["Triggers"] if t["Trigger Name"] == _TRIGGER]
                    if n >= 0:
                        samples[way].append(found["Time"] / found["Calls"])
        finally:
            await conn.close()
    result: dict[str, float] = {}
    for way, times in samples.items():
        result[f"{way}_trigger_mean_ms"] = round(statistics.fmean(times), 4)
        result[f"{way}_trigger_p50_ms"] = round(statistics.median(times), 4)
    return result


def _summary(
    times: dict[str, list[float]], cpu: dict[str, float | None], end_to_end_ms: float | None
) -> dict[str, object]:
    """Per way: wall mean and p50, the backend's CPU per statement; each chain's cost."""
    count = len(times["with_chain"])
    result: dict[str, object] = {"statements_each_way": count}
    cpu_ms: dict[str, float] = {}
    for way, samples in times.items():
        result[f"{way}_mean_ms"] = round(statistics.fmean(samples), 4)
        result[f"{way}_p50_ms"] = round(statistics.median(samples), 4)
        spent = cpu[way]
        if spent is not None:
            cpu_ms[way] = spent * 1000 / count
            result[f"{way}_backend_cpu_ms"] = round(cpu_ms[way], 4)
    base = statistics.fmean(times["without_chain"])
    for way, name in (("with_chain", "chain"), ("chain_0010", "chain_0010")):
        cost = statistics.fmean(times[way]) - base
        result[f"{name}_cost_ms"] = round(cost, 4)
        if cpu_ms:
            # CPU, not wall: the end-to-end figure it is compared with is CPU per signature.
            cost = cpu_ms[way] - cpu_ms["without_chain"]
            result[f"{name}_cost_backend_cpu_ms"] = round(cost, 4)
        if end_to_end_ms:
            result[f"{name}_share_of_end_to_end"] = round(cost / end_to_end_ms, 4)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument(
        "--end-to-end-ms", type=float, help="CPU per signature end to end (README Throughput)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.dsn, args.rounds, args.batch, args.end_to_end_ms))))
