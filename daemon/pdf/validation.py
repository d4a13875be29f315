"""Validation of a record's PAdES signatures: one report per signature, for people.

Used by `verify`, the package check, the demo, the bench and the tests; never on the
signing path, so pyHanko's validation stack is imported only when validating.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from asn1crypto import pem, x509

from daemon.errors import NotAPdf
from daemon.pdf.pades import parse_errors, read_pdf

if TYPE_CHECKING:
    from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
    from pyhanko.sign.validation.status import PdfSignatureStatus
    from pyhanko_certvalidator import ValidationContext


@dataclass(frozen=True)
class SignatureReport:
    """What a verifier needs to know about one embedded signature."""

    field_name: str
    signer_subject: str
    cert_serial: str
    signing_time: datetime | None
    intact: bool
    valid: bool
    trusted: bool
    docmdp_level: str | None
    modification_level: str | None
    docmdp_ok: bool | None
    coverage: str | None
    bottom_line: bool
    summary: str
    error: str | None = None
    # Whom the signature names, for the verdict on who signed what (None if unreadable).
    signer_cert: x509.Certificate | None = field(default=None, compare=False, repr=False)

    # Reports cross process boundaries (verify-server's pool). An asn1crypto object does
    # not survive pickling into a process that never parsed one, so the certificate
    # travels as DER and is parsed again on arrival.
    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        cert = state.pop("signer_cert")
        state["signer_cert_der"] = cert.dump() if cert is not None else None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        der = state.pop("signer_cert_der")
        cert = x509.Certificate.load(der) if isinstance(der, bytes) else None
        self.__dict__.update(state, signer_cert=cert)


def load_certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    """Certificates from PEM or DER files, e.g. the configured trust roots."""
    certs: list[x509.Certificate] = []
    for path in paths:
        data = path.read_bytes()
        if pem.detect(data):
            certs.extend(
                x509.Certificate.load(der) for _, _, der in pem.unarmor(data, multiple=True)
            )
        else:
            certs.append(x509.Certificate.load(data))
    return certs


def validation_context(
    trust_roots: list[x509.Certificate], moment: datetime | None = None
) -> ValidationContext:
    """Trust only these roots, fetch nothing, and ask for no revocation data (B-B); as of
    `moment` if given, else now."""
    from pyhanko_certvalidator import ValidationContext
    from pyhanko_certvalidator.policy_decl import NO_REVOCATION, CertRevTrustPolicy

    return ValidationContext(
        trust_roots=trust_roots,
        allow_fetching=False,
        revinfo_policy=CertRevTrustPolicy(NO_REVOCATION),
        moment=moment,
    )


def validate_pdf(
    pdf: bytes, trust_roots: list[x509.Certificate], *, expected: int | None = None
) -> list[SignatureReport]:
    """A report per embedded signature; blocks, so not for the event loop."""
    return asyncio.run(validate_pdf_async(pdf, trust_roots, expected=expected))


async def validate_pdf_async(
    pdf: bytes, trust_roots: list[x509.Certificate], *, expected: int | None = None
) -> list[SignatureReport]:
    """Like `validate_pdf`, for callers already inside an event loop (CPU-bound)."""
    reader = read_pdf(pdf)
    try:
        signatures = reader.embedded_regular_signatures
        stamps = reader.embedded_timestamp_signatures
    except parse_errors() as exc:
        raise NotAPdf(f"The document's signatures cannot be read: {exc}") from exc
    if expected is not None and len(signatures) != expected:
        raise NotAPdf(f"Expected {expected} signatures, found {len(signatures)}.")
    context = validation_context(trust_roots)
    reports = [await _validate_one(sig, context) for sig in signatures]
    if reports and stamps:
        reports[-1] = await _archived(reports[-1], stamps[-1], context)
    return reports


async def _archived(
    last: SignatureReport, stamp: EmbeddedPdfSignature, context: ValidationContext
) -> SignatureReport:
    """The last signature, covering the file if only DSS and document timestamps follow it.

    At B-LTA the seal is followed by its validation data (DSS) and a document
    timestamp (pyHanko: modification level LTA_UPDATES); when that timestamp is valid,
    trusted and covers every byte, nothing but long-term validation data came after
    the seal, so the record counts as covered to its end.
    """
    from pyhanko.sign.validation import async_validate_pdf_timestamp

    if last.modification_level != "LTA_UPDATES":
        return last
    try:
        status = await async_validate_pdf_timestamp(stamp, validation_context=context)
    except Exception:  # a broken timestamp leaves the seal's own coverage as it is
        return last
    whole = status.coverage is not None and status.coverage.name == "ENTIRE_FILE"
    if status.intact and status.valid and status.trusted and whole:
        return dataclasses.replace(last, coverage="ENTIRE_FILE")
    return last


async def _validate_one(sig: EmbeddedPdfSignature, context: ValidationContext) -> SignatureReport:
    from pyhanko.sign.validation import async_validate_pdf_signature

    # pyHanko raises a variety of errors on malformed signatures (CMS parsing,
    # unsupported algorithms); each becomes a failed report, not a crash.
    try:
        cert = sig.signer_cert
    except Exception as exc:
        return _failed(sig, None, f"{type(exc).__name__}: {exc}")
    try:
        status = await async_validate_pdf_signature(sig, signer_validation_context=context)
    except Exception as exc:
        return _failed(sig, cert, f"{type(exc).__name__}: {exc}")
    return _report(sig, cert, status)


def _report(
    sig: EmbeddedPdfSignature, cert: x509.Certificate, status: PdfSignatureStatus
) -> SignatureReport:
    modification = status.modification_level
    docmdp = sig.docmdp_level
    return SignatureReport(
        field_name=sig.field_name,
        signer_subject=_common_name(cert),
        cert_serial=format(cert.serial_number, "x"),
        signing_time=status.signer_reported_dt,
        intact=status.intact,
        valid=status.valid,
        trusted=status.trusted,
        docmdp_level=docmdp.name if docmdp else None,
        modification_level=modification.name if modification else None,
        docmdp_ok=status.docmdp_ok,
        coverage=status.coverage.name if status.coverage else None,
        bottom_line=status.bottom_line,
        summary=status.summary(),
        signer_cert=cert,
    )


def _failed(
    sig: EmbeddedPdfSignature, cert: x509.Certificate | None, error: str
) -> SignatureReport:
    return SignatureReport(
        field_name=sig.field_name,
        signer_subject=_common_name(cert) if cert else "",
        cert_serial=format(cert.serial_number, "x") if cert else "",
        signing_time=None,
        intact=False,
        valid=False,
        trusted=False,
        docmdp_level=None,
        modification_level=None,
        docmdp_ok=None,
        coverage=None,
        bottom_line=False,
        summary="INVALID",
        error=error,
        signer_cert=cert,
    )


def _common_name(cert: x509.Certificate) -> str:
    name = cert.subject.native
    return str(name.get("common_name") or cert.subject.human_friendly)
