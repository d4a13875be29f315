"""A batch looked up in one query and stored in one statement, against the real database:
a lost race fails only its own record, and the rest is stored whole."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from daemon import migrate, records
from daemon.dev import env as devenv
from daemon.messages import StatusEvent
from daemon.settings import Settings
from daemon.stages import Stage
from tests import services
from tests.integration.audit_kit import stage_signed

SCHOOLS = ("31000201", "31000202")


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A database of these tests' own: their records have no documents in the store,
    and a walk of the run's shared trail would report them missing (test_audit_trail).
    Migrated and registered as the admin; the tests connect as the daemon's role."""
    async with services.scratch_database("hocba_batch") as (dsn, admin):
        await migrate.migrate(admin)
        for school in SCHOOLS:
            await devenv.register_school(admin, school, "HS256", b"k" * 32)
            await admin.execute(
                """INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                                        cert_serial, cert_not_after)
                   VALUES ($1, 'GV-0001', 'homeroom_teacher', 't', $1 || '/GV-0001', '0a1b',
                           now() + interval '1 year')""",
                school,
            )
        connection = await asyncpg.connect(services.same_role_on(settings.database.dsn, dsn))
        try:
            yield connection
        finally:
            await connection.close()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _first_stage(school: str, record_id: str) -> tuple[records.NewSignature, StatusEvent]:
    """A teacher's signature of a new record, and its event, as the pipeline builds them."""
    before, after = _digest(f"{record_id}-0"), _digest(f"{record_id}-1")
    return stage_signed(school, record_id, Stage.HOMEROOM_TEACHER, "GV-0001", before, after)


async def _written(conn: asyncpg.Connection, request_id: uuid.UUID) -> tuple[int, int, int]:
    """Rows the request left: requests, audit entries, outbox events."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM requests WHERE request_id = $1) AS requests,
                  (SELECT count(*) FROM audit_log WHERE request_id = $1) AS audit,
                  (SELECT count(*) FROM outbox o WHERE o.payload->>'request_id' = $1::text)
                      AS outbox""",
        request_id,
    )
    assert row is not None
    return row["requests"], row["audit"], row["outbox"]


async def test_a_lost_race_fails_only_its_own_record(conn: asyncpg.Connection) -> None:
    # Given a record another instance created first, and two schools' new records
    a, b = SCHOOLS
    tag = uuid.uuid4().hex[:8]
    raced = _first_stage(a, f"batch-{tag}-raced")
    await records.store_signature(conn, *_first_stage(a, f"batch-{tag}-raced"))
    batch = [_first_stage(b, f"batch-{tag}-1"), raced, _first_stage(a, f"batch-{tag}-2")]

    # When the batch is stored in one statement
    stored = await records.store_signatures(conn, batch)

    # Then the race is lost by its record alone: of it nothing was written
    assert stored == [True, False, True]
    assert await _written(conn, raced[0].request_id) == (0, 0, 0)
    # and each neighbour is stored whole: record, both versions, signature, request,
    # audit entry and status event
    for signature, event in (batch[0], batch[2]):
        found = await records.record(conn, signature.school_id, signature.info.record_id)
        assert found is not None and found.current_sha256 == signature.digest_after
        versions = await conn.fetchval(
            "SELECT count(*) FROM record_versions WHERE school_id = $1 AND record_id = $2",
            signature.school_id,
            signature.info.record_id,
        )
        assert versions == 2
        assert await _written(conn, event.request_id) == (1, 1, 1)


async def test_later_stages_are_set_each_by_its_own_compare_and_set(
    conn: asyncpg.Connection,
) -> None:
    # Given two records signed by their teachers
    school = SCHOOLS[0]
    tag = uuid.uuid4().hex[:8]
    firsts = [_first_stage(school, f"batch-{tag}-{n}") for n in range(2)]
    assert await records.store_signatures(conn, firsts) == [True, True]

    # When their principals' signatures are stored together, one of them over a
    # version the record no longer has
    nexts = []
    for n, (first, _) in enumerate(firsts):
        before = first.digest_after if n == 0 else _digest("not the current version")
        after = _digest(f"{first.info.record_id}-2")
        record_id = first.info.record_id
        nexts.append(stage_signed(school, record_id, Stage.PRINCIPAL, "GV-0001", before, after))
    stored = await records.store_signatures(conn, nexts)

    # Then only the one whose version matched advanced
    assert stored == [True, False]
    advanced = await records.record(conn, school, firsts[0][0].info.record_id)
    kept = await records.record(conn, school, firsts[1][0].info.record_id)
    assert advanced is not None and advanced.signatures == 2
    assert kept is not None and kept.signatures == 1


async def test_a_batch_lookup_answers_each_key_as_a_lookup_of_its_own(
    conn: asyncpg.Connection,
) -> None:
    school = SCHOOLS[0]
    tag = uuid.uuid4().hex[:8]
    known = _first_stage(school, f"batch-{tag}-known")
    await records.store_signature(conn, *known)
    signature = known[0]
    keys = [
        records.Key(uuid.uuid4(), school, "GV-0001", f"batch-{tag}-unknown"),
        records.Key(uuid.uuid4(), "no-such-school", "GV-0001", "r"),
        records.Key(uuid.uuid4(), school, "GV-0001", signature.info.record_id, signature.info),
    ]
    many = await records.lookup_many(conn, keys)
    one_by_one = [
        await records.lookup(conn, k.request_id, k.school_id, k.signer_id, k.record_id, info=k.info)
        for k in keys
    ]
    assert many == one_by_one
    assert many[0].school is not None and many[0].record is None
    assert many[1].school is None
    assert many[2].record is not None and many[2].live_record_id == signature.info.record_id
