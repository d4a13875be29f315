"""Visible signatures: each box on the page shows who signed, in what role, and when.

A rendered record (and any PDF whose catalogue carries /HocbaSignatureBoxes) is signed
through the three stages on the fast paths; the widgets sit on the boxes with an
appearance whose text a reader extracts with its diacritics, the signatures validate as
before, and each update holds the objects pyHanko's path writes, object for object.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from datetime import timedelta, timezone
from io import BytesIO
from pathlib import Path

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import copy_into_new_writer

from daemon.pdf import appearance, pades, validation
from daemon.pdf.appearance import Stamp
from daemon.pdf.certification import prepare_certification
from daemon.pdf.incremental import prepare_signature
from daemon.record.render import render_record, signature_boxes
from daemon.repertoire import REPERTOIRE
from daemon.stages import FIELD_NAMES, ORDER, Stage
from producers.school_system import sample_record, sample_record_data
from tests.unit.pyhanko_compare import same_object, update_objects
from tests.unit.signing_kit import (
    BYTES_RESERVED,
    SIGNED_AT,
    Pki,
    assert_validates_as_pyhanko,
    make_pki,
    record,
    sign,
)

TEACHER = "Nguyễn Thị Hồng Nhung"
PRINCIPAL = "Trần Văn Đức"
SCHOOL = "Trường Tiểu học Lê Lợi"
SIGNED_LOCAL = SIGNED_AT.astimezone(timezone(timedelta(hours=7))).strftime("%d/%m/%Y %H:%M")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(
        {
            Stage.HOMEROOM_TEACHER: (TEACHER, SCHOOL),
            Stage.PRINCIPAL: (PRINCIPAL, SCHOOL),
            Stage.SCHOOL_SEAL: (f"{SCHOOL} (dấu)", SCHOOL),
        }
    )


def _rendered() -> bytes:
    rng = random.Random("visible")
    info = sample_record(rng, "31000101", "visible", 0)
    return render_record(info.record_id, sample_record_data(rng, info, "31000101"))


def _boxes_entry(page: int) -> generic.DictionaryObject:
    def box(n: int) -> generic.DictionaryObject:
        rect = [40 + 180 * n, 100, 200 + 180 * n, 170]
        return generic.DictionaryObject(
            {
                pdf_name("/Page"): generic.NumberObject(page),
                pdf_name("/Rect"): generic.ArrayObject(map(generic.NumberObject, rect)),
            }
        )

    return generic.DictionaryObject({pdf_name(f"/{n}"): box(i) for i, n in enumerate(FIELD_NAMES)})


def _with_boxes(pdf: bytes, entry: generic.DictionaryObject) -> bytes:
    """`pdf` written again by pyHanko, its catalogue asking for the boxes in `entry`."""
    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)))
    writer.root[pdf_name("/HocbaSignatureBoxes")] = entry
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


ORIGINALS: dict[str, Callable[[], bytes]] = {
    "rendered_record": _rendered,
    "boxes_on_page_2_of_3": lambda: _with_boxes(record(pages=3), _boxes_entry(page=1)),
}


@pytest.fixture(scope="module", params=sorted(ORIGINALS))
def original(request: pytest.FixtureRequest) -> bytes:
    return ORIGINALS[request.param]()


@pytest.fixture(scope="module")
def issued(original: bytes, pki: Pki) -> list[bytes]:
    revisions = [original]
    for stage in ORDER:
        revisions.append(sign(revisions[-1], (stage,), pki))
    return revisions[1:]


def _widgets(pdf: bytes) -> dict[str, generic.DictionaryObject]:
    reader = PdfFileReader(BytesIO(pdf))
    fields = (ref.get_object() for ref in reader.root["/AcroForm"]["/Fields"])
    return {str(f["/T"]): f for f in fields}


def test_each_box_shows_who_signed_in_what_role_and_when(
    issued: list[bytes], tmp_path: Path
) -> None:
    path = tmp_path / "issued.pdf"
    path.write_bytes(issued[-1])
    reader = PdfFileReader(BytesIO(issued[-1]))
    boxes_entry = reader.root["/HocbaSignatureBoxes"]
    for name, widget in _widgets(issued[-1]).items():
        box = boxes_entry[f"/{name}"]
        assert [float(v) for v in widget["/Rect"]] == [float(v) for v in box["/Rect"]]
        page = reader.root["/Pages"]["/Kids"].raw_get(int(box["/Page"]))  # a flat page tree
        assert widget.raw_get("/P").idnum == page.idnum
        assert widget["/AP"]["/N"].get_object().data  # an appearance that draws something

    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    for line in (
        f"Ký bởi: {TEACHER}",
        "Chức vụ: Giáo viên chủ nhiệm",
        f"Ký bởi: {PRINCIPAL}",
        "Chức vụ: Hiệu trưởng",
        f"Đơn vị: {SCHOOL}",
        f"Ngày ký: {SIGNED_LOCAL}",
    ):
        assert line in text, text


def test_each_appearance_is_written_with_its_signature(issued: list[bytes]) -> None:
    teacher, principal, _ = issued
    assert "/AP" in _widgets(teacher)["GVCN"]
    # The principal's field has pyHanko's empty appearance until the principal signs.
    assert _widgets(teacher)["HieuTruong"]["/AP"]["/N"].get_object().data == b""
    assert _widgets(principal)["HieuTruong"]["/AP"]["/N"].get_object().data != b""


def test_signatures_validate_as_before(
    original: bytes, issued: list[bytes], pki: Pki, tmp_path: Path
) -> None:
    assert_validates_as_pyhanko(original, issued[-1], pki)
    path = tmp_path / "issued.pdf"
    path.write_bytes(issued[-1])
    pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60)
    assert pdfsig.stdout.count("Signature Validation: Signature is Valid.") == 3, pdfsig.stdout
    assert "Total document signed" in pdfsig.stdout


@pytest.mark.parametrize("stage", ORDER[1:])
def test_a_later_stage_takes_the_fast_path(issued: list[bytes], pki: Pki, stage: Stage) -> None:
    template, raw_sign = pki.signers[stage]
    prepared = prepare_signature(
        issued[stage.position - 2],
        stage.field_name,
        contents_bytes=template.size,
        signing_time=SIGNED_AT,
        lock_fields=stage is Stage.SCHOOL_SEAL,
        stamp=Stamp.of(stage, template.signer_cert, SIGNED_AT),
    )
    signed = prepared.complete(template.sign(prepared.document_digest, raw_sign))
    assert signed == issued[stage.position - 1]


def test_the_first_update_holds_the_objects_pyhanko_writes(original: bytes, pki: Pki) -> None:
    template, raw_sign = pki.signers[Stage.HOMEROOM_TEACHER]
    stamp = Stamp.of(Stage.HOMEROOM_TEACHER, template.signer_cert, SIGNED_AT)
    prepared = prepare_certification(
        original, FIELD_NAMES, contents_bytes=template.size, signing_time=SIGNED_AT, stamp=stamp
    )
    fast = prepared.complete(template.sign(prepared.document_digest, raw_sign))
    assert fast == sign(original, ORDER[:1], pki)  # prepare_and_sign took the fast path
    ours = PdfFileReader(BytesIO(fast))
    theirs = PdfFileReader(BytesIO(sign(original, ORDER[:1], pki, pades._prepare_and_sign_pyhanko)))
    old = int(PdfFileReader(BytesIO(original)).trailer["/Size"])

    # The catalogue, the boxes' page, the form, three fields, a lock, the signature and
    # the font's three dictionaries
    assert len(update_objects(ours)) == len(update_objects(theirs)) == 11
    assert same_object(ours.root, theirs.root, old)
    ours_fields, their_fields = _widgets(fast), _widgets(theirs.stream.getvalue())
    for name in FIELD_NAMES:
        assert same_object(ours_fields[name], their_fields[name], old)
        ap, their_ap = ours_fields[name]["/AP"]["/N"], their_fields[name]["/AP"]["/N"]
        assert ap.get_object().data == their_ap.get_object().data
    page = ours_fields["GVCN"].raw_get("/P")
    assert same_object(page.get_object(), theirs.get_object(page.reference), old)


@pytest.mark.parametrize("stage", ORDER[1:])
def test_a_later_update_holds_the_objects_pyhanko_writes(
    issued: list[bytes], pki: Pki, stage: Stage
) -> None:
    before = issued[stage.position - 2]
    theirs_pdf = sign(before, (stage,), pki, pades._prepare_and_sign_pyhanko)
    ours, theirs = _widgets(issued[stage.position - 1]), _widgets(theirs_pdf)
    old = int(PdfFileReader(BytesIO(before)).trailer["/Size"])
    assert same_object(ours[stage.field_name], theirs[stage.field_name], old)
    ap = ours[stage.field_name]["/AP"]["/N"].get_object()
    assert ap.data == theirs[stage.field_name]["/AP"]["/N"].get_object().data
    assert ap["/Resources"]["/Font"].raw_get("/HocbaSans").idnum < old  # stage 1's font


def test_a_pdf_without_boxes_is_signed_invisibly_as_before(pki: Pki) -> None:
    issued = sign(record(), ORDER, pki)
    for widget in _widgets(issued).values():
        assert [float(v) for v in widget["/Rect"]] == [0, 0, 0, 0]
        assert "/AP" not in widget
    reports = validation.validate_pdf(issued, [pki.root], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)


def test_boxes_missing_a_field_leave_every_signature_invisible(pki: Pki) -> None:
    entry = _boxes_entry(page=0)
    del entry["/DauTruong"]
    pdf = _with_boxes(record(), entry)
    for signer in (pades.prepare_and_sign, pades._prepare_and_sign_pyhanko):
        template, raw_sign = pki.signers[Stage.HOMEROOM_TEACHER]
        signed = signer(
            pdf, Stage.HOMEROOM_TEACHER, template, raw_sign,
            bytes_reserved=BYTES_RESERVED, signing_time=SIGNED_AT,
        )  # fmt: skip
        signed_pdf = signed if isinstance(signed, bytes) else signed.pdf
        assert all("/AP" not in w for w in _widgets(signed_pdf).values())


def test_the_renderer_s_boxes_are_the_ones_it_announces() -> None:
    reader = PdfFileReader(BytesIO(_rendered()))
    pages = int(reader.root["/Pages"]["/Count"])
    entry = reader.root["/HocbaSignatureBoxes"]
    for name, box in signature_boxes(pages).items():
        assert int(entry[f"/{name}"]["/Page"]) == box.page
        rect = [float(v) for v in entry[f"/{name}"]["/Rect"]]
        assert rect == pytest.approx([box.x, box.y, box.x + box.w, box.y + box.h])


def test_the_signature_font_carries_every_letter_a_record_may_use() -> None:
    font = appearance.signature_font()
    missing = [
        hex(c) for first, last in REPERTOIRE for c in range(first, last + 1) if c not in font.widths
    ]
    assert missing == []
