"""What a record's own validation data says of each signature: when, and was its signer good.

daemon.pdf.validation judges the signatures by B-B's rules (no revocation asked), so
the verdict on a record is what it always was; this adds, for each signature, the
genTime of its signature timestamp (id-aa-signatureTimeStampToken) when that token is
intact, valid and trusted, and the signer certificate's status at that time as the
record's DSS (its OCSP answers and CRLs) says it: `good`, `revoked`, or `unknown` when
the file holds no answer that settles it. Nothing is fetched: the verifier must not
depend on, or reveal its users to, the CA's responders. A signer revoked after
signing stays `good`, since the certificate is judged at the timestamp's time by the
answers the daemon embedded then.

A token is judged at the time the file's document timestamps prove it existed by (the
oldest of a chain that holds today: the newest valid now, each older one valid at the
time of the one after it), so a record renewed before its first TSA's certificate
expired still shows its signatures' times after that expiry; a record with no document
timestamp, or none that holds, has its tokens judged now.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asn1crypto import cms, x509

from daemon.errors import NotAPdf
from daemon.pdf.pades import parse_errors, read_pdf
from daemon.pdf.syntax import Unsupported
from daemon.pdf.validation import validation_context
from daemon.verification import signed

if TYPE_CHECKING:
    from pyhanko.sign.validation.dss import DocumentSecurityStore

log = logging.getLogger(__name__)

GOOD, REVOKED, UNKNOWN = "good", "revoked", "unknown"


@dataclass(frozen=True)
class SignatureEvidence:
    """One signature's trusted timestamp, and its certificate's status at that time."""

    field_name: str
    timestamp_at: datetime | None = None
    revocation: str = UNKNOWN


def evidence_of(
    pdf: bytes, trust_roots: list[x509.Certificate], at: datetime | None = None
) -> tuple[SignatureEvidence, ...]:
    """One entry per regular signature, in the file's order, judged as of `at` (now by
    default); blocks (CPU-bound)."""
    return asyncio.run(evidence_of_async(pdf, trust_roots, at))


async def evidence_of_async(
    pdf: bytes, trust_roots: list[x509.Certificate], at: datetime | None = None
) -> tuple[SignatureEvidence, ...]:
    reader = read_pdf(pdf)
    try:
        fields = signed.signed_fields(pdf)
    except (Unsupported, ValueError, LookupError, TypeError):
        try:
            fields = [
                signed.SignedField(s.field_name, s.signed_data)
                for s in reader.embedded_regular_signatures
            ]
        except parse_errors() as exc:
            raise NotAPdf(f"The document's signatures cannot be read: {exc}") from exc
    dss = _dss(reader)
    moment = await _proven_at(reader, trust_roots, at) or at
    return tuple([await _one(f, trust_roots, dss, moment) for f in fields])


async def _proven_at(
    reader: Any, roots: list[x509.Certificate], at: datetime | None
) -> datetime | None:
    """The oldest time the document timestamps prove, by a chain that holds at `at`."""
    from pyhanko.sign.validation import async_validate_pdf_timestamp

    try:
        stamps = list(reader.embedded_timestamp_signatures)
    except Exception as exc:  # unreadable timestamps prove nothing, and break nothing
        log.info("The document timestamps cannot be read (%s).", type(exc).__name__)
        return None
    moment, proven = at, None
    for stamp in reversed(stamps):
        try:
            status = await async_validate_pdf_timestamp(
                stamp, validation_context=validation_context(roots, moment), skip_diff=True
            )
        except Exception as exc:
            log.info("A document timestamp cannot be checked (%s).", type(exc).__name__)
            break
        if not (status.intact and status.valid and status.trusted):
            break
        moment = proven = status.timestamp
    return proven


async def _one(
    field: signed.SignedField,
    roots: list[x509.Certificate],
    dss: DocumentSecurityStore | None,
    moment: datetime | None,
) -> SignatureEvidence:
    # A malformed signature or token has no evidence to show; its report says why.
    name = field.field_name
    try:
        stamped = await _timestamp_at(field.signed_data, roots, moment)
    except Exception as exc:
        log.info("Signature %s: its timestamp cannot be checked (%s).", name,
                 type(exc).__name__)  # fmt: skip
        stamped = None
    try:
        status = await _revocation(field.signed_data, roots, dss, stamped)
    except Exception as exc:
        log.info("Signature %s: its certificate's status cannot be checked (%s).",
                 name, type(exc).__name__)  # fmt: skip
        status = UNKNOWN
    return SignatureEvidence(name, stamped, status)


async def _timestamp_at(
    signed_data: cms.SignedData, roots: list[x509.Certificate], moment: datetime | None
) -> datetime | None:
    """The genTime of the signature's timestamp token, if one is intact, valid and trusted
    at `moment` (now if None).

    As pyHanko's own validation does (generic_cms.collect_timing_info), the first
    trusted token among the signature's timestamps counts.
    """
    from pyhanko.sign.validation.generic_cms import (
        extract_tst_data_iter,
        message_imprint_checker,
        validate_tst_signed_data,
    )
    from pyhanko.sign.validation.status import TimestampSignatureStatus

    signer_info = signed_data["signer_infos"][0]
    context = validation_context(roots, moment)
    for token in extract_tst_data_iter(signer_info, signed=False):
        found = await validate_tst_signed_data(token, context, message_imprint_checker(signer_info))
        stamp = TimestampSignatureStatus(**found)
        if stamp.intact and stamp.valid and stamp.trusted:
            when: datetime = stamp.timestamp
            return when
    return None


async def _revocation(
    signed_data: cms.SignedData,
    roots: list[x509.Certificate],
    dss: DocumentSecurityStore | None,
    stamped: datetime | None,
) -> str:
    """The signer certificate's status at `stamped` (else its claimed time), by the DSS."""
    from pyhanko.sign.validation.generic_cms import (
        extract_certs_for_validation,
        extract_self_reported_ts,
    )
    from pyhanko_certvalidator import CertificateValidator
    from pyhanko_certvalidator.errors import PathBuildingError, PathValidationError, RevokedError
    from pyhanko_certvalidator.policy_decl import (
        CertRevTrustPolicy,
        RevocationCheckingPolicy,
        RevocationCheckingRule,
    )

    if dss is None or not (dss.ocsps or dss.crls):
        return UNKNOWN
    certs = extract_certs_for_validation(signed_data)
    moment = stamped or extract_self_reported_ts(signed_data["signer_infos"][0])
    # The signer's own certificate needs an answer; a CA only if it names where to ask.
    policy = RevocationCheckingPolicy(
        ee_certificate_rule=RevocationCheckingRule.CRL_OR_OCSP_REQUIRED,
        intermediate_ca_cert_rule=RevocationCheckingRule.CHECK_IF_DECLARED,
    )
    context = dss.as_validation_context(
        dict(
            trust_roots=roots,
            other_certs=list(certs.other_certs),
            moment=moment,
            allow_fetching=False,
            # An answer issued after signing that says good (or revoked later) still
            # speaks of the signing time.
            revinfo_policy=CertRevTrustPolicy(policy, retroactive_revinfo=True),
        )
    )
    validator = CertificateValidator(certs.signer_cert, validation_context=context)
    try:
        await validator.async_validate_usage(set())
    except RevokedError:
        return REVOKED
    except (PathValidationError, PathBuildingError):
        # No answer for it, or no trusted path at that time (the report says so): the
        # file does not settle the question.
        return UNKNOWN
    return GOOD


def _dss(reader: Any) -> DocumentSecurityStore | None:
    from pyhanko.sign.validation.dss import DocumentSecurityStore, NoDSSFoundError

    try:
        return DocumentSecurityStore.read_dss(reader)
    except NoDSSFoundError:
        return None
    except Exception as exc:  # a DSS that cannot be read settles nothing, and breaks nothing
        log.info("The document's DSS cannot be read (%s).", type(exc).__name__)
        return None
