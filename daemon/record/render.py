"""The record in the ministry's template, as PDF/A-3b with its XML as an associated file.

One signature then covers both what a person reads and the data a machine reads. The
bytes depend only on the record: the creation date is the day the record was
completed (`completed_on`, midnight in Vietnam), the XMP is written here with fixed
dates, and the document id is a hash of the content. The three signature boxes are
drawn empty: the signing path creates the fields there, and the catalogue says where
they are (`/HocbaSignatureBoxes`, read by daemon/pdf/appearance.py), so that each
signature is visible in its box; `signature_boxes` gives the same rectangles.

This module is the template; text is measured and broken by layout.py with the faces
of fonts.py (cut once per process), and pdfa.py writes the file (~7 ms a record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from html import escape

from daemon.record.fonts import face
from daemon.record.layout import Canvas, Line, Run, Table, draw_table
from daemon.record.model import (
    GENERAL_COMPETENCE_TITLES,
    LEVEL_TITLES,
    OVERALL_TITLES,
    QUALITY_TITLES,
    RATING_TITLES,
    SPECIFIC_COMPETENCE_TITLES,
    RecordData,
)
from daemon.record.pdfa import Attachment, warm, write_pdfa
from daemon.record.xml import FILENAME, canonical_xml
from daemon.stages import FIELD_NAMES

PAGE_W_PT, PAGE_H_PT = 595.28, 841.89
MARGIN_PT = 40.0
_BOX_W_PT, _BOX_H_PT, _BOX_GAP_PT = 165.0, 72.0, 10.0
_BOX_TOP_PT = PAGE_H_PT - MARGIN_PT - 14.0 - _BOX_H_PT  # room for the name under each box
_BOXES_ZONE_TOP_PT = _BOX_TOP_PT - 48.0  # the date line and the box titles above them
VIETNAM = timezone(timedelta(hours=7))
PRODUCER = "hocba-signer record renderer 1"


@dataclass(frozen=True)
class Box:
    """A signature box in PDF user space: page index from 0, lower-left corner, size."""

    page: int
    x: float
    y: float
    w: float
    h: float


def signature_boxes(pages: int) -> dict[str, Box]:
    """Field name -> its empty box, on the last of a rendered record's `pages`."""
    left = (PAGE_W_PT - 3 * _BOX_W_PT - 2 * _BOX_GAP_PT) / 2
    y = PAGE_H_PT - _BOX_TOP_PT - _BOX_H_PT
    return {
        name: Box(
            pages - 1,
            round(left + i * (_BOX_W_PT + _BOX_GAP_PT), 2),
            round(y, 2),
            _BOX_W_PT,
            _BOX_H_PT,
        )
        for i, name in enumerate(FIELD_NAMES)
    }


_BOX_TITLES = ("Giáo viên chủ nhiệm", "Hiệu trưởng", "Dấu của nhà trường")
_HEADING_GREY = 235
_BOX_GREY = 150


def render_record(record_id: str, data: RecordData) -> bytes:
    """The record's PDF/A-3b, with `canonical_xml(record_id, data)` embedded in it."""
    created = datetime.combine(data.completed_on, time(0, 0), VIETNAM)
    canvas = Canvas(PAGE_W_PT, PAGE_H_PT, MARGIN_PT)
    _header(canvas, data)
    _student(canvas, data)
    _subjects(canvas, data)
    _qualities_and_competences(canvas, data)
    _results(canvas, data)
    boxes = _signatures(canvas, data)
    title = f"Học bạ {data.academic_year} - {data.student.full_name}"
    attachment = Attachment(
        data=canonical_xml(record_id, data),
        filename=FILENAME,
        mime_type="application/xml",
        description="Dữ liệu học bạ (hocba-record.xsd)",
        created=created,
    )
    return write_pdfa(
        [canvas.content(i) for i in range(canvas.page_count)],
        (PAGE_W_PT, PAGE_H_PT),
        _xmp(title, created),
        attachment,
        " /HocbaSignatureBoxes " + _boxes_entry(boxes),
    )


def _boxes_entry(boxes: dict[str, Box]) -> str:
    """/HocbaSignatureBoxes: field -> << /Page index /Rect [llx lly urx ury] >>."""
    entries = [
        f"/{name} <</Page {b.page} /Rect [{b.x:g} {b.y:g} {b.x + b.w:g} {b.y + b.h:g}]>>"
        for name, b in boxes.items()
    ]
    return "<<" + " ".join(entries) + ">>"


def warm_fonts() -> None:
    """Cut the fonts and build the shared PDF objects now (a render worker's start)."""
    warm()


def _one(text: str, size_pt: float, bold: bool = False) -> Line:
    """A line that is not broken (fpdf2's cell)."""
    f = face("B" if bold else "")
    return Line(((f, size_pt, text),), f.width_pt(text, size_pt), text.count(" "))


def _runs(text: str, size_pt: float, bold: bool = False) -> Sequence[Run]:
    return ((face("B" if bold else ""), size_pt, text),)


def _xmp(title: str, created: datetime) -> str:
    # The record's own date, never the clock's: the same data renders the same bytes.
    stamp = created.isoformat(timespec="seconds")
    return "\n".join(
        [
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">',
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">',
            '  <rdf:Description rdf:about=""',
            '    xmlns:dc="http://purl.org/dc/elements/1.1/"',
            '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"',
            '    xmlns:pdf="http://ns.adobe.com/pdf/1.3/"',
            '    xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/"',
            f'    xmp:CreatorTool="{PRODUCER}" xmp:CreateDate="{stamp}"',
            f'    xmp:ModifyDate="{stamp}" xmp:MetadataDate="{stamp}"',
            f'    pdf:Producer="{PRODUCER}" pdfaid:part="3" pdfaid:conformance="B">',
            "   <dc:format>application/pdf</dc:format>",
            '   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">'
            f"{escape(title)}</rdf:li></rdf:Alt></dc:title>",
            "  </rdf:Description>",
            " </rdf:RDF>",
            "</x:xmpmeta>",
        ]
    )


def _header(c: Canvas, data: RecordData) -> None:
    half = c.epw_pt / 2
    top = c.y
    c.paragraph(
        MARGIN_PT,
        half,
        12,
        _runs(f"SỞ GIÁO DỤC VÀ ĐÀO TẠO {data.school.province.upper()}", 8.5),
        "C",
    )
    c.paragraph(
        MARGIN_PT,
        half,
        12,
        _runs(f"PHÒNG GIÁO DỤC VÀ ĐÀO TẠO {data.school.district.upper()}", 8.5),
        "C",
    )
    c.paragraph(MARGIN_PT, half, 12, _runs(data.school.name.upper(), 8.5, bold=True), "C")
    left_bottom = c.y
    c.y = top
    c.paragraph(
        MARGIN_PT + half, half, 12, _runs("CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM", 8.5, True), "C"
    )
    c.paragraph(MARGIN_PT + half, half, 12, _runs("Độc lập - Tự do - Hạnh phúc", 8.5, True), "C")
    c.y = max(left_bottom, c.y) + 6
    c.cell(MARGIN_PT, c.epw_pt, 28, _one("HỌC BẠ", 22, bold=True), "C")
    c.y += 28
    heading = f"Năm học {data.academic_year}   ·   Lớp {data.class_name}"
    c.cell(MARGIN_PT, c.epw_pt, 14, _one(heading, 10, bold=True), "C")
    c.y += 14 + 6


_STUDENT_TABLE = Table((0.22, 0.40, 0.14, 0.24), 11, (1, 2), ("L",) * 4, borders=False)


def _student(c: Canvas, data: RecordData) -> None:
    s = data.student
    rows = [
        ("Họ và tên học sinh", s.full_name, "Giới tính", "Nam" if s.gender == "nam" else "Nữ"),
        ("Ngày sinh", s.date_of_birth.strftime("%d/%m/%Y"), "Dân tộc", s.ethnicity),
        ("Nơi sinh", s.place_of_birth, "Mã học sinh", s.student_id),
    ]
    cells = [
        [_runs(a + ":", 9, True), _runs(b, 9), _runs(c_ + ":", 9, True), _runs(d, 9)]
        for a, b, c_, d in rows
    ]
    draw_table(c, _STUDENT_TABLE, cells)
    c.y += 6


def _section(c: Canvas, title: str) -> None:
    c.cell(MARGIN_PT, c.epw_pt, 16, _one(title, 10, bold=True))
    c.y += 16


def _table_rows(heading: Sequence[str], rows: Sequence[Sequence[str]]) -> list[list[Sequence[Run]]]:
    return [[_runs(t, 8.5, True) for t in heading]] + [[_runs(t, 8.5) for t in r] for r in rows]


_SUBJECTS_TABLE = Table(
    (0.24, 0.15, 0.08, 0.53), 10.5, (2, 2), ("L", "C", "C", "L"), heading_grey=_HEADING_GREY
)


def _subjects(c: Canvas, data: RecordData) -> None:
    _section(c, "1. Các môn học và hoạt động giáo dục")
    rows = [
        (
            r.subject.name_vi,
            LEVEL_TITLES[r.level],
            "" if r.score is None else str(r.score),
            r.comment,
        )
        for r in data.subjects
    ]
    heading = ("Môn học và hoạt động giáo dục", "Mức đạt được", "Điểm KTĐK", "Nhận xét")
    draw_table(c, _SUBJECTS_TABLE, _table_rows(heading, rows))
    c.y += 4


_QUALITIES_TABLE = Table(
    (0.17, 0.11, 0.28, 0.11, 0.2, 0.13), 10.5, (2, 2), ("L",) * 6, heading_grey=_HEADING_GREY
)


def _qualities_and_competences(c: Canvas, data: RecordData) -> None:
    q, comp = data.qualities, data.competences
    _section(c, "2. Những phẩm chất chủ yếu và 3. Những năng lực cốt lõi")
    quality_rows = [(t, RATING_TITLES[getattr(q, k)]) for k, t in QUALITY_TITLES.items()]
    general = [(t, RATING_TITLES[getattr(comp, k)]) for k, t in GENERAL_COMPETENCE_TITLES.items()]
    specific = [(t, RATING_TITLES[getattr(comp, k)]) for k, t in SPECIFIC_COMPETENCE_TITLES.items()]
    rows = []
    for i in range(5):
        g = general[i] if i < len(general) else ("", "")
        rows.append((*quality_rows[i], *g, *specific[i]))
    heading = ("Phẩm chất", "Mức", "Năng lực chung", "Mức", "Năng lực đặc thù", "Mức")
    draw_table(c, _QUALITIES_TABLE, _table_rows(heading, rows))
    c.y += 2
    for title, comment in (
        ("Nhận xét về phẩm chất", q.comment),
        ("Nhận xét về năng lực", comp.comment),
    ):
        if comment:
            _labelled(c, title, comment)


def _labelled(c: Canvas, label: str, text: str) -> None:
    """A bold label and its text, justified, as one paragraph."""
    runs = (*_runs(label + ":", 9, True), *_runs(" " + text, 9))
    c.paragraph(MARGIN_PT, c.epw_pt, 11, runs, "J")


def _results(c: Canvas, data: RecordData) -> None:
    c.y += 2
    _section(c, "4. Đánh giá kết quả giáo dục")
    _labelled(c, "Kết quả", OVERALL_TITLES[data.overall_result])
    finished = (
        f"Chưa hoàn thành chương trình lớp {data.grade}"
        if data.overall_result == "CHT"
        else f"Hoàn thành chương trình lớp {data.grade}"
        + (" và chương trình tiểu học" if data.grade == 5 else "")
    )
    _labelled(c, "Hoàn thành chương trình lớp học", finished)
    _labelled(c, "Khen thưởng", "; ".join(data.commendations) or "Không")
    if data.teacher_comment:
        _labelled(c, "Nhận xét của giáo viên chủ nhiệm", data.teacher_comment)


def _signatures(c: Canvas, data: RecordData) -> dict[str, Box]:
    if c.y > _BOXES_ZONE_TOP_PT:
        c.add_page()
    boxes = signature_boxes(c.page_count)
    day = data.completed_on
    c.y = _BOXES_ZONE_TOP_PT
    place = f"{data.school.district}, ngày {day.day} tháng {day.month} năm {day.year}"
    c.cell(MARGIN_PT, c.epw_pt, 14, _one(place, 9), "R")
    c.stroke_grey(_BOX_GREY)
    names = (data.homeroom_teacher_name or "", data.principal_name or "", data.school.name)
    for title, name, box in zip(_BOX_TITLES, names, boxes.values(), strict=True):
        top = PAGE_H_PT - box.y - box.h
        c.y = top - 24
        c.cell(box.x, box.w, 12, _one(title, 9, bold=True), "C")
        hint = "(Ký, ghi rõ họ tên)" if name != data.school.name else "(Chữ ký số của tổ chức)"
        c.y = top - 12
        c.cell(box.x, box.w, 10, _one(hint, 7.5), "C")
        c.rect(box.x, top, box.w, box.h)
        c.y = top + box.h + 2
        c.cell(box.x, box.w, 12, _one(name, 8.5, bold=bool(name)), "C")
    return boxes
