"""Renewal of issued records' long-term validation: `hocba-signer ltv renew` and the daily run.

A B-LTA record proves itself for as long as its newest timestamp does: until the TSA
certificate that signed it expires (or its algorithm is retired). Before then, a
renewal appends fresh validation data (the status of every certificate the file holds,
the last TSA's included) and a new document timestamp (daemon/ltv/dss.py): the content
and every signature stay as they are, byte for byte.

    read horizons  ->  due records, soonest first  ->  per record, paced:
    (ltv_horizons,      (horizon within N days)          new version in the store,
     once per file)                                      then one transaction: records,
                                                         record_versions, audit_log

Each record is renewed in one transaction after its new version is stored, so a crash
leaves every record renewed or not (at worst an unreferenced blob), and a rerun picks
up what is still due: a renewed record's new version has a later horizon. One run at a
time in the district (a session advisory lock); the others skip. No status event: the
record stays issued, and every earlier version stays a valid copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TextIO

import aiohttp
from asn1crypto import x509 as asn1_x509

from daemon.blobs import BlobStore
from daemon.clock import VIETNAM, Clock, vietnam_now
from daemon.database import Database
from daemon.errors import ConfigError, HocbaError
from daemon.ltv import dss
from daemon.ltv.status import CertificateStatus, DatabaseStatusCache
from daemon.ltv.timestamps import TsaClient
from daemon.pdf.validation import load_certificates
from daemon.settings import LtvSettings, Settings, SigningSettings

log = logging.getLogger(__name__)

_LOCK = "ltv-renewal"
# Issued files whose horizon is not known yet are read this many at a time.
_READ_BATCH = 100

_UNREAD = """
SELECT r.current_sha256 FROM records r
LEFT JOIN ltv_horizons h ON h.sha256 = r.current_sha256
WHERE r.signatures = 3 AND h.sha256 IS NULL AND ($1::text IS NULL OR r.school_id = $1)
LIMIT $2
"""
_DUE = """
SELECT r.school_id, r.record_id, r.current_sha256 AS sha256, h.expires_at, h.reason
FROM records r JOIN ltv_horizons h ON h.sha256 = r.current_sha256
WHERE r.signatures = 3 AND h.expires_at < $1 AND ($2::text IS NULL OR r.school_id = $2)
ORDER BY h.expires_at, r.school_id, r.record_id
"""
_HORIZON = """
INSERT INTO ltv_horizons (sha256, expires_at, reason) VALUES ($1, $2, $3)
ON CONFLICT (sha256) DO NOTHING
"""
_ADVANCE = """
UPDATE records SET current_sha256 = $3, updated_at = now()
WHERE school_id = $1 AND record_id = $2 AND current_sha256 = $4 AND signatures = 3
"""
_VERSION = """
INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes)
SELECT $1, $2, max(version) + 1, $3, $4 FROM record_versions
WHERE school_id = $1 AND record_id = $2
RETURNING version
"""
_AUDIT = """
INSERT INTO audit_log (school_id, record_id, action, detail) VALUES ($1, $2, 'ltv_renewed', $3)
"""


@dataclass(frozen=True)
class Due:
    """An issued record whose current version's newest timestamp expires too soon."""

    school_id: str
    record_id: str
    sha256: str
    expires_at: datetime
    reason: str


@dataclass
class Summary:
    due: int = 0
    renewed: int = 0
    failed: int = 0
    # Renewed elsewhere meanwhile (another run, a correction): nothing written here.
    skipped: int = 0
    ran: bool = True

    def as_json(self) -> dict[str, int | bool]:
        return {
            "due": self.due,
            "renewed": self.renewed,
            "failed": self.failed,
            "skipped": self.skipped,
            "ran": self.ran,
        }


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, due: Due, outcome: str) -> None: ...
    def finish(self) -> None: ...


class Quiet:
    """No progress shown (the daemon's schedule: its log lines say enough)."""

    def start(self, total: int) -> None:
        pass

    def advance(self, due: Due, outcome: str) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Shown:
    """A progress bar on a terminal; one plain line per record otherwise."""

    out: TextIO = field(default_factory=lambda: sys.stderr)
    width: int = 30
    _total: int = 0
    _done: int = 0
    _renewed: int = 0

    def start(self, total: int) -> None:
        self._total = total
        if not self.out.isatty():
            print(f"ltv renew: {total} records due", file=self.out, flush=True)
        else:
            self._draw()

    def advance(self, due: Due, outcome: str) -> None:
        self._done += 1
        self._renewed += outcome == "renewed"
        if self.out.isatty():
            self._draw()
        else:
            print(
                f"ltv renew: {self._done}/{self._total} {due.school_id}/{due.record_id} {outcome}",
                file=self.out,
                flush=True,
            )

    def finish(self) -> None:
        if self.out.isatty() and self._total:
            print(file=self.out, flush=True)

    def _draw(self) -> None:
        filled = self.width * self._done // max(self._total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"\rltv renew [{bar}] {self._done}/{self._total}, {self._renewed} renewed"
        print(line, end="", file=self.out, flush=True)


def next_run(now: datetime, renew_at: str) -> datetime:
    """The next time of day `renew_at` (HH:MM, Vietnam) strictly after `now`."""
    hours, minutes = (int(part) for part in renew_at.split(":"))
    local = now.astimezone(VIETNAM)
    at = local.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    return at if at > local else at + timedelta(days=1)


class Renewer:
    """Finds the issued records due for renewal and renews them, paced."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        status: CertificateStatus,
        tsa: TsaClient,
        trust_roots: list[asn1_x509.Certificate],
        settings: LtvSettings,
        clock: Clock = vietnam_now,
    ) -> None:
        self._db = db
        self._store = store
        self._status = status
        self._tsa = tsa
        self._roots = trust_roots
        self._settings = settings
        self._clock = clock

    async def due(self, within_days: int, school_id: str | None = None) -> list[Due]:
        """Issued records whose newest timestamp expires within `within_days`, soonest first."""
        await self._read_horizons(school_id)
        limit = self._clock() + timedelta(days=within_days)
        async with self._db.connection() as conn:
            rows = await conn.fetch(_DUE, limit, school_id)
        return [Due(**dict(row)) for row in rows]

    async def run(
        self,
        within_days: int | None = None,
        school_id: str | None = None,
        progress: Progress | None = None,
        stop: asyncio.Event | None = None,
    ) -> Summary:
        """Renew what is due, at most `max_per_minute`; stop early when `stop` is set."""
        progress = progress or Quiet()
        stop = stop or asyncio.Event()
        days = within_days if within_days is not None else self._settings.renew_within_days
        async with self._db.session() as lock:
            if not await lock.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _LOCK):
                log.info("Another instance is renewing long-term validation data; skipped.")
                return Summary(ran=False)
            due = await self.due(days, school_id)
            summary = Summary(due=len(due))
            log.info("%d issued records are due for LTV renewal (within %d days).", len(due), days)
            progress.start(len(due))
            interval_s = 60.0 / self._settings.max_per_minute
            started = time.monotonic()
            for n, record in enumerate(due):
                if await _stopped_before(stop, started + n * interval_s):
                    break
                outcome = await self._renew_counted(record, summary)
                progress.advance(record, outcome)
            progress.finish()
        log.info(
            "LTV renewal: %d renewed, %d skipped, %d failed of %d due.",
            summary.renewed,
            summary.skipped,
            summary.failed,
            summary.due,
        )
        return summary

    async def run_schedule(self, stop: asyncio.Event) -> None:
        """Every day at `renew_at` (Vietnam), renew what is due, until `stop`."""
        renew_at = self._settings.renew_at
        if renew_at is None:
            return
        while True:
            wait_s = (next_run(self._clock(), renew_at) - self._clock()).total_seconds()
            if await _stopped_before(stop, time.monotonic() + wait_s):
                return
            try:
                await self.run(stop=stop)
            except HocbaError as exc:
                log.warning("LTV renewal failed: %s", exc.message)

    async def renew(self, record: Due) -> bool:
        """Renew one record; False if its current version changed meanwhile."""
        pdf = await self._store.get(record.sha256)
        renewed = await dss.extend(pdf, self._status, self._tsa, self._roots, archive=True)
        if not renewed.startswith(pdf):  # an incremental update, or something went wrong
            raise ValueError(f"Renewing record {record.record_id} would change its content.")
        digest = hashlib.sha256(renewed).hexdigest()
        horizon = await asyncio.to_thread(dss.horizon, renewed)
        await self._store.put(renewed)
        async with self._db.transaction() as conn:
            status = await conn.execute(
                _ADVANCE, record.school_id, record.record_id, digest, record.sha256
            )
            if status != "UPDATE 1":
                return False
            version = await conn.fetchval(
                _VERSION, record.school_id, record.record_id, digest, len(renewed)
            )
            await conn.execute(_HORIZON, digest, horizon.expires_at, horizon.reason)
            detail = {
                "version": version,
                "digest_before": record.sha256,
                "digest_after": digest,
                "horizon_before": record.expires_at.isoformat(),
                "horizon_after": horizon.expires_at.isoformat() if horizon.expires_at else None,
            }
            await conn.execute(_AUDIT, record.school_id, record.record_id, json.dumps(detail))
        log.info(
            "Renewed LTV data of record %s for school %s (version %d).",
            record.record_id,
            record.school_id,
            version,
        )
        return True

    async def _renew_counted(self, record: Due, summary: Summary) -> str:
        try:
            renewed = await self.renew(record)
        except (HocbaError, ValueError) as exc:
            summary.failed += 1
            message = exc.message if isinstance(exc, HocbaError) else str(exc)
            log.warning("Could not renew record %s: %s", record.record_id, message)
            return "failed"
        if renewed:
            summary.renewed += 1
            return "renewed"
        summary.skipped += 1
        return "skipped"

    async def _read_horizons(self, school_id: str | None) -> None:
        """Read the horizon of every issued version not read before (once per file)."""
        while True:
            async with self._db.connection() as conn:
                unread = [row[0] for row in await conn.fetch(_UNREAD, school_id, _READ_BATCH)]
            if not unread:
                return
            for digest in unread:
                pdf = await self._store.get(digest)
                horizon = await asyncio.to_thread(dss.horizon, pdf)
                async with self._db.connection() as conn:
                    await conn.execute(_HORIZON, digest, horizon.expires_at, horizon.reason)


async def _stopped_before(stop: asyncio.Event, deadline: float) -> bool:
    """Wait until the monotonic `deadline`; True if `stop` was set first."""
    delay = deadline - time.monotonic()
    if delay <= 0:
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


def renewer(
    db: Database,
    store: BlobStore,
    client: aiohttp.ClientSession,
    signing: SigningSettings,
    settings: LtvSettings,
) -> Renewer | None:
    """The renewer for this configuration; None without a TSA (nothing to renew with)."""
    if not signing.tsa_url:
        return None
    status = CertificateStatus(client, DatabaseStatusCache(db, signing.status_timeout_s), signing)
    roots = load_certificates(signing.trust_roots)
    return Renewer(db, store, status, TsaClient(client, signing), roots, settings)


async def renew_command(
    settings: Settings, within_days: int | None, school_id: str | None, progress: Progress
) -> Summary:
    """`hocba-signer ltv renew`: one run with its own connections, then closed."""
    from daemon import blobs

    async with contextlib.AsyncExitStack() as stack:
        db = Database(settings.database)
        await db.open()
        stack.push_async_callback(db.close)
        store = await blobs.open_store(settings.store, stack)
        client = await stack.enter_async_context(aiohttp.ClientSession())
        found = renewer(db, store, client, settings.signing, settings.ltv)
        if found is None:
            raise ConfigError("ltv renew needs signing.tsa_url: a TSA to timestamp with.")
        return await found.run(within_days, school_id, progress)
