"""Inline annotations made objects at stage 1, so that a B-LTA record still validates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from asn1crypto import cms
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import BasePdfFileWriter, copy_into_new_writer
from pyhanko.sign.signers.pdf_signer import PdfTimeStamper
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko.sign.validation.dss import DocumentSecurityStore

from daemon.pdf import pades, validation
from daemon.pdf.annotations import relink
from daemon.pdf.appearance import BOXES_KEY
from daemon.pdf.dss_update import Unsupported, ValidationData, read_ltv_target
from daemon.pdf.reader import Document
from daemon.stages import FIELD_NAMES, ORDER, Stage
from tests.unit.ltv_kit import LtvServices
from tests.unit.pyhanko_compare import same_object, update_objects
from tests.unit.signing_kit import Pki, make_pki, record, sign

CONTENTS_BYTES = 8192
CORPUS = Path(__file__).parents[1] / "corpus" / "producers"


def _edited(pdf: bytes, edit: Callable[[BasePdfFileWriter], None]) -> bytes:
    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)), {})
    edit(writer)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _first_page_without_annots(writer: BasePdfFileWriter) -> None:
    del writer.root["/Pages"]["/Kids"][0]["/Annots"]


def _first_page_annots_indirect(writer: BasePdfFileWriter) -> None:
    """The first page's /Annots an indirect array, its link still inline in it."""
    page = writer.root["/Pages"]["/Kids"][0]
    page[generic.pdf_name("/Annots")] = writer.add_object(page["/Annots"])


def _visible_on_the_second_page(writer: BasePdfFileWriter) -> None:
    """The catalogue asks for the three visible signatures on the second page."""
    boxes = {
        generic.pdf_name(f"/{name}"): generic.DictionaryObject(
            {
                generic.pdf_name("/Page"): generic.NumberObject(1),
                generic.pdf_name("/Rect"): generic.ArrayObject(
                    map(generic.NumberObject, [40 + 180 * n, 100, 200 + 180 * n, 170])
                ),
            }
        )
        for n, name in enumerate(FIELD_NAMES)
    }
    writer.root[generic.pdf_name(f"/{BOXES_KEY}")] = generic.DictionaryObject(boxes)


# fpdf2 writes a link's dictionary inline in its page's /Annots
RECORDS: dict[str, Callable[[], bytes]] = {
    "links_on_both_pages": lambda: record(link=True),
    "link_on_the_second_page": lambda: _edited(record(link=True), _first_page_without_annots),
    "indirect_annots_array": lambda: _edited(record(link=True), _first_page_annots_indirect),
    "visible_signatures_on_the_second_page": lambda: _edited(
        record(link=True), _visible_on_the_second_page
    ),
}
# and so does jsPDF, its reals with 19 digits (595.2799999999999727)
PRODUCED: dict[str, Callable[[], bytes]] = {
    "jspdf": lambda: (CORPUS / "jspdf.pdf").read_bytes(),
}


def _by_pyhanko(pdf: bytes, stages: tuple[Stage, ...], pki: Pki) -> bytes:
    return sign(pdf, stages, pki, pades._prepare_and_sign_pyhanko)


SIGNERS = {"fast_path": sign, "pyhanko": _by_pyhanko}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> LtvServices:
    return LtvServices(tmp_path_factory.mktemp("ltv-pki"))


@pytest.fixture(scope="module", params=sorted({**RECORDS, **PRODUCED}))
def original(request: pytest.FixtureRequest) -> bytes:
    return {**RECORDS, **PRODUCED}[request.param]()


def _plain(value: object) -> object:
    """A PDF object as Python values, its numbers as floats (as daemon/pdf/syntax.py reads)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, generic.FloatObject):
        return float(value)
    return value


def _annotations(pdf: bytes) -> object:
    """Each page's annotations, resolved, but for signature widgets."""
    reader = PdfFileReader(BytesIO(pdf), strict=False)
    pages = []
    for index in range(int(reader.root["/Pages"]["/Count"])):
        page, _ = reader.find_page_for_modification(index)
        annots = page.get_object().get("/Annots", generic.ArrayObject()).get_object()
        pages.append([a.get_object() for a in annots.iterate() if "/FT" not in a.get_object()])
    return _plain(pages)


def _inline(pdf: bytes) -> int:
    """How many annotations the last revision's pages hold inline."""
    reader = PdfFileReader(BytesIO(pdf), strict=False)
    count = 0
    for index in range(int(reader.root["/Pages"]["/Count"])):
        page, _ = reader.find_page_for_modification(index)
        annots = page.get_object().get("/Annots", generic.ArrayObject()).get_object()
        count += sum(not isinstance(a, generic.IndirectObject) for a in annots.iterate())
    return count


def _lta(sealed: bytes, pki: Pki, services: LtvServices) -> bytes:
    """The seal's B-LTA update as daemon/ltv/dss.py writes it: by hand, else by pyHanko."""
    certs = [pki.root, services.ca, services.tsa_cert]
    try:
        data = ValidationData([c.dump() for c in certs])
        prepared = read_ltv_target(sealed).prepare_timestamp(data, CONTENTS_BYTES)
    except Unsupported:
        writer = IncrementalPdfFileWriter(BytesIO(sealed), strict=False)
        DocumentSecurityStore.supply_dss_in_writer(writer, None, certs=certs)
        stamper = PdfTimeStamper(_Authority(services), field_name="DocTimeStamp")
        out = stamper.timestamp_pdf(writer, "sha256", bytes_reserved=2 * CONTENTS_BYTES)
        return bytes(out.getvalue())
    return prepared.complete(services.token(prepared.document_digest))


class _Authority(TimeStamper):
    def __init__(self, services: LtvServices) -> None:
        super().__init__()
        self._services = services

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        return cms.ContentInfo.load(self._services.token(message_digest))


@pytest.mark.parametrize("signer", sorted(SIGNERS))
def test_a_b_lta_record_with_inline_links_validates(
    original: bytes, signer: str, pki: Pki, services: LtvServices
) -> None:
    # Given a school's PDF whose links fpdf2 wrote inline in the pages' /Annots
    assert _inline(original)

    # When it is signed through its three stages and sealed at B-LTA
    teacher = SIGNERS[signer](original, ORDER[:1], pki)
    issued = _lta(SIGNERS[signer](teacher, ORDER[1:], pki), pki, services)

    # Then stage 1 wrote every inline annotation as an object, unchanged, and pyHanko's
    # difference analysis allows every change after each signature
    assert _inline(original) and not _inline(teacher)
    assert _annotations(teacher) == _annotations(original) == _annotations(issued)
    reports = validation.validate_pdf(issued, [pki.root, services.ca], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    levels = ["FORM_FILLING", "FORM_FILLING", "LTA_UPDATES"]
    assert [r.modification_level for r in reports] == levels
    assert reports[-1].coverage == "ENTIRE_FILE"


def test_stage_1_takes_the_fast_path_and_numbers_them_from_the_size(
    original: bytes, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=pades.__name__):
        sign(original, ORDER[:1], pki)
    assert not [r for r in caplog.records if "with pyHanko" in r.getMessage()]
    document = Document(original)
    catalog = document.get(document.trailer["Root"]).value  # type: ignore[arg-type]
    assert isinstance(catalog, dict)
    size = document.trailer["Size"]
    assert isinstance(size, int)
    relinked = relink(document, catalog, size)
    # each inline annotation numbered from /Size on, before the fields
    assert [ref.num for ref in relinked.annotations] == list(
        range(size, size + len(relinked.annotations))
    )
    assert len(relinked.annotations) == _inline(original)


def test_a_record_without_inline_annotations_gets_nothing_more(pki: Pki) -> None:
    plain = record()
    document = Document(plain)
    catalog = document.get(document.trailer["Root"]).value  # type: ignore[arg-type]
    assert isinstance(catalog, dict)
    relinked = relink(document, catalog, 100)
    assert relinked.pages == {} and relinked.annotations == {} and relinked.changed() == {}


@pytest.mark.parametrize("name", sorted(RECORDS))  # jsPDF's reals: stage 1 rounds them
def test_both_paths_write_the_same_objects(name: str, pki: Pki) -> None:
    original = RECORDS[name]()
    ours = PdfFileReader(BytesIO(sign(original, ORDER[:1], pki)), strict=False)
    theirs = PdfFileReader(BytesIO(_by_pyhanko(original, ORDER[:1], pki)), strict=False)
    old = int(PdfFileReader(BytesIO(original), strict=False).trailer["/Size"])

    # the same objects written again (pages, catalogue), each the same, new ones by value
    assert len(update_objects(ours)) == len(update_objects(theirs))
    rewritten = {ref for ref in update_objects(theirs) if ref.idnum < old}
    assert {ref for ref in update_objects(ours) if ref.idnum < old} == rewritten
    for ref in rewritten:
        assert same_object(ours.get_object(ref), theirs.get_object(ref), old), ref


def test_a_page_whose_numbers_the_writer_would_round_goes_to_pyhanko(pki: Pki) -> None:
    # Given jsPDF's record signed at stage 1 by pyHanko, which keeps its reals' 19 digits
    sealed = _by_pyhanko(PRODUCED["jspdf"](), ORDER, pki)
    target = read_ltv_target(sealed)

    # The document timestamp's update, which writes the first page again, is left to
    # pyHanko (daemon/ltv/dss.py falls back on Unsupported); B-LT's, the catalogue
    # alone, is still written by hand
    with pytest.raises(Unsupported, match="number"):
        target.prepare_timestamp(ValidationData(), CONTENTS_BYTES)
    extended = target.dss_update(ValidationData([pki.root.dump()]))
    reports = validation.validate_pdf(extended, [pki.root], expected=3)
    assert all(r.bottom_line for r in reports)
