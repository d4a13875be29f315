"""`verify`'s timestamp_at and revocation on records signed by the real token and dev PKI.

Records are signed through their three stages by SoftHSM2 keys, stamped by the dev
TSA and checked against the dev OCSP responder and CRL (tests/pki_services_fixtures);
the report reads them back from the file alone, with every service down.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from asn1crypto import pem
from cryptography import x509

from daemon.clock import VIETNAM
from daemon.database import Database
from daemon.dev import pki_services
from daemon.errors import CertificateRevoked
from daemon.hsm import SigningPool
from daemon.ltv.status import CertificateStatus
from daemon.settings import DatabaseSettings, Settings
from daemon.stages import Stage
from daemon.verification import report as verify
from daemon.verification import server
from tests.integration.attack_kit import Forge, Listed, package
from tests.pki_services_fixtures import *  # noqa: F403
from tests.pki_services_fixtures import SERVICED_SCHOOL, MemoryStatusCache, ServicedHsm

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# A spare teacher of the serviced school that no other test revokes.
TEACHER = "GV-0903"


async def _issue(
    serviced: ServicedHsm,
    level: str,
    pdf: bytes,
    session: aiohttp.ClientSession,
    cache: MemoryStatusCache,
    teacher: str | None = None,
) -> bytes:
    """`pdf` signed by its school's teacher (or `teacher`), principal and seal, at `level`."""
    settings = serviced.signing(level)
    keys = {Stage.HOMEROOM_TEACHER: serviced.dev.key(SERVICED_SCHOOL, teacher)} if teacher else {}
    status = CertificateStatus(session, cache, settings)
    return await serviced.issue(pdf, settings, session, status, keys=keys)


def _keep(path: Path) -> None:
    """A copy of `path` in $HOCBA_SCREENSHOTS, to look at (and time: bench/evidence.py)."""
    keep = os.environ.get("HOCBA_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def _roots(serviced: ServicedHsm, tmp_path: Path) -> list[Path]:
    path = tmp_path / "roots.pem"
    path.write_bytes(b"".join(pem.armor("CERTIFICATE", c.dump()) for c in serviced.dev.trust_roots))
    return [path]


async def _report_offline(serviced: ServicedHsm, pdf: bytes, roots: list[Path]) -> dict[str, Any]:
    """verify's report with the TSA, OCSP responder and CRL all down: the file alone."""
    serviced.running.set_down("ocsp", "crl", "tsa")
    try:
        return await asyncio.to_thread(verify.report, pdf, roots)
    finally:
        serviced.running.set_down()


async def test_a_b_lta_record_shows_its_timestamps_and_good_signers_even_once_revoked(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker, tmp_path: Path
) -> None:
    session, cache = status_checker
    roots = _roots(serviced_hsm, tmp_path)

    # Given a record issued at B-LTA
    issued = await _issue(serviced_hsm, "B-LTA", homeroom_pdf, session, cache, TEACHER)

    # When verify reports on it, with nothing reachable
    value = await _report_offline(serviced_hsm, issued, roots)

    # Then it is issued, and each signature has a trusted timestamp within seconds of
    # its claimed signing time and a signer whose certificate was good
    assert value["verdict"] == "issued", value["problems"]
    rows = value["signatures"]
    assert [r["field"] for r in rows] == ["GVCN", "HieuTruong", "DauTruong"]
    for row in rows:
        stamped = datetime.fromisoformat(row["timestamp_at"])
        signed = datetime.fromisoformat(row["signed_at"])
        assert stamped.utcoffset() == timedelta(0)
        assert abs(stamped - signed) < timedelta(seconds=30), row
        assert row["revocation"] == "good", row
    assert verify.render(value, as_json=False).count("revocation: good") == 3

    # When the CA then revokes the teacher who signed it, and its responder says so
    assert pki_services.revoke(serviced_hsm.pki, serviced_hsm.serial(TEACHER))
    teacher_key = serviced_hsm.dev.key(SERVICED_SCHOOL, TEACHER)
    pool = SigningPool(serviced_hsm.dev.settings(1), serviced_hsm.signing("B-B"))
    await pool.start()
    try:
        fresh = CertificateStatus(session, MemoryStatusCache(), serviced_hsm.signing("B-B"))
        cert = x509.load_der_x509_certificate((await pool.certificate(teacher_key)).dump())
        issuer = x509.load_der_x509_certificate((await pool.chain())[0].dump())
        with pytest.raises(CertificateRevoked):
            await fresh.check(cert, issuer)
    finally:
        await pool.close()

    # Then the record still shows what its embedded data said at signing: good
    again = await _report_offline(serviced_hsm, issued, roots)
    assert again["verdict"] == "issued"
    assert [r["revocation"] for r in again["signatures"]] == ["good"] * 3
    assert [r["timestamp_at"] for r in again["signatures"]] == [r["timestamp_at"] for r in rows]


async def test_a_b_b_record_has_no_timestamps_and_unknown_status(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker, tmp_path: Path
) -> None:
    session, cache = status_checker
    issued = await _issue(serviced_hsm, "B-B", homeroom_pdf, session, cache)
    (tmp_path / "hoc-ba-b-b.pdf").write_bytes(issued)
    _keep(tmp_path / "hoc-ba-b-b.pdf")

    value = await _report_offline(serviced_hsm, issued, _roots(serviced_hsm, tmp_path))

    assert value["verdict"] == "issued", value["problems"]
    assert [r["timestamp_at"] for r in value["signatures"]] == [None] * 3
    assert [r["revocation"] for r in value["signatures"]] == ["unknown"] * 3


async def test_a_package_reports_each_records_timestamps_and_status(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker, tmp_path: Path
) -> None:
    session, cache = status_checker
    # Given a package sealed by the school, holding one B-LTA record and one B-B record
    lta = await _issue(serviced_hsm, "B-LTA", homeroom_pdf, session, cache)
    plain = await _issue(serviced_hsm, "B-B", homeroom_pdf + b"\n", session, cache)
    pool = SigningPool(serviced_hsm.dev.settings(1), serviced_hsm.signing("B-B"))
    await pool.start()
    try:
        listed = [
            Listed("2025-2026-5A-01", "HS-01", lta),
            Listed("2025-2026-5A-02", "HS-02", plain),
        ]
        path = await package(
            Forge(serviced_hsm.dev, pool), tmp_path / "p.asice", SERVICED_SCHOOL, listed
        )
    finally:
        await pool.close()

    # When verify reports on the package, with nothing reachable
    roots = _roots(serviced_hsm, tmp_path)
    serviced_hsm.running.set_down("ocsp", "crl", "tsa")
    try:
        value = await asyncio.to_thread(verify.package_report, path, roots)
    finally:
        serviced_hsm.running.set_down()

    # Then each record carries its own signatures' evidence, as a record's report does
    assert value["verdict"] == "issued", value["problems"]
    rows = {rid: r["signatures"] for rid, r in value["records"].items()}
    assert [r["revocation"] for r in rows["2025-2026-5A-01"]] == ["good"] * 3
    assert all(r["timestamp_at"] for r in rows["2025-2026-5A-01"])
    assert [r["revocation"] for r in rows["2025-2026-5A-02"]] == ["unknown"] * 3
    assert [r["timestamp_at"] for r in rows["2025-2026-5A-02"]] == [None] * 3


@pytest.fixture
async def lta_server(
    serviced_hsm: ServicedHsm, tmp_path: Path
) -> AsyncIterator[tuple[str, list[Path]]]:
    """A verification server judging by the serviced PKI, in its real process pool.

    Its registry is a database that cannot be reached: the report is then the
    certificates' (with a note), which is all this test looks at.
    """
    roots = _roots(serviced_hsm, tmp_path)
    base = Settings()
    settings = base.model_copy(
        update={
            "signing": base.signing.model_copy(update={"trust_roots": roots}),
            "verify_server": base.verify_server.model_copy(update={"workers": 1}),
        }
    )
    checker = server.PoolChecker(settings)
    await checker.start()
    unreachable = Database(DatabaseSettings(dsn="postgresql://nobody@127.0.0.1:9/none"))
    web_app = server.build_app(
        settings.verify_server, checker, server.DatabaseRegistry(unreachable)
    )
    runner = await server.start(web_app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.bound_port(runner)}", roots
    finally:
        await runner.cleanup()
        checker.close()


async def test_the_page_shows_each_signatures_timestamp_and_status(
    serviced_hsm: ServicedHsm,
    homeroom_pdf: bytes,
    status_checker,
    lta_server: tuple[str, list[Path]],
    tmp_path: Path,
) -> None:
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    session, cache = status_checker
    base_url, roots = lta_server
    issued = await _issue(serviced_hsm, "B-LTA", homeroom_pdf, session, cache)
    (tmp_path / "hoc-ba.pdf").write_bytes(issued)
    _keep(tmp_path / "hoc-ba.pdf")
    _keep(roots[0])
    value = await asyncio.to_thread(verify.report, issued, roots)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            for lang, stamp_word, good_word in (
                ("vi", "Dấu thời gian", "còn hiệu lực, chưa bị thu hồi"),
                ("en", "Timestamp", "valid, not revoked"),
            ):
                context = await browser.new_context(viewport={"width": 1100, "height": 900})
                page = await context.new_page()
                await page.goto(f"{base_url}/?lang={lang}")
                await page.set_input_files("#file", str(tmp_path / "hoc-ba.pdf"))
                await page.locator("#verdict").wait_for()
                rows = page.locator("tr.signature")
                assert await rows.count() == 3
                for i, sig in enumerate(value["signatures"]):
                    text = await rows.nth(i).locator(".evidence").inner_text()
                    assert text.count(stamp_word) == 1 and good_word in text, text
                    # the TSA's time, as Vietnam time, in the line under the signing time
                    stamped = datetime.fromisoformat(sig["timestamp_at"]).astimezone(VIETNAM)
                    assert stamped.strftime("%H:%M") in text, text
                await page.screenshot(path=str(tmp_path / f"b-lta-{lang}.png"), full_page=True)
                _keep(tmp_path / f"b-lta-{lang}.png")
                await context.close()
        finally:
            await browser.close()
