"""The printed copy ("bản giấy học bạ số"): the issued record's pages, then a verification page.

The verification page names the school and the record, each signature's signer, role
and time, the issued version's sha256, and a QR code to
`<verify_server.public_url>/r/<sha256>`, and says that the paper is a printed copy of
the digital record. Every page of the output is the original page drawn as a form
XObject in a new document (pyHanko's writer), so the copy carries no signatures or
form fields that a viewer could take for the record's own: the digital record is the
file the QR code leads to. Only an issued record (by the verdict rule, not only by the
database) is printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import segno
from fpdf import FPDF
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PdfFileWriter

from daemon.blobs.base import BlobReader
from daemon.clock import VIETNAM
from daemon.database import Database
from daemon.errors import HocbaError
from daemon.settings import Settings

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_ROLE_WORDS = {
    "GVCN": "Giáo viên chủ nhiệm",
    "HieuTruong": "Hiệu trưởng",
    "DauTruong": "Dấu của nhà trường",
}
_REVOCATION_WORDS = {
    "good": "còn hiệu lực",
    "revoked": "đã bị thu hồi",
    "unknown": "không rõ",
}
_RECORD = """
SELECT r.record_id, r.academic_year, r.class_name, r.signatures, r.current_sha256,
       s.school_id, s.name AS school_name
FROM records r JOIN schools s USING (school_id)
WHERE r.school_id = $1 AND r.record_id = $2
"""


class NotPrintable(HocbaError):
    """Raised when the record asked for is unknown, or not issued."""

    code = "not_printable"


@dataclass(frozen=True)
class Signed:
    field: str
    signer: str
    signed_at: str | None
    timestamp_at: str | None = None  # the TSA's time, when the timestamp validates
    revocation: str = "unknown"  # the certificate at signing, by the file's own data


@dataclass(frozen=True)
class PrintFacts:
    school_id: str
    school_name: str
    record_id: str
    academic_year: str
    class_name: str
    sha256: str
    verify_url: str
    signatures: tuple[Signed, ...]


async def record_row(db: Database, school_id: str, record_id: str) -> dict[str, Any]:
    """The issued record's row (read only); NotPrintable if absent or not sealed."""
    async with db.connection() as conn, conn.transaction(readonly=True):
        row = await conn.fetchrow(_RECORD, school_id, record_id)
    if row is None:
        raise NotPrintable(f"No record {record_id} in school {school_id}.")
    if row["signatures"] < len(_ROLE_WORDS):
        raise NotPrintable(
            f"Record {record_id} of school {school_id} is not issued "
            f"({row['signatures']} of 3 signatures); only an issued record is printed."
        )
    return dict(row)


async def make(
    db: Database,
    store: BlobReader,
    settings: Settings,
    school_id: str,
    record_id: str,
) -> bytes:
    """The printed copy of an issued record: read from the database and the store, checked."""
    from daemon.verification import report as verify

    row = await record_row(db, school_id, record_id)
    pdf = await store.get(row["current_sha256"])
    report = await asyncio.to_thread(
        verify.report, pdf, settings.signing.trust_roots, settings.verification
    )
    facts = facts_of(row, report, settings.verify_server.public_url)
    return await asyncio.to_thread(printed_copy, pdf, facts)


def facts_of(row: dict[str, Any], report: dict[str, Any], public_url: str) -> PrintFacts:
    """What the verification page says, from the row and `verify`'s report on the file."""
    if report["verdict"] != "issued":
        codes = ", ".join(p["code"] for p in report["problems"]) or report["verdict"]
        raise NotPrintable(
            f"The stored version of record {row['record_id']} does not verify as issued "
            f"({codes}); it is not printed."
        )
    sha256 = row["current_sha256"]
    return PrintFacts(
        school_id=row["school_id"],
        school_name=row["school_name"],
        record_id=row["record_id"],
        academic_year=row["academic_year"],
        class_name=row["class_name"],
        sha256=sha256,
        verify_url=f"{public_url.rstrip('/')}/r/{sha256}",
        signatures=tuple(
            Signed(s["field"], s["signer"], s["signed_at"], s["timestamp_at"], s["revocation"])
            for s in report["signatures"]
        ),
    )


def printed_copy(record_pdf: bytes, facts: PrintFacts) -> bytes:
    """The record's pages, then the verification page, as one new PDF."""
    return merge([record_pdf, verification_page(facts)])


def verification_page(facts: PrintFacts) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    pdf.set_title(f"Bản in học bạ số {facts.record_id}")
    pdf.add_font("DejaVu", "", str(FONT_DIR / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
    pdf.add_font("Mono", "", str(FONT_DIR / "DejaVuSansMono.ttf"))
    pdf.add_page()
    pdf.set_margins(20, 20, 20)
    pdf.set_xy(20, 20)
    pdf.set_font("DejaVu", "B", 16)
    pdf.multi_cell(0, 8, "TRANG XÁC THỰC BẢN IN HỌC BẠ SỐ", align="C")
    pdf.ln(2)
    pdf.set_font("DejaVu", "", 11)
    pdf.multi_cell(
        0,
        6,
        "Tài liệu này là bản in trên giấy của học bạ số. Bản có giá trị là học bạ số "
        "(tệp đã ký số); quét mã QR dưới đây để đối chiếu.",
        align="C",
    )
    pdf.ln(4)
    rows = [
        ("Trường", f"{facts.school_name} (mã {facts.school_id})"),
        ("Mã học bạ", facts.record_id),
        ("Năm học", facts.academic_year),
        ("Lớp", facts.class_name),
    ]
    _table(pdf, rows)
    pdf.ln(3)
    pdf.set_font("DejaVu", "B", 12)
    pdf.cell(0, 8, "Chữ ký số", new_x="LMARGIN", new_y="NEXT")
    _table(
        pdf,
        [(_ROLE_WORDS.get(s.field, s.field), f"{s.signer}\n{_times(s)}") for s in facts.signatures],
    )
    pdf.ln(3)
    pdf.set_font("DejaVu", "B", 11)
    pdf.cell(0, 6, "Mã băm SHA-256 của bản học bạ số đã ban hành:", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Mono", "", 9.5)
    pdf.multi_cell(0, 5, facts.sha256)
    pdf.ln(4)
    top = pdf.get_y()
    size_mm = _qr(pdf, facts.verify_url, x_mm=20, y_mm=top, size_mm=50)
    pdf.set_xy(20 + size_mm + 8, top + 4)
    pdf.set_font("DejaVu", "B", 11)
    pdf.multi_cell(0, 6, "Kiểm tra trực tuyến", new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(20 + size_mm + 8)
    pdf.set_font("DejaVu", "", 10)
    pdf.multi_cell(
        0,
        5.5,
        "Quét mã QR hoặc mở địa chỉ dưới đây; trang kiểm tra cho biết bản học bạ số này "
        "đã được ban hành và ai đã ký.",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.set_x(20 + size_mm + 8)
    pdf.set_font("Mono", "", 8)
    pdf.multi_cell(0, 4.5, facts.verify_url)
    pdf.set_xy(20, 277)
    pdf.set_font("DejaVu", "", 8)
    pdf.multi_cell(
        0, 4, "Bản in của học bạ số, do hocba-signer tạo từ bản đã lưu. Printed copy of the "
        "digital school record.", align="C",
    )  # fmt: skip
    return bytes(pdf.output())


def _table(pdf: FPDF, rows: Sequence[tuple[str, str]]) -> None:
    with pdf.table(col_widths=(45, 125), text_align="LEFT", first_row_as_headings=False) as table:
        for key, value in rows:
            row = table.row()
            pdf.set_font("DejaVu", "B", 10.5)
            row.cell(key)
            pdf.set_font("DejaVu", "", 10.5)
            row.cell(value)


def _qr(pdf: FPDF, url: str, *, x_mm: float, y_mm: float, size_mm: float) -> float:
    """The QR code drawn as filled squares (sharp at any print resolution); its size."""
    code = segno.make_qr(url, error="m")
    matrix = [list(row) for row in code.matrix]
    quiet = 4  # the standard's quiet zone, in modules
    modules = len(matrix) + 2 * quiet
    module_mm = size_mm / modules
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if not row[c]:
                c += 1
                continue
            start = c
            while c < len(row) and row[c]:
                c += 1
            pdf.rect(
                x_mm + (quiet + start) * module_mm,
                y_mm + (quiet + r) * module_mm,
                (c - start) * module_mm,
                module_mm,
                style="F",
            )
    return size_mm


def _times(s: Signed) -> str:
    stamped = _when(s.timestamp_at) if s.timestamp_at else "không có"
    status = _REVOCATION_WORDS.get(s.revocation, s.revocation)
    return f"Ký lúc: {_when(s.signed_at)}\nDấu thời gian: {stamped}\nChứng thư số lúc ký: {status}"


def _when(iso: str | None) -> str:
    if not iso:
        return "không rõ"
    return datetime.fromisoformat(iso).astimezone(VIETNAM).strftime("%H:%M ngày %d/%m/%Y")


def merge(documents: Sequence[bytes]) -> bytes:
    """Every page of `documents`, in order, each drawn as a form XObject on a new page."""
    out = PdfFileWriter(stream_xrefs=False)
    for data in documents:
        reader = PdfFileReader(BytesIO(data), strict=False)
        count = int(reader.root["/Pages"]["/Count"])
        for ix in range(count):
            xobject = out.import_page_as_xobject(reader, page_ix=ix)
            box = xobject.get_object()["/BBox"]
            content = generic.StreamObject(stream_data=b"q /Page Do Q")
            page = generic.DictionaryObject(
                {
                    generic.pdf_name("/Type"): generic.pdf_name("/Page"),
                    generic.pdf_name("/MediaBox"): box,
                    generic.pdf_name("/Resources"): generic.DictionaryObject(
                        {
                            generic.pdf_name("/XObject"): generic.DictionaryObject(
                                {generic.pdf_name("/Page"): xobject}
                            )
                        }
                    ),
                    generic.pdf_name("/Contents"): out.add_object(content),
                }
            )
            out.insert_page(page)
    buffer = BytesIO()
    out.write(buffer)
    return buffer.getvalue()
