"""The intake check without pyHanko (daemon/pdf/intake.py) against the pyHanko check.

Over every PDF the suite makes or has (school systems' samples, rendered v2 records,
real producers' files, the refused and malformed corpus, signed files at each stage,
attached XML good and bad, and mutations of them), the daemon's intake
(`documents.inspect_document`) gives the verdict the pyHanko functions give, and the
fast path, where it accepts, accepts a file pyHanko accepts, with the same XML. Every
usual file takes the fast path, so that a regression to pyHanko for all shows here.
"""

from __future__ import annotations

import codecs
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.pdf_utils import embed, generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from bench.environment import samples
from daemon.documents import DocumentSource, inspect_document
from daemon.errors import InvalidMessage, NotAPdf
from daemon.messages import RecordInfo
from daemon.pdf import intake
from daemon.pdf.pades import inspect_pdf
from daemon.pdf.reader import Unsupported
from daemon.record.attached import attached_record_xml, check_attached_record
from daemon.record.render import render_record
from daemon.record.xml import FILENAME, MAX_XML_BYTES, canonical_xml
from daemon.settings import SigningSettings
from daemon.stages import ORDER
from producers.school_system import sample_pdf, sample_record, sample_record_data
from tests.corpus import cases
from tests.corpus.generate import encrypted_pdf, plain_pdf
from tests.unit.signing_kit import by_qpdf, make_pki, record, rewritten, sign
from tests.unit.test_intake_fuzz import mutate

CORPUS = Path(__file__).parents[1] / "corpus"
SCHOOL = "31000123"
MAX_BYTES = 1024 * 1024
# Producers' files the fast path leaves to pyHanko, and why (tests/corpus/producers).
PRODUCERS_TO_PYHANKO = {
    "pdflib_form.pdf": "with kids",  # a text field whose widget is its kid
    "poppler_pdfunite.pdf": "/Size",  # refused: the trailer /Size is too small
    "refused_encrypted.pdf": "/Encrypt",
    "refused_signed_elsewhere.pdf": "signature field",
}


@dataclass(frozen=True)
class Case:
    pdf: bytes
    info: RecordInfo  # what the request says of the record, for the attached XML


def _verdict(check: Callable[[], bytes | None]) -> tuple[str, bytes | None]:
    """("accepted", the XML found) or (the error class, None)."""
    try:
        return "accepted", check()
    except Exception as exc:  # any difference counts, not only the expected classes
        return type(exc).__name__, None


def pyhanko_verdict(case: Case) -> tuple[str, bytes | None]:
    """Intake as it was: inspect_pdf, then check_attached_record (pyHanko twice)."""

    def check() -> bytes | None:
        inspect_pdf(case.pdf, MAX_BYTES)
        if not check_attached_record(case.pdf, SCHOOL, case.info):
            return None
        return attached_record_xml(case.pdf)

    return _verdict(check)


def daemon_verdict(case: Case) -> tuple[str, bytes | None]:
    """Intake as the daemon makes it now: DocumentSource._inspect, the XML it found."""
    source = DocumentSource(None, SigningSettings(max_document_bytes=MAX_BYTES))  # type: ignore[arg-type]

    def check() -> bytes | None:
        source._inspect(case.pdf, _request(case.info))  # type: ignore[arg-type]
        return inspect_document(case.pdf, MAX_BYTES, attached=True)

    return _verdict(check)


@dataclass(frozen=True)
class _Request:  # what DocumentSource._inspect reads of a SignRequest
    school_id: str
    record: RecordInfo


def _request(info: RecordInfo) -> _Request:
    return _Request(SCHOOL, info)


def fast_path(pdf: bytes) -> tuple[bool, bytes | None]:
    """(True, the XML) when the fast path alone accepts the file; (False, None) if not."""
    try:
        document = intake.accepted(pdf, MAX_BYTES)
        if b"EmbeddedFile" not in pdf:
            return True, None
        return True, intake.embedded_file(document, FILENAME, MAX_XML_BYTES)
    except Unsupported:
        return False, None


# The files


def _info(n: int) -> RecordInfo:
    return sample_record(random.Random(n), SCHOOL, "intake", n)


INFO = _info(0)


def _rendered(n: int) -> Case:
    info = _info(n)
    data = sample_record_data(random.Random(n), info, SCHOOL)
    return Case(render_record(info.record_id, data), info)


def _xml(info: RecordInfo) -> bytes:
    return canonical_xml(info.record_id, sample_record_data(random.Random(1), info, SCHOOL))


def embedded_by_pyhanko(pdf: bytes, xml: bytes) -> bytes:
    """`xml` attached by pyHanko's embed_file: /Names, its tree and array indirect, Flate."""
    writer = IncrementalPdfFileWriter(BytesIO(pdf))
    data = embed.EmbeddedFileObject.from_file_data(writer, xml, mime_type="application/xml")
    embed.embed_file(writer, embed.FileSpec(FILENAME, file_name=FILENAME, embedded_data=data))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def attached(
    pdf: bytes,
    xml: bytes,
    *,
    depth: int = 0,
    names: dict[str, bytes] | None = None,
    filters: list[str] | None = None,
) -> bytes:
    """`xml` attached in a name tree `depth` kids deep, the file spec named by `names`."""
    writer = IncrementalPdfFileWriter(BytesIO(pdf))
    kind = {generic.NameObject("/Type"): generic.NameObject("/EmbeddedFile")}
    stream = generic.StreamObject(kind, stream_data=xml)
    for name in filters or ():
        stream.apply_filter(generic.NameObject(name))
    spec = generic.DictionaryObject({generic.NameObject("/Type"): generic.NameObject("/Filespec")})
    for key, value in (names or {"/F": FILENAME.encode()}).items():
        spec[generic.NameObject(key)] = generic.ByteStringObject(value)
    spec["/EF"] = generic.DictionaryObject({generic.NameObject("/F"): writer.add_object(stream)})
    pairs = generic.ArrayObject([generic.pdf_string(FILENAME), writer.add_object(spec)])
    node = generic.DictionaryObject({generic.NameObject("/Names"): pairs})
    for _ in range(depth):
        kids = generic.ArrayObject([writer.add_object(node)])
        node = generic.DictionaryObject({generic.NameObject("/Kids"): kids})
    tree = generic.DictionaryObject({generic.NameObject("/EmbeddedFiles"): writer.add_object(node)})
    writer.root[generic.NameObject("/Names")] = writer.add_object(tree)
    writer.update_root()
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def usual_files() -> dict[str, Case]:
    """What school systems send: the bench's samples, v2 records, v1 records with XML."""
    files = {
        f"sample {s.info.record_id}": Case(s.pdf, s.info) for s in samples((SCHOOL,), 6, "intake")
    }
    files.update({f"rendered {n}": _rendered(n) for n in range(4)})
    files.update({f"record pages={n}": Case(record(n, link=n == 1), INFO) for n in (1, 2, 4)})
    for n in range(2):
        info = _info(10 + n)
        pdf = sample_pdf(info, f"Trường Tiểu học {SCHOOL}", pages=2)
        files[f"sample with XML by pyHanko {n}"] = Case(embedded_by_pyhanko(pdf, _xml(info)), info)
    return files


@cache
def all_files() -> dict[str, Case]:
    files = dict(usual_files())
    for path in sorted([*(CORPUS / "producers").glob("*.pdf"), *(CORPUS / "pdfs").glob("*.pdf")]):
        files[f"corpus {path.name}"] = Case(path.read_bytes(), INFO)
    for bad in cases.bad_pdfs(MAX_BYTES):
        files[f"bad {bad.name}"] = Case(bad.pdf, INFO)
    files["plain"], files["encrypted"] = Case(plain_pdf(), INFO), Case(encrypted_pdf(), INFO)
    rendered = _rendered(0)
    files.update(_rewritten(rendered))
    files.update(_signed(rendered))
    files.update(_attachments(rendered))
    return files


def _rewritten(rendered: Case) -> dict[str, Case]:
    files = {
        "pyhanko object streams": Case(rewritten(record(), extensions="in_object_stream"), INFO)
    }
    with tempfile.TemporaryDirectory() as tmp:
        for what, options in {
            "object streams": ("--object-streams=generate",),
            "linearized": ("--linearize", "--object-streams=generate"),
        }.items():
            files[f"qpdf {what}"] = Case(by_qpdf(record(), Path(tmp), *options), INFO)
            files[f"rendered, qpdf {what}"] = replace(
                rendered, pdf=by_qpdf(rendered.pdf, Path(tmp), *options)
            )
    return files


def _signed(rendered: Case) -> dict[str, Case]:
    pki, files = make_pki(), {}
    for stages in range(1, len(ORDER) + 1):
        files[f"record signed {stages}"] = Case(sign(record(), ORDER[:stages], pki), INFO)
        files[f"rendered signed {stages}"] = replace(
            rendered, pdf=sign(rendered.pdf, ORDER[:stages], pki)
        )
    return files


def _attachments(rendered: Case) -> dict[str, Case]:
    info, plain = rendered.info, sample_pdf(rendered.info, "Trường", pages=1)
    xml = _xml(info)
    utf16 = codecs.BOM_UTF16_BE + FILENAME.encode("utf-16-be")
    return {
        "xml, tree 2 kids deep": Case(attached(plain, xml, depth=2), info),
        "xml, tree 9 kids deep": Case(attached(plain, xml, depth=9), info),
        "xml, Flate": Case(attached(plain, xml, filters=["/FlateDecode"]), info),
        "xml, ASCIIHex": Case(attached(plain, xml, filters=["/ASCIIHexDecode"]), info),
        "xml, /UF in UTF-16": Case(
            attached(plain, xml, names={"/UF": utf16, "/F": b"x.xml"}), info
        ),
        "xml, another file name": Case(attached(plain, xml, names={"/F": b"other.xml"}), info),
        "xml, too large": Case(attached(plain, xml + b" " * MAX_XML_BYTES), info),
        "xml, another record": Case(attached(plain, xml), _info(99)),
        "xml, not XML": Case(attached(plain, b"not <xml"), info),
        "rendered, another record": replace(rendered, info=_info(98)),
        "xml by pyHanko, another record": Case(embedded_by_pyhanko(plain, xml), _info(97)),
    }


# The tests


@pytest.mark.parametrize("name", sorted(all_files()))
def test_the_daemon_gives_pyhankos_verdict_and_the_fast_path_accepts_only_what_it_accepts(
    name: str,
) -> None:
    case = all_files()[name]
    expected = pyhanko_verdict(case)
    assert daemon_verdict(case) == expected
    fast, xml = fast_path(case.pdf)
    if fast:  # accepted by pyHanko's inspect_pdf, the same XML found by attached.py
        assert expected[0] in ("accepted", InvalidMessage.__name__), expected
        assert xml == (attached_record_xml(case.pdf) if b"EmbeddedFile" in case.pdf else None)


def test_the_files_tell_acceptance_from_each_refusal() -> None:
    # The cases mean something only if the verdicts vary: each kind occurs.
    verdicts = {name: pyhanko_verdict(case) for name, case in all_files().items()}
    kinds = {kind for kind, _ in verdicts.values()}
    assert kinds == {"accepted", NotAPdf.__name__, InvalidMessage.__name__}
    with_xml = [name for name, (kind, xml) in verdicts.items() if xml is not None]
    assert len(with_xml) >= 10, with_xml


def test_every_usual_file_takes_the_fast_path() -> None:
    files = usual_files()
    taken = {name for name, case in files.items() if fast_path(case.pdf)[0]}
    assert taken == set(files), sorted(set(files) - taken)
    # and the v1 records with XML are found there too
    for name, case in files.items():
        if "XML" in name or "rendered" in name:
            assert fast_path(case.pdf)[1] is not None, name


def test_producers_files_take_the_fast_path_but_those_listed() -> None:
    left = {}
    for path in sorted((CORPUS / "producers").glob("*.pdf")):
        try:
            intake.accepted(path.read_bytes(), MAX_BYTES)
        except Unsupported as exc:
            left[path.name] = str(exc)
    assert set(left) == set(PRODUCERS_TO_PYHANKO)
    for name, reason in PRODUCERS_TO_PYHANKO.items():
        assert reason in left[name], (name, left[name])


def test_a_pdf_whose_names_are_indirect_objects_has_its_xml_read_on_both_paths() -> None:
    # attached.py read /Names with dict.get, which does not resolve a reference:
    # pyHanko's own embed_file made a file it refused as unreadable.
    info = _info(5)
    pdf = embedded_by_pyhanko(sample_pdf(info, "Trường", pages=1), _xml(info))
    assert pyhanko_verdict(Case(pdf, info)) == ("accepted", _xml(info))
    assert fast_path(pdf) == (True, _xml(info))


# Mutations: any byte of these files changed, inserted or cut


@cache
def _seeds() -> list[Case]:
    files = all_files()
    names = ["plain", "record pages=1", "rendered, qpdf object streams", "xml, tree 2 kids deep"]
    names += [
        "sample with XML by pyHanko 0",
        "corpus pdflib.pdf",
        "corpus itext5_full_compression.pdf",
    ]
    return [files[name] for name in names]


@st.composite
def mutated(draw: st.DrawFn) -> Case:
    case = draw(st.sampled_from(_seeds()))
    return replace(case, pdf=mutate(draw, case.pdf, rounds=4, longest_cut=16, duplicate=False))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(mutated())
def test_a_mutated_file_gets_pyhankos_verdict(case: Case) -> None:
    expected = pyhanko_verdict(case)
    assert daemon_verdict(case) == expected
    fast, xml = fast_path(case.pdf)
    if fast:
        assert expected[0] in ("accepted", InvalidMessage.__name__), expected
        assert xml == (attached_record_xml(case.pdf) if b"EmbeddedFile" in case.pdf else None)
