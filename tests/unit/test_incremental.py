"""Stages 2 and 3 through daemon/pdf/incremental.py: the signatures pyHanko would have written.

Each record is signed twice from the same teacher-signed document (stage 1 written by
daemon/pdf/certification.py or by pyHanko), once by the fast path and once by the pyHanko
path, and pyHanko's validator must report the same for both; poppler's pdfsig must
accept them. Documents the fast path does not expect go to pyHanko, which signs or
refuses them as it always has.
"""

from __future__ import annotations

import re
import subprocess
import zlib
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from daemon.errors import ConfigError, NotAPdf
from daemon.pdf import incremental, pades, validation
from daemon.pdf.incremental import ContentsTooLarge
from daemon.pdf.reader import Unsupported
from daemon.stages import ORDER, Stage
from tests.unit.signing_kit import (
    BYTES_RESERVED,
    LATER_STAGES,
    SIGNED_AT,
    Pki,
    fill_field,
    make_pki,
    record,
    rewritten,
    sign,
    signed_pdf,
)

# Documents


def _png_predicted(pdf: bytes) -> bytes:
    """`pdf` with its last xref stream PNG-predicted (/Predictor 12), as qpdf writes them.

    Every row uses the filter Up, as qpdf writes it; the stream keeps its offset, so
    nothing else in the file moves.
    """
    startxref = int(re.findall(rb"startxref\s+(\d+)\s+%%EOF", pdf)[-1])
    head, _, rest = pdf[startxref:].partition(b"/Length ")
    length, _, rest = rest.partition(b"\n>>\nstream\n")
    rows = zlib.decompress(rest[: int(length)])
    data = zlib.compress(_png_encode(rows, columns=11))
    params = b"/Filter /FlateDecode\n/DecodeParms << /Columns 11 /Predictor 12 >>\n"
    head = head.replace(b"/Filter /FlateDecode\n", params)
    tail = b"\nendstream\nendobj\n\nstartxref\n%d\n%%%%EOF\n" % startxref
    return pdf[:startxref] + head + b"/Length %d\n>>\nstream\n" % len(data) + data + tail


def _png_encode(data: bytes, columns: int) -> bytes:
    out, above = bytearray(), bytes(columns)
    for at in range(0, len(data), columns):
        row = data[at : at + columns]
        out += b"\x02" + bytes((x - up) & 0xFF for x, up in zip(row, above, strict=True))
        above = row
    return bytes(out)


ORIGINALS = {
    "classic_xref_table": record,
    "object_streams": lambda: rewritten(record()),
    "png_predicted_xref_stream": lambda: _png_predicted(rewritten(record(), extensions="plain")),
}


# Stage 1 as daemon/pdf/certification.py writes it, and as pyHanko does.
FIRST_STAGE = {"certification": signed_pdf, "pyhanko": pades._prepare_and_sign_pyhanko}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(
    scope="module",
    params=[(original, first) for original in sorted(ORIGINALS) for first in FIRST_STAGE],
    ids="-".join,
)
def teacher_signed(request: pytest.FixtureRequest, pki: Pki) -> bytes:
    """A record as stage 1 leaves it, for each kind of original document and stage 1 writer."""
    original, first = request.param
    return sign(ORIGINALS[original](), (Stage.HOMEROOM_TEACHER,), pki, FIRST_STAGE[first])


@pytest.fixture(scope="module")
def plain_teacher_signed(pki: Pki) -> bytes:
    """A record from a classic PDF as stage 1 leaves it."""
    return sign(record(), (Stage.HOMEROOM_TEACHER,), pki)


# Signing


def test_later_stages_take_the_fast_path_and_validate_as_pyhanko_does(
    teacher_signed: bytes, pki: Pki
) -> None:
    # When the principal and the seal sign, through prepare_and_sign and through pyHanko
    principal = sign(teacher_signed, (Stage.PRINCIPAL,), pki)
    issued = sign(principal, (Stage.SCHOOL_SEAL,), pki)
    by_pyhanko = sign(teacher_signed, LATER_STAGES, pki, pades._prepare_and_sign_pyhanko)

    # Then prepare_and_sign wrote exactly what the fast path writes (it is deterministic)
    assert principal == fill_field(teacher_signed, Stage.PRINCIPAL, pki)
    assert issued == fill_field(principal, Stage.SCHOOL_SEAL, pki)
    # ... and pyHanko's validator finds the same three signatures in both records
    reports = validation.validate_pdf(issued, [pki.root], expected=3)
    assert reports == validation.validate_pdf(by_pyhanko, [pki.root], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    assert [r.docmdp_level for r in reports] == ["FILL_FORMS", None, "NO_CHANGES"]
    assert [r.modification_level for r in reports] == ["FORM_FILLING", "FORM_FILLING", "NONE"]
    assert [r.coverage for r in reports] == ["ENTIRE_REVISION", "ENTIRE_REVISION", "ENTIRE_FILE"]
    assert issued.startswith(principal) and principal.startswith(teacher_signed)


def test_each_update_keeps_the_kind_of_xref_section(teacher_signed: bytes, pki: Pki) -> None:
    principal = fill_field(teacher_signed, Stage.PRINCIPAL, pki)
    issued = fill_field(principal, Stage.SCHOOL_SEAL, pki)
    startxref = int(re.findall(rb"startxref\s+(\d+)", teacher_signed)[-1])
    uses_streams = not teacher_signed.startswith(b"xref", startxref)
    for before, after in ((teacher_signed, principal), (principal, issued)):
        update = after[len(before) :]
        assert (b"/Type /XRef" in update) is uses_streams
        assert (b"\nxref\n" in update) is not uses_streams


def test_pdfsig_accepts_every_signature(teacher_signed: bytes, pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "issued.pdf"
    path.write_bytes(sign(teacher_signed, LATER_STAGES, pki))
    result = subprocess.run(
        ["pdfsig", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.count("Signature Validation: Signature is Valid.") == 3, result.stdout
    assert "Total document signed" in result.stdout


def test_the_same_request_gives_the_same_bytes(pki: Pki) -> None:
    teacher_signed = sign(record(), (Stage.HOMEROOM_TEACHER,), pki)
    once = fill_field(teacher_signed, Stage.PRINCIPAL, pki)
    assert fill_field(teacher_signed, Stage.PRINCIPAL, pki) == once
    template, raw_sign = pki.signers[Stage.PRINCIPAL]
    later = pades.prepare_and_sign(
        teacher_signed,
        Stage.PRINCIPAL,
        template,
        raw_sign,
        bytes_reserved=BYTES_RESERVED,
        signing_time=SIGNED_AT + timedelta(seconds=1),
    ).pdf
    assert later != once
    assert b"/M (D:20250905083001Z)" in later[len(teacher_signed) :]


def test_a_change_after_the_seal_is_detected(pki: Pki) -> None:
    issued = sign(record(), ORDER, pki)

    # When someone appends an update that draws on the page
    writer = IncrementalPdfFileWriter(BytesIO(issued))
    stream = generic.StreamObject(stream_data=b"0 0 m 100 100 l S")
    writer.add_stream_to_page(0, writer.add_object(stream))
    out = BytesIO()
    writer.write(out)

    # Then every signature is still intact, but the seal does not accept the change
    reports = validation.validate_pdf(out.getvalue(), [pki.root])
    assert all(r.intact and r.valid for r in reports)
    seal = reports[-1]
    assert (seal.docmdp_ok, seal.bottom_line, seal.modification_level) == (False, False, "OTHER")


def test_a_cms_longer_than_reserved_is_refused_and_a_shorter_one_padded(pki: Pki) -> None:
    teacher_signed = sign(record(), (Stage.HOMEROOM_TEACHER,), pki)
    prepared = incremental.prepare_signature(
        teacher_signed, "HieuTruong", contents_bytes=64, signing_time=SIGNED_AT, lock_fields=False
    )
    with pytest.raises(ContentsTooLarge):
        prepared.complete(bytes(65))
    assert b"/Contents <ABCD" + b"0" * 124 + b">" in prepared.complete(b"\xab\xcd")


# What the fast path leaves to pyHanko


def test_a_signed_field_is_refused(pki: Pki) -> None:
    principal = sign(record(), (Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL), pki)
    with pytest.raises(Unsupported, match="already signed"):
        fill_field(principal, Stage.PRINCIPAL, pki)
    with pytest.raises(NotAPdf, match="HieuTruong is already signed"):
        sign(principal, (Stage.PRINCIPAL,), pki)


def test_a_document_without_the_fields_is_refused(pki: Pki) -> None:
    unsigned = rewritten(record(), extensions="plain")
    with pytest.raises(Unsupported):
        fill_field(unsigned, Stage.PRINCIPAL, pki)
    with pytest.raises(NotAPdf, match="no signature field HieuTruong"):
        sign(unsigned, (Stage.PRINCIPAL,), pki)


@pytest.mark.parametrize("stage", [Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL])
def test_too_little_reserved_space_is_a_configuration_error(
    pki: Pki, plain_teacher_signed: bytes, stage: Stage
) -> None:
    pdf = record() if stage is Stage.HOMEROOM_TEACHER else plain_teacher_signed
    template, raw_sign = pki.signers[stage]
    with pytest.raises(ConfigError, match=r"signing\.bytes_reserved is 1000"):
        pades.prepare_and_sign(
            pdf, stage, template, raw_sign, bytes_reserved=1000, signing_time=SIGNED_AT
        )


def test_an_object_in_an_object_stream_is_read(pki: Pki) -> None:
    # Given a record whose catalogue's /Extensions lives in an object stream
    original = rewritten(record(), extensions="in_object_stream")
    teacher_signed = sign(original, (Stage.HOMEROOM_TEACHER,), pki, pades._prepare_and_sign_pyhanko)

    # When the later stages sign, Then the fast path signs them and they validate
    principal = fill_field(teacher_signed, Stage.PRINCIPAL, pki)
    assert sign(teacher_signed, (Stage.PRINCIPAL,), pki) == principal
    issued = sign(principal, (Stage.SCHOOL_SEAL,), pki)
    reports = validation.validate_pdf(issued, [pki.root], expected=3)
    assert all(r.bottom_line for r in reports)


def test_bytes_after_eof_go_to_pyhanko(pki: Pki) -> None:
    teacher_signed = sign(record(), (Stage.HOMEROOM_TEACHER,), pki) + b"garbage\n"
    with pytest.raises(Unsupported, match="does not end with startxref"):
        fill_field(teacher_signed, Stage.PRINCIPAL, pki)
    reports = validation.validate_pdf(
        sign(teacher_signed, LATER_STAGES, pki), [pki.root], expected=3
    )
    assert all(r.intact and r.valid for r in reports)


@pytest.mark.parametrize(
    ("breakage", "fast_reason", "reason"),
    [
        ("startxref", "No object at byte", "Could not find xref table"),
        ("truncated", "does not end with startxref", "EOF marker not found"),
        ("not_a_pdf", "does not start with a %PDF- header", "does not start with %PDF-"),
    ],
)
def test_a_broken_document_is_refused_as_before(
    pki: Pki, breakage: str, fast_reason: str, reason: str
) -> None:
    pdf = sign(record(), (Stage.HOMEROOM_TEACHER,), pki)
    if breakage == "startxref":
        found = list(re.finditer(rb"startxref\n(\d+)\n", pdf))[-1]
        pdf = pdf[: found.start(1)] + b"%d" % (int(found[1]) - 7) + pdf[found.end(1) :]
    elif breakage == "truncated":
        pdf = pdf[: len(pdf) - 300]
    else:
        pdf = b"GIF89a" + pdf[5:]
    with pytest.raises(Unsupported, match=fast_reason):
        fill_field(pdf, Stage.PRINCIPAL, pki)
    with pytest.raises(NotAPdf, match=reason):
        sign(pdf, (Stage.PRINCIPAL,), pki)


lenient = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)


@lenient
@given(st.data())
def test_mutated_input_is_signed_or_left_to_pyhanko(
    pki: Pki, plain_teacher_signed: bytes, data: st.DataObject
) -> None:
    # The fast path reads the last kilobytes of the file; mutate them.
    pdf = bytearray(plain_teacher_signed)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(len(pdf) - 2000, len(pdf) - 1))
        pdf[at] = data.draw(st.sampled_from(b"0123456789 \n<>[]()/%RobjxrefA"))
    try:
        signed = fill_field(bytes(pdf), Stage.PRINCIPAL, pki)
    except Unsupported:
        return  # left to pyHanko
    try:
        validation.validate_pdf(bytes(pdf), [pki.root], expected=1)
    except NotAPdf:
        return  # no reader follows the input: the daemon never holds such a version
    # Whatever the fast path signs must validate, and leave the teacher's signature valid.
    reports = validation.validate_pdf(signed, [pki.root], expected=2)
    assert [r.field_name for r in reports] == ["GVCN", "HieuTruong"]
    assert reports[1].intact and reports[1].valid and reports[1].trusted
    assert reports[1].coverage == "ENTIRE_FILE"
