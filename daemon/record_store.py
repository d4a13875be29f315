"""The one transaction that stores an outcome: a signature, or a refusal.

An outcome is stored with its request row (idempotency), its audit entry (chained by
the database: daemon/audit/chain.py) and its status event (outbox) in one transaction,
so that nothing is acknowledged, and nothing is announced, that is not durable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from daemon.audit import chain
from daemon.errors import ConcurrentUpdate
from daemon.messages import RecordInfo, StatusEvent
from daemon.stages import Stage
from daemon.statements import Statement

OUTBOX_CHANNEL = "hocba_outbox"


@dataclass(frozen=True)
class NewSignature:
    """What the signing step produced, ready to be stored."""

    request_id: UUID
    school_id: str
    info: RecordInfo
    stage: Stage
    signer_id: str
    cert_serial: str
    signed_at: datetime
    digest_before: str
    digest_after: str
    size_before: int
    size_after: int
    fingerprint: str
    # The record a v2 correction replaces (stage 1 only; daemon/corrections.py).
    corrects: str | None = None


# A signature is stored by one statement: its data-modifying CTEs all hang off the
# record's insert (stage 1) or compare-and-set update (later stages), so when another
# instance got there first nothing at all is written, and the statement is its own
# transaction. One round trip instead of ten (BEGIN, seven writes, NOTIFY, COMMIT).
# Parameters are named (daemon/statements.py): a new column is one `:name` here and
# one entry in `_signature_params`.
_CREATE_RECORD = """
changed AS (
    INSERT INTO records (school_id, record_id, student_id, academic_year, grade,
                         class_name, submission_round, state, signatures, current_sha256,
                         corrects)
    VALUES (:school_id, :record_id, :student_id, :academic_year, :grade,
            :class_name, :submission_round, :state, 1, :digest_after, :corrects)
    ON CONFLICT DO NOTHING
    RETURNING school_id, record_id
),
versions AS (
    INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes)
    SELECT school_id, record_id, v.version, v.sha256, v.size_bytes
    FROM changed, (VALUES (0::smallint, :digest_before::text, :size_before::integer),
                          (:signatures::smallint, :digest_after::text, :size_after::integer))
                  AS v (version, sha256, size_bytes)
)"""
_ADVANCE_RECORD = """
changed AS (
    UPDATE records
    SET state = :state, signatures = :signatures, current_sha256 = :digest_after,
        updated_at = now()
    WHERE school_id = :school_id AND record_id = :record_id
      AND signatures = :signatures - 1 AND current_sha256 = :digest_before
    RETURNING school_id, record_id
),
versions AS (
    INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes)
    SELECT school_id, record_id, :signatures, :digest_after, :size_after FROM changed
)"""
_STORE_REST = (
    """,
signature AS (
    INSERT INTO signatures (school_id, record_id, stage, signer_id, cert_serial,
                            signed_at, digest_before, digest_after, request_id)
    SELECT school_id, record_id, :stage, :signer_id, :cert_serial,
           :signed_at, :digest_before, :digest_after, :request_id FROM changed
),
request AS (
    INSERT INTO requests (request_id, school_id, record_id, stage, fingerprint,
                          state, reason_code, event_id)
    SELECT :request_id, school_id, record_id, :stage, :fingerprint,
           :state, NULL, :event_id FROM changed
),
audit AS (
    INSERT INTO audit_log (school_id, record_id, request_id, action, detail)
    SELECT school_id, record_id, :request_id, 'signed', :detail::jsonb FROM changed
),
queued AS (
    INSERT INTO outbox (event_id, school_id, record_id, state, payload, repeat)
    SELECT :event_id, school_id, record_id, :state, :event::jsonb, false FROM changed
    RETURNING id
)
SELECT count(*) FROM (SELECT pg_notify('"""
    + OUTBOX_CHANNEL
    + """', '') FROM queued) AS woken
"""
)
_STORE_FIRST = Statement("WITH" + _CREATE_RECORD + _STORE_REST)
_STORE_NEXT = Statement("WITH" + _ADVANCE_RECORD + _STORE_REST)


async def store_signature(conn: asyncpg.Connection, sig: NewSignature, event: StatusEvent) -> None:
    """Record, versions, signature, request, audit and outbox: all, or (on a race) none.

    Raises ConcurrentUpdate when another instance created or advanced the record first.
    """
    first = sig.stage is Stage.HOMEROOM_TEACHER
    statement = _STORE_FIRST if first else _STORE_NEXT
    stored = await conn.fetchval(statement.sql, *statement.args(_signature_params(sig, event)))
    if not stored:
        what = "created this record" if first else "changed the record while it was signed"
        raise ConcurrentUpdate(f"Another instance {what} first.")


# Many signatures in one statement: the rows travel as arrays (one per column), and
# the same data-modifying CTEs hang off each record's own insert (stage 1) or
# compare-and-set update (later stages). A record another instance got to first is
# simply not in `changed`: nothing of it is written, and only it reports the race. The
# rows are sorted by school, so two instances' batches take the schools' audit-chain
# heads in the same order and never deadlock on them.
_STORE_MANY = Statement(
    """
WITH input AS (
    SELECT * FROM unnest(
        :school_id::text[], :record_id::text[], :student_id::text[],
        :academic_year::text[], :grade::smallint[], :class_name::text[],
        :submission_round::smallint[], :corrects::text[], :state::text[],
        :signatures::smallint[], :digest_before::text[], :digest_after::text[],
        :size_before::integer[], :size_after::integer[], :stage::text[],
        :signer_id::text[], :cert_serial::text[], :signed_at::timestamptz[],
        :request_id::uuid[], :fingerprint::text[], :event_id::uuid[],
        :detail::text[], :event::text[]
    ) WITH ORDINALITY AS i (
        school_id, record_id, student_id, academic_year, grade, class_name,
        submission_round, corrects, state, signatures, digest_before, digest_after,
        size_before, size_after, stage, signer_id, cert_serial, signed_at,
        request_id, fingerprint, event_id, detail, event, n)
),
created AS (
    INSERT INTO records (school_id, record_id, student_id, academic_year, grade,
                         class_name, submission_round, state, signatures, current_sha256,
                         corrects)
    SELECT school_id, record_id, student_id, academic_year, grade, class_name,
           submission_round, state, 1, digest_after, corrects
    FROM input WHERE signatures = 1 ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING school_id, record_id
),
advanced AS (
    UPDATE records r
    SET state = i.state, signatures = i.signatures, current_sha256 = i.digest_after,
        updated_at = now()
    FROM input i
    WHERE i.signatures > 1 AND r.school_id = i.school_id AND r.record_id = i.record_id
      AND r.signatures = i.signatures - 1 AND r.current_sha256 = i.digest_before
    RETURNING r.school_id, r.record_id
),
changed AS (
    SELECT i.* FROM input i
    JOIN (SELECT * FROM created UNION ALL SELECT * FROM advanced) AS c
      ON c.school_id = i.school_id AND c.record_id = i.record_id
),
versions AS (
    INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes)
    SELECT school_id, record_id, 0, digest_before, size_before
    FROM changed WHERE signatures = 1
    UNION ALL
    SELECT school_id, record_id, signatures, digest_after, size_after FROM changed
),
signature AS (
    INSERT INTO signatures (school_id, record_id, stage, signer_id, cert_serial,
                            signed_at, digest_before, digest_after, request_id)
    SELECT school_id, record_id, stage, signer_id, cert_serial,
           signed_at, digest_before, digest_after, request_id FROM changed
),
request AS (
    INSERT INTO requests (request_id, school_id, record_id, stage, fingerprint,
                          state, reason_code, event_id)
    SELECT request_id, school_id, record_id, stage, fingerprint, state, NULL, event_id
    FROM changed
),
audit AS (
    INSERT INTO audit_log (school_id, record_id, request_id, action, detail)
    SELECT school_id, record_id, request_id, 'signed', detail::jsonb
    FROM changed ORDER BY n
),
queued AS (
    INSERT INTO outbox (event_id, school_id, record_id, state, payload, repeat)
    SELECT event_id, school_id, record_id, state, event::jsonb, false
    FROM changed ORDER BY n
)
SELECT n, pg_notify('"""
    + OUTBOX_CHANNEL
    + """', '') FROM changed
"""
)


async def store_signatures(
    conn: asyncpg.Connection, stored: Sequence[tuple[NewSignature, StatusEvent]]
) -> list[bool]:
    """Many signatures in one statement; per signature, whether it was stored.

    False for one whose record another instance created or advanced first: of it
    nothing is written, and its neighbours are stored all the same. Two signatures of
    one record must not share a call (the second would always lose).
    """
    order = sorted(range(len(stored)), key=lambda n: (stored[n][0].school_id, n))
    rows = [_signature_params(*stored[n], every=True) for n in order]
    params = {name: [row[name] for row in rows] for name in _STORE_MANY.names}
    changed = {
        order[n - 1] for n, _ in await conn.fetch(_STORE_MANY.sql, *_STORE_MANY.args(params))
    }
    return [n in changed for n in range(len(stored))]


def _signature_params(
    sig: NewSignature, event: StatusEvent, *, every: bool = False
) -> dict[str, Any]:
    """The store statement's parameters, by name; the record's details only at stage 1
    (or, with `every`, for each signature: the batch statement's columns)."""
    detail = {
        "stage": sig.stage.value,
        "signer_id": sig.signer_id,
        "cert_serial": sig.cert_serial,
        "digest_before": sig.digest_before,
        "digest_after": sig.digest_after,
    }
    params: dict[str, Any] = {
        "school_id": sig.school_id,
        "record_id": sig.info.record_id,
        "state": event.state.value,
        "signatures": sig.stage.position,
        "digest_before": sig.digest_before,
        "digest_after": sig.digest_after,
        "size_after": sig.size_after,
        "stage": sig.stage.value,
        "signer_id": sig.signer_id,
        "cert_serial": sig.cert_serial,
        "signed_at": sig.signed_at,
        "request_id": sig.request_id,
        "fingerprint": sig.fingerprint,
        "event_id": event.event_id,
        "detail": json.dumps(detail),
        "event": event.model_dump_json(),
    }
    if every or sig.stage is Stage.HOMEROOM_TEACHER:
        params |= {
            "student_id": sig.info.student_id,
            "academic_year": sig.info.academic_year,
            "grade": sig.info.grade,
            "class_name": sig.info.class_name,
            "submission_round": sig.info.submission_round,
            "size_before": sig.size_before,
            "corrects": sig.corrects,
        }
    return params


async def store_rejection(
    conn: asyncpg.Connection,
    event: StatusEvent,
    fingerprint: str,
    stage: str | None,
    remember: bool,
    *,
    once: bool = False,
) -> None:
    """A refusal: audit and outbox, and the request row when the request_id is trusted.

    With `once`, an event already stored under the same event_id (a redelivery of the
    same unreadable bytes after a crash) is not stored again.
    """
    assert event.reason is not None
    if once:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", str(event.event_id))
        if await conn.fetchval("SELECT 1 FROM outbox WHERE event_id = $1", event.event_id):
            return
    if remember:
        await _request_row(conn, event, fingerprint, stage, event.reason.code)
    await audit(
        conn,
        event,
        "rejected",
        {"code": event.reason.code, "message": event.reason.message, "stage": stage},
    )
    await enqueue(conn, event)


async def audit(
    conn: asyncpg.Connection, event: StatusEvent, action: str, detail: dict[str, Any]
) -> None:
    await chain.append(
        conn,
        event.school_id,
        action,
        detail,
        record_id=event.record_id,
        request_id=event.request_id,
    )


async def enqueue(conn: asyncpg.Connection, event: StatusEvent, *, repeat: bool = False) -> None:
    """Put a status event in the outbox; the relay is woken when the transaction commits.

    A `repeat` (the answer to a request seen before) is published again but never
    retained on MQTT, where it would hide the record's newer state.
    """
    await conn.execute(
        """INSERT INTO outbox (event_id, school_id, record_id, state, payload, repeat)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        event.event_id,
        event.school_id,
        event.record_id,
        event.state.value,
        event.model_dump_json(),
        repeat,
    )
    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")


async def _request_row(
    conn: asyncpg.Connection,
    event: StatusEvent,
    fingerprint: str,
    stage: str | None,
    reason_code: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO requests (request_id, school_id, record_id, stage, fingerprint,
                                 state, reason_code, event_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        event.request_id,
        event.school_id,
        event.record_id,
        stage,
        fingerprint,
        event.state.value,
        reason_code,
        event.event_id,
    )


async def announce(
    conn: asyncpg.Connection, events: list[StatusEvent], action: str, detail: dict[str, Any]
) -> None:
    """Audit and enqueue many events at once (a package's records); one NOTIFY."""
    await chain.append_many(
        conn, ((e.school_id, e.record_id, e.request_id, action, detail) for e in events)
    )
    await conn.executemany(
        """INSERT INTO outbox (event_id, school_id, record_id, state, payload)
           VALUES ($1, $2, $3, $4, $5)""",
        [
            (e.event_id, e.school_id, e.record_id, e.state.value, e.model_dump_json())
            for e in events
        ],
    )
    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
