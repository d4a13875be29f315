"""The SQL of records: what a sign request is decided on, read in one round trip.

Storing an outcome is daemon/record_store.py's (re-exported here, where callers have
always found it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from daemon.consent import ConsentKey
from daemon.messages import RecordInfo, StatusEvent
from daemon.record_store import (
    OUTBOX_CHANNEL,
    NewSignature,
    announce,
    audit,
    enqueue,
    store_rejection,
    store_signature,
    store_signatures,
)
from daemon.registry.keyring import RetiredKey
from daemon.registry.rosters import ClassBinding
from daemon.stages import Stage

__all__ = [
    "OUTBOX_CHANNEL",
    "Key",
    "Lookup",
    "NewSignature",
    "Record",
    "School",
    "Signer",
    "announce",
    "audit",
    "enqueue",
    "lookup",
    "lookup_many",
    "record",
    "store_rejection",
    "store_signature",
    "store_signatures",
]


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
    # The record this one corrects (a v2 correction); its seal supersedes that one.
    corrects: str | None = None


@dataclass(frozen=True)
class PriorRequest:
    fingerprint: str
    event: StatusEvent


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


@dataclass(frozen=True)
class Key:
    """What a request is looked up by; `info` adds its roster entry and live record."""

    request_id: UUID
    school_id: str
    signer_id: str
    record_id: str
    info: RecordInfo | None = None


# One row per key, in the keys' order (`n`): the same outer joins for each.
_LOOKUP = """
SELECT DISTINCT ON (k.n) k.n,
       p.fingerprint, p.payload,
       s.consent_alg, s.consent_key,
       g.stage AS signer_stage, g.token_label, g.key_label, g.active,
       r.record_id, r.student_id, r.academic_year, r.grade, r.class_name,
       r.submission_round, r.state, r.signatures, r.current_sha256, r.corrects,
       ck.retired_algs, ck.retired_keys, ck.retired_until,
       ro.principals AS roster_principals, rc.homeroom_teacher AS roster_teacher,
       lr.record_id AS live_record_id
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
            $5::text[], $6::text[], $7::smallint[], $8::text[]) WITH ORDINALITY
     AS k (request_id, school_id, signer_id, record_id,
           student_id, academic_year, submission_round, class_name, n)
LEFT JOIN LATERAL (
    SELECT q.fingerprint,
           (SELECT payload FROM outbox WHERE event_id = q.event_id ORDER BY id LIMIT 1)
    FROM requests q WHERE q.request_id = k.request_id
) AS p ON true
LEFT JOIN schools s ON s.school_id = k.school_id
LEFT JOIN signers g ON g.school_id = k.school_id AND g.signer_id = k.signer_id
LEFT JOIN records r ON r.school_id = k.school_id AND r.record_id = k.record_id
LEFT JOIN LATERAL (
    SELECT array_agg(c.alg) AS retired_algs, array_agg(c.key) AS retired_keys,
           array_agg(c.valid_until) AS retired_until
    FROM (SELECT alg, key, valid_until FROM consent_keys
          WHERE school_id = k.school_id AND retired_at IS NOT NULL
          ORDER BY key_id DESC LIMIT 3) AS c
) AS ck ON true
LEFT JOIN rosters ro
       ON ro.school_id = k.school_id AND ro.academic_year = k.academic_year
      AND ro.submission_round = k.submission_round
LEFT JOIN roster_classes rc
       ON rc.school_id = k.school_id AND rc.academic_year = k.academic_year
      AND rc.submission_round = k.submission_round AND rc.class_name = k.class_name
LEFT JOIN live_records lr
       ON lr.school_id = k.school_id AND lr.academic_year = k.academic_year
      AND lr.submission_round = k.submission_round AND lr.student_id = k.student_id
ORDER BY k.n
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
    """The prior request with this id, the school, the signer and the record, at once."""
    (found,) = await lookup_many(conn, [Key(request_id, school_id, signer_id, record_id, info)])
    return found


async def lookup_many(conn: asyncpg.Connection, keys: Sequence[Key]) -> list[Lookup]:
    """`lookup` for many requests in one query: a Lookup per key, in order.

    One query instead of four per request, and one for a whole batch: on a loaded
    instance each round trip costs more CPU (a socket write, a pool check-out) than
    the work the database does for it.
    """
    rounds = [
        (k.info.student_id, k.info.academic_year, k.info.submission_round, k.info.class_name)
        if k.info is not None
        else (None, None, None, None)
        for k in keys
    ]
    columns = [
        [k.request_id for k in keys],
        [k.school_id for k in keys],
        [k.signer_id for k in keys],
        [k.record_id for k in keys],
        *([r[i] for r in rounds] for i in range(4)),
    ]
    rows = await conn.fetch(_LOOKUP, *columns)
    assert len(rows) == len(keys)  # one row per key always: the joins are outer
    return [_lookup_of(row, key) for row, key in zip(rows, keys, strict=True)]


def _lookup_of(row: asyncpg.Record, key: Key) -> Lookup:
    prior = None
    if row["fingerprint"] is not None:
        event = StatusEvent.model_validate(json.loads(row["payload"]))
        prior = PriorRequest(row["fingerprint"], event)
    found_school = None
    if row["consent_alg"] is not None:
        found_school = School(
            key.school_id,
            ConsentKey(row["consent_alg"], bytes(row["consent_key"])),
            _retired_keys(row),
        )
    found_signer = None
    if row["signer_stage"] is not None:
        found_signer = Signer(
            key.school_id,
            key.signer_id,
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
    return Record(info, row["state"], row["signatures"], row["current_sha256"], row.get("corrects"))
