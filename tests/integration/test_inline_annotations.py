"""A record whose links fpdf2 wrote inline, issued at B-LTA with the real token and services.

pyHanko's difference analysis refuses a page /Annots array holding a direct dictionary
once a revision adds a signature field (the document timestamp); stage 1 makes each
such annotation an object of its own (daemon/pdf/annotations.py), so the record is
still issued.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from daemon.ltv.status import CertificateStatus
from daemon.pdf.validation import validate_pdf_async
from tests.integration.cli_kit import verify_json
from tests.pki_services_fixtures import *  # noqa: F403
from tests.pki_services_fixtures import MemoryStatusCache, ServicedHsm
from tests.unit.signing_kit import record

pytestmark = pytest.mark.integration


async def _issued_at_b_lta(
    serviced: ServicedHsm, pdf: bytes, session: aiohttp.ClientSession, cache: MemoryStatusCache
) -> bytes:
    settings = serviced.signing("B-LTA")
    return await serviced.issue(pdf, settings, session, CertificateStatus(session, cache, settings))


async def test_a_b_lta_record_with_inline_links_is_issued(
    serviced_hsm: ServicedHsm, status_checker, tmp_path: Path
) -> None:
    # Given a two-page record with a link on each page, inline in /Annots as fpdf2 writes it
    original = record(link=True)
    assert b"/Annots [<<" in original

    # When it is signed through its three stages at B-LTA
    session, cache = status_checker
    issued = await _issued_at_b_lta(serviced_hsm, original, session, cache)

    # Then each signature allows what came after it, the seal up to the whole file
    reports = await validate_pdf_async(issued, serviced_hsm.dev.trust_roots, expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    assert [r.modification_level for r in reports] == [
        "FORM_FILLING",
        "FORM_FILLING",
        "LTA_UPDATES",
    ]
    assert reports[-1].coverage == "ENTIRE_FILE"
    # and `hocba-signer verify` calls it issued
    path = tmp_path / "issued.pdf"
    path.write_bytes(issued)
    code, report = await verify_json(path, serviced_hsm.pki / "root.pem")
    assert (code, report["verdict"], report["problems"]) == (0, "issued", [])
