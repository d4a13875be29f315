"""The record in the ministry's template, as PDF/A-3b with its XML as an associated file.

One signature then covers both what a person reads and the data a machine reads. The
bytes depend only on the record: the creation date is the day the record was
completed (`completed_on`, midnight in Vietnam), the XMP is written here with fixed
dates, and the document id is a hash of the content. The three signature boxes are
drawn empty: the signing path creates the fields there, and the catalogue says where
they are (`/HocbaSignatureBoxes`, read by daemon/pdf/appearance.py), so that each
signature is visible in its box; `signature_boxes` gives the same rectangles.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from functools import cache
from html import escape
from io import BytesIO
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont
from fpdf import FPDF, FontFace
from fpdf.enums import DocumentCompliance
from fpdf.fonts import TTFFont
from fpdf.output import OutputProducer, PDFCatalog

from daemon.record.model import (
    GENERAL_COMPETENCE_TITLES,
    LEVEL_TITLES,
    OVERALL_TITLES,
    QUALITY_TITLES,
    RATING_TITLES,
    REPERTOIRE,
    SPECIFIC_COMPETENCE_TITLES,
    RecordData,
)
from daemon.record.xml import FILENAME, canonical_xml
from daemon.stages import FIELD_NAMES

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
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


def render_record(record_id: str, data: RecordData) -> bytes:
    """The record's PDF/A-3b, with `canonical_xml(record_id, data)` embedded in it."""
    created = datetime.combine(data.completed_on, time(0, 0), VIETNAM)
    xml = canonical_xml(record_id, data)
    pdf = _Document(created)
    title = f"Học bạ {data.academic_year} - {data.student.full_name}"
    pdf.set_title(title)
    pdf.set_xmp_metadata(_xmp(title, created))
    pdf.embed_file(
        bytes=xml,
        basename=FILENAME,
        mime_type="application/xml",
        associated_file_relationship="Data",
        modification_date=created,
        creation_date=created,
        desc="Dữ liệu học bạ (hocba-record.xsd)",
    )
    pdf.add_page()
    _header(pdf, data)
    _student(pdf, data)
    _subjects(pdf, data)
    _qualities_and_competences(pdf, data)
    _results(pdf, data)
    _signatures(pdf, data)
    return bytes(pdf.output(output_producer_class=_Output))


class _Output(OutputProducer):
    """fpdf2's writer, with the signature boxes in the catalogue."""

    def _add_catalog(self) -> PDFCatalog:
        catalog = super()._add_catalog()
        boxes = getattr(self.fpdf, "boxes", None)
        if boxes:
            # fpdf2 writes an attribute as the CamelCase key, a str value as it is.
            catalog.hocba_signature_boxes = _boxes_entry(boxes)  # type: ignore[attr-defined]
        return catalog


def _boxes_entry(boxes: dict[str, Box]) -> str:
    """/HocbaSignatureBoxes: field -> << /Page index /Rect [llx lly urx ury] >>."""
    entries = [
        f"/{name} <</Page {b.page} /Rect [{b.x:g} {b.y:g} {b.x + b.w:g} {b.y + b.h:g}]>>"
        for name, b in boxes.items()
    ]
    return "<<" + " ".join(entries) + ">>"


class _Document(FPDF):
    boxes: dict[str, Box] | None = None

    def __init__(self, created: datetime) -> None:
        super().__init__(
            unit="pt",
            format=(PAGE_W_PT, PAGE_H_PT),
            enforce_compliance=DocumentCompliance.PDFA_3B,
        )
        self.set_margins(MARGIN_PT, MARGIN_PT, MARGIN_PT)
        self.set_auto_page_break(True, MARGIN_PT)
        self.set_creation_date(created)
        self.set_producer(PRODUCER)
        self.set_creator(PRODUCER)
        self.set_lang("vi-VN")
        for family, style, file in _FONTS:
            key = f"{family.lower()}{style}"
            # A fresh font object each time: writing the PDF subsets it in place.
            font = BytesIO(_font_bytes(file))
            self.fonts[key] = TTFFont(self, font, key, style)  # type: ignore[arg-type]
        self.set_font("Sans", size=9)


_FONTS = (
    ("Sans", "", "DejaVuSans.ttf"),
    ("Sans", "B", "DejaVuSans-Bold.ttf"),
)


def warm_fonts() -> None:
    """Cut the fonts now (a render worker's start), not during its first record."""
    for _, _, file in _FONTS:
        _font_bytes(file)


@cache
def _font_bytes(file: str) -> bytes:
    """The font cut down to REPERTOIRE once per process: parsing 6,000 glyphs per record
    took 0.17 s a font, parsing ~1,000 takes 0.02 s."""
    font = TTFont(FONT_DIR / file, recalcTimestamp=False)
    options = subset.Options(notdef_outline=True, recommended_glyphs=True, hinting=False)
    options.layout_features = []
    options.drop_tables += ["FFTM", "GSUB", "GPOS", "GDEF"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[c for a, b in REPERTOIRE for c in range(a, b + 1)])
    subsetter.subset(font)
    out = BytesIO()
    font.save(out)
    return out.getvalue()


def _xmp(title: str, created: datetime) -> str:
    # fpdf2 would stamp the XMP with the current time; these dates keep bytes fixed.
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


def _header(pdf: FPDF, data: RecordData) -> None:
    half = pdf.epw / 2
    top = pdf.get_y()
    pdf.set_font("Sans", "", 8.5)
    pdf.multi_cell(
        half,
        12,
        f"SỞ GIÁO DỤC VÀ ĐÀO TẠO {data.school.province.upper()}",
        align="C",
        new_x="LEFT",
        new_y="NEXT",
    )
    pdf.multi_cell(
        half,
        12,
        f"PHÒNG GIÁO DỤC VÀ ĐÀO TẠO {data.school.district.upper()}",
        align="C",
        new_x="LEFT",
        new_y="NEXT",
    )
    pdf.set_font("Sans", "B", 8.5)
    pdf.multi_cell(half, 12, data.school.name.upper(), align="C", new_x="LEFT", new_y="NEXT")
    left_bottom = pdf.get_y()
    pdf.set_xy(MARGIN_PT + half, top)
    pdf.multi_cell(
        half, 12, "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM", align="C", new_x="LEFT", new_y="NEXT"
    )
    pdf.multi_cell(half, 12, "Độc lập - Tự do - Hạnh phúc", align="C", new_x="LEFT", new_y="NEXT")
    pdf.set_y(max(left_bottom, pdf.get_y()) + 6)
    pdf.set_font("Sans", "B", 22)
    pdf.cell(0, 28, "HỌC BẠ", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Sans", "B", 10)
    pdf.cell(
        0,
        14,
        f"Năm học {data.academic_year}   ·   Lớp {data.class_name}",
        align="C",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(6)


def _student(pdf: FPDF, data: RecordData) -> None:
    s = data.student
    rows = [
        ("Họ và tên học sinh", s.full_name, "Giới tính", "Nam" if s.gender == "nam" else "Nữ"),
        ("Ngày sinh", s.date_of_birth.strftime("%d/%m/%Y"), "Dân tộc", s.ethnicity),
        ("Nơi sinh", s.place_of_birth, "Mã học sinh", s.student_id),
    ]
    label = FontFace(emphasis="BOLD")
    pdf.set_font("Sans", "", 9)
    with pdf.table(
        col_widths=(0.22, 0.40, 0.14, 0.24),
        first_row_as_headings=False,
        borders_layout="NONE",
        line_height=11,
        padding=(1, 2),
        text_align="LEFT",
    ) as table:
        for a, b, c, d in rows:
            row = table.row()
            row.cell(a + ":", style=label)
            row.cell(b)
            row.cell(c + ":", style=label)
            row.cell(d)
    pdf.ln(6)


def _section(pdf: FPDF, title: str) -> None:
    pdf.set_font("Sans", "B", 10)
    pdf.cell(0, 16, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Sans", "", 8.5)


def _subjects(pdf: FPDF, data: RecordData) -> None:
    _section(pdf, "1. Các môn học và hoạt động giáo dục")
    with pdf.table(
        col_widths=(0.24, 0.15, 0.08, 0.53),
        line_height=10.5,
        padding=2,
        text_align=("LEFT", "CENTER", "CENTER", "LEFT"),
        headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
    ) as table:
        table.row(("Môn học và hoạt động giáo dục", "Mức đạt được", "Điểm KTĐK", "Nhận xét"))
        for result in data.subjects:
            score = "" if result.score is None else str(result.score)
            table.row((result.subject.name_vi, LEVEL_TITLES[result.level], score, result.comment))
    pdf.ln(4)


def _qualities_and_competences(pdf: FPDF, data: RecordData) -> None:
    q, c = data.qualities, data.competences
    _section(pdf, "2. Những phẩm chất chủ yếu và 3. Những năng lực cốt lõi")
    quality_rows = [(t, RATING_TITLES[getattr(q, k)]) for k, t in QUALITY_TITLES.items()]
    general = [(t, RATING_TITLES[getattr(c, k)]) for k, t in GENERAL_COMPETENCE_TITLES.items()]
    specific = [(t, RATING_TITLES[getattr(c, k)]) for k, t in SPECIFIC_COMPETENCE_TITLES.items()]
    heading = FontFace(emphasis="BOLD", fill_color=(235, 235, 235))
    with pdf.table(
        col_widths=(0.17, 0.11, 0.28, 0.11, 0.2, 0.13),
        line_height=10.5,
        padding=2,
        text_align="LEFT",
        headings_style=heading,
    ) as table:
        table.row(("Phẩm chất", "Mức", "Năng lực chung", "Mức", "Năng lực đặc thù", "Mức"))
        for i in range(5):
            g = general[i] if i < len(general) else ("", "")
            table.row((*quality_rows[i], *g, *specific[i]))
    pdf.ln(2)
    for title, comment in (
        ("Nhận xét về phẩm chất", q.comment),
        ("Nhận xét về năng lực", c.comment),
    ):
        if comment:
            _labelled(pdf, title, comment)


def _labelled(pdf: FPDF, label: str, text: str) -> None:
    pdf.set_font("Sans", "", 9)
    pdf.multi_cell(
        0, 11, f"**{_md(label)}:** {_md(text)}", markdown=True, new_x="LMARGIN", new_y="NEXT"
    )


def _md(text: str) -> str:
    # fpdf2's markdown reads ** and __ as emphasis: keep the record's own text literal.
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("--", "\\--")


def _results(pdf: FPDF, data: RecordData) -> None:
    pdf.ln(2)
    _section(pdf, "4. Đánh giá kết quả giáo dục")
    _labelled(pdf, "Kết quả", OVERALL_TITLES[data.overall_result])
    finished = (
        f"Chưa hoàn thành chương trình lớp {data.grade}"
        if data.overall_result == "CHT"
        else f"Hoàn thành chương trình lớp {data.grade}"
        + (" và chương trình tiểu học" if data.grade == 5 else "")
    )
    _labelled(pdf, "Hoàn thành chương trình lớp học", finished)
    _labelled(pdf, "Khen thưởng", "; ".join(data.commendations) or "Không")
    if data.teacher_comment:
        _labelled(pdf, "Nhận xét của giáo viên chủ nhiệm", data.teacher_comment)


def _signatures(pdf: FPDF, data: RecordData) -> None:
    if pdf.get_y() > _BOXES_ZONE_TOP_PT:
        pdf.add_page()
    boxes = signature_boxes(pdf.page)
    if isinstance(pdf, _Document):
        pdf.boxes = boxes
    pdf.set_font("Sans", "", 9)
    day = data.completed_on
    pdf.set_xy(MARGIN_PT, _BOXES_ZONE_TOP_PT)
    pdf.cell(
        0, 14, f"{data.school.district}, ngày {day.day} tháng {day.month} năm {day.year}", align="R"
    )
    names = (data.homeroom_teacher_name or "", data.principal_name or "", data.school.name)
    for title, name, box in zip(_BOX_TITLES, names, boxes.values(), strict=True):
        top = PAGE_H_PT - box.y - box.h
        pdf.set_font("Sans", "B", 9)
        pdf.set_xy(box.x, top - 24)
        pdf.cell(box.w, 12, title, align="C")
        pdf.set_font("Sans", "", 7.5)
        pdf.set_xy(box.x, top - 12)
        pdf.cell(
            box.w,
            10,
            "(Ký, ghi rõ họ tên)" if name != data.school.name else "(Chữ ký số của tổ chức)",
            align="C",
        )
        pdf.set_draw_color(150, 150, 150)
        pdf.rect(box.x, top, box.w, box.h)
        pdf.set_font("Sans", "B" if name else "", 8.5)
        pdf.set_xy(box.x, top + box.h + 2)
        pdf.cell(box.w, 12, name, align="C")
