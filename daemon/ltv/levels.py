"""Signing at the configured PAdES level, around the HSM pool.

    status check (OCSP/CRL)  ->  HSM signs (B-B, room left)  ->  signature timestamp (B-T)
                                                             ->  at the seal: DSS (B-LT)
                                                                 + document timestamp (B-LTA)

The pipeline sees one `sign(job) -> SignResult`; what each level adds happens here,
in the event loop, so the HSM worker is never held while the TSA or the OCSP
responder is waited for. A revoked certificate is refused before its key is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Protocol

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

# A certificate read from the token is believed this long before it is read again,
# so that a certificate replaced under the same label is noticed.
_CERT_CACHE_S = 300.0


class Pool(Protocol):
    async def sign(self, job: SignJob) -> SignResult: ...
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

    async def sign(self, job: SignJob) -> SignResult:
        signer = await self._signer(job.key)
        await self._status.check(signer.cert, signer.issuer)
        result = await self._pool.sign(job)
        if self._tsa is None:
            return result
        pdf = await add_signature_timestamp(result.pdf, len(job.pdf), self._tsa)
        if job.stage is Stage.SCHOOL_SEAL and self._level in ("B-LT", "B-LTA"):
            archive = self._level == "B-LTA"
            pdf = await dss.extend(pdf, self._status, self._tsa, self._roots, archive=archive)
        return dataclasses.replace(result, pdf=pdf, sha256=hashlib.sha256(pdf).hexdigest())

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
