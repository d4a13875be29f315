"""The orchestrator: decide, sign, store; one way through, every outcome stored.

`handle` returns the outcome of a decoded request once it is durable (signature or
refusal, with its status event in the outbox). Transient errors propagate to the
consumer, which schedules a retry; permanent ones become a stored refusal here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar
from uuid import UUID

from daemon import consent, records, rules, storing, versions
from daemon.blobs import BlobStore, Hashed
from daemon.clock import Clock, vietnam_now
from daemon.database import Database
from daemon.errors import (
    HocbaError,
    PermanentError,
    RequestIdReused,
    UnknownSchool,
)
from daemon.hsm import Keep, KeyRef, SignJob, SignResult
from daemon.messages import Document, Reason, SignRequest, SignRequestV2, StatusEvent
from daemon.metrics import HSM_DURATION, REQUESTS, SIGN_DURATION
from daemon.outcomes import Outcome, Unreadable
from daemon.registry import keyring
from daemon.requests_identity import corrects_of, fingerprint, version_digest
from daemon.rounds import rounds
from daemon.stages import Stage, State
from daemon.storing import Signed

T = TypeVar("T")
log = logging.getLogger(__name__)


class Signing(Protocol):
    # Whether its HSM workers may find and store the PDFs themselves (`SignJob.keep`).
    @property
    def keeps(self) -> bool: ...

    async def sign_many(self, jobs: Sequence[SignJob]) -> list[SignResult | Exception]: ...


class Documents(Protocol):
    async def content(self, document: Document, request: SignRequest | None = None) -> bytes: ...

    async def rendered(self, request: SignRequestV2) -> bytes: ...


@dataclass(frozen=True)
class Pipeline:
    db: Database
    signing: Signing
    store: BlobStore
    documents: Documents
    clock: Clock = vietnam_now

    async def handle(self, request: SignRequest) -> Outcome:
        """One request's outcome; its transient error raised."""
        (result,) = await self.handle_many([request])
        if isinstance(result, Exception):
            raise result
        return result

    async def handle_many(self, requests: Sequence[SignRequest]) -> list[Outcome | Exception]:
        """Each request's outcome, or the (transient) error it failed with, in order.

        A batch is looked up in one query, signed in one call to the HSM workers and
        stored in one statement; requests that touch the same record, student or
        request_id as an earlier one go in a later round (daemon/rounds.py), so that
        each is decided on what the one before it stored, exactly as one at a time. A
        request that fails never fails its neighbours.
        """
        results: dict[int, Outcome | Exception] = {}
        for round_ in rounds(requests):
            outcomes = await self._round([requests[n] for n in round_])
            results.update(zip(round_, outcomes, strict=True))
        return [results[n] for n in range(len(requests))]

    async def _round(self, requests: list[SignRequest]) -> list[Outcome | Exception]:
        started = time.perf_counter()
        try:
            async with self.db.connection() as conn:
                found = await records.lookup_many(conn, [_key(r) for r in requests])
        except Exception as exc:
            return [exc] * len(requests)
        # Read here only if the HSM workers do not read them (`_kept_in`).
        held = {} if self._kept_in else await versions.held(self.store, requests, found)
        decided = await asyncio.gather(
            *(self._decided(r, f, held) for r, f in zip(requests, found, strict=True)),
            return_exceptions=True,
        )
        ready = [d for d in _kept(decided) if isinstance(d, _Ready)]
        signatures = await self._sign_all([r.job for r in ready])
        finished = await asyncio.gather(
            *(self._signed(r, s) for r, s in zip(ready, signatures, strict=True)),
            return_exceptions=True,
        )
        done = iter(await self._put_versions(ready, signatures, _kept(finished)))
        outcomes = [next(done) if isinstance(d, _Ready) else d for d in decided]
        signed = [d for d in outcomes if isinstance(d, Signed)]
        stored = iter(await storing.store_all(self.db, signed))
        results: list[Outcome | Exception] = []
        for item in outcomes:
            if not isinstance(item, Signed):
                assert not isinstance(item, _Ready)  # each was signed, or failed, above
                results.append(item)  # type: ignore[arg-type]  # BaseException raised
                continue
            result = next(stored)
            if isinstance(result, Exception):
                results.append(result)
                continue
            request = item.request
            SIGN_DURATION.labels(request.stage.value).observe(time.perf_counter() - started)
            results.append(Outcome(result))
        return results

    async def _decided(
        self, request: SignRequest, found: records.Lookup, held: dict[str, bytes | Exception]
    ) -> Outcome | _Ready:
        """The request ready to sign, or its outcome if it ends here."""
        if found.prior is not None:
            if found.prior.fingerprint != fingerprint(request):
                error = RequestIdReused("request_id was used before for another request.")
                return await self._refuse(error, request.school_id, request, remember=False)
            return await self._repeat(found.prior.event)
        try:
            return await self._ready(request, found, held)
        except PermanentError as exc:
            return await self._refuse(exc, request.school_id, request)

    async def _sign_all(self, jobs: list[SignJob]) -> list[SignResult | Exception]:
        """The round's signatures, in one call: the HSM workers get the batch at once."""
        if not jobs:
            return []
        try:
            return await self.signing.sign_many(jobs)
        except Exception as exc:
            return [exc] * len(jobs)

    async def _signed(self, ready: _Ready, result: SignResult | Exception) -> Outcome | Signed:
        """The request signed and ready to store, or its refusal if signing refused it."""
        try:
            if isinstance(result, Exception):
                raise result
            return await self._signed_version(ready, result)
        except PermanentError as exc:
            return await self._refuse(exc, ready.request.school_id, ready.request)

    async def _put_versions(
        self,
        ready: list[_Ready],
        signatures: list[SignResult | Exception],
        finished: list[Outcome | Signed | BaseException],
    ) -> list[Outcome | Signed | BaseException]:
        """`finished`, each signed request's versions durable before any row names them.

        A version its HSM worker stored itself (`SignJob.keep`) is durable already.
        """
        # Each hashed already (the teacher's at intake, the signed one by its worker).
        made = {
            n: [Hashed(r.job.pdf, r.digest_before)] * r.new_version + [Hashed(s.pdf, s.sha256)]
            for n, (r, s, f) in enumerate(zip(ready, signatures, finished, strict=True))
            if isinstance(f, Signed) and isinstance(s, SignResult) and s.pdf is not None
        }
        failed = await versions.put(self.store, list(made.values()))
        errors = {n: e for n, e in zip(made, failed, strict=True) if e is not None}
        return [errors.get(n, f) for n, f in enumerate(finished)]

    async def give_up(self, error: HocbaError, request: SignRequest | Unreadable) -> Outcome:
        """Refuse for good a request that cannot be read, or kept failing with `error`.

        The refusal and its `rejected` event are stored, but not under the request_id:
        the school system may send the request again, and it is then tried again.
        """
        if isinstance(request, Unreadable):
            return await self._refuse(
                error,
                request.school_id,
                request_id=request.request_id,
                record_id=request.record_id,
                remember=False,
                event_id=request.event_id,
            )
        return await self._refuse(error, request.school_id, request, remember=False)

    async def _refuse(
        self,
        error: HocbaError,
        school_id: str,
        request: SignRequest | None = None,
        *,
        request_id: UUID | None = None,
        record_id: str | None = None,
        remember: bool = True,
        event_id: UUID | None = None,
    ) -> Outcome:
        """Store a refusal and its `rejected` event; remember it if told to.

        The event tells the record's current signatures and version, when it exists.
        """
        stage = request.stage if request else None
        event = StatusEvent(
            event_id=event_id or uuid.uuid4(),
            request_id=request.request_id if request else request_id,
            school_id=school_id,
            record_id=request.record.record_id if request else record_id,
            state=State.REJECTED,
            stage=stage,
            document_sha256=None,
            signatures=0,
            reason=Reason(code=error.code, message=error.message),
            at=self.clock(),
        )
        async with self.db.transaction() as conn:
            if event.record_id is not None:
                current = await records.record(conn, school_id, event.record_id)
                event = event.model_copy(
                    update={
                        "signatures": current.signatures if current else 0,
                        "document_sha256": current.current_sha256 if current else None,
                    }
                )
            await records.store_rejection(
                conn,
                event,
                fingerprint(request) if request else "",
                stage.value if stage else None,
                remember=request is not None and remember,
                once=event_id is not None,
            )
        REQUESTS.labels(stage.value if stage else "unknown", "rejected", error.code).inc()
        log.info("Refused request %s for school %s: %s.", event.request_id, school_id, error.code)
        return Outcome(event)

    async def _repeat(self, event: StatusEvent) -> Outcome:
        """Answer a request seen before with the status it already produced."""
        async with self.db.transaction() as conn:
            await records.audit(conn, event, "duplicate", {})
            await records.enqueue(conn, event, repeat=True)
        stage = event.stage.value if event.stage else "unknown"
        REQUESTS.labels(stage, "duplicate", "").inc()
        log.info("Request %s was seen before; repeated its status.", event.request_id)
        return Outcome(event)

    async def _ready(
        self, request: SignRequest, found: records.Lookup, held: dict[str, bytes | Exception]
    ) -> _Ready:
        """Every rule checked and the consent verified: the version to sign, and the key."""
        school, record = found.school, found.record
        if school is None:
            raise UnknownSchool(f"School {request.school_id} is not registered.")
        signer = rules.authorised_signer(found.signer, request)
        rules.check_order(record, request)
        corrects = corrects_of(request) if record is None else None
        if corrects is not None:
            async with self.db.connection() as conn:
                corrected = await records.record(conn, request.school_id, corrects)
            rules.check_correction(request, corrects, corrected)
        rules.check_enrolment(found, request, corrects=corrects)
        digest = version_digest(request, record)
        subject = consent.Subject(
            request.school_id,
            request.signer_id,
            request.record.record_id,
            request.stage.value,
            digest,
        )
        keyring.verify(
            request.consent, school.consent_key, school.retired_keys, subject, self.clock()
        )
        pdf, digest_before = await self._version_to_sign(request, digest, held)
        key = KeyRef(request.school_id, signer.token_label, signer.key_label)
        new_version = request.stage is Stage.HOMEROOM_TEACHER
        root = self._kept_in
        keep = Keep(root, digest_before, input_is_new=new_version) if root else None
        job = SignJob(pdf, request.stage, key, keep)
        is_correction = bool(record and record.corrects)
        return _Ready(request, job, digest_before, corrects, is_correction, new_version)

    async def _signed_version(self, ready: _Ready, result: SignResult) -> Signed:
        request, corrects = ready.request, ready.corrects
        HSM_DURATION.labels(request.stage.value).observe(result.hsm_seconds)
        event = StatusEvent(
            event_id=uuid.uuid4(),
            request_id=request.request_id,
            school_id=request.school_id,
            record_id=request.record.record_id,
            state=request.stage.state,
            stage=request.stage,
            document_sha256=result.sha256,
            signatures=request.stage.position,
            reason=None,
            at=self.clock(),
        )
        signature = records.NewSignature(
            request_id=request.request_id,
            school_id=request.school_id,
            info=request.record,
            stage=request.stage,
            signer_id=request.signer_id,
            cert_serial=result.cert_serial,
            signed_at=result.signed_at,
            digest_before=ready.digest_before,
            digest_after=result.sha256,
            size_before=result.input_size,
            size_after=result.size,
            fingerprint=fingerprint(request),
            corrects=corrects,
        )
        supersedes = request.stage is Stage.SCHOOL_SEAL and ready.corrected
        return Signed(request, signature, event, supersedes)

    @property
    def _kept_in(self) -> str | None:
        """The fs store's root, if the HSM workers read and store the PDFs there."""
        return self.store.local_root if self.signing.keeps else None

    async def _version_to_sign(
        self, request: SignRequest, digest: str, held: dict[str, bytes | Exception]
    ) -> tuple[bytes, str]:
        """The bytes to sign and their sha256 (for record_data, not the consent's digest).

        A teacher's version is stored with its signature (`_put_versions`), a later
        stage's is the record's current one, read from the store with its round's; or
        by the HSM worker (`_kept_in`): the job then carries no bytes, only the digest.
        """
        if request.stage is Stage.HOMEROOM_TEACHER:
            if isinstance(request, SignRequestV2) and request.record_data is not None:
                pdf = await self.documents.rendered(request)
                digest = hashlib.sha256(pdf).hexdigest()
            else:
                assert request.document is not None
                pdf = await self.documents.content(request.document, request)
            return pdf, digest
        if self._kept_in:
            return b"", digest
        pdf_or_error = held.get(digest)
        if isinstance(pdf_or_error, Exception):
            raise pdf_or_error
        return pdf_or_error or await self.store.get(digest), digest


@dataclass(frozen=True)
class _Ready:
    """A request decided, waiting for its round's signatures."""

    request: SignRequest
    job: SignJob
    digest_before: str
    corrects: str | None  # the record it corrects (a correction's teacher stage)
    corrected: bool  # the record is a correction: its seal supersedes the old one
    new_version: bool = False  # the version to sign is new (a teacher's): to be stored


def _kept(outcomes: list[T]) -> list[T]:
    """Gathered outcomes, once none is a cancellation (or an exit): that is raised."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
    return outcomes


def _key(request: SignRequest) -> records.Key:
    return records.Key(
        request.request_id,
        request.school_id,
        request.signer_id,
        request.record.record_id,
        request.record,
    )
