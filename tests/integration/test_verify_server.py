"""`hocba-signer verify-server`: the API and the page, against records issued for real.

Records are taken through the three stages by the running daemon (real RabbitMQ,
PostgreSQL, SoftHSM2), a package is built and sealed by its packager, and the server
checks them in its real process pool against the real registry. The page is driven in
Debian's chromium by Playwright; screenshots go to the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from daemon import app, topology
from daemon.blobs import FsStore
from daemon.dev import env as devenv
from daemon.packaging.builder import Packager
from daemon.settings import Settings
from daemon.verification import server
from tests import services
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import fresh_year, issue

ASICE = "application/vnd.etsi.asic-e+zip"
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class World:
    settings: Settings
    db: Any
    school: str
    issued: list[tuple[str, bytes]]  # (record_id, the issued PDF)
    unfinished: tuple[str, bytes]  # a record signed by its teacher only
    package: bytes

    def tampered(self) -> bytes:
        """The first issued record with one byte changed inside its first stream."""
        pdf = bytearray(self.issued[0][1])
        at = pdf.index(b"stream") + 20
        pdf[at] ^= 0x01
        return bytes(pdf)


@pytest.fixture(scope="module")
async def world(settings: Settings, dev_env: devenv.DevEnv) -> AsyncIterator[World]:
    """Two records issued and packaged, one left at the teacher's stage."""
    school = dev_env.schools[0]
    year = fresh_year()
    stop = asyncio.Event()
    async with (
        app.started(settings, stop) as running,
        services.status_collector(settings.amqp.url) as status,
        await aio_pika.connect(settings.amqp.url) as connection,
    ):
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        school_system = SchoolSystem(dev_env, exchange)
        infos = await issue(school_system, status, school, year, 2)
        info, _, sent = await school_system.first_stage(school)
        event = (await status.wait(sent.request_id))[0]
        store = FsStore(settings.store.path)
        issued = []
        async with running.db.connection() as conn:
            for i in infos:
                sha = await conn.fetchval(
                    "SELECT current_sha256 FROM records WHERE school_id = $1 AND record_id = $2",
                    school,
                    i.record_id,
                )
                issued.append((i.record_id, await store.get(sha)))
        packager = Packager(running.db, running.packages.packager.signing, store)
        built = await packager.build(school, year, 1)
        assert built is not None and built.sha256 is not None
        yield World(
            settings,
            running.db,
            school,
            issued,
            (info.record_id, await store.get(event["document_sha256"])),
            await store.get(built.sha256),
        )
        stop.set()


@pytest.fixture(scope="module")
async def checker(settings: Settings) -> AsyncIterator[server.PoolChecker]:
    one_worker = settings.verify_server.model_copy(update={"workers": 1})
    pool = server.PoolChecker(settings.model_copy(update={"verify_server": one_worker}))
    await pool.start()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def started(world: World, checker: server.PoolChecker, **limits: Any) -> str:
    """A verification server on a free port; its base URL (stopped at module end)."""
    section = world.settings.verify_server.model_copy(update=limits)
    web_app = server.build_app(section, checker, server.DatabaseRegistry(world.db))
    runner = await server.start(web_app, "127.0.0.1", 0)
    _runners.append(runner)
    return f"http://127.0.0.1:{server.bound_port(runner)}"


_runners: list[Any] = []


@pytest.fixture(scope="module")
async def base_url(world: World, checker: server.PoolChecker) -> AsyncIterator[str]:
    url = await started(world, checker, rate_per_minute=10_000, rate_burst=10_000)
    yield url
    for runner in _runners:
        await runner.cleanup()
    _runners.clear()


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, content_type: str = "application/pdf"
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{url}/v1/verify", data=body, headers={"Content-Type": content_type}
    ) as r:
        return r.status, await r.json(content_type=None)


# --- the API -------------------------------------------------------------------------


async def test_an_issued_record_is_issued_with_three_signers_and_registered(
    http: aiohttp.ClientSession, base_url: str, world: World
) -> None:
    record_id, pdf = world.issued[0]
    status, report = await post(http, base_url, pdf)
    assert status == 200
    assert report["kind"] == "record" and report["verdict"] == "issued", report["problems"]
    assert [s["field"] for s in report["signatures"]] == ["GVCN", "HieuTruong", "DauTruong"]
    assert [s["role"] for s in report["signatures"]] == [
        "homeroom_teacher",
        "principal",
        "school_seal",
    ]
    assert all(
        s["intact"] and s["valid"] and s["trusted"] and s["role_ok"] for s in report["signatures"]
    )
    # The test daemon signs at B-B: no signature timestamp, no revocation data in the file.
    assert [(s["timestamp_at"], s["revocation"]) for s in report["signatures"]] == [
        (None, "unknown")
    ] * 3
    assert report["registered"] == {
        "state": "issued",
        "school_id": world.school,
        "record_id": record_id,
        "replaced_by": None,
        "replaced_by_sha256": None,
    }
    assert report["sha256"] == hashlib.sha256(pdf).hexdigest()
    assert "student_id" not in str(report)


async def test_a_tampered_record_is_invalid_and_unknown_to_the_registry(
    http: aiohttp.ClientSession, base_url: str, world: World
) -> None:
    status, report = await post(http, base_url, world.tampered())
    assert status == 200
    assert report["verdict"] == "invalid"
    assert "signature_broken" in [p["code"] for p in report["problems"]]
    assert report["registered"]["state"] == "unknown"


async def test_an_unfinished_record_is_not_issued_and_in_progress(
    http: aiohttp.ClientSession, base_url: str, world: World
) -> None:
    record_id, pdf = world.unfinished
    status, report = await post(http, base_url, pdf)
    assert status == 200
    assert report["verdict"] == "not_issued"
    assert [p["code"] for p in report["problems"]] == ["incomplete"]
    assert report["registered"]["state"] == "in_progress"
    assert report["registered"]["record_id"] == record_id


async def test_a_package_is_issued_with_a_report_per_record(
    http: aiohttp.ClientSession, base_url: str, world: World
) -> None:
    status, report = await post(http, base_url, world.package, ASICE)
    assert status == 200
    assert report["kind"] == "package" and report["verdict"] == "issued", report["problems"]
    assert report["seal"]["school_id"] == world.school
    assert set(report["records"]) == {r for r, _ in world.issued}
    for record in report["records"].values():
        assert record["verdict"] == "issued"
        assert record["registered"]["state"] == "issued"


async def test_by_digest_says_whether_a_file_is_registered_without_personal_data(
    http: aiohttp.ClientSession, base_url: str, world: World
) -> None:
    record_id, pdf = world.issued[1]
    sha = hashlib.sha256(pdf).hexdigest()
    async with http.get(f"{base_url}/v1/records/by-digest/{sha}") as r:
        assert r.status == 200
        found = await r.json()
    assert found["registered"] is True and found["state"] == "issued"
    assert (found["school_id"], found["record_id"]) == (world.school, record_id)
    assert [s["stage"] for s in found["signed"]] == ["homeroom_teacher", "principal", "school_seal"]
    assert not {"student_id", "signer_id", "signer"} & set(found)
    async with http.get(f"{base_url}/v1/records/by-digest/{'0' * 64}") as r:
        assert r.status == 200
        assert (await r.json())["registered"] is False
    async with http.get(f"{base_url}/v1/records/by-digest/not-a-digest") as r:
        assert r.status == 400


async def test_a_body_over_the_limit_is_refused_while_it_is_read(
    http: aiohttp.ClientSession, world: World, checker: server.PoolChecker
) -> None:
    url = await started(world, checker, max_body_bytes=4096)
    status, answer = await post(http, url, b"%PDF-1.7\n" + b"x" * 10_000)
    assert (status, answer["error"]) == (413, "too_large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        yield b"%PDF-1.7\n"
        for _ in range(10):
            yield b"x" * 1024

    status, answer = await post(http, url, chunked())
    assert (status, answer["error"]) == (413, "too_large")


async def test_anything_but_a_pdf_or_package_is_415(
    http: aiohttp.ClientSession, base_url: str, world: World
) -> None:
    assert (await post(http, base_url, b"hello", "text/plain"))[0] == 415
    # The declared type must match the bytes.
    assert (await post(http, base_url, b"hello, not a PDF", "application/pdf"))[0] == 415
    assert (await post(http, base_url, world.issued[0][1], ASICE))[0] == 415


async def test_a_client_over_its_rate_is_429_with_retry_after(
    http: aiohttp.ClientSession, world: World, checker: server.PoolChecker
) -> None:
    url = await started(world, checker, rate_burst=2, rate_per_minute=1)
    sha = "0" * 64
    for _ in range(2):
        async with http.get(f"{url}/v1/records/by-digest/{sha}") as r:
            assert r.status == 200
    async with http.post(
        f"{url}/v1/verify", data=world.issued[0][1], headers={"Content-Type": "application/pdf"}
    ) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"] == "rate_limited"


async def test_every_answer_carries_a_strict_content_security_policy(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    for path in ("/", "/static/app.js", f"/r/{'0' * 64}", "/v1/records/by-digest/x"):
        async with http.get(base_url + path) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"


# --- the page, in a real browser -----------------------------------------------------


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        await launched.close()


@dataclass
class Page:
    page: Any
    requested: list[str]
    console_errors: list[str]


@pytest.fixture
async def page(browser: Any, base_url: str) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, locale="vi-VN")
    tab = await context.new_page()
    seen = Page(tab, [], [])
    tab.on("request", lambda r: seen.requested.append(r.url))
    tab.on("console", lambda m: m.type == "error" and seen.console_errors.append(m.text))
    yield seen
    await context.close()
    # Everything the page needed came from the server itself, and nothing was refused.
    assert all(u.startswith(base_url) for u in seen.requested), seen.requested
    assert seen.console_errors == []


def upload_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("HOCBA_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


async def test_the_page_shows_an_issued_record_with_its_three_signers(
    page: Page, base_url: str, world: World, tmp_path: Path
) -> None:
    record_id, pdf = world.issued[0]
    await page.page.goto(base_url + "/")
    await page.page.set_input_files("#file", str(upload_file(tmp_path, f"{record_id}.pdf", pdf)))
    verdict = page.page.locator("#verdict")
    await verdict.wait_for()
    assert "Học bạ hợp lệ — đã ban hành" in await verdict.inner_text()
    rows = page.page.locator("tr.signature")
    assert await rows.count() == 3
    texts = [await rows.nth(i).inner_text() for i in range(3)]
    for role, text in zip(
        ["Giáo viên chủ nhiệm", "Hiệu trưởng", "Dấu của nhà trường"], texts, strict=True
    ):
        assert role in text and "✓ Chữ ký đúng" in text
        assert "Dấu thời gian: không có" in text and "Chứng thư số lúc ký: không rõ" in text
    assert (
        "Đây đúng là bản học bạ đã ban hành" in await page.page.locator(".registered").inner_text()
    )
    await shot(page.page, tmp_path, "issued")


async def test_the_page_says_a_tampered_record_is_invalid_and_why(
    page: Page, base_url: str, world: World, tmp_path: Path
) -> None:
    await page.page.goto(base_url + "/")
    await page.page.set_input_files(
        "#file", str(upload_file(tmp_path, "hoc-ba.pdf", world.tampered()))
    )
    verdict = page.page.locator("#verdict")
    await verdict.wait_for()
    assert "KHÔNG hợp lệ" in await verdict.inner_text()
    problems = await page.page.locator("ul.problems").inner_text()
    assert "Nội dung đã bị thay đổi sau khi ký." in problems
    await shot(page.page, tmp_path, "tampered")


async def test_the_page_checks_a_package_in_english(
    page: Page, base_url: str, world: World, tmp_path: Path
) -> None:
    await page.page.goto(base_url + "/")
    await page.page.click("#lang")  # the language toggle
    await page.page.wait_for_url("**/?lang=en")
    assert await page.page.locator("h1").inner_text() == "Check a digital school record"
    await page.page.set_input_files(
        "#file", str(upload_file(tmp_path, "2025-round1.asice", world.package))
    )
    verdict = page.page.locator("#verdict").first
    await verdict.wait_for()
    assert await verdict.inner_text() == "Valid package"
    assert await page.page.locator(".record").count() == len(world.issued)
    await shot(page.page, tmp_path, "package")


async def test_the_qr_landing_page_names_the_record_and_matches_the_file(
    page: Page, base_url: str, world: World, tmp_path: Path
) -> None:
    record_id, pdf = world.issued[0]
    sha = hashlib.sha256(pdf).hexdigest()
    await page.page.goto(f"{base_url}/r/{sha}")
    landing = await page.page.locator("section.landing").inner_text()
    assert "Đây đúng là bản học bạ đã ban hành" in landing
    assert record_id in landing and world.school in landing
    await shot(page.page, tmp_path, "landing")
    # The holder of the paper compares a file with it: the right one, then another.
    await page.page.set_input_files("#file", str(upload_file(tmp_path, "a.pdf", pdf)))
    await page.page.locator("#file-match").wait_for()
    assert await page.page.locator("#file-match").inner_text() == "Tệp này đúng là bản đã được in."
    await page.page.set_input_files(
        "#file", str(upload_file(tmp_path, "b.pdf", world.issued[1][1]))
    )
    await page.page.locator("#file-match.other").wait_for()
    await shot(page.page, tmp_path, "landing-other-file")
