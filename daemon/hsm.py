"""The HSM session pool: PDF signing in worker processes, one login per process.

Why processes, not threads: with SoftHSM2 and python-pkcs11 a second `pkcs11.lib` in
a process broke later calls, login is per process, and sessions used from threads
beside a logged-in one failed or crashed the interpreter. So each worker process
loads the library once, logs in once, keeps one session and signs whole PDFs with
it; the event loop only awaits. Exceptions crossing back are ours (they pickle:
their only argument is the message).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any, TypeVar

import pkcs11
from asn1crypto import x509
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pyhanko.sign.pkcs11 import PKCS11Signer
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes

from daemon.cms import SignedDataTemplate
from daemon.errors import (
    CertificateInvalid,
    ConfigError,
    HocbaError,
    HsmUnavailable,
    Unauthorized,
    UnknownSigner,
)
from daemon.metrics import HSM_ERRORS, HSM_SESSIONS_IN_USE
from daemon.pades import prepare_and_sign
from daemon.settings import HsmSettings, SigningSettings
from daemon.stages import Stage

# Certificate objects with this label are the chain embedded in every signature.
CHAIN_CERT_LABEL = "ca/issuing"

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRef:
    school_id: str
    token_label: str
    key_label: str


@dataclass(frozen=True)
class SignJob:
    pdf: bytes = field(repr=False)
    stage: Stage
    key: KeyRef


@dataclass(frozen=True)
class SignResult:
    pdf: bytes = field(repr=False)
    sha256: str
    cert_serial: str
    signer_subject: str
    signed_at: datetime
    hsm_seconds: float


def check_certificate(cert: x509.Certificate, now: datetime) -> None:
    """Refuse a certificate outside its validity period or not meant for signing."""
    serial = format(cert.serial_number, "x")
    if now < cert.not_valid_before:
        raise CertificateInvalid(
            f"Certificate {serial} is not valid before {cert.not_valid_before:%Y-%m-%d}."
        )
    if now > cert.not_valid_after:
        raise CertificateInvalid(
            f"Certificate {serial} expired on {cert.not_valid_after:%Y-%m-%d}."
        )
    usage = cert.key_usage_value
    allowed = set(usage.native) if usage is not None else set()
    if not allowed & {"digital_signature", "non_repudiation"}:
        raise CertificateInvalid(
            f"Certificate {serial} allows neither digitalSignature nor nonRepudiation."
        )


def authorize(key: KeyRef, token_label: str) -> None:
    """A school may use only its own keys, and only on the configured token."""
    if key.token_label != token_label:
        raise Unauthorized(f"Key {key.key_label} is not on this deployment's token.")
    signer_id = key.key_label.removeprefix(f"{key.school_id}/")
    if not key.school_id or signer_id == key.key_label or not signer_id:
        raise Unauthorized(f"School {key.school_id} may not use key {key.key_label}.")


class SigningPool:
    """Worker processes that sign PDFs with keys in one token; bounded, timed out."""

    def __init__(self, hsm: HsmSettings, signing: SigningSettings) -> None:
        self._hsm = hsm
        self._bytes_reserved = signing.bytes_reserved
        self._slots = asyncio.Semaphore(hsm.workers)
        self._executor: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Spawn the workers; raise at once if the token cannot be opened."""
        if not self._hsm.module.is_file():
            raise ConfigError(f"PKCS#11 module {self._hsm.module} does not exist.")
        self._executor = self._spawn()
        try:
            await asyncio.gather(*(self.ping() for _ in range(self._hsm.workers)))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        stopping = asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        try:
            await asyncio.wait_for(stopping, self._hsm.op_timeout_s)
        except TimeoutError:
            _terminate(executor)  # a worker hangs in the HSM; shutdown then returns

    async def sign(self, job: SignJob) -> SignResult:
        authorize(job.key, self._hsm.token_label)
        request = _SignRequest(job.pdf, job.stage, job.key.key_label, self._bytes_reserved)
        return await self._call(_sign_in_worker, request)

    async def ping(self) -> None:
        """Raise HsmUnavailable unless a worker's session answers."""
        await self._call(_ping_in_worker)

    async def certificate(self, key: KeyRef) -> x509.Certificate:
        authorize(key, self._hsm.token_label)
        der = await self._call(_certificate_in_worker, key.key_label)
        return x509.Certificate.load(der)

    async def sign_cms(self, key: KeyRef, data: bytes, signing_time: datetime) -> bytes:
        """A CAdES detached signature (DER) over `data`; same time, same bytes (RSA PKCS#1 v1.5)."""
        authorize(key, self._hsm.token_label)
        return await self._call(_cms_in_worker, _CmsRequest(data, key.key_label, signing_time))

    def _spawn(self) -> ProcessPoolExecutor:
        config = _WorkerConfig(
            module=str(self._hsm.module),
            token_label=self._hsm.token_label,
            pin=self._hsm.resolved_pin().get_secret_value(),
            env=dict(self._hsm.env),
        )
        return ProcessPoolExecutor(
            self._hsm.workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(config,),
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            executor = self._executor
            if executor is None:
                raise HsmUnavailable("The signing pool is not started.")
            loop = asyncio.get_running_loop()
            try:
                # submit itself raises BrokenProcessPool once a worker has died.
                call = loop.run_in_executor(executor, fn, *args)
                with HSM_SESSIONS_IN_USE.track_inprogress():
                    return await asyncio.wait_for(call, self._hsm.op_timeout_s)
            except HsmUnavailable:
                HSM_ERRORS.labels("token").inc()
                raise
            except TimeoutError as exc:
                HSM_ERRORS.labels("timeout").inc()
                self._replace(executor, kill=True)
                raise HsmUnavailable(
                    f"The HSM did not answer within {self._hsm.op_timeout_s}s."
                ) from exc
            except BrokenProcessPool as exc:
                HSM_ERRORS.labels("worker_died").inc()
                self._replace(executor, kill=False)
                raise HsmUnavailable("A signing worker process died.") from exc

    def _replace(self, executor: ProcessPoolExecutor, *, kill: bool) -> None:
        if self._executor is executor:
            self._executor = self._spawn()
        if kill:
            _terminate(executor)
        executor.shutdown(wait=False, cancel_futures=True)


def _terminate(executor: ProcessPoolExecutor) -> None:
    # A worker stuck in a PKCS#11 call cannot be cancelled, only ended;
    # ProcessPoolExecutor has no public way to do that before Python 3.14.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()


# --- worker side: everything below runs in the worker processes ---------------


@dataclass(frozen=True)
class _WorkerConfig:
    module: str
    token_label: str
    pin: str = field(repr=False)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _SignRequest:
    pdf: bytes = field(repr=False)
    stage: Stage
    key_label: str
    bytes_reserved: int


@dataclass(frozen=True)
class _CmsRequest:
    data: bytes = field(repr=False)
    key_label: str
    signing_time: datetime


class _TimedSigner(PKCS11Signer):
    """A PKCS11Signer that adds up the time spent in the token."""

    hsm_seconds = 0.0

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        started = time.perf_counter()
        try:
            return await super().async_sign_raw(data, digest_algorithm, dry_run)
        finally:
            self.hsm_seconds += time.perf_counter() - started


# Errors after which the session (or the connection under it) is gone, and a fresh
# library initialisation and login may help; p11-kit reports a lost server as these.
_SESSION_ERRORS: tuple[type[p11.PKCS11Error], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.TokenNotPresent,
    p11.GeneralError,
    p11.NoSuchToken,
    p11.UserNotLoggedIn,
    p11.FunctionFailed,
)
_PIN_ERRORS = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked)


class _Worker:
    def __init__(self, config: _WorkerConfig) -> None:
        self.config = config
        self.lib: Any = None
        self.session: Any = None
        self.chain: list[x509.Certificate] = []
        self.signers: dict[str, _TimedSigner] = {}
        self.keys: dict[str, _FastKey] = {}

    def run(self, op: Callable[[Any], T]) -> T:
        """`op(session)`, reopening the session once if it was lost."""
        for attempt in range(2):
            try:
                if self.session is None:
                    self._open()
                return op(self.session)
            except _SESSION_ERRORS as exc:
                log.warning("HSM session lost (%s); reopening it.", type(exc).__name__)
                self._reset()
                if attempt:
                    raise HsmUnavailable(f"HSM session lost: {type(exc).__name__}.") from exc
            except _PIN_ERRORS as exc:
                raise ConfigError(f"The HSM refused the PIN: {type(exc).__name__}.") from exc
            except p11.PKCS11Error as exc:
                raise HsmUnavailable(f"HSM error: {type(exc).__name__}.") from exc
        raise AssertionError("unreachable")

    def _open(self) -> None:
        if self.lib is None:
            self.lib = pkcs11.lib(self.config.module)
        elif not self.lib.initialized:
            self.lib.initialize()
        token = self.lib.get_token(token_label=self.config.token_label)
        try:
            self.session = token.open(user_pin=self.config.pin)
        except p11.UserAlreadyLoggedIn:
            self.session = token.open()
        query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: CHAIN_CERT_LABEL}
        self.chain = [
            x509.Certificate.load(obj[Attribute.VALUE]) for obj in self.session.get_objects(query)
        ]

    def _reset(self) -> None:
        session, self.session = self.session, None
        self.signers.clear()
        self.keys.clear()
        try:
            if session is not None:
                session.close()
        except p11.PKCS11Error:
            pass  # the session is already gone, which is why we are here
        try:
            # A lost p11-kit connection is only re-established by C_Initialize.
            self.lib.reinitialize()
        except p11.PKCS11Error:
            pass  # still down: the next _open fails and reports it

    def signer(self, session: Any, label: str) -> _TimedSigner:
        cached = self.signers.get(label)
        if cached is not None:
            return cached
        query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}
        certs = [x509.Certificate.load(o[Attribute.VALUE]) for o in session.get_objects(query)]
        keys = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})
        )
        if len(certs) != 1 or len(keys) != 1:
            raise UnknownSigner(
                f"The token holds {len(keys)} keys and {len(certs)} certificates "
                f"labelled {label}; exactly one of each is needed."
            )
        signer = _TimedSigner(session, key_label=label, signing_cert=certs[0], ca_chain=self.chain)
        self.signers[label] = signer
        return signer

    def key(self, session: Any, label: str) -> _FastKey:
        """The PDF signing key: its handle, certificate and CMS template, built once."""
        cached = self.keys.get(label)
        if cached is None:
            signer = self.signer(session, label)
            private = session.get_key(ObjectClass.PRIVATE_KEY, label=label)
            template = SignedDataTemplate.for_signer(signer.signing_cert, self.chain)
            cached = self.keys[label] = _FastKey(private, signer.signing_cert, template)
        return cached


@dataclass
class _FastKey:
    private: Any
    cert: x509.Certificate
    template: SignedDataTemplate
    hsm_seconds: float = 0.0

    def raw_sign(self, data: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return bytes(self.private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
        finally:
            self.hsm_seconds += time.perf_counter() - started


_worker: _Worker | None = None


def _init_worker(config: _WorkerConfig) -> None:
    global _worker
    os.environ.update(config.env)
    _worker = _Worker(config)
    try:
        _worker.run(lambda session: None)
    except HocbaError:
        pass  # reported by the first call, which retries the open


def _current() -> _Worker:
    if _worker is None:
        raise HsmUnavailable("The signing worker was not initialised.")
    return _worker


def _ping_in_worker() -> None:
    worker = _current()
    query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: CHAIN_CERT_LABEL}
    worker.run(lambda session: list(session.get_objects(query)))


def _certificate_in_worker(label: str) -> bytes:
    worker = _current()

    def dump(session: Any) -> bytes:
        cert: x509.Certificate = worker.signer(session, label).signing_cert
        return cert.dump()

    return worker.run(dump)


def _sign_in_worker(request: _SignRequest) -> SignResult:
    worker = _current()

    def sign(session: Any) -> SignResult:
        key = worker.key(session, request.key_label)
        cert = key.cert
        now = datetime.now(UTC)
        check_certificate(cert, now)
        key.hsm_seconds = 0.0
        pdf = prepare_and_sign(
            request.pdf,
            request.stage,
            key.template,
            key.raw_sign,
            bytes_reserved=request.bytes_reserved,
            signing_time=now,
        )
        return SignResult(
            pdf=pdf,
            sha256=hashlib.sha256(pdf).hexdigest(),
            cert_serial=format(cert.serial_number, "x"),
            signer_subject=str(cert.subject.native.get("common_name", "")),
            signed_at=now,
            hsm_seconds=key.hsm_seconds,
        )

    return worker.run(sign)


def _cms_in_worker(request: _CmsRequest) -> bytes:
    worker = _current()

    def sign(session: Any) -> bytes:
        signer = worker.signer(session, request.key_label)
        check_certificate(signer.signing_cert, datetime.now(UTC))
        # use_cades adds signing-certificate-v2; content-type and message-digest are
        # always there; the signing time is the caller's, so a rebuild is identical.
        signed = signer.async_sign_general_data(
            request.data,
            "sha256",
            detached=True,
            use_cades=True,
            signed_attr_settings=PdfCMSSignedAttributes(signing_time=request.signing_time),
        )
        return bytes(asyncio.run(signed).dump())

    return worker.run(sign)
