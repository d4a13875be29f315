"""The rendered record: PDF/A-3b a person can read, with the data a machine reads inside."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree
from pyhanko.pdf_utils.reader import PdfFileReader

from daemon.errors import InvalidMessage
from daemon.messages import RecordInfo
from daemon.pdf.pades import inspect_pdf
from daemon.record.attached import attached_record_xml, check_attached_record
from daemon.record.model import RecordData
from daemon.record.render import PAGE_H_PT, PAGE_W_PT, render_record, signature_boxes
from daemon.record.xml import canonical_xml
from daemon.stages import FIELD_NAMES

EXAMPLE = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "record_data.json"
RECORD_ID = "2025-2026-5A-07"
INFO = RecordInfo(
    record_id=RECORD_ID,
    student_id="3100012300007",
    academic_year="2025-2026",
    grade=5,
    class_name="5A",
    submission_round=1,
)


@pytest.fixture(scope="module")
def data() -> RecordData:
    return RecordData.model_validate_json(EXAMPLE.read_bytes())


@pytest.fixture(scope="module")
def pdf(data: RecordData) -> bytes:
    return render_record(RECORD_ID, data)


def _poppler(tool: str, *args: str) -> str:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (poppler-utils) is not installed")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def test_the_daemon_accepts_the_rendered_pdf_for_signing(pdf: bytes) -> None:
    inspect_pdf(pdf, 10 * 1024 * 1024)
    assert len(pdf) < 200_000


def test_the_same_data_renders_the_same_bytes(data: RecordData, pdf: bytes) -> None:
    assert render_record(RECORD_ID, data) == pdf
    other = data.model_copy(update={"teacher_comment": "Em chăm ngoan."})
    assert render_record(RECORD_ID, other) != pdf


def test_the_text_reads_back_with_its_diacritics(pdf: bytes, tmp_path: Path) -> None:
    path = tmp_path / "record.pdf"
    path.write_bytes(pdf)
    text = _poppler("pdftotext", "-layout", str(path), "-")
    for words in (
        "HỌC BẠ",
        "SỞ GIÁO DỤC VÀ ĐÀO TẠO THÀNH PHỐ HỒ CHÍ MINH",
        "Nguyễn Thị Thu Hà",
        "Tiếng Việt",
        "Lịch sử và Địa lí",
        "Nghệ thuật (Mĩ thuật)",
        "Hoàn thành xuất sắc",
        "Giải quyết vấn đề và sáng tạo",
        "Giáo viên chủ nhiệm",
        "Hiệu trưởng",
        "Dấu của nhà trường",
        "Trường Tiểu học Lê Quý Đôn",
        "ngày 20 tháng 5 năm 2026",
    ):
        assert words in text, words


def test_every_font_is_embedded(pdf: bytes, tmp_path: Path) -> None:
    path = tmp_path / "record.pdf"
    path.write_bytes(pdf)
    rows = _poppler("pdffonts", str(path)).splitlines()[2:]
    assert rows and all(re.search(r"\byes\s+yes\s+yes\b", row) for row in rows), rows


def test_it_is_pdf_a_3b_with_the_record_xml_as_associated_data(
    data: RecordData, pdf: bytes, tmp_path: Path
) -> None:
    from io import BytesIO

    root = PdfFileReader(BytesIO(pdf)).root
    intent = root["/OutputIntents"][0]
    assert intent["/S"] == "/GTS_PDFA1" and len(intent["/DestOutputProfile"].data) > 1000
    xmp = etree.fromstring(root["/Metadata"].data)
    ns = {"pdfaid": "http://www.aiim.org/pdfa/ns/id/"}
    description = xmp.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert description is not None
    assert description.get(f"{{{ns['pdfaid']}}}part") == "3"
    assert description.get(f"{{{ns['pdfaid']}}}conformance") == "B"
    (ref,) = root["/AF"]
    spec = ref.get_object()
    assert spec["/AFRelationship"] == "/Data" and spec["/UF"] == "hocba-record.xml"
    assert spec["/EF"]["/F"]["/Subtype"] == "/application/xml"
    assert attached_record_xml(pdf) == canonical_xml(RECORD_ID, data)
    path = tmp_path / "record.pdf"
    path.write_bytes(pdf)
    assert "1: hocba-record.xml" in _poppler("pdfdetach", "-list", str(path))


def test_the_signature_boxes_sit_on_the_page_apart_from_each_other(pdf: bytes) -> None:
    from io import BytesIO

    pages = int(PdfFileReader(BytesIO(pdf)).root["/Pages"]["/Count"])
    boxes = signature_boxes(pages)
    assert list(boxes) == list(FIELD_NAMES)
    ordered = list(boxes.values())
    for box in ordered:
        assert box.page == pages - 1
        assert 0 < box.x and box.x + box.w < PAGE_W_PT and 0 < box.y < PAGE_H_PT / 4
    for left, right in itertools.pairwise(ordered):
        assert left.x + left.w < right.x


def test_a_pdf_carrying_the_xml_of_its_own_record_passes(pdf: bytes) -> None:
    assert check_attached_record(pdf, "31000123", INFO) is True


@pytest.mark.parametrize(
    ("school_id", "change", "says"),
    [
        ("31000123", {"student_id": "3100012300099"}, "student.student_id"),
        ("31000123", {"record_id": "2025-2026-5A-08"}, "record_id"),
        ("31000123", {"grade": 4}, "grade"),
        ("31000999", {}, "school.school_id"),
    ],
)
def test_a_pdf_carrying_another_records_xml_is_refused(
    pdf: bytes, school_id: str, change: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        check_attached_record(pdf, school_id, INFO.model_copy(update=change))
    assert says in caught.value.message


def test_a_pdf_without_record_xml_is_left_alone() -> None:
    plain = next((Path(__file__).resolve().parents[1] / "corpus" / "producers").glob("*.pdf"))
    assert check_attached_record(plain.read_bytes(), "31000123", INFO) is False


def _words_by_line(pdf: bytes, tmp_path: Path) -> list[list[tuple[str, float, float]]]:
    """pdftotext's lines, each as its words (text, xMin, xMax) in points."""
    path = tmp_path / "record.pdf"
    path.write_bytes(pdf)
    html = _poppler("pdftotext", "-bbox-layout", str(path), "-")
    ns = {"x": "http://www.w3.org/1999/xhtml"}
    root = etree.fromstring(html.encode("utf-8"), etree.XMLParser(recover=True))
    return [
        [(w.text or "", float(w.get("xMin")), float(w.get("xMax"))) for w in line]
        for line in root.iterfind(".//x:line", ns)
    ]


def test_a_long_comment_is_justified_between_the_margins(data: RecordData, tmp_path: Path) -> None:
    comment = " ".join(f"từ{i}" for i in range(60))
    pdf = render_record(RECORD_ID, data.model_copy(update={"teacher_comment": comment}))
    lines = [ws for ws in _words_by_line(pdf, tmp_path) if any("từ" in w for w, _, _ in ws)]
    assert len(lines) >= 3
    assert " ".join(w for ws in lines for w, _, _ in ws).endswith(comment)
    right = PAGE_W_PT - 40 - 2.835
    for ws in lines[:-1]:
        assert abs(ws[-1][2] - right) < 1.0, ws[-1]
    assert lines[-1][-1][2] < right - 5


def test_no_text_runs_past_the_margins(data: RecordData, tmp_path: Path) -> None:
    word = "Đ" + "ươ" * 60
    subjects = [s.model_copy(update={"comment": f"Em {word} tốt."}) for s in data.subjects]
    long = data.model_copy(update={"subjects": subjects, "teacher_comment": word + " " + word})
    lines = _words_by_line(render_record(RECORD_ID, long), tmp_path)
    pieces = [w for ws in lines for w, _, _ in ws if w and set(w) <= set("Đươ")]
    assert len(pieces) > len(subjects) + 2  # each long word went over several lines
    assert sum(w.count("ư") for w in pieces) == 60 * (len(subjects) + 2)
    for ws in lines:
        for text, x_min, x_max in ws:
            assert 40 - 0.5 <= x_min and x_max <= PAGE_W_PT - 40 + 0.5, text


def test_a_record_longer_than_a_page_repeats_the_table_heading(
    data: RecordData, tmp_path: Path
) -> None:
    comment = "Em tích cực tham gia các hoạt động của lớp, của trường; " * 10
    subjects = [
        s.model_copy(update={"comment": f"{i}. {comment.strip()} Hết{i}."})
        for i, s in enumerate(data.subjects)
    ]
    pdf = render_record(RECORD_ID, data.model_copy(update={"subjects": subjects}))
    path = tmp_path / "record.pdf"
    path.write_bytes(pdf)
    pages = _poppler("pdftotext", "-layout", str(path), "-").split("\f")[:-1]
    assert len(pages) >= 2
    assert all("Nhận xét" in page and "Mức đạt được" in page for page in pages[:2])
    everything = "".join(pages)
    assert all(f"Hết{i}." in everything for i in range(len(subjects)))
    assert "Dấu của nhà trường" in pages[-1] and "Dấu của nhà trường" not in pages[0]
    inspect_pdf(pdf, 10 * 1024 * 1024)
    boxes = signature_boxes(len(pages))
    assert {b.page for b in boxes.values()} == {len(pages) - 1}


def test_the_widths_the_pdf_declares_are_the_embedded_fonts_own(pdf: bytes) -> None:
    from io import BytesIO

    from fontTools.ttLib import TTFont

    page = PdfFileReader(BytesIO(pdf)).root["/Pages"]["/Kids"][0]
    fonts = page["/Resources"]["/Font"]
    for key in ("/F1", "/F2"):
        cid_font = fonts[key]["/DescendantFonts"][0]
        ttf = TTFont(BytesIO(cid_font["/FontDescriptor"]["/FontFile2"].data))
        scale = 1000 / ttf["head"].unitsPerEm
        first, widths = cid_font["/W"][0], list(cid_font["/W"][1])
        assert first == 0 and len(widths) == ttf["maxp"].numGlyphs
        for gid, declared in enumerate(widths):
            advance = ttf["hmtx"][ttf.getGlyphName(gid)][0]
            assert abs(declared - advance * scale) <= 1, (key, gid)
