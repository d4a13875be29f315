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
from daemon.stages import Stage

OUTBOX_CHANNEL = "hocba_outbox"


@dataclass(frozen=True)
class School:
    school_id: str
    consent_key: ConsentKey


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
    reason_code: str | None


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


async def school(conn: asyncpg.Connection, school_id: str) -> School | None:
    row = await conn.fetchrow(
        "SELECT consent_alg, consent_key FROM schools WHERE school_id = $1", school_id
    )
    if row is None:
        return None
    return School(school_id, ConsentKey(row["consent_alg"], bytes(row["consent_key"])))


async def signer(conn: asyncpg.Connection, school_id: str, signer_id: str) -> Signer | None:
    row = await conn.fetchrow(
        """SELECT stage, token_label, key_label, active FROM signers
           WHERE school_id = $1 AND signer_id = $2""",
        school_id,
        signer_id,
    )
    if row is None:
        return None
    return Signer(
        school_id,
        signer_id,
        Stage(row["stage"]),
        row["token_label"],
        row["key_label"],
        row["active"],
    )


async def record(conn: asyncpg.Connection, school_id: str, record_id: str) -> Record | None:
    row = await conn.fetchrow(
        """SELECT record_id, student_id, academic_year, grade, class_name,
                  submission_round, state, signatures, current_sha256
           FROM records WHERE school_id = $1 AND record_id = $2""",
        school_id,
        record_id,
    )
    if row is None:
        return None
    info = RecordInfo(
        record_id=row["record_id"],
        student_id=row["student_id"],
        academic_year=row["academic_year"],
        grade=row["grade"],
        class_name=row["class_name"],
        submission_round=row["submission_round"],
    )
    return Record(info, row["state"], row["signatures"], row["current_sha256"])


async def prior_request(conn: asyncpg.Connection, request_id: UUID) -> PriorRequest | None:
    row = await conn.fetchrow(
        """SELECT r.fingerprint, r.reason_code, o.payload FROM requests r
           JOIN LATERAL (SELECT payload FROM outbox WHERE event_id = r.event_id
                         ORDER BY id LIMIT 1) o ON true
           WHERE r.request_id = $1""",
        request_id,
    )
    if row is None:
        return None
    event = StatusEvent.model_validate(json.loads(row["payload"]))
    return PriorRequest(row["fingerprint"], event, row["reason_code"])


async def store_signature(conn: asyncpg.Connection, sig: NewSignature, event: StatusEvent) -> None:
    """Record, version, signature, request, audit and outbox; in the caller's transaction."""
    if sig.stage is Stage.HOMEROOM_TEACHER:
        await _insert_record(conn, sig, event)
    else:
        await _advance_record(conn, sig, event)
    await conn.execute(
        """INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes)
           VALUES ($1, $2, $3, $4, $5)""",
        sig.school_id,
        sig.info.record_id,
        sig.stage.position,
        sig.digest_after,
        sig.size_after,
    )
    await conn.execute(
        """INSERT INTO signatures (school_id, record_id, stage, signer_id, cert_serial,
                                   signed_at, digest_before, digest_after, request_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        sig.school_id,
        sig.info.record_id,
        sig.stage.value,
        sig.signer_id,
        sig.cert_serial,
        sig.signed_at,
        sig.digest_before,
        sig.digest_after,
        sig.request_id,
    )
    await _request_row(conn, event, sig.fingerprint, sig.stage.value, None)
    await audit(
        conn,
        event,
        "signed",
        {
            "stage": sig.stage.value,
            "signer_id": sig.signer_id,
            "cert_serial": sig.cert_serial,
            "digest_before": sig.digest_before,
            "digest_after": sig.digest_after,
        },
    )
    await enqueue(conn, event)


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


async def _insert_record(conn: asyncpg.Connection, sig: NewSignature, event: StatusEvent) -> None:
    info = sig.info
    inserted = await conn.fetchval(
        """INSERT INTO records (school_id, record_id, student_id, academic_year, grade,
                                class_name, submission_round, state, signatures,
                                current_sha256)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9)
           ON CONFLICT DO NOTHING RETURNING 1""",
        sig.school_id,
        info.record_id,
        info.student_id,
        info.academic_year,
        info.grade,
        info.class_name,
        info.submission_round,
        event.state.value,
        sig.digest_after,
    )
    if inserted is None:
        raise ConcurrentUpdate("Another instance created this record first.")
    await conn.execute(
        """INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes)
           VALUES ($1, $2, 0, $3, $4)""",
        sig.school_id,
        info.record_id,
        sig.digest_before,
        sig.size_before,
    )


async def _advance_record(conn: asyncpg.Connection, sig: NewSignature, event: StatusEvent) -> None:
    updated = await conn.fetchval(
        """UPDATE records SET state = $3, signatures = $4, current_sha256 = $5,
                              updated_at = now()
           WHERE school_id = $1 AND record_id = $2 AND signatures = $4 - 1
                 AND current_sha256 = $6
           RETURNING 1""",
        sig.school_id,
        sig.info.record_id,
        event.state.value,
        sig.stage.position,
        sig.digest_after,
        sig.digest_before,
    )
    if updated is None:
        raise ConcurrentUpdate("The record changed while it was being signed.")


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
