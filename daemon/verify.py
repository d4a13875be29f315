"""`hocba-signer verify`: a validation report of a signed PDF, for people and machines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from daemon import pades
from daemon.errors import NotAPdf
from daemon.stages import FIELD_NAMES


def report(pdf: bytes, trust_roots: list[Path]) -> dict[str, Any]:
    """Every signature: field, signer, time, intact/valid/trusted, what changed after it."""
    try:
        signatures = pades.validate_pdf(pdf, pades.load_certificates(trust_roots))
    except NotAPdf as exc:
        return {"valid": False, "error": exc.message, "signatures": []}
    rows = [_row(s) for s in signatures]
    in_order = [r["field"] for r in rows] == list(FIELD_NAMES[: len(rows)])
    return {
        "valid": bool(rows) and all(r["bottom_line"] for r in rows),
        "signatures": rows,
        "fields_in_legal_order": in_order,
        "issued": len(rows) == len(FIELD_NAMES) and in_order,
    }


def render(value: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(value, ensure_ascii=False, default=str)
    if "error" in value:
        return f"INVALID: {value['error']}"
    lines = [
        f"{'VALID' if value['valid'] else 'INVALID'}: {len(value['signatures'])} signatures"
        f"{', issued' if value['issued'] else ''}"
    ]
    for n, sig in enumerate(value["signatures"], 1):
        flags = ", ".join(
            f"{k}={'yes' if sig[k] else 'NO'}" for k in ("intact", "valid", "trusted")
        )
        lines.append(
            f"  {n}. {sig['field']}: {sig['signer']} (serial {sig['cert_serial']}) at "
            f"{sig['signing_time']}; {flags}; changes after: {sig['modification_level']}"
        )
    return "\n".join(lines)


def _row(sig: pades.SignatureReport) -> dict[str, Any]:
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
