"""Every signed output is validated before its figures count (pyHanko's validator)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from daemon.pdf import validation

EXPECTED_LEVELS = ["FORM_FILLING", "FORM_FILLING", "NONE"]
# At B-LTA the seal is followed by a DSS and a document timestamp, which PAdES allows.
EXPECTED_LEVELS_LTA = ["FORM_FILLING", "FORM_FILLING", "LTA_UPDATES"]


def _check(pdf: bytes, roots: list[Path]) -> str | None:
    """None if the issued PDF is a valid, locked three-signature record; else why not."""
    try:
        reports = validation.validate_pdf(pdf, validation.load_certificates(roots), expected=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if not all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports):
        return "; ".join(r.summary for r in reports)
    if [r.modification_level for r in reports] not in (EXPECTED_LEVELS, EXPECTED_LEVELS_LTA):
        return f"modification levels {[r.modification_level for r in reports]}"
    if reports[0].docmdp_level != "FILL_FORMS" or reports[2].docmdp_level != "NO_CHANGES":
        return "certification or lock missing"
    return None


def validate(issued: dict[str, list[bytes]], roots: list[Path]) -> dict[str, Any]:
    """Per source: documents and signatures checked, and the failures."""
    report: dict[str, Any] = {}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        for source, pdfs in issued.items():
            errors = [e for e in pool.map(_check, pdfs, [roots] * len(pdfs)) if e]
            report[source] = {
                "documents": len(pdfs),
                "valid_signatures": 3 * (len(pdfs) - len(errors)),
                "errors": errors[:5],
            }
    return report
