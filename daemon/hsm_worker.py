"""The HSM worker processes' side of the signing pool: one login, one session each.

Everything here runs in a worker process (daemon/hsm.py spawns them), so this module
imports only what signing needs: python-pkcs11, asn1crypto, the CMS template, the PDF
writer and the fs blob store (`Keep`); pyHanko's CMS signer is loaded only when a
package is sealed. A worker stays a few tens of MB instead of the daemon's whole graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from asn1crypto import x509
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from daemon.blobs.base import Hashed
from daemon.blobs.fs import FsStore
from daemon.errors import (
    CertificateInvalid,
    ConfigError,
    HocbaError,
    HsmUnavailable,
    InternalError,
    UnknownSigner,
)
from daemon.hsm_jobs import CmsJob, PdfJob, Signed, WorkerConfig
from daemon.pdf.cms import SignedDataTemplate
from daemon.pdf.pades import prepare_and_sign

# Certificate objects with this label are the chain embedded in every signature.
CHAIN_CERT_LABEL = "ca/issuing"

T = TypeVar("T")
log = logging.getLogger(__name__)


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
# A token there but unseen for a moment: SoftHSM2 rewrites its token file at every
# login, and a process listing the slots meanwhile finds no such token, no user PIN or
# a general error (4 processes logging in in a loop: 1 login in 18, each seen again
# within 0.16 s). Opening retries after these pauses (0.37 s); `run` opens twice, so a
# token really gone costs a batch of 8 ~6 s, well within `hsm.op_timeout_s`.
_UNSEEN = (p11.NoSuchToken, p11.UserPinNotInitialized, p11.GeneralError)
_UNSEEN_PAUSES_S = (0.02, 0.05, 0.1, 0.2)


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.lib: Any = None
        self.session: Any = None
        self.chain: list[x509.Certificate] = []
        self.certs: dict[str, x509.Certificate] = {}
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
        for pause_s in _UNSEEN_PAUSES_S:
            try:
                return self._login()
            except _UNSEEN:
                time.sleep(pause_s)  # then list the slots afresh
                with contextlib.suppress(p11.PKCS11Error):
                    self.lib.reinitialize()
        self._login()

    def _login(self) -> None:
        assert self.lib is not None
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
        self.certs.clear()
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

    def certificate(self, session: Any, label: str) -> x509.Certificate:
        """The certificate of the key labelled `label`, checking both are there, once."""
        cached = self.certs.get(label)
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
        self.certs[label] = certs[0]
        return certs[0]

    def key(self, session: Any, label: str) -> _FastKey:
        """The PDF signing key: its handle, certificate and CMS template, built once."""
        cached = self.keys.get(label)
        if cached is None:
            cert = self.certificate(session, label)
            private = session.get_key(ObjectClass.PRIVATE_KEY, label=label)
            template = SignedDataTemplate.for_signer(cert, self.chain)
            cached = self.keys[label] = _FastKey(private, cert, template)
        return cached


@dataclass
class _FastKey:
    private: Any
    cert: x509.Certificate
    template: SignedDataTemplate
    hsm_seconds: float = 0.0

    @cached_property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")

    @cached_property
    def subject(self) -> str:
        return str(self.cert.subject.native.get("common_name", ""))

    def raw_sign(self, data: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return bytes(self.private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
        finally:
            self.hsm_seconds += time.perf_counter() - started


_worker: _Worker | None = None


def init_worker(config: WorkerConfig) -> None:
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


def ping() -> None:
    worker = _current()
    query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: CHAIN_CERT_LABEL}
    worker.run(lambda session: list(session.get_objects(query)))


def certificate_der(label: str) -> bytes:
    worker = _current()

    def dump(session: Any) -> bytes:
        cert: x509.Certificate = worker.certificate(session, label)
        return cert.dump()

    return worker.run(dump)


def chain_der() -> list[bytes]:
    """The chain certificates (`CHAIN_CERT_LABEL`) every signature embeds."""
    worker = _current()

    def dump(session: Any) -> list[bytes]:
        return [cert.dump() for cert in worker.chain]  # read when the session opened

    return worker.run(dump)


def sign_pdfs(requests: list[PdfJob]) -> list[Signed | Exception]:
    """Each request signed, or the error it alone failed with: one round trip for all.

    The versions to read (`Keep`, a later stage's) are read first, in one go; the PDFs
    to keep are stored once the batch is signed, in one write: its fsyncs cost about
    half as much CPU a PDF as in writes of one job's two PDFs.
    """
    worker = _current()
    results: list[Signed | Exception] = []
    kept: dict[int, tuple[str, list[Hashed]]] = {}  # job -> (store root, its PDFs)
    for n, job in enumerate(_with_inputs(requests)):
        if isinstance(job, Exception):
            results.append(job)
            continue
        try:
            pdf, signed = worker.run(functools.partial(_signed, worker, job))
        except Exception as exc:
            results.append(_sendable(exc))
            continue
        if job.keep is not None:
            made = [Hashed(pdf, signed.sha256)]
            if job.keep.input_is_new:
                made.insert(0, Hashed(job.pdf, job.keep.input_sha256))
            kept[n] = (job.keep.root, made)
        results.append(signed)
    for n, error in _store(kept).items():
        results[n] = error
    return results


def _with_inputs(requests: list[PdfJob]) -> list[PdfJob | Exception]:
    """Each job with the bytes it signs: a stored version read (and checked) by digest,
    or the StoreUnavailable/StoreCorrupt that fails that job alone."""
    jobs: list[PdfJob | Exception] = list(requests)
    stored = {
        n: job.keep for n, job in enumerate(requests) if job.keep and not job.keep.input_is_new
    }
    for root in {keep.root for keep in stored.values()}:
        wanted = [n for n, keep in stored.items() if keep.root == root]
        found = FsStore(Path(root)).read_now([stored[n].input_sha256 for n in wanted])
        for n, pdf in zip(wanted, found, strict=True):
            jobs[n] = (
                pdf if isinstance(pdf, Exception) else dataclasses.replace(requests[n], pdf=pdf)
            )
    return jobs


def _store(kept: dict[int, tuple[str, list[Hashed]]]) -> dict[int, Exception]:
    """Each job's PDFs durable, or the error (StoreUnavailable) that failed it alone."""
    failed: dict[int, Exception] = {}
    for root in {root for root, _ in kept.values()}:
        store = FsStore(Path(root))
        jobs = {n: pdfs for n, (r, pdfs) in kept.items() if r == root}
        try:
            store.write_now([pdf for pdfs in jobs.values() for pdf in pdfs])
            continue
        except Exception as exc:
            if len(jobs) == 1:
                failed.update(dict.fromkeys(jobs, _sendable(exc)))
                continue
            log.warning("A batch of %d signed PDFs is stored one by one: %s", len(jobs), exc)
        for n, pdfs in jobs.items():  # one by one: a PDF the disk refuses fails its job
            try:
                store.write_now(pdfs)
            except Exception as exc:
                failed[n] = _sendable(exc)
    return failed


def _sendable(exc: Exception) -> Exception:
    """`exc` if it crosses back to the daemon intact; else an InternalError naming it.

    One result that cannot be unpickled would break the whole pool, not just its job.
    """
    if not isinstance(exc, HocbaError):
        # Not ours, so a bug, whose traceback does not cross back: it is shown here.
        log.error("Signing failed in the worker.", exc_info=exc)
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return InternalError(f"Signing failed in the worker: {type(exc).__name__}.")
    return exc


def _signed(worker: _Worker, request: PdfJob, session: Any) -> tuple[bytes, Signed]:
    key = worker.key(session, request.key_label)
    now = datetime.now(UTC)
    check_certificate(key.cert, now)
    key.hsm_seconds = 0.0
    started = time.perf_counter()
    signed = prepare_and_sign(
        request.pdf,
        request.stage,
        key.template,
        key.raw_sign,
        bytes_reserved=request.bytes_reserved,
        signing_time=now,
        unsigned_bytes=request.unsigned_bytes,
    )
    pdf = signed.pdf
    if not pdf.startswith(request.pdf):
        raise InternalError("The signed PDF does not extend the version it signed.")
    return pdf, Signed(
        update=None if request.keep else pdf[len(request.pdf) :],  # kept: stored here
        size=len(pdf),
        sha256=signed.sha256.hex(),
        input_size=len(request.pdf),
        cert_serial=key.serial,
        signer_subject=key.subject,
        signed_at=now,
        hsm_seconds=key.hsm_seconds,
        worker_seconds=time.perf_counter() - started,
    )


def sign_cms(request: CmsJob) -> bytes:
    worker = _current()

    def sign(session: Any) -> bytes:
        # pyHanko's CMS signer, only here: packages are sealed a few times a day.
        from pyhanko.sign.pkcs11 import PKCS11Signer
        from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes

        cert = worker.certificate(session, request.key_label)
        check_certificate(cert, datetime.now(UTC))
        signer = PKCS11Signer(
            session, key_label=request.key_label, signing_cert=cert, ca_chain=worker.chain
        )
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
