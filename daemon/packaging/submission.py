"""Submission: send a built package to the ministry, follow its receipt until final.

Restart-safe by construction: every step is a state of the package stored with its
records' status events (`built` → `submitting` → `submitted` + receipt → `accepted`
or `rejected`), the Idempotency-Key is the package id, and `follow` starts from
whatever state it finds. A package half-submitted before a crash is sent again with
the same key and gets the same receipt: never a second submission. A receipt the
ministry answers 404 for sends the package back to `submitting` under the same key
(same receipt if the ministry still has it, a new one if it lost it); after
`max_receipt_resends` such losses it stops in `attention`, no longer resumed until an
operator resumes it (`hocba-signer package-resume`: back to `submitting`, losses
counted from zero) or rejects it (`package-reject`). Only one instance follows a
package at a time (a session advisory lock). The package travels as a blob digest:
the ministry client streams it from the blob store, so any instance can send a
package any other built.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

from daemon import blobs
from daemon.backoff import retry_delay_ms
from daemon.clock import Clock, vietnam_now
from daemon.database import Database
from daemon.errors import MinistryRefused, MinistryUnavailable, StoreCorrupt
from daemon.messages import Reason
from daemon.metrics import MINISTRY_ATTEMPTS, MINISTRY_LATENCY, PACKAGES_FINISHED
from daemon.packaging import packages
from daemon.packaging.packages import Package, PackageState
from daemon.settings import MinistrySettings
from daemon.stages import State

log = logging.getLogger(__name__)

REASON_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class Receipt:
    """The ministry's answer about one package."""

    receipt_id: str
    status: Literal["received", "accepted", "rejected"]
    errors: list[Any] = field(default_factory=list)
    accepted_records: int = 0


class MinistryApi(Protocol):
    async def submit(self, sha256: str, package_id: UUID, size_bytes: int | None) -> Receipt:
        """POST the package blob `sha256`; raise MinistryUnavailable (retry) or
        MinistryRefused (don't), or the store's error if the blob cannot be read whole."""
        ...

    async def receipt(self, receipt_id: str) -> Receipt: ...


@dataclass(frozen=True)
class Submitter:
    db: Database
    ministry: MinistryApi
    settings: MinistrySettings
    blobs: blobs.BlobStore
    clock: Clock = vietnam_now

    async def follow(self, package: Package) -> Package:
        """Take the package as far as it goes: submitted, then accepted or rejected.

        Raises MinistryUnavailable when the ministry stayed unreachable for every
        attempt; the package keeps its state and a later `follow` resumes it.
        """
        async with self._exclusive(package.package_id) as mine:
            if not mine:
                log.info("Package %s is followed by another instance.", package.package_id)
                return package
            async with self.db.connection() as conn:
                package = await packages.get(conn, package.package_id)
            while True:
                if package.state in (PackageState.BUILT, PackageState.SUBMITTING):
                    package = await self._submit(package)
                if package.state is PackageState.SUBMITTED:
                    package = await self._poll(package)
                # Back in `submitting` when the ministry lost the receipt: resend (bounded).
                if package.state is not PackageState.SUBMITTING:
                    return package

    async def _submit(self, package: Package) -> Package:
        if package.state is PackageState.BUILT:
            async with self.db.transaction() as conn:
                package = await packages.move(
                    conn, package, PackageState.SUBMITTING, came_from=(PackageState.BUILT,)
                )
        assert package.sha256 is not None
        await self._adopt_legacy_file(package)
        for attempt in range(1, self.settings.max_attempts + 1):
            started = time.perf_counter()
            try:
                receipt = await self.ministry.submit(
                    package.sha256, package.package_id, package.size_bytes
                )
            except MinistryUnavailable as exc:
                await self._attempt(package, "submit", "retry", started, detail=exc.message)
                await asyncio.sleep(self._delay_s(attempt, exc.retry_after_s, poll=False))
                continue
            except MinistryRefused as exc:
                await self._attempt(package, "submit", "refused", started, exc.status, exc.message)
                if exc.status in (401, 403):
                    raise  # our credentials, not the package: keep it for a later run
                return await self._finish(package, PackageState.REJECTED, [exc.message], 0)
            return await self._received(package, receipt, started)
        raise MinistryUnavailable(
            f"Package {package.package_id} not received after {self.settings.max_attempts} "
            "attempts; it will be resumed."
        )

    async def _adopt_legacy_file(self, package: Package) -> None:
        """A package built before packages were blobs lies in a local file: store it once."""
        if package.path is None or package.sha256 is None:
            return
        if await self.blobs.exists(package.sha256):
            return
        stored = await self.blobs.put_stream(blobs.file_chunks(Path(package.path)))
        if stored.sha256 != package.sha256:
            raise StoreCorrupt(f"The file of package {package.package_id} has changed.")
        log.info("Package %s moved from its file into the blob store.", package.package_id)

    async def _received(self, package: Package, receipt: Receipt, started: float) -> Package:
        # A resend after a lost receipt keeps the old receipt id until answered: its
        # records were told `submitted` already (the new receipt is in the attempts).
        resent = package.receipt_id is not None
        async with self.db.transaction() as conn:
            await packages.record_attempt(
                conn,
                package.package_id,
                "submit",
                "received",
                http_status=202,
                receipt_id=receipt.receipt_id,
                latency_s=_observe("submit", "received", started),
            )
            package = await packages.move(
                conn,
                package,
                PackageState.SUBMITTED,
                {"receipt_id": receipt.receipt_id},
                came_from=(PackageState.SUBMITTING,),
            )
            if not resent:
                await packages.tell_records(conn, package, State.SUBMITTED, self.clock())
        log.info("Package %s received: receipt %s.", package.package_id, receipt.receipt_id)
        return package

    async def _poll(self, package: Package) -> Package:
        assert package.receipt_id is not None
        for poll in range(1, self.settings.max_polls + 1):
            await asyncio.sleep(self._delay_s(poll, None, poll=True))
            started = time.perf_counter()
            try:
                receipt = await self.ministry.receipt(package.receipt_id)
            except MinistryUnavailable as exc:
                await self._attempt(package, "poll", "retry", started, detail=exc.message)
                if exc.retry_after_s:
                    await asyncio.sleep(min(exc.retry_after_s, self.settings.max_retry_after_s))
                continue
            except MinistryRefused as exc:
                if exc.status != 404:
                    raise
                return await self._lost(package, started, exc.message)
            if receipt.status == "received":
                await self._attempt(package, "poll", "pending", started, 200)
                continue
            await self._attempt(package, "poll", receipt.status, started, 200)
            state = PackageState.ACCEPTED if receipt.status == "accepted" else PackageState.REJECTED
            return await self._finish(package, state, receipt.errors, receipt.accepted_records)
        raise MinistryUnavailable(
            f"Receipt {package.receipt_id} still not final after {self.settings.max_polls} polls."
        )

    async def _lost(self, package: Package, started: float, detail: str) -> Package:
        """The ministry does not know the receipt: resend under the same key, or give up.

        The same Idempotency-Key gets the same receipt if the ministry still has the
        package, a new one if it lost it; either way never a second package. After
        `max_receipt_resends` such resends (since an operator last resumed it) the
        package stops in `attention`.
        """
        latency = _observe("poll", "lost", started)
        async with self.db.transaction() as conn:
            await packages.record_attempt(
                conn,
                package.package_id,
                "poll",
                "lost",
                http_status=404,
                receipt_id=package.receipt_id,
                detail=detail,
                latency_s=latency,
            )
            lost = await packages.lost_receipts(conn, package.package_id)
            if lost > self.settings.max_receipt_resends:
                package = await packages.move(
                    conn,
                    package,
                    PackageState.ATTENTION,
                    {"errors": json.dumps([f"Receipt lost {lost} times: {detail}"])},
                    came_from=(PackageState.SUBMITTED,),
                )
            else:
                package = await packages.move(
                    conn, package, PackageState.SUBMITTING, came_from=(PackageState.SUBMITTED,)
                )
        if package.state is PackageState.ATTENTION:
            PACKAGES_FINISHED.labels(package.school_id, package.state.value).inc()
            log.error(
                "Package %s: the ministry lost receipt %s again (%d times); given up, "
                "the package needs attention.",
                package.package_id,
                package.receipt_id,
                lost,
            )
        else:
            log.warning(
                "Package %s: the ministry does not know receipt %s; resending under the "
                "same key (%d of %d).",
                package.package_id,
                package.receipt_id,
                lost,
                self.settings.max_receipt_resends,
            )
        return package

    async def _finish(
        self, package: Package, state: PackageState, errors: list[Any], accepted: int
    ) -> Package:
        rejected = state is PackageState.REJECTED
        reason = Reason(code="ministry_rejected", message=_summary(errors)) if rejected else None
        async with self.db.transaction() as conn:
            package = await packages.finish(
                conn,
                package,
                state,
                errors,
                accepted,
                self.clock(),
                reason=reason,
                came_from=(PackageState.SUBMITTING, PackageState.SUBMITTED),
            )
        PACKAGES_FINISHED.labels(package.school_id, state.value).inc()
        log.info("Package %s %s by the ministry.", package.package_id, state.value)
        return package

    async def _attempt(
        self,
        package: Package,
        kind: str,
        outcome: str,
        started: float,
        http_status: int | None = None,
        detail: str | None = None,
    ) -> None:
        latency = _observe(kind, outcome, started)
        async with self.db.transaction() as conn:
            await packages.record_attempt(
                conn,
                package.package_id,
                kind,
                outcome,
                http_status=http_status,
                receipt_id=package.receipt_id,
                detail=detail,
                latency_s=latency,
            )

    def _delay_s(self, attempt: int, retry_after_s: float | None, *, poll: bool) -> float:
        """Capped exponential backoff; a Retry-After (capped too) wins when longer."""
        s = self.settings
        base, cap = (s.poll_base_ms, s.poll_cap_ms) if poll else (s.retry_base_ms, s.retry_cap_ms)
        backoff_s = retry_delay_ms(attempt, base, cap) / 1000
        if retry_after_s is None:
            return backoff_s
        return max(backoff_s, min(retry_after_s, s.max_retry_after_s))

    @contextlib.asynccontextmanager
    async def _exclusive(self, package_id: UUID) -> AsyncIterator[bool]:
        async with self.db.session() as conn:
            key = f"submit:{package_id}"
            mine = await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key)
            try:
                yield bool(mine)
            finally:
                if mine:
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)


def _observe(kind: str, outcome: str, started: float) -> float:
    latency = time.perf_counter() - started
    MINISTRY_ATTEMPTS.labels(kind, outcome).inc()
    MINISTRY_LATENCY.labels(kind).observe(latency)
    return latency


def _summary(errors: list[Any]) -> str:
    parts = [e.get("message", str(e)) if isinstance(e, dict) else str(e) for e in errors]
    text = "; ".join(parts) or "The ministry rejected the package."
    return text[:REASON_MESSAGE_CHARS]
