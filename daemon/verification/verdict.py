"""The verdict on a record: issued, not issued (yet), or invalid; the one rule, kept here.

Issued only when: three signatures in the fields' order (GVCN, HieuTruong,
DauTruong), each intact, valid and trusted, the last covering the whole file; GVCN by
a homeroom teacher of the record's school, HieuTruong by a principal of it, DauTruong
by its seal; three distinct signers (keys). Fewer signatures, all sound, is
`not_issued` (an unfinished record); anything else wrong is `invalid`. Who a signer
is comes from the registry where the verifier has it (`Registry`, read by
daemon.verification.lookup), else from the certificate (daemon.verification.identity).
With the registry, a certificate it does not know is `signer_not_registered` when the
record or the certificate names a school of this registry (a record of this deployment
signed by a stranger); a record of a school this registry does not hold is judged by
its certificates, with a note. Used by `verify`, `verify-server`, the package check
and the simulator (which has no registry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
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
    """A signer as the registry (the `signers` table) knows it, and when it could sign."""

    school_id: str
    signer_id: str
    stage: Stage
    active: bool = True
    registered_at: datetime | None = None
    deactivated_at: datetime | None = None
    cert_not_after: datetime | None = None


@dataclass(frozen=True)
class Registry:
    """What a registry says of some certificates, and which of some schools it holds.

    `by_certificate`: SHA-256 of the certificate's DER -> signer (the exact certificate,
    so issuer and serial both). `by_serial`: hex serial -> signer, for what the registry
    knows by serial only (a row registered before fingerprints were kept, a certificate
    since renewed that this deployment signed with): looked at only when no fingerprint
    matched. `schools`: the schools, of those asked about, that this registry holds.
    """

    by_certificate: Mapping[str, RegisteredSigner] = field(default_factory=dict)
    by_serial: Mapping[str, RegisteredSigner] = field(default_factory=dict)
    schools: frozenset[str] = frozenset()

    def find(self, who: SignerIdentity) -> RegisteredSigner | None:
        return self.by_certificate.get(who.cert_sha256) or self.by_serial.get(who.cert_serial)


@dataclass(frozen=True)
class JudgedSignature:
    report: SignatureReport
    identity: SignerIdentity | None
    role_ok: bool


class Basis(StrEnum):
    """Whose word said who each signer is: the registry's, or only the certificates'."""

    REGISTRY = "registry"
    CERTIFICATES = "certificates"


@dataclass(frozen=True)
class RecordVerdict:
    verdict: Verdict
    school_id: str | None
    signatures: tuple[JudgedSignature, ...]
    problems: tuple[Problem, ...] = field(default=())
    basis: Basis = Basis.CERTIFICATES
    # What a reader should know that is no problem (e.g. a school this registry lacks).
    notes: tuple[str, ...] = field(default=())
    # The `school_id` judge was given (what the record says of itself), to judge again.
    claimed_school_id: str | None = None

    def codes(self) -> list[str]:
        return [p.code for p in self.problems]


def judge(
    signatures: Sequence[SignatureReport],
    rules: VerificationSettings,
    *,
    school_id: str | None = None,
    registered: Registry | None = None,
) -> RecordVerdict:
    """The verdict on a record's signatures; `school_id` is the school it must belong to.

    Without `school_id`, the record's school is its seal's (else its first signer's).
    With `registered`, the registry says who each signer it knows is.
    """
    problems: list[Problem] = []
    notes: list[str] = []
    certified = [identify(s.signer_cert, rules) if s.signer_cert else None for s in signatures]
    found = [registered.find(w) if registered is not None and w else None for w in certified]
    identities = [_as_registered(w, e) for w, e in zip(certified, found, strict=True)]
    school = school_id or _named_school(identities)
    basis = Basis.CERTIFICATES
    if registered is not None:
        basis = _by_registry(signatures, certified, found, school, registered, problems, notes)
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
    return RecordVerdict(
        _verdict(problems), school, tuple(judged), tuple(problems), basis, tuple(notes), school_id
    )


def rejudge(
    verdict: RecordVerdict, rules: VerificationSettings, registered: Registry | None
) -> RecordVerdict:
    """The same signatures judged again, this time with (or without) the registry."""
    return judge(
        [j.report for j in verdict.signatures],
        rules,
        school_id=verdict.claimed_school_id,
        registered=registered,
    )


def _verdict(problems: list[Problem]) -> Verdict:
    if any(p.code != "incomplete" for p in problems):
        return Verdict.INVALID
    return Verdict.NOT_ISSUED if problems else Verdict.ISSUED


def _by_registry(
    signatures: Sequence[SignatureReport],
    certified: list[SignerIdentity | None],
    found: list[RegisteredSigner | None],
    school: str | None,
    registered: Registry,
    problems: list[Problem],
    notes: list[str],
) -> Basis:
    """The registry's problems (unknown, deactivated signers) and notes; its basis."""
    held = registered.schools
    strangers = []
    for sig, who, entry in zip(signatures, certified, found, strict=True):
        if who is None:
            continue
        if entry is not None:
            problems += _deactivated(sig, entry)
        elif school in held or who.school_id in held:
            problems.append(_not_registered(sig, who))
        else:
            strangers.append(f"{sig.field_name} (school {who.school_id or 'unknown'})")
    basis = Basis.REGISTRY if school in held or any(found) else Basis.CERTIFICATES
    if strangers and basis is Basis.CERTIFICATES:
        notes.append(
            f"School {school or 'unknown'} is not in this registry: its signers are judged "
            "by their certificates."
        )
    elif strangers:
        notes.append(
            f"{', '.join(strangers)}: a school not in this registry, judged by the certificate."
        )
    return basis


def _as_registered(
    who: SignerIdentity | None, entry: RegisteredSigner | None
) -> SignerIdentity | None:
    """The certificate's holder, with the school and role the registry gives it if any."""
    if who is None:
        return None
    if entry is None:
        return who
    return replace(
        who, school_id=entry.school_id, role=entry.stage, signer_id=entry.signer_id,
        basis=Basis.REGISTRY.value,
    )  # fmt: skip


def _not_registered(sig: SignatureReport, who: SignerIdentity) -> Problem:
    return Problem(
        "signer_not_registered",
        f"{sig.field_name}: {who.subject} (serial {who.cert_serial}) is not a signer this "
        f"registry knows, though the record is of a school it holds.",
    )


def _deactivated(sig: SignatureReport, entry: RegisteredSigner) -> list[Problem]:
    """A signature claiming a time after its signer was deactivated."""
    ended = entry.deactivated_at
    if entry.active or ended is None or sig.signing_time is None or sig.signing_time <= ended:
        return []
    return [
        Problem(
            "signer_deactivated",
            f"{sig.field_name}: signed at {sig.signing_time.isoformat()}, after its signer "
            f"{entry.signer_id} was deactivated ({ended.isoformat()}).",
        )
    ]


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
        source = (
            f"the registry has {who.subject} (serial {who.cert_serial}) as"
            if who.basis == Basis.REGISTRY
            else f"{who.subject}'s certificate (serial {who.cert_serial}) says"
        )
        problems.append(
            Problem(
                "role_mismatch",
                f"{name} must be signed by {_ROLE_WORDS[expected]}; {source} {said}.",
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
