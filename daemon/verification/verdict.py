"""The verdict on a record: issued, not issued (yet), or invalid; the one rule, kept here.

Issued only when: three signatures in the fields' order (GVCN, HieuTruong,
DauTruong), each intact, valid and trusted, the last covering the whole file; GVCN by
a homeroom teacher of the record's school, HieuTruong by a principal of it, DauTruong
by its seal; three distinct signers (keys). Fewer signatures, all sound, is
`not_issued` (an unfinished record); anything else wrong is `invalid`. Who a signer
is comes from the registry where the verifier has it, else from the certificate
(daemon.verification.identity). Used by `verify`, the package check and the simulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from daemon.pdf.validation import SignatureReport
from daemon.settings import VerificationSettings
from daemon.stages import FIELD_NAMES, ORDER, Stage
from daemon.verification.identity import SignerIdentity, identify

ROLE_FOR_FIELD: dict[str, Stage] = dict(zip(FIELD_NAMES, ORDER, strict=True))
_ROLE_WORDS = {
    Stage.HOMEROOM_TEACHER: "a homeroom teacher",
    Stage.PRINCIPAL: "a principal",
    Stage.SCHOOL_SEAL: "the school's seal",
}


class Verdict(StrEnum):
    ISSUED = "issued"
    NOT_ISSUED = "not_issued"
    INVALID = "invalid"


@dataclass(frozen=True)
class Problem:
    """One reason a record or package is not what it should be: a stable code, for people."""

    code: str
    message: str


@dataclass(frozen=True)
class RegisteredSigner:
    """A signer as the registry (the `signers` table) knows it, by certificate serial."""

    school_id: str
    signer_id: str
    stage: Stage
    active: bool = True


@dataclass(frozen=True)
class JudgedSignature:
    report: SignatureReport
    identity: SignerIdentity | None
    role_ok: bool


@dataclass(frozen=True)
class RecordVerdict:
    verdict: Verdict
    school_id: str | None
    signatures: tuple[JudgedSignature, ...]
    problems: tuple[Problem, ...] = field(default=())

    def codes(self) -> list[str]:
        return [p.code for p in self.problems]


def judge(
    signatures: Sequence[SignatureReport],
    rules: VerificationSettings,
    *,
    school_id: str | None = None,
    registered: Mapping[str, RegisteredSigner] | None = None,
) -> RecordVerdict:
    """The verdict on a record's signatures; `school_id` is the school it must belong to.

    Without `school_id`, the record's school is its seal's (else its first signer's).
    With `registered` (cert serial -> signer), the registry says who each signer is.
    """
    problems: list[Problem] = []
    identities = [_identity(s, rules, registered, problems) for s in signatures]
    school = school_id or _named_school(identities)
    fields = [s.field_name for s in signatures]
    if fields != list(FIELD_NAMES[: len(fields)]):
        problems.append(
            Problem(
                "fields_out_of_order",
                f"The signatures are {fields}; they must be {list(FIELD_NAMES)}, in that order.",
            )
        )
    judged = [
        JudgedSignature(s, who, _judge_one(s, who, school, problems))
        for s, who in zip(signatures, identities, strict=True)
    ]
    problems += _same_signers(judged)
    if signatures and signatures[-1].coverage != "ENTIRE_FILE":
        problems.append(
            Problem("bytes_after_last_signature", "The file has bytes after its last signature.")
        )
    if len(signatures) < len(FIELD_NAMES):
        missing = ", ".join(FIELD_NAMES[len(signatures) :])
        problems.append(Problem("incomplete", f"Not issued: {missing} not signed yet."))
    return RecordVerdict(_verdict(problems), school, tuple(judged), tuple(problems))


def _verdict(problems: list[Problem]) -> Verdict:
    if any(p.code != "incomplete" for p in problems):
        return Verdict.INVALID
    return Verdict.NOT_ISSUED if problems else Verdict.ISSUED


def _identity(
    sig: SignatureReport,
    rules: VerificationSettings,
    registered: Mapping[str, RegisteredSigner] | None,
    problems: list[Problem],
) -> SignerIdentity | None:
    if sig.signer_cert is None:
        return None
    who = identify(sig.signer_cert, rules)
    if registered is None:
        return who
    entry = registered.get(who.cert_serial)
    if entry is None:
        problems.append(
            Problem(
                "unregistered_signer",
                f"{sig.field_name}: {who.subject} (serial {who.cert_serial}) is not a "
                "registered signer.",
            )
        )
        return replace(who, school_id=None, role=None)
    return replace(who, school_id=entry.school_id, role=entry.stage)


def _named_school(identities: list[SignerIdentity | None]) -> str | None:
    seal = identities[2] if len(identities) > 2 else None
    candidates = [seal, *identities]
    return next((i.school_id for i in candidates if i is not None and i.school_id), None)


def _judge_one(
    sig: SignatureReport,
    who: SignerIdentity | None,
    school: str | None,
    problems: list[Problem],
) -> bool:
    """Problems of one signature; whether its signer had the right to sign its field."""
    name = sig.field_name
    if not sig.intact:
        problems.append(Problem("signature_broken", f"{name}: the signed bytes were changed."))
    elif not sig.valid:
        problems.append(Problem("signature_invalid", f"{name}: the signature does not verify."))
    elif not sig.trusted:
        problems.append(
            Problem(
                "signature_untrusted",
                f"{name}: {sig.signer_subject}'s certificate does not chain to a trusted root.",
            )
        )
    elif not sig.bottom_line:
        problems.append(
            Problem(
                "changed_after_signing",
                f"{name}: the document was changed after it was signed ({sig.modification_level}).",
            )
        )
    expected = ROLE_FOR_FIELD.get(name)
    if expected is None or who is None:
        return False
    role_ok = True
    if who.role is not expected:
        role_ok = False
        said = _ROLE_WORDS[who.role] if who.role else "no role"
        problems.append(
            Problem(
                "role_mismatch",
                f"{name} must be signed by {_ROLE_WORDS[expected]}; {who.subject}'s certificate "
                f"(serial {who.cert_serial}) says {said}.",
            )
        )
    if school is None or who.school_id != school:
        role_ok = False
        problems.append(
            Problem(
                "wrong_school",
                f"{name}: {who.subject} (serial {who.cert_serial}) is of school "
                f"{who.school_id or 'unknown'}, the record is of school {school or 'unknown'}.",
            )
        )
    return role_ok and sig.trusted


def _same_signers(judged: list[JudgedSignature]) -> list[Problem]:
    by_key: dict[str, list[str]] = {}
    for j in judged:
        if j.identity is not None:
            by_key.setdefault(j.identity.key_id, []).append(j.report.field_name)
    return [
        Problem(
            "same_signer_twice",
            f"{' and '.join(fields)} were signed by the same key; three distinct signers "
            "are required.",
        )
        for fields in by_key.values()
        if len(fields) > 1
    ]
