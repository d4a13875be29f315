"""Anchors: the chains' heads timestamped by the TSA, daily and after each deadline.

An anchor proves that at its token's time every chain ended in the hash it names; a
chain rewritten later (even wholesale, every hash recomputed) no longer has that hash
at that place. One instance anchors at a time (an advisory lock), and the same task
verifies the trail on a schedule, so `hocba_audit_last_verification_ok` says whether
the last walk found it whole.

The schedule is the cluster's: each walk is a row of `audit_verifications`, the next
is due `audit.verify_every_s` after the last one, whichever instance made it, and it
reads the documents of versions stored since the last walk that found the trail whole
by the database's clock (less a margin for transactions that began before it and
committed during it). An instance that starts does not walk the trail again, nor
re-read the store; every instance reports the newest walk in its gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

import asyncpg
from asn1crypto import cms, x509

from daemon.audit import chain, verify
from daemon.blobs.base import BlobReader
from daemon.clock import VIETNAM, Clock
from daemon.database import Database
from daemon.errors import DatabaseUnavailable, TsaUnavailable
from daemon.metrics import AUDIT_VERIFICATION_OK, AUDIT_VERIFICATION_TIME
from daemon.settings import AuditSettings

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "hocba-audit-anchor"; any constant shared by instances.
_LOCK_KEY = 0x68_6F_63_62_61_41
_RETRY_S = 300.0
# Documents of versions stored this long before the last whole walk began are read
# again: a version's created_at is its transaction's start, which may precede the walk
# while its commit came after the walk's read of the documents.
DOCUMENTS_MARGIN = timedelta(minutes=10)


class Stamper(Protocol):
    """What anchors need of daemon/ltv/timestamps.py's TsaClient."""

    async def stamp(self, digest: bytes, kind: str = "signature") -> cms.ContentInfo: ...


@dataclass(frozen=True)
class Anchor:
    anchor_id: int
    heads: int


def deadline_ends(deadlines: Mapping[int, str], around: date) -> list[datetime]:
    """The end (midnight after, Vietnam time) of every round's deadline near `around`."""
    ends = []
    for month_day in deadlines.values():
        month, day = (int(part) for part in month_day.split("-"))
        for year in (around.year - 1, around.year, around.year + 1):
            ends.append(datetime(year, month, day, tzinfo=VIETNAM) + timedelta(days=1))
    return sorted(ends)


def next_anchor(
    last: datetime | None, now: datetime, every_s: float, deadlines: Mapping[int, str]
) -> tuple[datetime, str]:
    """When the next anchor is due, and why: `every_s` after the last, or a deadline's end."""
    if last is None:
        return now, "scheduled"
    due, reason = last + timedelta(seconds=every_s), "scheduled"
    for end in deadline_ends(deadlines, last.date()):
        if last < end < due:
            due, reason = end, "deadline"
    return due, reason


async def anchor(conn: asyncpg.Connection, tsa: Stamper, reason: str) -> Anchor | None:
    """Timestamp the heads of every chain and store them with the token; None: no chains."""
    rows = await conn.fetch("SELECT chain, seq, hash FROM audit_heads ORDER BY chain")
    heads = [chain.Head(r["chain"], r["seq"], r["hash"]) for r in rows]
    if not heads:
        return None
    digest = chain.heads_digest(heads)
    token = await tsa.stamp(digest, "anchor")
    anchor_id = await conn.fetchval(
        """INSERT INTO audit_anchors (reason, heads, heads_sha256, token)
           VALUES ($1, $2::jsonb, $3, $4) RETURNING id""",
        reason,
        chain.heads_json(heads),
        digest.hex(),
        token.dump(),
    )
    log.info("Anchored %d audit chains (anchor %s, %s).", len(heads), anchor_id, reason)
    return Anchor(int(anchor_id), len(heads))


class AuditKeeper:
    """The daemon's task: anchor when due, verify when due; one instance at a time."""

    def __init__(
        self,
        db: Database,
        tsa: Stamper | None,
        store: BlobReader,
        trust_roots: list[x509.Certificate],
        settings: AuditSettings,
        deadlines: Mapping[int, str],
        clock: Clock,
        instance: str = "hocba-signer",
    ) -> None:
        self._db = db
        self._tsa = tsa
        self._store = store
        self._roots = trust_roots
        self._settings = settings
        self._deadlines = deadlines
        self._clock = clock
        self._instance = instance

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                wake_s = await self.tick()
            except (DatabaseUnavailable, TsaUnavailable) as exc:
                log.warning("Audit anchoring or verification deferred: %s", exc.message)
                wake_s = _RETRY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(1.0, wake_s))

    async def tick(self) -> float:
        """Do what is due now; the seconds until something is due again."""
        waits = [_RETRY_S * 12]
        async with self._db.transaction() as conn:
            await _report_last_walk(conn)
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
                return _RETRY_S
            now = self._clock()
            every_s = self._settings.anchor_every_s
            if self._tsa is not None and every_s is not None:
                last = await conn.fetchval("SELECT max(anchored_at) FROM audit_anchors")
                due, reason = next_anchor(last, now, every_s, self._deadlines)
                if due <= now:
                    await anchor(conn, self._tsa, reason)
                    due, _ = next_anchor(now, now, every_s, self._deadlines)
                waits.append((due - now).total_seconds())
            verify_every_s = self._settings.verify_every_s
            if verify_every_s is not None:
                last = await conn.fetchval("SELECT max(started_at) FROM audit_verifications")
                due_at = now if last is None else last + timedelta(seconds=verify_every_s)
                if due_at <= now:
                    await self.verify(conn, now)
                    due_at = now + timedelta(seconds=verify_every_s)
                waits.append((due_at - now).total_seconds())
        return min(waits)

    async def verify(self, conn: asyncpg.Connection, now: datetime) -> verify.Report:
        """The whole trail; the documents stored since the last whole walk (all, the first)."""
        started = time.perf_counter()
        begun, whole = await conn.fetchrow(
            """SELECT clock_timestamp(),
                      (SELECT max(database_started_at) FROM audit_verifications WHERE ok)"""
        )
        documents_since = None if whole is None else whole - DOCUMENTS_MARGIN
        report = await verify.verify(
            conn, self._store, self._roots, documents_since=documents_since
        )
        await conn.execute(
            """INSERT INTO audit_verifications
                   (started_at, database_started_at, ok, chains, entries, breaks, documents,
                    documents_since, instance)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            now,
            begun,
            report.ok,
            report.chains,
            report.entries,
            len(report.breaks),
            report.documents,
            documents_since,
            self._instance,
        )
        await _report_last_walk(conn)
        if report.ok:
            log.info(
                "Audit trail verified: %d chains, %d entries, %d anchors in %.1fs.",
                report.chains,
                report.entries,
                report.anchors,
                time.perf_counter() - started,
            )
        else:
            first = report.breaks[0]
            log.error(
                "Audit trail broken in %d places; first: %s in chain %s at entry %s.",
                len(report.breaks),
                first.code,
                first.chain,
                first.seq,
            )
        return report


async def _report_last_walk(conn: asyncpg.Connection) -> None:
    """The newest walk, whichever instance made it, in this instance's gauges."""
    last = await conn.fetchrow(
        "SELECT ok, finished_at FROM audit_verifications ORDER BY id DESC LIMIT 1"
    )
    if last is not None:
        AUDIT_VERIFICATION_OK.set(1 if last["ok"] else 0)
        AUDIT_VERIFICATION_TIME.set(last["finished_at"].timestamp())
