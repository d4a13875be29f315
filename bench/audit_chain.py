"""The audit chain's cost per signature: the store statement with and without it.

Against the real PostgreSQL (a database of its own, dropped after): `rounds` records are
stored through `record_store.store_signature` (stage 1: record, two versions, signature,
request, audit entry, outbox row, in one statement), first with migration 0010's chain
trigger disabled, then enabled, alternating in batches so that both see the same cache
and load. Prints one JSON line: mean and p50 milliseconds per statement, each way.

    .venv/bin/python -m bench.audit_chain [--dsn postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def main(dsn: str, rounds: int, batch: int) -> dict[str, object]:
    name = f"hocba_bench_audit_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(dsn)
    conn = await asyncpg.connect(urlunsplit(parts._replace(path=f"/{name}")))
    try:
        await migrate.migrate(conn)
        # Without waiting for the disk, what is left is the work each way (CPU, locks).
        await conn.execute("SET synchronous_commit = off")
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
        times: dict[str, list[float]] = {"without_chain": [], "with_chain": []}
        for n in range(200):  # warm up
            await _store(conn, -n)
        for b in range(rounds // batch):
            for way, toggle in (("without_chain", "DISABLE"), ("with_chain", "ENABLE")):
                await conn.execute(f"ALTER TABLE audit_log {toggle} TRIGGER audit_log_chain")
                for n in range(batch):
                    times[way].append(await _store(conn, b * batch * 2 + n))
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_chain")
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    result: dict[str, object] = {"statements_each_way": len(times["with_chain"])}
    for way, samples in times.items():
        result[f"{way}_mean_ms"] = round(statistics.fmean(samples), 4)
        result[f"{way}_p50_ms"] = round(statistics.median(samples), 4)
    delta = statistics.fmean(times["with_chain"]) - statistics.fmean(times["without_chain"])
    result["chain_cost_ms"] = round(delta, 4)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.dsn, args.rounds, args.batch))))
