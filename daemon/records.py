"""The SQL of records: registry look-ups, and the one transaction that stores an outcome.

An outcome (a signature or a refusal) is stored with its request row (idempotency),
its audit entries and its status event (outbox) in one transaction, so that nothing
is acknowledged, and nothing is announced, that is not durable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from daemon.consent import ConsentKey
from daemon.errors import ConcurrentUpdate
from daemon.messages import RecordInfo, StatusEvent
from daemon.registry.keyring import RetiredKey
from daemon.registry.rosters import ClassBinding
from daemon.stages import Stage
from daemon.statements import Statement

OUTBOX_CHANNEL = "hocba_outbox"


@dataclass(frozen=True)
class School:
    school_id: str
    consent_key: ConsentKey
    # Rotated-out keys, newest first; daemon/registry/keyring.py decides which still count.
    retired_keys: tuple[RetiredKey, ...] = ()


@dataclass(frozen=True)
class Signer:
    school_id: str
    signer_id: str
    stage: Stage
    token_label: str
    key_label: str
    active: bool


@dataclass(frozen=True)
class Record:
    info: RecordInfo
    state: str
    signatures: int
    current_sha256: str


@dataclass(frozen=True)
class PriorRequest:
    fingerprint: str
    event: StatusEvent


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


@dataclass(frozen=True)
class Lookup:
    """Everything a sign request is decided on, read in one round trip."""

    prior: PriorRequest | None
    school: School | None
    signer: Signer | None
    record: Record | None
    # With `info`: the roster's word on the record's class (None: no roster that round),
    # and the live record of the same student that round, if there is one.
    roster: ClassBinding | None = None
    live_record_id: str | None = None


_LOOKUP = """
SELECT p.fingerprint, p.payload,
       s.consent_alg, s.consent_key,
       g.stage AS signer_stage, g.token_label, g.key_label, g.active,
       r.record_id, r.student_id, r.academic_year, r.grade, r.class_name,
       r.submission_round, r.state, r.signatures, r.current_sha256,
       ck.retired_algs, ck.retired_keys, ck.retired_until,
       ro.principals AS roster_principals, rc.homeroom_teacher AS roster_teacher,
       lr.record_id AS live_record_id
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT q.fingerprint,
           (SELECT payload FROM outbox WHERE event_id = q.event_id ORDER BY id LIMIT 1)
    FROM requests q WHERE q.request_id = $1
) AS p ON true
LEFT JOIN schools s ON s.school_id = $2
LEFT JOIN signers g ON g.school_id = $2 AND g.signer_id = $3
LEFT JOIN records r ON r.school_id = $2 AND r.record_id = $4
LEFT JOIN LATERAL (
    SELECT array_agg(k.alg) AS retired_algs, array_agg(k.key) AS retired_keys,
           array_agg(k.valid_until) AS retired_until
    FROM (SELECT alg, key, valid_until FROM consent_keys
          WHERE school_id = $2 AND retired_at IS NOT NULL
          ORDER BY key_id DESC LIMIT 3) AS k
) AS ck ON true
LEFT JOIN rosters ro
       ON ro.school_id = $2 AND ro.academic_year = $6 AND ro.submission_round = $7
LEFT JOIN roster_classes rc
       ON rc.school_id = $2 AND rc.academic_year = $6 AND rc.submission_round = $7
      AND rc.class_name = $8
LEFT JOIN live_records lr
       ON lr.school_id = $2 AND lr.academic_year = $6 AND lr.submission_round = $7
      AND lr.student_id = $5
"""


async def lookup(
    conn: asyncpg.Connection,
    request_id: UUID,
    school_id: str,
    signer_id: str,
    record_id: str,
    *,
    info: RecordInfo | None = None,
) -> Lookup:
    """The prior request with this id, the school, the signer and the record, at once.

    One query instead of four: on a loaded instance each round trip costs more CPU
    (a socket write, a pool check-out) than the work the database does for it. With
    the request's record details (`info`), also its roster entry and live record.
    """
    round_args = (
        (info.student_id, info.academic_year, info.submission_round, info.class_name)
        if info is not None
        else (None, None, None, None)
    )
    row = await conn.fetchrow(_LOOKUP, request_id, school_id, signer_id, record_id, *round_args)
    assert row is not None  # one row always: the joins are outer
    prior = None
    if row["fingerprint"] is not None:
        event = StatusEvent.model_validate(json.loads(row["payload"]))
        prior = PriorRequest(row["fingerprint"], event)
    found_school = None
    if row["consent_alg"] is not None:
        found_school = School(
            school_id,
            ConsentKey(row["consent_alg"], bytes(row["consent_key"])),
            _retired_keys(row),
        )
    found_signer = None
    if row["signer_stage"] is not None:
        found_signer = Signer(
            school_id,
            signer_id,
            Stage(row["signer_stage"]),
            row["token_label"],
            row["key_label"],
            row["active"],
        )
    found_record = _record(row) if row["record_id"] is not None else None
    roster = None
    if row["roster_principals"] is not None:
        roster = ClassBinding(row["roster_teacher"], tuple(row["roster_principals"]))
    return Lookup(prior, found_school, found_signer, found_record, roster, row["live_record_id"])


def _retired_keys(row: asyncpg.Record) -> tuple[RetiredKey, ...]:
    if row["retired_algs"] is None:
        return ()
    return tuple(
        RetiredKey(ConsentKey(alg, bytes(key)), until)
        for alg, key, until in zip(
            row["retired_algs"], row["retired_keys"], row["retired_until"], strict=True
        )
    )


async def record(conn: asyncpg.Connection, school_id: str, record_id: str) -> Record | None:
    row = await conn.fetchrow(
        """SELECT record_id, student_id, academic_year, grade, class_name,
                  submission_round, state, signatures, current_sha256
           FROM records WHERE school_id = $1 AND record_id = $2""",
        school_id,
        record_id,
    )
    return None if row is None else _record(row)


def _record(row: asyncpg.Record) -> Record:
    info = RecordInfo(
        record_id=row["record_id"],
        student_id=row["student_id"],
        academic_year=row["academic_year"],
        grade=row["grade"],
        class_name=row["class_name"],
        submission_round=row["submission_round"],
    )
    return Record(info, row["state"], row["signatures"], row["current_sha256"])


# A signature is stored by one statement: its data-modifying CTEs all hang off the
# record's insert (stage 1) or compare-and-set update (later stages), so when another
# instance got there first nothing at all is written, and the statement is its own
# transaction. One round trip instead of ten (BEGIN, seven writes, NOTIFY, COMMIT).
# Parameters are named (daemon/statements.py): a new column is one `:name` here and
# one entry in `_signature_params`.
_CREATE_RECORD = """
changed AS (
    INSERT INTO records (school_id, record_id, student_id, academic_year, grade,
                         class_name, submission_round, state, signatures, current_sha256)
    VALUES (:school_id, :record_id, :student_id, :academic_year, :grade,
            :class_name, :submission_round, :state, 1, :digest_after)
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


def _signature_params(sig: NewSignature, event: StatusEvent) -> dict[str, Any]:
    """The store statement's parameters, by name; the record's details only at stage 1."""
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
    if sig.stage is Stage.HOMEROOM_TEACHER:
        params |= {
            "student_id": sig.info.student_id,
            "academic_year": sig.info.academic_year,
            "grade": sig.info.grade,
            "class_name": sig.info.class_name,
            "submission_round": sig.info.submission_round,
            "size_before": sig.size_before,
        }
    return params


async def store_rejection(
    conn: asyncpg.Connection,
    event: StatusEvent,
    fingerprint: str,
    stage: str | None,
    remember: bool,
) -> None:
    """A refusal: audit and outbox, and the request row when the request_id is trusted."""
    assert event.reason is not None
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
    await conn.execute(
        """INSERT INTO audit_log (school_id, record_id, request_id, action, detail)
           VALUES ($1, $2, $3, $4, $5)""",
        event.school_id,
        event.record_id,
        event.request_id,
        action,
        json.dumps(detail),
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
    await conn.executemany(
        """INSERT INTO audit_log (school_id, record_id, request_id, action, detail)
           VALUES ($1, $2, $3, $4, $5)""",
        [(e.school_id, e.record_id, e.request_id, action, json.dumps(detail)) for e in events],
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
