"""The package's seal: a CAdES detached signature over the manifest, by its school's seal.

Part of the package check (daemon.packaging.check): intact, valid, trusted, with the
attributes a CAdES-B-B needs, exactly one signer, whose certificate is a school seal
(daemon.verification.identity), of the school records.json names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms, x509
from pyhanko.sign.validation import async_validate_detached_cms

from daemon.packaging import container
from daemon.pdf import validation
from daemon.settings import VerificationSettings
from daemon.stages import Stage
from daemon.verification.identity import identify
from daemon.verification.verdict import Problem

_REQUIRED_ATTRS = ("content_type", "message_digest", "signing_time", "signing_certificate_v2")


@dataclass(frozen=True)
class CadesReport:
    signer: str
    cert_serial: str
    signing_time: datetime | None
    intact: bool
    valid: bool
    trusted: bool
    school_id: str | None = None
    role: Stage | None = None


def check_seal(
    manifest: bytes,
    p7s: bytes,
    roots: list[x509.Certificate],
    problems: list[Problem],
    rules: VerificationSettings,
) -> CadesReport | None:
    """The seal's report (None if unreadable); its problems appended to `problems`."""
    signed_data = _signed_data(p7s, problems)
    if signed_data is None:
        return None
    try:
        status = asyncio.run(
            async_validate_detached_cms(
                manifest,
                signed_data,
                signer_validation_context=validation.validation_context(roots),
            )
        )
    except Exception as exc:  # pyHanko raises many types on malformed CMS
        problems.append(
            Problem("signature_invalid", f"{container.SIGNATURE} cannot be validated: {exc}.")
        )
        return None
    who = identify(status.signing_cert, rules)
    result = CadesReport(
        signer=who.subject,
        cert_serial=who.cert_serial,
        signing_time=status.signer_reported_dt,
        intact=status.intact,
        valid=status.valid,
        trusted=status.bottom_line,
        school_id=who.school_id,
        role=who.role,
    )
    problem = _status_problem(result)
    if problem is not None:
        problems.append(problem)
    return result


def _signed_data(p7s: bytes, problems: list[Problem]) -> cms.SignedData | None:
    try:
        info = cms.ContentInfo.load(p7s)
        signed_data = info["content"]
        if info["content_type"].native != "signed_data":
            raise ValueError("not a SignedData")
        if signed_data["encap_content_info"]["content"].native is not None:
            raise ValueError("the signature is not detached")
        if len(signed_data["signer_infos"]) != 1:
            raise ValueError("a seal has exactly one signer")
        present = {a["type"].native for a in signed_data["signer_infos"][0]["signed_attrs"]}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        problems.append(
            Problem(
                "signature_unreadable", f"{container.SIGNATURE} is not a CAdES signature: {exc}."
            )
        )
        return None
    absent = [a for a in _REQUIRED_ATTRS if a not in present]
    if absent:
        problems.append(
            Problem("signature_attributes", f"{container.SIGNATURE} lacks {', '.join(absent)}.")
        )
    return signed_data


def _status_problem(seal: CadesReport) -> Problem | None:
    who = f"{seal.signer} (serial {seal.cert_serial})"
    if not seal.intact:
        return Problem(
            "signature_invalid",
            f"{container.SIGNATURE} does not match {container.MANIFEST}: the manifest was changed.",
        )
    if not seal.valid:
        return Problem(
            "signature_invalid", f"{container.SIGNATURE} has an invalid signature value."
        )
    if not seal.trusted:
        return Problem(
            "signature_untrusted",
            f"{container.SIGNATURE} is signed by {who}, whose certificate does not chain to "
            "a trusted root.",
        )
    if seal.role is not Stage.SCHOOL_SEAL:
        return Problem(
            "seal_role_mismatch",
            f"{container.SIGNATURE} is signed by {who}, whose certificate is not a school's seal.",
        )
    return None


def school_problems(seal: CadesReport | None, school_id: str | None) -> list[Problem]:
    """The seal is of the school the package is of."""
    if seal is None or school_id is None or not seal.trusted or seal.school_id == school_id:
        return []
    return [
        Problem(
            "seal_school_mismatch",
            f"The package is of school {school_id}, but sealed by {seal.signer} "
            f"(serial {seal.cert_serial}) of school {seal.school_id or 'unknown'}.",
        )
    ]
