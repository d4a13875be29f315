"""`hocba-signer verify`: a report on a signed PDF or a package, for people and machines.

The verdict is daemon.verification.verdict's: `issued`, `not_issued` (every signature
sound, but the record is unfinished) or `invalid`; the exit code says which
(`EXIT_CODES`), so a script that checks it never takes an unfinished record for an
issued one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import NotAPdf
from daemon.pdf import validation
from daemon.settings import VerificationSettings
from daemon.stages import FIELD_NAMES
from daemon.verification import described
from daemon.verification.evidence import UNKNOWN, SignatureEvidence, evidence_of
from daemon.verification.verdict import Basis, JudgedSignature, RecordVerdict, Registry, judge

if TYPE_CHECKING:
    from daemon.packaging.check import PackageReport

# 2 is taken by usage and configuration errors (argparse, HocbaError in the CLI).
EXIT_CODES = {"issued": 0, "invalid": 1, "not_issued": 3}


def exit_code(value: dict[str, Any]) -> int:
    return EXIT_CODES[value["verdict"]]


@dataclass(frozen=True)
class CheckedRecord:
    """A PDF validated and judged: its verdict and what it says of itself; or why not."""

    verdict: RecordVerdict | None
    said: described.RecordDescription | None = None
    error: str | None = None  # not a PDF
    # Each signature's trusted timestamp and certificate status, by the file's own data.
    evidence: tuple[SignatureEvidence, ...] = ()


def check_record(
    pdf: bytes,
    trust_roots: list[Path],
    rules: VerificationSettings | None = None,
    registered: Registry | None = None,
) -> CheckedRecord:
    """Validate (CPU-bound) and judge; `registered` may come later (verdict.rejudge)."""
    roots = validation.load_certificates(trust_roots)
    try:
        signatures = validation.validate_pdf(pdf, roots)
        evidence = evidence_of(pdf, roots)
    except NotAPdf as exc:
        return CheckedRecord(None, error=exc.message)
    said = described.describe_pdf(pdf)
    verdict = judge(
        signatures,
        rules or VerificationSettings(),
        school_id=said.school_id if said else None,
        registered=registered,
    )
    return CheckedRecord(verdict, said, evidence=evidence)


def report(
    pdf: bytes,
    trust_roots: list[Path],
    rules: VerificationSettings | None = None,
    registered: Registry | None = None,
) -> dict[str, Any]:
    """The verdict, its problems, and every signature: field, role, signer, school, checks."""
    return checked_report(check_record(pdf, trust_roots, rules, registered))


def checked_report(checked: CheckedRecord) -> dict[str, Any]:
    if checked.verdict is None:
        message = checked.error or "Not a PDF."
        return {
            "kind": "record",
            "verdict": "invalid",
            "valid": False,
            "issued": False,
            "error": message,
            "problems": [{"code": "not_a_pdf", "message": message}],
            "signatures": [],
            "basis": Basis.CERTIFICATES.value,
            "notes": [],
        }
    return record_report(checked.verdict, checked.said, checked.evidence)


def record_report(
    verdict: RecordVerdict,
    said: described.RecordDescription | None = None,
    evidence: tuple[SignatureEvidence, ...] = (),
) -> dict[str, Any]:
    """The report on one record; without `evidence`, no timestamp and status `unknown`."""
    found = {e.field_name: e for e in evidence}
    rows = [_row(j, found.get(j.report.field_name)) for j in verdict.signatures]
    fields = [r["field"] for r in rows]
    return {
        "kind": "record",
        "verdict": verdict.verdict.value,
        "problems": [dataclasses.asdict(p) for p in verdict.problems],
        # Every signature there is sound (the record may still be unfinished).
        "valid": verdict.verdict != "invalid",
        "issued": verdict.verdict == "issued",
        "school_id": verdict.school_id,
        # Who said who each signer is: the registry, or the certificates alone.
        "basis": verdict.basis.value,
        "notes": list(verdict.notes),
        "record": dataclasses.asdict(said) if said else None,
        "signatures": rows,
        "fields_in_legal_order": fields == list(FIELD_NAMES[: len(fields)]),
        "last_signature_covers_whole_file": bool(rows)
        and covers_whole_file(verdict.signatures[-1].report),
    }


def covers_whole_file(signature: validation.SignatureReport) -> bool:
    return signature.coverage == "ENTIRE_FILE"


def render(value: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(value, ensure_ascii=False, default=str)
    if "error" in value:
        return f"INVALID: {value['error']}"
    headline = {"issued": "ISSUED", "not_issued": "NOT ISSUED", "invalid": "INVALID"}
    lines = [
        f"{headline[value['verdict']]}: {len(value['signatures'])} signatures"
        f"{', school ' + value['school_id'] if value.get('school_id') else ''}"
        f" (signers by the {value.get('basis', 'certificates')})"
    ]
    for n, sig in enumerate(value["signatures"], 1):
        flags = ", ".join(
            f"{k}={'yes' if sig[k] else 'NO'}" for k in ("intact", "valid", "trusted", "role_ok")
        )
        lines.append(
            f"  {n}. {sig['field']}: {sig['signer']} ({sig['role'] or 'no role'}, school "
            f"{sig['school_id'] or '?'}, serial {sig['cert_serial']}) at {sig['signing_time']}; "
            f"{flags}; timestamp: {sig['timestamp_at'] or 'none'}; "
            f"revocation: {sig['revocation']}; changes after: {sig['modification_level']}"
        )
    lines += [f"  {p['code']}: {p['message']}" for p in value["problems"]]
    lines += [f"  note: {n}" for n in value.get("notes", [])]
    return "\n".join(lines)


def _row(judged: JudgedSignature, evidence: SignatureEvidence | None) -> dict[str, Any]:
    sig, who = judged.report, judged.identity
    signed_at = sig.signing_time.isoformat() if sig.signing_time else None
    stamped = evidence.timestamp_at if evidence else None
    return {
        "field": sig.field_name,
        "role": who.role.value if who and who.role else None,
        "signer": sig.signer_subject,
        "school_id": who.school_id if who else None,
        "signed_at": signed_at,
        # The TSA's time, when the signature's timestamp validates (daemon.verification.evidence).
        "timestamp_at": stamped.isoformat() if stamped else None,
        "intact": sig.intact,
        "valid": sig.valid,
        "trusted": sig.trusted,
        # The signer certificate's status at that time, by the file's DSS: never fetched.
        "revocation": evidence.revocation if evidence else UNKNOWN,
        "role_ok": judged.role_ok,
        # `registry` when the registry gave school and role (its signer id then).
        "identified_by": who.basis if who else None,
        "signer_id": who.signer_id if who else None,
        "cert_serial": sig.cert_serial,
        "signing_time": signed_at,
        "docmdp_level": sig.docmdp_level,
        "modification_level": sig.modification_level,
        "coverage": sig.coverage,
        "bottom_line": sig.bottom_line,
    }


def is_package(path: Path) -> bool:
    """A ZIP (an .asice container) rather than a PDF."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def check_package_file(
    path: Path, trust_roots: list[Path], rules: VerificationSettings | None = None
) -> PackageReport:
    """Container, manifest, seal and every PDF inside, judged by their certificates."""
    from daemon.packaging import check

    return check.check_package(path, validation.load_certificates(trust_roots), rules=rules)


def package_report(
    path: Path, trust_roots: list[Path], rules: VerificationSettings | None = None
) -> dict[str, Any]:
    """Container, manifest, seal and every PDF inside; problems by code."""
    return checked_package_report(check_package_file(path, trust_roots, rules))


def checked_package_report(checked: PackageReport) -> dict[str, Any]:
    cades = checked.cades
    verdicts = list(checked.records.values())
    by_registry = any(v.basis is Basis.REGISTRY for v in verdicts)
    return {
        "kind": "package",
        "verdict": checked.verdict,
        "valid": checked.valid,
        "package": checked.index,
        "basis": (Basis.REGISTRY if by_registry else Basis.CERTIFICATES).value,
        "notes": sorted({n for v in verdicts for n in v.notes}),
        "seal": None
        if cades is None
        else {
            "signer": cades.signer,
            "cert_serial": cades.cert_serial,
            "school_id": cades.school_id,
            "role": cades.role.value if cades.role else None,
            "signing_time": cades.signing_time.isoformat() if cades.signing_time else None,
            "intact": cades.intact,
            "valid": cades.valid,
            "trusted": cades.trusted,
        },
        "pdfs_checked": checked.pdfs_checked,
        "problems": [dataclasses.asdict(p) for p in checked.problems],
        "records": {
            rid: record_report(v, evidence=checked.evidence.get(rid, ()))
            for rid, v in checked.records.items()
        },
    }


def render_package(value: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(value, ensure_ascii=False, default=str)
    index = value["package"]
    lines = [
        f"{'ISSUED' if value['verdict'] == 'issued' else 'INVALID'}: package of school "
        f"{index.get('school_id', '?')}, {index.get('academic_year', '?')} round "
        f"{index.get('submission_round', '?')}, {index.get('records', 0)} records, "
        f"{value['pdfs_checked']} PDFs checked (signers by the {value['basis']})"
    ]
    seal = value["seal"]
    if seal:
        lines.append(
            f"  seal: {seal['signer']} (school {seal['school_id'] or '?'}, serial "
            f"{seal['cert_serial']}) at {seal['signing_time']}; "
            f"intact={_yes(seal['intact'])}, trusted={_yes(seal['trusted'])}"
        )
    lines += [f"  {p['code']}: {p['message']}" for p in value["problems"]]
    lines += [f"  note: {n}" for n in value["notes"]]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
