"""Storing what a batch signed: together in one statement where it can, alone where not.

The PDFs are in the blob store before (daemon/versions.py).

The batch statement (daemon/record_store.py) sets each record on its own: a record
another instance got to first reports a lost race, its neighbours are stored. A
correction's seal is stored alone, in one transaction with the supersession of the
record it corrects. If the batch statement itself fails, nothing of it was written,
and each signature is stored alone, so that what failed fails only its own request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from daemon import corrections, records
from daemon.database import Database
from daemon.errors import ConcurrentUpdate
from daemon.messages import SignRequest, StatusEvent
from daemon.metrics import REQUESTS
from daemon.stages import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signed:
    """A request signed, its new version in the blob store, its outcome not yet stored."""

    request: SignRequest
    signature: records.NewSignature
    event: StatusEvent
    supersedes: bool  # a correction's seal: stored alone, with the supersession


async def store_all(db: Database, signed: list[Signed]) -> list[StatusEvent | Exception]:
    """Each signature's stored event, or the error that kept it from being stored."""
    together = [s for s in signed if not s.supersedes]
    flags: list[bool] | None = None
    if len(together) > 1:
        try:
            async with db.connection() as conn:
                flags = await records.store_signatures(
                    conn, [(s.signature, s.event) for s in together]
                )
        except Exception as exc:
            log.warning("A batch of %d signatures is stored one by one: %s", len(together), exc)
    results: dict[int, StatusEvent | Exception] = {}
    if flags is not None:
        for s, stored in zip(together, flags, strict=True):
            results[id(s)] = _stored(s) if stored else _lost_race(s)
    for s in signed:
        if id(s) not in results:
            results[id(s)] = await _store_one(db, s)
    return [results[id(s)] for s in signed]


async def _store_one(db: Database, signed: Signed) -> StatusEvent | Exception:
    request, signature, event = signed.request, signed.signature, signed.event
    try:
        if signed.supersedes:
            async with db.transaction() as conn:
                await records.store_signature(conn, signature, event)
                await corrections.supersede(
                    conn,
                    request.school_id,
                    request.record.record_id,
                    signature.digest_after,
                    request.request_id,
                    event.at,
                )
        else:
            async with db.connection() as conn:
                await records.store_signature(conn, signature, event)
    except Exception as exc:
        return exc
    return _stored(signed)


def _stored(signed: Signed) -> StatusEvent:
    request = signed.request
    REQUESTS.labels(request.stage.value, "signed", "").inc()
    log.info(
        "Signed stage %s of record %s for school %s.",
        request.stage,
        request.record.record_id,
        request.school_id,
    )
    return signed.event


def _lost_race(signed: Signed) -> ConcurrentUpdate:
    first = signed.request.stage is Stage.HOMEROOM_TEACHER
    what = "created this record" if first else "changed the record while it was signed"
    return ConcurrentUpdate(f"Another instance {what} first.")
