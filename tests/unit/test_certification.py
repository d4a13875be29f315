"""Stage 1 through daemon/pdf/certification.py: the update pyHanko would have written.

Each school's PDF is signed through all three stages twice, by prepare_and_sign (the
fast paths) and by the pyHanko path alone; pyHanko's validator must report the same
for both, poppler's pdfsig and qpdf must accept the result, and the first revision
must hold the objects pyHanko writes, object for object. Documents the fast path does
not handle go to pyHanko and still validate.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import BasePdfFileWriter, copy_into_new_writer

from daemon.errors import NotAPdf
from daemon.pdf import pades, validation
from daemon.pdf.certification import prepare_certification
from daemon.pdf.reader import Unsupported
from daemon.stages import FIELD_NAMES, ORDER, Stage
from producers.school_system import sample_pdf, sample_record
from tests.unit.pyhanko_compare import relinked_objects, same_object, update_objects
from tests.unit.signing_kit import (
    BYTES_RESERVED,
    SIGNED_AT,
    Pki,
    assert_validates_as_pyhanko,
    by_qpdf,
    fill_field,
    make_pki,
    record,
    rewritten,
    sign,
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _certified(pdf: bytes, pki: Pki, signing_time: datetime = SIGNED_AT) -> bytes:
    """Stage 1 signed by daemon/pdf/certification.py directly; raises Unsupported if it cannot."""
    template, raw_sign = pki.signers[Stage.HOMEROOM_TEACHER]
    prepared = prepare_certification(
        pdf, FIELD_NAMES, contents_bytes=template.size, signing_time=signing_time
    )
    return prepared.complete(template.sign(prepared.document_digest, raw_sign))


# School PDFs


def _edited(pdf: bytes, edit: Callable[[BasePdfFileWriter], None], **options: bool) -> bytes:
    """`pdf` written again by pyHanko after `edit` changed its objects."""
    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)), options)
    edit(writer)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _deep_page_tree(writer: BasePdfFileWriter) -> None:
    """Pages in three levels, after a branch with no pages: [[], [[p1], p2], p3]."""
    tree_ref = writer.root.raw_get("/Pages")
    first, second, third = writer.root["/Pages"]["/Kids"]

    def branch(kids: list[generic.IndirectObject], parent: generic.PdfObject) -> generic.PdfObject:
        node = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Pages"),
                pdf_name("/Kids"): generic.ArrayObject(kids),
                pdf_name("/Count"): generic.NumberObject(len(kids)),
                pdf_name("/Parent"): parent,
            }
        )
        return writer.add_object(node)

    empty = branch([], tree_ref)
    middle = branch([], tree_ref)
    inner = branch([first], middle)
    middle.get_object()["/Kids"] = generic.ArrayObject([inner, second])
    middle.get_object()["/Count"] = generic.NumberObject(2)
    first.get_object()["/Parent"], second.get_object()["/Parent"] = inner, middle
    writer.root["/Pages"]["/Kids"] = generic.ArrayObject([empty, middle, third])


def _drawn_on(pdf: bytes) -> bytes:
    """`pdf` with an incremental update that draws a line on its first page."""
    writer = IncrementalPdfFileWriter(BytesIO(pdf))
    stream = generic.StreamObject(stream_data=b"0 0 m 100 100 l S")
    writer.add_stream_to_page(0, writer.add_object(stream))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _catalog_entry(key: str, value: generic.PdfObject) -> Callable[[BasePdfFileWriter], None]:
    def edit(writer: BasePdfFileWriter) -> None:
        writer.root[pdf_name(key)] = value

    return edit


def _school_sample() -> bytes:
    info = sample_record(random.Random("certification"), "31000123", "unit", 0)
    return sample_pdf(info, "Trường Tiểu học 31000123", pages=3, photo_px=110)


def _esic(level: int) -> generic.DictionaryObject:
    return generic.DictionaryObject(
        {
            pdf_name("/Type"): pdf_name("/DeveloperExtensions"),
            pdf_name("/BaseVersion"): pdf_name("/1.7"),
            pdf_name("/ExtensionLevel"): generic.NumberObject(level),
        }
    )


ADBE = generic.DictionaryObject(
    {
        pdf_name("/BaseVersion"): pdf_name("/1.7"),
        pdf_name("/ExtensionLevel"): generic.NumberObject(3),
    }
)
ORIGINALS: dict[str, Callable[[Path], bytes]] = {
    "fpdf2_record": lambda _: record(),
    "school_sample": lambda _: _school_sample(),
    "qpdf_object_streams": lambda tmp: by_qpdf(record(), tmp, "--object-streams=generate"),
    "qpdf_linearized": lambda tmp: by_qpdf(record(), tmp, "--linearize"),
    "qpdf_linearized_object_streams": lambda tmp: by_qpdf(
        record(), tmp, "--linearize", "--object-streams=generate"
    ),
    "pyhanko_object_streams": lambda _: rewritten(record()),
    "esic_registered": lambda _: rewritten(record(), extensions="in_object_stream"),
    "link_on_first_page": lambda _: record(link=True),
    "incremental_update": lambda _: _drawn_on(record()),
    "page_tree_levels": lambda _: _edited(record(pages=3), _deep_page_tree),
    "other_extension": lambda _: _edited(
        record(), _catalog_entry("/Extensions", generic.DictionaryObject({pdf_name("/ADBE"): ADBE}))
    ),
    "catalog_version_1_4": lambda _: _edited(
        record(), _catalog_entry("/Version", pdf_name("/1.4"))
    ),
    "indirect_annots": lambda _: _edited(record(), _with_annots("indirect")),
}


@pytest.fixture(scope="module", params=sorted(ORIGINALS))
def original(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return ORIGINALS[request.param](tmp_path_factory.mktemp("qpdf"))


@pytest.fixture(scope="module")
def issued(original: bytes, pki: Pki) -> list[bytes]:
    """The record after each stage, signed by prepare_and_sign."""
    revisions = [original]
    for stage in ORDER:
        revisions.append(sign(revisions[-1], (stage,), pki))
    return revisions[1:]


# Signing


def test_every_stage_takes_the_fast_path(original: bytes, issued: list[bytes], pki: Pki) -> None:
    teacher, principal, seal = issued
    assert teacher == _certified(original, pki)  # it is deterministic
    assert principal == fill_field(teacher, Stage.PRINCIPAL, pki)
    assert seal == fill_field(principal, Stage.SCHOOL_SEAL, pki)
    assert seal.startswith(principal) and principal.startswith(teacher)
    assert teacher.startswith(original)


def test_signatures_validate_as_pyhanko_signed_ones(
    original: bytes, issued: list[bytes], pki: Pki
) -> None:
    assert_validates_as_pyhanko(original, issued[-1], pki)


def test_the_first_revision_holds_the_objects_pyhanko_writes(original: bytes, pki: Pki) -> None:
    ours = PdfFileReader(BytesIO(_certified(original, pki)))
    theirs = PdfFileReader(BytesIO(sign(original, ORDER[:1], pki, pades._prepare_and_sign_pyhanko)))
    old = int(PdfFileReader(BytesIO(original)).trailer["/Size"])

    # The catalogue, the first page, the form, three fields, a lock and the signature,
    # and the objects and pages of any inline annotations, each the same in both
    expected = 8 + relinked_objects(PdfFileReader(BytesIO(original)))
    assert len(update_objects(ours)) == len(update_objects(theirs)) == expected
    rewritten_old = {ref for ref in update_objects(theirs) if ref.idnum < old}
    assert {ref for ref in update_objects(ours) if ref.idnum < old} == rewritten_old
    for ref in rewritten_old:
        assert same_object(ours.get_object(ref), theirs.get_object(ref), old), ref
    assert same_object(ours.root, theirs.root, old)
    page, _ = ours.find_page_for_modification(0)
    their_page, _ = theirs.find_page_for_modification(0)
    assert page.reference == their_page.reference
    assert same_object(page.get_object(), their_page.get_object(), old)
    # /Size counts one object more in pyHanko's; the second /ID half is random there
    trailer, their_trailer = ours.trailer.flatten(), theirs.trailer.flatten()
    assert same_object(trailer, their_trailer, old, skip={"/ID", "/Size"})
    assert trailer["/ID"][0] == their_trailer["/ID"][0]


def test_tools_accept_the_record_and_a_later_change_is_detected(
    issued: list[bytes], pki: Pki, tmp_path: Path
) -> None:
    path = tmp_path / "issued.pdf"
    path.write_bytes(issued[-1])
    pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True, timeout=60)
    assert pdfsig.stdout.count("Signature Validation: Signature is Valid.") == 3, pdfsig.stdout
    assert "Total document signed" in pdfsig.stdout
    check = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # When someone appends an update that draws on the page
    changed = _drawn_on(issued[-1])

    # Then every signature is still intact, but the seal does not accept the change
    reports = validation.validate_pdf(changed, [pki.root])
    assert all(r.intact and r.valid for r in reports)
    seal = reports[-1]
    assert (seal.docmdp_ok, seal.bottom_line, seal.modification_level) == (False, False, "OTHER")


def test_the_same_request_gives_the_same_bytes(pki: Pki) -> None:
    pdf = record()
    once = _certified(pdf, pki)
    assert _certified(pdf, pki) == once
    later = _certified(pdf, pki, SIGNED_AT + timedelta(seconds=1))
    assert later != once
    assert b"/M (D:20250905083001Z)" in later[len(pdf) :]


def test_the_sha256_returned_is_the_signed_pdf_s(pki: Pki) -> None:
    for pdf in (record(), record() + b"garbage\n"):  # the fast paths, then pyHanko's
        for stage in ORDER:
            template, raw_sign = pki.signers[stage]
            signed = pades.prepare_and_sign(
                pdf,
                stage,
                template,
                raw_sign,
                bytes_reserved=BYTES_RESERVED,
                signing_time=SIGNED_AT,
            )
            assert signed.sha256 == hashlib.sha256(signed.pdf).digest()
            pdf = signed.pdf


# What the fast path leaves to pyHanko


def _with_annots(value: str) -> Callable[[BasePdfFileWriter], None]:
    def edit(writer: BasePdfFileWriter) -> None:
        annots = generic.ArrayObject()
        if value == "indirect":
            writer.root["/Pages"]["/Kids"][0].get_object()["/Annots"] = writer.add_object(annots)
        else:
            writer.root["/Pages"]["/Annots"] = annots

    return edit


def _with_form(writer: BasePdfFileWriter) -> None:
    from pyhanko.sign.fields import SigFieldSpec, append_signature_field

    append_signature_field(writer, SigFieldSpec("PhuHuynh"))


FALLBACKS: dict[str, tuple[Callable[[], bytes], str]] = {
    "form": (lambda: _edited(record(), _with_form), "already has /AcroForm"),
    "perms": (
        lambda: _edited(record(), _catalog_entry("/Perms", generic.DictionaryObject())),
        "already has /Perms",
    ),
    "annots_on_the_page_tree": (lambda: _edited(record(), _with_annots("tree")), "has /Annots"),
    "indirect_extensions": (
        lambda: _edited(
            record(),
            lambda w: _catalog_entry(
                "/Extensions", w.add_object(generic.DictionaryObject({pdf_name("/ADBE"): ADBE}))
            )(w),
        ),
        "/Extensions is an indirect object",
    ),
    "esic_level_0": (
        lambda: _edited(
            record(),
            _catalog_entry(
                "/Extensions", generic.DictionaryObject({pdf_name("/ESIC"): _esic(level=0)})
            ),
        ),
        "level 0, which pyHanko replaces",
    ),
    "bytes_after_eof": (lambda: record() + b"garbage\n", "does not end with startxref"),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_what_the_fast_path_does_not_handle_goes_to_pyhanko(case: str, pki: Pki) -> None:
    make, reason = FALLBACKS[case]
    pdf = make()
    pades.inspect_pdf(pdf, 1024 * 1024)
    with pytest.raises(Unsupported, match=re.escape(reason)):
        _certified(pdf, pki)
    reports = validation.validate_pdf(sign(pdf, ORDER, pki), [pki.root], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    assert [r.modification_level for r in reports] == ["FORM_FILLING", "FORM_FILLING", "NONE"]


def test_a_trailer_size_below_the_objects_is_refused(pki: Pki) -> None:
    pdf = record()
    size = re.search(rb"/Size (\d+)", pdf)
    assert size is not None
    broken = pdf.replace(size[0], b"/Size %d" % (int(size[1]) - 3))
    with pytest.raises(Unsupported, match="beyond the trailer's /Size"):
        _certified(broken, pki)


lenient = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)


@pytest.fixture(scope="module")
def plain_record() -> bytes:
    return record()


@lenient
@given(st.data())
def test_mutated_input_is_signed_or_left_to_pyhanko(
    pki: Pki, plain_record: bytes, data: st.DataObject
) -> None:
    # The fast path reads the xref table, the trailer and the objects it changes.
    pdf = bytearray(plain_record)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(len(pdf) - 1500, len(pdf) - 1))
        pdf[at] = data.draw(st.sampled_from(b"0123456789 \n<>[]()/%RobjxrefA"))
    try:
        signed = _certified(bytes(pdf), pki)
    except Unsupported:
        return  # left to pyHanko
    try:
        pades.inspect_pdf(bytes(pdf), len(pdf))
    except NotAPdf:
        return  # refused at intake: the fast path never sees it
    # Whatever the daemon would sign must validate: a signature no reader can follow is no use.
    (report,) = validation.validate_pdf(signed, [pki.root], expected=1)
    assert report.field_name == "GVCN"
    assert report.intact and report.valid and report.trusted
    assert report.docmdp_level == "FILL_FORMS"


def test_signing_on_the_fast_paths_loads_no_pyhanko() -> None:
    # A worker imports daemon.pades; pyHanko (tens of MB) is for the documents it falls back on.
    probe = """
import sys
from daemon.stages import ORDER
from tests.unit.signing_kit import make_pki, record, sign
sign(record(), ORDER, make_pki())
print(sorted(m for m in sys.modules if m.startswith("pyhanko")))
"""
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "[]"
