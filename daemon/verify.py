"""`hocba-signer verify`: a report on a signed PDF or a package, for people and machines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from daemon.errors import NotAPdf
from daemon.pdf import validation
from daemon.stages import FIELD_NAMES


def report(pdf: bytes, trust_roots: list[Path]) -> dict[str, Any]:
    """Every signature: field, signer, time, intact/valid/trusted, what changed after it."""
    try:
        signatures = validation.validate_pdf(pdf, validation.load_certificates(trust_roots))
    except NotAPdf as exc:
        return {"valid": False, "error": exc.message, "signatures": []}
    rows = [_row(s) for s in signatures]
    in_order = [r["field"] for r in rows] == list(FIELD_NAMES[: len(rows)])
    # Bytes after the last signature that are not a new revision leave every
    # signature's bottom line intact; a record must still end where it was signed.
    ends_signed = bool(signatures) and covers_whole_file(signatures[-1])
    return {
        "valid": bool(rows) and all(r["bottom_line"] for r in rows) and ends_signed,
        "signatures": rows,
        "fields_in_legal_order": in_order,
        "last_signature_covers_whole_file": ends_signed,
        "issued": len(rows) == len(FIELD_NAMES) and in_order,
    }


def covers_whole_file(signature: validation.SignatureReport) -> bool:
    return signature.coverage == "ENTIRE_FILE"


def render(value: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(value, ensure_ascii=False, default=str)
    if "error" in value:
        return f"INVALID: {value['error']}"
    lines = [
        f"{'VALID' if value['valid'] else 'INVALID'}: {len(value['signatures'])} signatures"
        f"{', issued' if value['issued'] else ''}"
    ]
    if value["signatures"] and not value["last_signature_covers_whole_file"]:
        lines.append("  The file has bytes after its last signature.")
    for n, sig in enumerate(value["signatures"], 1):
        flags = ", ".join(
            f"{k}={'yes' if sig[k] else 'NO'}" for k in ("intact", "valid", "trusted")
        )
        lines.append(
            f"  {n}. {sig['field']}: {sig['signer']} (serial {sig['cert_serial']}) at "
            f"{sig['signing_time']}; {flags}; changes after: {sig['modification_level']}"
        )
    return "\n".join(lines)


def _row(sig: validation.SignatureReport) -> dict[str, Any]:
    data = dataclasses.asdict(sig)
    return {
        "field": data["field_name"],
        "signer": data["signer_subject"],
        "cert_serial": data["cert_serial"],
        "signing_time": sig.signing_time.isoformat() if sig.signing_time else None,
        "intact": sig.intact,
        "valid": sig.valid,
        "trusted": sig.trusted,
        "docmdp_level": sig.docmdp_level,
        "modification_level": sig.modification_level,
        "coverage": sig.coverage,
        "bottom_line": sig.bottom_line,
    }


def is_package(path: Path) -> bool:
    """A ZIP (an .asice container) rather than a PDF."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def package_report(path: Path, trust_roots: list[Path]) -> dict[str, Any]:
    """Container, manifest, CAdES signature and every PDF inside; problems by code."""
    from daemon.packaging import check

    checked = check.check_package(path, validation.load_certificates(trust_roots))
    cades = checked.cades
    return {
        "valid": checked.valid,
        "package": checked.index,
        "seal": None
        if cades is None
        else {
            "signer": cades.signer,
            "cert_serial": cades.cert_serial,
            "signing_time": cades.signing_time.isoformat() if cades.signing_time else None,
            "intact": cades.intact,
            "valid": cades.valid,
            "trusted": cades.trusted,
        },
        "pdfs_checked": checked.pdfs_checked,
        "problems": [dataclasses.asdict(p) for p in checked.problems],
    }


def render_package(value: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(value, ensure_ascii=False, default=str)
    index = value["package"]
    lines = [
        f"{'VALID' if value['valid'] else 'INVALID'}: package of school "
        f"{index.get('school_id', '?')}, {index.get('academic_year', '?')} round "
        f"{index.get('submission_round', '?')}, {index.get('records', 0)} records, "
        f"{value['pdfs_checked']} PDFs checked"
    ]
    seal = value["seal"]
    if seal:
        lines.append(
            f"  seal: {seal['signer']} (serial {seal['cert_serial']}) at {seal['signing_time']}; "
            f"intact={_yes(seal['intact'])}, trusted={_yes(seal['trusted'])}"
        )
    lines += [f"  {p['code']}: {p['message']}" for p in value["problems"]]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
