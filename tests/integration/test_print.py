"""`hocba-signer print`: a record issued for real, printed, and its QR code read back from paper.

The page is rendered as a printer would get it (`pdftoppm -r 150`) and the QR code read
by `zbarimg` (zbar-tools), as a phone would; both are Debian packages of `make deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon import cli
from daemon.app import Running
from daemon.blobs import FsStore
from daemon.dev import env as devenv
from daemon.settings import Settings
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import fresh_year, issue
from tests.services import StatusEvents

PUBLIC_URL = "https://xacthuc.hocba.example.gov.vn"


async def run(*command: str) -> str:
    """A tool's standard output (off the event loop: the daemon runs in it)."""
    done = await asyncio.to_thread(
        subprocess.run, command, check=True, capture_output=True, text=True
    )
    return done.stdout


def tools() -> None:
    missing = [t for t in ("pdftoppm", "zbarimg", "pdftotext") if shutil.which(t) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"{', '.join(missing)} not installed (poppler-utils, zbar-tools)")


async def print_command(dev_env: devenv.DevEnv, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(["--config", str(dev_env.config_path), "print", *args])

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_a_printed_copy_ends_with_a_verification_page_whose_qr_opens_the_record(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    dev_env: devenv.DevEnv,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tools()
    # Given an issued record
    school = dev_env.schools[1]
    (info,) = await issue(school_system, status, school, fresh_year(), 1)
    async with daemon.db.connection() as conn:
        sha = await conn.fetchval(
            "SELECT current_sha256 FROM records WHERE school_id = $1 AND record_id = $2",
            school,
            info.record_id,
        )
    record_pages = int(
        await run("qpdf", "--show-npages", str(FsStore(settings.store.path).path(sha)))
    )
    monkeypatch.setenv("HOCBA_VERIFY_SERVER__PUBLIC_URL", PUBLIC_URL + "/")

    # When it is printed
    out = tmp_path / "copy.pdf"
    code, printed, err = await print_command(
        dev_env, "--school", school, "--record", info.record_id, "--out", str(out)
    )
    assert code == 0, err
    assert printed.strip() == str(out)

    # Then the record's pages come first, and the last page is the verification page
    pages = int(await run("qpdf", "--show-npages", str(out)))
    assert pages == record_pages + 1
    text = await run("pdftotext", "-f", str(pages), "-l", str(pages), str(out), "-")
    assert "bản in trên giấy của học bạ số" in text
    assert info.record_id in text and school in text and sha in text
    for role in ("Giáo viên chủ nhiệm", "Hiệu trưởng", "Dấu của nhà trường"):
        assert role in text
    # and each signature's timestamp and status (B-B here: none, and not known)
    assert text.count("Dấu thời gian: không có") == 3
    assert text.count("Chứng thư số lúc ký: không rõ") == 3
    # and its QR code, read from the page as printed, opens the landing page of that version.
    last = str(pages)
    await run(
        "pdftoppm", "-r", "150", "-png", "-f", last, "-l", last, str(out), str(tmp_path / "page")
    )
    (png,) = tmp_path.glob("page*.png")
    if os.environ.get("HOCBA_SCREENSHOTS"):
        shutil.copy(png, Path(os.environ["HOCBA_SCREENSHOTS"]) / "printed-page.png")
    read = await run("zbarimg", "--quiet", "--raw", str(png))
    assert read.strip() == f"{PUBLIC_URL}/r/{sha}"
    # The copy is a copy: no signature of the record is carried into it.
    assert b"/ByteRange" not in out.read_bytes()
    assert hashlib.sha256(out.read_bytes()).hexdigest() != sha


async def test_an_unfinished_record_is_not_printed(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    dev_env: devenv.DevEnv,
    tmp_path: Path,
) -> None:
    school = dev_env.schools[1]
    info, _, sent = await school_system.first_stage(school)
    await status.wait(sent.request_id)
    code, _, err = await print_command(
        dev_env, "--school", school, "--record", info.record_id, "--out", str(tmp_path / "x.pdf")
    )
    assert code == 2
    assert "is not issued (1 of 3 signatures)" in err
    assert not (tmp_path / "x.pdf").exists()
