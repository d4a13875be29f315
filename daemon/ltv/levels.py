"""Signing at the configured PAdES level, around the HSM pool.

    status check (OCSP/CRL)  ->  HSM signs (B-B, room left)  ->  signature timestamp (B-T)
                                                             ->  at the seal: DSS (B-LT)
                                                                 + document timestamp (B-LTA)

The pipeline sees one `sign_many(jobs) -> [SignResult | Exception]` (a batch's jobs
go to the HSM pool together); what each level adds happens here, per job, in the
event loop, so the HSM worker is never held while the TSA or the OCSP responder is
waited for. A revoked certificate is refused before its key is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from daemon.database import Database
from daemon.errors import UnknownSigner
from daemon.hsm import KeyRef, SignJob, SignResult
from daemon.ltv import dss
from daemon.ltv.status import CertificateStatus, DatabaseStatusCache
from daemon.ltv.timestamps import TsaClient, add_signature_timestamp
from daemon.pdf.validation import load_certificates
from daemon.settings import SigningSettings
from daemon.stages import Stage

T = TypeVar("T")

# A certificate read from the token is believed this long before it is read again,
# so that a certificate replaced under the same label is noticed.
_CERT_CACHE_S = 300.0


class Pool(Protocol):
    async def sign_many(self, jobs: Sequence[SignJob]) -> list[SignResult | Exception]: ...
    async def certificate(self, key: KeyRef) -> asn1_x509.Certificate: ...
    async def chain(self) -> list[asn1_x509.Certificate]: ...


@dataclass(frozen=True)
class _Signer:
    cert: x509.Certificate
    issuer: x509.Certificate
    read_at: float


class LeveledSigning:
    """`sign` at `level`: B-B, B-T, B-LT or B-LTA (see the module docstring)."""

    def __init__(
        self,
        pool: Pool,
        status: CertificateStatus,
        tsa: TsaClient | None,
        level: str,
        trust_roots: list[asn1_x509.Certificate] | None = None,
    ) -> None:
        if level != "B-B" and tsa is None:
            raise ValueError(f"Level {level} needs a TSA client.")
        self._pool = pool
        self._status = status
        self._tsa = tsa
        self._level = level
        self._roots = trust_roots or []
        self._signers: dict[str, _Signer] = {}

    @property
    def keeps(self) -> bool:
        """Whether the HSM workers may store what they sign (`SignJob.keep`): at B-B
        only; above it, each signature is extended here first."""
        return self._tsa is None

    async def sign(self, job: SignJob) -> SignResult:
        (result,) = await self.sign_many([job])
        if isinstance(result, Exception):
            raise result
        return result

    async def sign_many(self, jobs: Sequence[SignJob]) -> list[SignResult | Exception]:
        """Each job signed at the level, or the error it alone failed with, in order.

        Each key's status is checked once for the batch, the jobs whose keys pass go to
        the HSM pool together, and each signature is then timestamped on its own.
        """
        if not self.keeps and any(job.keep for job in jobs):
            raise ValueError(f"At {self._level} no HSM worker may keep what it signs.")
        keys = list(dict.fromkeys(job.key for job in jobs))
        checks = await asyncio.gather(*(self._check(key) for key in keys), return_exceptions=True)
        refused = {key: _kept(check) for key, check in zip(keys, checks, strict=True)}
        results: dict[int, SignResult | Exception] = {}
        ready: list[int] = []
        for n, job in enumerate(jobs):
            error = refused[job.key]
            if error is None:
                ready.append(n)
            else:
                results[n] = error
        signed = await self._pool.sign_many([jobs[n] for n in ready])
        if self._tsa is not None:
            extended = await asyncio.gather(
                *(self._extend(jobs[n], s) for n, s in zip(ready, signed, strict=True)),
                return_exceptions=True,
            )
            signed = [_kept(outcome) for outcome in extended]
        results.update(zip(ready, signed, strict=True))
        return [results[n] for n in range(len(jobs))]

    async def _check(self, key: KeyRef) -> None:
        """Refuse a key whose certificate is revoked (or unknown) before it signs."""
        signer = await self._signer(key)
        await self._status.check(signer.cert, signer.issuer)

    async def _extend(self, job: SignJob, result: SignResult | Exception) -> SignResult:
        """The signature timestamp, and at the seal the DSS (B-LT) and document timestamp."""
        if isinstance(result, Exception):
            raise result
        assert self._tsa is not None and result.pdf is not None  # never kept (sign_many)
        pdf = await add_signature_timestamp(result.pdf, len(job.pdf), self._tsa)
        if job.stage is Stage.SCHOOL_SEAL and self._level in ("B-LT", "B-LTA"):
            archive = self._level == "B-LTA"
            pdf = await dss.extend(pdf, self._status, self._tsa, self._roots, archive=archive)
        sha256 = hashlib.sha256(pdf).hexdigest()
        return dataclasses.replace(result, pdf=pdf, size=len(pdf), sha256=sha256)

    async def _signer(self, key: KeyRef) -> _Signer:
        cached = self._signers.get(key.key_label)
        if cached is not None and time.monotonic() - cached.read_at < _CERT_CACHE_S:
            return cached
        cert = _crypto(await self._pool.certificate(key))
        issuers = [c for c in map(_crypto, await self._pool.chain()) if c.subject == cert.issuer]
        if not issuers:
            raise UnknownSigner(
                f"The token holds no issuer certificate for key {key.key_label}'s certificate."
            )
        signer = self._signers[key.key_label] = _Signer(cert, issuers[0], time.monotonic())
        return signer


def _kept(outcome: T | BaseException) -> T | Exception:
    """A gathered outcome as a result; a cancellation (or an exit) is raised again."""
    if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
        raise outcome
    return outcome


def _crypto(cert: asn1_x509.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.dump())


def leveled_signing(
    settings: SigningSettings, db: Database, pool: Pool, client: aiohttp.ClientSession
) -> LeveledSigning:
    """The signing the pipeline uses: `settings.level`, status cached in `db`."""
    status = CertificateStatus(client, DatabaseStatusCache(db, settings.status_timeout_s), settings)
    tsa = TsaClient(client, settings) if settings.timestamped else None
    roots = load_certificates(settings.trust_roots)
    return LeveledSigning(pool, status, tsa, settings.level, roots)
