"""The audit chain across migration 0012: entries chained before and after verify as one.

0012 makes the chain cheaper (the hash function expanded into the trigger's plan) without
changing its canonical form, so a school's chain may hold entries of both, and
`audit verify` (which recomputes every hash in Python, trusting neither trigger) must
accept them together and name a tampered entry on either side of the upgrade.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from daemon import migrate
from daemon.audit import chain, verify
from daemon.dev import env as devenv
from daemon.stages import Stage
from tests import services
from tests.integration.audit_kit import store_stage

SCHOOL = "31000903"
_PLAN = "EXPLAIN (VERBOSE) SELECT audit_entry_hash('c', 1, 'p', now(), 's', 'r', NULL, 'a', '{}')"


@pytest.fixture
async def before_0012() -> AsyncIterator[asyncpg.Connection]:
    """A database migrated as it was before 0012 (as the schema owner would have)."""
    async with services.scratch_database("hocba_audit_up") as (_, conn):
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, file, sql in migrate.available():
            if version >= 12:
                break
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, file)
        await devenv.register_school(conn, SCHOOL, "HS256", b"k" * 32)
        yield conn


async def _plan(conn: asyncpg.Connection) -> str:
    return "\n".join(r[0] for r in await conn.fetch(_PLAN))


async def _first_signature(conn: asyncpg.Connection, record_id: str) -> None:
    """Stage 1 of a record, by the daemon's own store statement (its `signed` entry)."""
    await conn.execute(
        """INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                                cert_serial, cert_not_after)
           VALUES ($1, 'GV-1', 'homeroom_teacher', 't', $1 || '/GV-1', '0a1b',
                   now() + interval '1 year')
           ON CONFLICT DO NOTHING""",
        SCHOOL,
    )
    before, after = secrets.token_hex(32), secrets.token_hex(32)
    await store_stage(conn, SCHOOL, record_id, Stage.HOMEROOM_TEACHER, "GV-1", before, after)


async def _entries(conn: asyncpg.Connection, tag: str) -> None:
    """Entries of every shape: a school's, of no school, Vietnamese text, a request id."""
    async with conn.transaction():
        await chain.append(conn, SCHOOL, "school_added", {"by": f"op-{tag}", "tên": "Trường Ễ"})
        await chain.append(conn, None, "operator_note", {"tag": tag})
        await chain.append_many(
            conn,
            [
                (SCHOOL, f"R-{tag}", uuid.uuid4(), "duplicate", {"n": 1}),
                (SCHOOL, f"R-{tag}", None, "refused", {"reason": "lớp 5A\n:2"}),
            ],
        )


async def _tampered(conn: asyncpg.Connection, seq: int) -> list[tuple[str, str, int | None]]:
    """What `audit verify` says when a superuser rewrites entry `seq`; then put it back."""
    where = "WHERE chain = $1 AND seq = $2"
    original = await conn.fetchval(f"SELECT detail::text FROM audit_log {where}", SCHOOL, seq)
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            f"UPDATE audit_log SET detail = detail || '{{\"x\": 1}}' {where}", SCHOOL, seq
        )
    report = await verify.verify(conn, None, [])
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            f"UPDATE audit_log SET detail = $3::jsonb {where}", SCHOOL, seq, original
        )
    return [(b.code, b.chain, b.seq) for b in report.breaks]


async def test_entries_chained_before_and_after_0012_verify_together(
    before_0012: asyncpg.Connection,
) -> None:
    conn = before_0012
    # Given entries chained by 0010's trigger, whose hash function was never inlined
    assert "audit_entry_hash(" in await _plan(conn)
    await _entries(conn, "old")
    old = await conn.fetchval("SELECT max(seq) FROM audit_log WHERE chain = $1", SCHOOL)
    # When the database is migrated (0012: the same hash, expanded into the plan)
    assert "0012_audit_chain_inlined.sql" in await migrate.migrate(conn)
    assert "audit_entry_hash(" not in await _plan(conn)
    assert "fillfactor=50" in await conn.fetchval(
        "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'audit_heads'"
    )
    # And more entries are chained after, a signature's among them, in the same chains
    await _first_signature(conn, "R-new")
    await _entries(conn, "new")
    rows = await conn.fetch(
        "SELECT seq, prev_hash, hash FROM audit_log WHERE chain = $1 ORDER BY seq", SCHOOL
    )
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[old]["prev_hash"] == rows[old - 1]["hash"]  # the first new entry follows
    # Then the whole trail verifies, both chains, every entry, the signature's included
    report = await verify.verify(conn, None, [])
    assert report.ok, report.breaks
    assert (report.chains, report.entries) == (2, 9)
    # And a tamper on either side of the upgrade is named, at its entry
    assert (await _tampered(conn, 2))[0] == ("entry_altered", SCHOOL, 2)
    assert (await _tampered(conn, old + 2))[0] == ("entry_altered", SCHOOL, old + 2)
    # And put back, the trail is whole again (the tamper, not the upgrade, was named)
    assert (await verify.verify(conn, None, [])).ok


async def test_the_trigger_and_the_verifier_agree_on_every_field(
    before_0012: asyncpg.Connection,
) -> None:
    conn = before_0012
    await migrate.migrate(conn)
    await _entries(conn, "x")
    rows = await conn.fetch(
        "SELECT id, chain, seq, prev_hash, hash, at, school_id, record_id, request_id, action,"
        " detail::text AS detail,"
        " audit_entry_hash(chain, seq, prev_hash, at, school_id, record_id, request_id,"
        "                  action, detail) AS in_sql"
        " FROM audit_log ORDER BY id"
    )
    for row in rows:
        fields = {k: v for k, v in dict(row).items() if k != "in_sql"}
        assert row["hash"] == row["in_sql"] == chain.entry_hash(chain.Entry(**fields)), row["id"]
