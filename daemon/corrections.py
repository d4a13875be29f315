"""Corrections (sign request v2 `corrects`): the seal of a correction supersedes the record.

A correction is a record of its own, through all three stages; it coexists with the
record it corrects (records.corrects, which the live-record trigger of migration 0008
lets through) until its seal. In the seal's transaction the corrected record becomes
`superseded` (stored and verifiable as ever), the student's live record becomes the
correction, and a `hocba.record_status.v2` event tells the school system; v1 consumers
never see it (producers/transports.py routes v2 apart).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import asyncpg

from daemon.audit import chain
from daemon.messages import StatusEventV2
from daemon.record_store import OUTBOX_CHANNEL

SUPERSEDED: Final[Literal["superseded"]] = "superseded"

# Only an issued record is superseded, once: a second correction sealed later finds it
# superseded already and changes nothing.
_SUPERSEDE = """
WITH old AS (
    UPDATE records r SET state = 'superseded', updated_at = now()
    FROM records c
    WHERE c.school_id = $1 AND c.record_id = $2 AND c.signatures = 3
      AND r.school_id = c.school_id AND r.record_id = c.corrects
      AND r.signatures = 3 AND r.state <> 'superseded'
    RETURNING r.record_id, r.current_sha256
),
live AS (
    UPDATE live_records l SET record_id = $2
    FROM old WHERE l.school_id = $1 AND l.record_id = old.record_id
)
SELECT record_id, current_sha256 FROM old
"""


async def supersede(
    conn: asyncpg.Connection,
    school_id: str,
    record_id: str,
    sha256: str,
    request_id: UUID,
    at: datetime,
) -> StatusEventV2 | None:
    """If the record just sealed corrects another, supersede that one; in `conn`'s transaction.

    Returns the v2 event put in the outbox for the superseded record, None when the
    sealed record corrects nothing.
    """
    row = await conn.fetchrow(_SUPERSEDE, school_id, record_id)
    if row is None:
        return None
    event = StatusEventV2(
        event_id=uuid.uuid4(),
        request_id=request_id,
        school_id=school_id,
        record_id=row["record_id"],
        state=SUPERSEDED,
        stage=None,
        document_sha256=row["current_sha256"],
        signatures=3,
        reason=None,
        at=at,
        superseded_by=record_id,
        superseded_by_sha256=sha256,
    )
    detail = {"superseded_by": record_id, "superseded_by_sha256": sha256}
    await chain.append(
        conn, school_id, "superseded", detail, record_id=event.record_id, request_id=request_id
    )
    await conn.execute(
        """INSERT INTO outbox (event_id, school_id, record_id, state, payload, repeat)
           VALUES ($1, $2, $3, $4, $5, false)""",
        event.event_id,
        school_id,
        event.record_id,
        SUPERSEDED,
        event.model_dump_json(),
    )
    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return event
