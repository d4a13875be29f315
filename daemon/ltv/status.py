"""Certificate status before a key is used: OCSP, the CRL as fallback, cached until nextUpdate.

At the peak every instance signs with the same few hundred certificates, so an answer
is kept in PostgreSQL (`certificate_status`, shared by all instances) and in memory
until its nextUpdate; the responder sees about one request per certificate per
nextUpdate period for the whole district. A certificate that names neither an OCSP
responder nor a CRL cannot be checked and passes, as in pyHanko's hard-fail mode; a
declared source that gives no usable answer is transient
(`certificate_status_unavailable` once every retry is spent). Answers are verified
(signed by the issuer, or by a responder it delegated to; for this certificate; not
stale) before they are believed. The DER of each answer is kept: the seal embeds it
(daemon/ltv/dss.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import aiohttp
import asyncpg
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from daemon.database import Database
from daemon.errors import CertificateInvalid, CertificateRevoked, CertificateStatusUnavailable
from daemon.metrics import STATUS_DURATION, STATUS_ERRORS, STATUS_LOOKUPS
from daemon.settings import SigningSettings

log = logging.getLogger(__name__)

_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class StatusAnswer:
    """One certificate's status, and the signed answer that says so."""

    status: str  # good | revoked
    source: str  # ocsp | crl
    answer: bytes
    this_update: datetime
    next_update: datetime
    revoked_at: datetime | None = None


class _Unusable(Exception):
    """An answer that cannot be believed or was not had; the next source is tried."""


Fetch = Callable[[], Awaitable[StatusAnswer]]


@dataclass(frozen=True)
class Found:
    """An answer and where it came from: database, stale (another instance is
    refreshing it) or fetched (from its source, by this caller)."""

    answer: StatusAnswer
    origin: str


class StatusCache(Protocol):
    async def load(self, issuer: str, serial: str, now: datetime) -> StatusAnswer | None: ...
    async def refresh(self, issuer: str, serial: str, now: datetime, fetch: Fetch) -> Found: ...


# While one instance asks the responder, the others use the answer that just expired
# for at most this long, rather than wait for the new one (or ask too).
STALE_GRACE = timedelta(seconds=30)

_ROW = (
    "SELECT status, source, answer, this_update, next_update, revoked_at "
    "FROM certificate_status WHERE issuer_sha256 = $1 AND serial = $2 AND next_update > $3"
)
_LOCK = "certificate_status:{}:{}"


class DatabaseStatusCache:
    """The `certificate_status` table: one row per certificate, the newest answer.

    When an answer expires at the same moment for every instance, one refreshes it
    under a transaction-scoped advisory lock on the certificate; the others use the
    expired answer within STALE_GRACE, or wait for the lock (the refresher's commit)
    and read what it stored. The responder sees one request, not one per instance.
    """

    def __init__(self, db: Database, wait_s: float = 10.0) -> None:
        self._db = db
        self._wait_ms = max(1, int(wait_s * 1000))

    async def load(self, issuer: str, serial: str, now: datetime) -> StatusAnswer | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_ROW, issuer, serial, now)
        return StatusAnswer(**dict(row)) if row else None

    async def refresh(self, issuer: str, serial: str, now: datetime, fetch: Fetch) -> Found:
        key = _LOCK.format(issuer, serial)
        async with self._db.transaction() as conn:
            mine = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", key
            )
            if not mine:
                stale = await conn.fetchrow(_ROW, issuer, serial, now - STALE_GRACE)
                if stale is not None:
                    return Found(StatusAnswer(**dict(stale)), "stale")
                await conn.execute(f"SET LOCAL lock_timeout = {self._wait_ms}")
                try:
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
                except asyncpg.LockNotAvailableError as exc:
                    raise CertificateStatusUnavailable(
                        f"Another instance has been asking for certificate {serial}'s status "
                        "for too long."
                    ) from exc
                stored = await conn.fetchrow(_ROW, issuer, serial, now)
                if stored is not None:
                    return Found(StatusAnswer(**dict(stored)), "database")
            answer = await fetch()
            await conn.execute(
                "INSERT INTO certificate_status AS c (issuer_sha256, serial, status, source, "
                "answer, this_update, next_update, revoked_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (issuer_sha256, serial) DO UPDATE SET status = $3, source = $4, "
                "answer = $5, this_update = $6, next_update = $7, revoked_at = $8, "
                "fetched_at = now() WHERE c.next_update < $7",
                issuer,
                serial,
                answer.status,
                answer.source,
                answer.answer,
                answer.this_update,
                answer.next_update,
                answer.revoked_at,
            )
        return Found(answer, "fetched")


class CertificateStatus:
    """`check` a certificate before its key signs; `answer` for the validation data."""

    def __init__(
        self, session: aiohttp.ClientSession, cache: StatusCache, settings: SigningSettings
    ) -> None:
        self._session = session
        self._cache = cache
        self._timeout = aiohttp.ClientTimeout(total=settings.status_timeout_s)
        self._min_cache = timedelta(seconds=settings.status_min_cache_s)
        self._memory: dict[tuple[str, str], StatusAnswer] = {}
        # One lookup per certificate at a time in this process; the others wait for it.
        self._asking: dict[tuple[str, str], asyncio.Lock] = {}

    async def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        """Raise unless `cert` is good: CertificateRevoked, or CertificateStatusUnavailable."""
        answer = await self.answer(cert, issuer)
        if answer is not None and answer.status == "revoked":
            when = f" on {answer.revoked_at:%Y-%m-%d}" if answer.revoked_at else ""
            raise CertificateRevoked(
                f"Certificate {cert.serial_number:x} was revoked{when} ({answer.source})."
            )

    async def answer(self, cert: x509.Certificate, issuer: x509.Certificate) -> StatusAnswer | None:
        """The current answer for `cert`, from memory, the database or its sources.

        None when the certificate declares no status source.
        """
        key = (_sha256(issuer), format(cert.serial_number, "x"))
        cached = self._fresh(key)
        if cached is not None:
            return cached
        ocsp_urls, crl_urls = _pointers(cert)
        if not ocsp_urls and not crl_urls:
            STATUS_LOOKUPS.labels("undeclared", "good").inc()
            return None
        async with self._asking.setdefault(key, asyncio.Lock()):
            cached = self._fresh(key)
            if cached is not None:
                return cached
            now = datetime.now(UTC)
            stored = await self._cache.load(*key, now)
            if stored is not None:
                self._memory[key] = stored
                STATUS_LOOKUPS.labels("database", stored.status).inc()
                return stored
            found = await self._cache.refresh(
                *key, now, lambda: self._fetch(cert, issuer, ocsp_urls, crl_urls, now)
            )
        fresh = found.answer
        if found.origin != "stale":  # a stale answer is used once, not kept
            self._memory[key] = fresh
        origin = fresh.source if found.origin == "fetched" else found.origin
        STATUS_LOOKUPS.labels(origin, fresh.status).inc()
        if found.origin == "fetched":
            log.info(
                "Certificate %x is %s (%s, until %s).",
                cert.serial_number,
                fresh.status,
                fresh.source,
                fresh.next_update.isoformat(timespec="seconds"),
            )
        return fresh

    def _fresh(self, key: tuple[str, str]) -> StatusAnswer | None:
        cached = self._memory.get(key)
        if cached is not None and cached.next_update > datetime.now(UTC):
            STATUS_LOOKUPS.labels("memory", cached.status).inc()
            return cached
        return None

    async def _fetch(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        ocsp_urls: list[str],
        crl_urls: list[str],
        now: datetime,
    ) -> StatusAnswer:
        problems = []
        for url in ocsp_urls:
            try:
                return await self._ocsp(url, cert, issuer, now)
            except _Unusable as exc:
                STATUS_ERRORS.labels("ocsp").inc()
                problems.append(f"OCSP: {exc}")
        for url in crl_urls:
            try:
                return await self._crl(url, cert, issuer, now)
            except _Unusable as exc:
                STATUS_ERRORS.labels("crl").inc()
                problems.append(f"CRL: {exc}")
        raise CertificateStatusUnavailable(
            f"No status for certificate {cert.serial_number:x}: {'; '.join(problems)}"
        )

    async def _ocsp(
        self, url: str, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> StatusAnswer:
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        body = await self._http("ocsp", url, request.public_bytes(serialization.Encoding.DER))
        try:
            response = ocsp.load_der_ocsp_response(body)
        except ValueError as exc:
            raise _Unusable(f"unreadable answer ({exc})") from exc
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise _Unusable(f"responder said {response.response_status.name}")
        _check_ocsp_signer(response, issuer)
        if response.serial_number != cert.serial_number:
            raise _Unusable("the answer is for another certificate")
        this_update = response.this_update_utc
        if this_update > now + _CLOCK_SKEW:
            raise _Unusable("the answer is from the future")
        next_update = response.next_update_utc or now + self._min_cache
        if next_update <= now:
            raise _Unusable("the answer is stale")
        if response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN:
            raise CertificateInvalid(
                f"The OCSP responder does not know certificate {cert.serial_number:x}."
            )
        revoked = response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        return StatusAnswer(
            status="revoked" if revoked else "good",
            source="ocsp",
            answer=body,
            this_update=this_update,
            next_update=max(next_update, now + self._min_cache),
            revoked_at=response.revocation_time_utc if revoked else None,
        )

    async def _crl(
        self, url: str, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> StatusAnswer:
        body = await self._http("crl", url, None)
        try:
            crl = x509.load_der_x509_crl(body)
        except ValueError as exc:
            raise _Unusable(f"unreadable CRL ({exc})") from exc
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise _Unusable("the CRL is not signed by the certificate's issuer")
        next_update = crl.next_update_utc
        if next_update is None or next_update <= now:
            raise _Unusable("the CRL is stale")
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        return StatusAnswer(
            status="good" if entry is None else "revoked",
            source="crl",
            answer=body,
            this_update=crl.last_update_utc,
            next_update=max(next_update, now + self._min_cache),
            revoked_at=entry.revocation_date_utc if entry is not None else None,
        )

    async def _http(self, source: str, url: str, body: bytes | None) -> bytes:
        started = time.perf_counter()
        try:
            if body is None:
                call = self._session.get(url, timeout=self._timeout)
            else:
                headers = {"Content-Type": "application/ocsp-request"}
                call = self._session.post(url, data=body, headers=headers, timeout=self._timeout)
            async with call as response:
                if response.status != 200:
                    raise _Unusable(f"HTTP {response.status} from {url}")
                return await response.read()
        except TimeoutError as exc:
            raise _Unusable(f"no answer from {url} in time") from exc
        except aiohttp.ClientError as exc:
            raise _Unusable(f"{url} unreachable ({type(exc).__name__})") from exc
        finally:
            STATUS_DURATION.labels(source).observe(time.perf_counter() - started)


def _pointers(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The OCSP responder URLs (AIA) and CRL distribution point URLs of `cert`."""
    ocsp_urls: list[str] = []
    crl_urls: list[str] = []
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ocsp_urls = [
            str(d.access_location.value)
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
        ]
    except x509.ExtensionNotFound:
        pass
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crl_urls = [
            str(name.value)
            for point in points
            for name in point.full_name or []
            if isinstance(name, x509.UniformResourceIdentifier)
        ]
    except x509.ExtensionNotFound:
        pass
    return ocsp_urls, crl_urls


def _check_ocsp_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """The answer is signed by the issuer, or by a responder certificate it issued for OCSP."""
    signer = issuer
    if not _responder_is(response, issuer):
        delegated = [c for c in response.certificates if _responder_is(response, c)]
        if not delegated:
            raise _Unusable("the answer is signed by an unknown responder")
        signer = delegated[0]
        try:
            usage = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound as exc:
            raise _Unusable("the responder certificate lacks id-kp-OCSPSigning") from exc
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usage or signer.issuer != issuer.subject:
            raise _Unusable("the responder is not delegated by the issuer")
        _verify(
            issuer, signer.signature, signer.tbs_certificate_bytes, signer.signature_hash_algorithm
        )
    _verify(
        signer, response.signature, response.tbs_response_bytes, response.signature_hash_algorithm
    )


def _responder_is(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    key_hash = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return response.responder_key_hash == key_hash


def _verify(
    signer: x509.Certificate,
    signature: bytes,
    data: bytes,
    algorithm: hashes.HashAlgorithm | None,
) -> None:
    key = signer.public_key()
    if algorithm is None:
        raise _Unusable("the answer's signature algorithm is not supported")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise _Unusable(f"the responder's key type {type(key).__name__} is not supported")
    except InvalidSignature as exc:
        raise _Unusable("the answer's signature does not verify") from exc


@functools.lru_cache(maxsize=4096)  # the same few issuers, asked about for every signature
def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
