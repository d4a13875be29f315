"""PAdES signing of a record through its three stages, against a SoftHSM token."""

from __future__ import annotations

import asyncio
from io import BytesIO

import pytest
from fpdf import FPDF
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from daemon.errors import NotAPdf
from daemon.hsm import SigningPool, SignJob
from daemon.pdf.pades import inspect_pdf
from daemon.pdf.validation import validate_pdf, validate_pdf_async
from daemon.stages import ORDER, Stage
from tests.hsm_fixtures import SCHOOLS, DevHsm

SCHOOL = SCHOOLS[0]
MAX_BYTES = 1024 * 1024


async def sign_through(
    pool: SigningPool, dev: DevHsm, pdf: bytes, stages: tuple[Stage, ...]
) -> bytes:
    for stage in stages:
        result = await pool.sign(SignJob(pdf, stage, dev.stage_key(SCHOOL, stage)))
        pdf = result.pdf
    return pdf


async def test_three_stages_validate_as_a_locked_record(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given a pool and an unsigned homeroom record
    pool = await signing_pool(workers=1)
    inspect_pdf(homeroom_pdf, MAX_BYTES)

    # When the teacher, the principal and the seal sign in order
    issued = await sign_through(pool, dev_hsm, homeroom_pdf, ORDER)

    # Then three signatures validate, the first certifies for form filling, the seal locks
    reports = await validate_pdf_async(issued, dev_hsm.trust_roots, expected=3)
    assert [r.field_name for r in reports] == ["GVCN", "HieuTruong", "DauTruong"]
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    assert reports[0].docmdp_level == "FILL_FORMS"
    assert reports[2].docmdp_level == "NO_CHANGES"
    assert [r.modification_level for r in reports] == ["FORM_FILLING", "FORM_FILLING", "NONE"]
    assert reports[2].signer_subject == f"Truong Tieu hoc {SCHOOL}"
    assert issued.startswith(homeroom_pdf)  # incremental updates only


async def test_change_after_the_seal_is_detected(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    issued = await sign_through(pool, dev_hsm, homeroom_pdf, ORDER)

    # When someone appends an update that draws on the page
    writer = IncrementalPdfFileWriter(BytesIO(issued))
    stream = generic.StreamObject(stream_data=b"0 0 m 100 100 l S")
    writer.add_stream_to_page(0, writer.add_object(stream))
    out = BytesIO()
    writer.write(out)

    # Then every signature is still intact, but none accepts the change
    reports = await asyncio.to_thread(validate_pdf, out.getvalue(), dev_hsm.trust_roots)
    assert all(r.intact and r.valid for r in reports)
    seal = reports[-1]
    assert seal.docmdp_ok is False
    assert seal.bottom_line is False
    assert seal.modification_level == "OTHER"


async def test_principal_before_teacher_is_refused(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    key = dev_hsm.stage_key(SCHOOL, Stage.PRINCIPAL)
    with pytest.raises(NotAPdf, match="no signature field HieuTruong"):
        await pool.sign(SignJob(homeroom_pdf, Stage.PRINCIPAL, key))


async def test_a_stage_cannot_sign_twice(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    stages = (Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL)
    signed = await sign_through(pool, dev_hsm, homeroom_pdf, stages)
    for stage in stages:
        with pytest.raises(NotAPdf):
            await pool.sign(SignJob(signed, stage, dev_hsm.stage_key(SCHOOL, stage)))


async def test_intake_refuses_signed_documents(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    signed = await sign_through(pool, dev_hsm, homeroom_pdf, (Stage.HOMEROOM_TEACHER,))
    with pytest.raises(NotAPdf, match="already signed"):
        inspect_pdf(signed, MAX_BYTES)


def encrypted_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="")
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="secret")
    return bytes(pdf.output())


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"", "%PDF-"),
        (b"GIF89a not a pdf", "%PDF-"),
        (b"%PDF-1.7\n" + b"\x00garbage" * 100, "cannot be parsed"),
        (b"%PDF-1.7\n" + b"x" * (MAX_BYTES + 1), "limit"),
    ],
)
def test_intake_refuses_garbage(document: bytes, reason: str) -> None:
    with pytest.raises(NotAPdf, match=reason):
        inspect_pdf(document, MAX_BYTES)


def test_intake_refuses_truncated_and_encrypted(homeroom_pdf: bytes) -> None:
    with pytest.raises(NotAPdf):
        inspect_pdf(homeroom_pdf[: len(homeroom_pdf) // 2], MAX_BYTES)
    with pytest.raises(NotAPdf, match="encrypted"):
        inspect_pdf(encrypted_pdf(), MAX_BYTES)


def test_validate_counts_signatures(dev_hsm: DevHsm, homeroom_pdf: bytes) -> None:
    assert validate_pdf(homeroom_pdf, dev_hsm.trust_roots) == []
    with pytest.raises(NotAPdf, match="Expected 3 signatures, found 0"):
        validate_pdf(homeroom_pdf, dev_hsm.trust_roots, expected=3)
    with pytest.raises(NotAPdf):
        validate_pdf(b"not a pdf", dev_hsm.trust_roots)


async def test_untrusted_root_is_reported(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    signed = await sign_through(pool, dev_hsm, homeroom_pdf, (Stage.HOMEROOM_TEACHER,))
    [report] = await validate_pdf_async(signed, trust_roots=[])
    assert report.intact and report.valid
    assert not report.trusted and not report.bottom_line
