"""The checks the verification server runs in its process pool: one file in, one report out.

Validation (pyHanko) is CPU-bound and a package holds many records, so each check runs
in a worker process (`check` is what `loop.run_in_executor` calls; everything it takes
and returns pickles). It returns the facts (`Checked`: the verdicts, by the
certificates); the server's main process judges them again with the registry
(daemon.verification.basis) and `shape`s them as DESIGN.md's public report, without the
student id. The verdict and the reports are `hocba-signer verify`'s
(daemon.verification.report, daemon.verification.verdict).
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.settings import VerificationSettings

if TYPE_CHECKING:
    from daemon.packaging.check import PackageReport
    from daemon.verification.report import CheckedRecord

PDF = "application/pdf"
ASICE = "application/vnd.etsi.asic-e+zip"
KINDS = {PDF: "record", ASICE: "package"}

_SIGNATURE_KEYS = (
    "field",
    "role",
    "signer",
    "school_id",
    "signed_at",
    "timestamp_at",
    "intact",
    "valid",
    "trusted",
    "revocation",
    "role_ok",
    "identified_by",
)


@dataclass(frozen=True)
class Checked:
    """What a worker found in one file: a record, a package, or why it could not say."""

    kind: str
    record: CheckedRecord | None = None
    package: PackageReport | None = None
    digests: dict[str, str] = field(default_factory=dict)  # record id -> its PDF's sha256
    failure: str | None = None  # the validator broke on the PDF


def kind_of(content_type: str, head: bytes) -> str | None:
    """`record` or `package` when the declared type and the first bytes agree; else None."""
    kind = KINDS.get(content_type.split(";")[0].strip().lower())
    if kind == "record" and b"%PDF-" in head[:1024]:
        return kind
    if kind == "package" and head.startswith(b"PK\x03\x04"):
        return kind
    return None


def warm() -> None:
    """Import the validator once per worker, before the first upload waits for it."""
    from daemon.verification import report as verify  # noqa: F401


def check(kind: str, body: bytes, trust_roots: tuple[str, ...], rules: dict[str, Any]) -> Checked:
    """Validate and judge `body` by its certificates (the server may judge it again)."""
    from daemon.verification import report as verify

    settings = VerificationSettings.model_validate(rules)
    roots = [Path(p) for p in trust_roots]
    if kind == "record":
        try:
            return Checked(kind, record=verify.check_record(body, roots, settings))
        except Exception as exc:  # a PDF hostile enough to break the validator is invalid
            return Checked(kind, failure=f"Cannot be validated: {exc}.")
    with tempfile.NamedTemporaryFile(suffix=".asice") as handle:
        handle.write(body)
        handle.flush()
        package = verify.check_package_file(Path(handle.name), roots, settings)
        digests = _record_digests(Path(handle.name), list(package.records))
    return Checked(kind, package=package, digests=digests)


def shape(checked: Checked) -> dict[str, Any]:
    """The public report on what `check` found, without `registered` (the server adds it)."""
    from daemon.verification import report as verify

    if checked.package is not None:
        return public_package(verify.checked_package_report(checked.package), checked.digests)
    if checked.record is not None:
        return public_record(verify.checked_report(checked.record))
    problem = {"code": "pdf_invalid", "message": checked.failure}
    return {"kind": "record", "verdict": "invalid", "problems": [problem], "signatures": [],
            "school_id": None, "record_id": None, "academic_year": None,
            "basis": "certificates", "notes": []}  # fmt: skip


def public_record(report: dict[str, Any]) -> dict[str, Any]:
    said = report.get("record") or {}
    return {
        "kind": "record",
        "verdict": report["verdict"],
        "problems": report["problems"],
        "signatures": [{k: s.get(k) for k in _SIGNATURE_KEYS} for s in report["signatures"]],
        "school_id": report.get("school_id"),
        "record_id": said.get("record_id"),
        "academic_year": said.get("academic_year"),
        "basis": report.get("basis"),
        "notes": report.get("notes", []),
    }


def public_package(report: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    index = report.get("package") or {}
    records = {}
    for record_id, record in report["records"].items():
        shaped = public_record(record)
        shaped["record_id"] = record_id
        shaped["sha256"] = digests.get(record_id)
        records[record_id] = shaped
    return {
        "kind": "package",
        "verdict": report["verdict"],
        "problems": report["problems"],
        "school_id": index.get("school_id"),
        "academic_year": index.get("academic_year"),
        "submission_round": index.get("submission_round"),
        "seal": report["seal"],
        "basis": report["basis"],
        "notes": report["notes"],
        "pdfs_checked": report["pdfs_checked"],
        "records": records,
    }


def _record_digests(path: Path, record_ids: list[str]) -> dict[str, str]:
    """The sha256 of each checked record's PDF (the checks passed, so each entry is there)."""
    with zipfile.ZipFile(path) as archive:
        return {r: hashlib.sha256(archive.read(f"records/{r}.pdf")).hexdigest() for r in record_ids}
