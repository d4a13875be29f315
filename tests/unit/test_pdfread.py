"""Finding objects through xref sections and object streams (daemon/pdf/reader.py).

Every object of files written by fpdf2, qpdf and pyHanko reads as pyHanko's reader
reads it; object streams this reader does not understand are refused.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader

from daemon.pdf import reader as pdfread
from daemon.pdf.reader import Document, PdfObject, Ref, Unsupported
from tests.unit.signing_kit import by_qpdf, record, rewritten

FILES: dict[str, Callable[[Path], bytes]] = {
    "fpdf2": lambda _: record(),
    "pyhanko_object_streams": lambda _: rewritten(record(), extensions="in_object_stream"),
    "qpdf_object_streams": lambda tmp: by_qpdf(record(), tmp, "--object-streams=generate"),
    "qpdf_linearized": lambda tmp: by_qpdf(
        record(), tmp, "--linearize", "--object-streams=generate"
    ),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_object_reads_as_pyhanko_reads_it(name: str, tmp_path: Path) -> None:
    pdf = FILES[name](tmp_path)
    document, reader = Document(pdf), PdfFileReader(BytesIO(pdf))
    sections = document.all_sections()
    compared = 0
    for num in range(1, max(section.end for section in sections)):
        theirs = reader.get_object(generic.Reference(num, 0, reader))
        if isinstance(theirs, generic.StreamObject | generic.NullObject):
            continue  # streams are read as far as their dictionaries; gaps are free
        assert document.get(Ref(num, 0)).value == _ours(theirs), num
        compared += 1
    assert compared > 5


def _ours(value: object) -> PdfObject:
    """A pyHanko object as daemon/pdf/syntax.py represents it."""
    if isinstance(value, generic.IndirectObject):
        return Ref(value.idnum, value.generation)
    if isinstance(value, generic.NameObject):
        return str(value)[1:]
    if isinstance(value, generic.TextStringObject | generic.ByteStringObject):
        return bytes(value.original_bytes)
    if isinstance(value, generic.BooleanObject):
        return bool(value)
    if isinstance(value, generic.FloatObject):
        return float(value)
    if isinstance(value, generic.NumberObject):
        return int(value)
    if isinstance(value, generic.NullObject):
        return None
    if isinstance(value, generic.DictionaryObject):
        return {str(key)[1:]: _ours(value.raw_get(key)) for key in value}
    assert isinstance(value, generic.ArrayObject)
    return [_ours(item) for item in iter(value)]


def test_older_sections_are_read_as_a_lookup_needs_them(tmp_path: Path) -> None:
    pdf = by_qpdf(record(), tmp_path, "--linearize")
    document = Document(pdf)
    assert len(document.sections) == 1  # the first page's section, at the start
    assert document.get(Ref(1, 0)).value is not None  # listed in the main section only
    assert len(document.sections) == 2
    assert [s.is_stream for s in document.all_sections()] == [False, False]


# Object streams


def _pdf(
    objects: dict[int, bytes],
    *,
    index: dict[int, int] | None = None,
    stream_entries: bytes = b"/Type /ObjStm",
    data: Callable[[bytes], bytes] = zlib.compress,
    filter_entry: bytes = b"/Filter /FlateDecode",
    indirect_length: bool = False,
) -> bytes:
    """A PDF 1.5 whose `objects` are in one object stream, listed by an xref stream.

    `index` overrides where the xref says each object is in the stream;
    `indirect_length` writes the stream's /Length as an object after it.
    """
    offsets, body = [], b""
    for num, text in objects.items():
        offsets.append(b"%d %d" % (num, len(body)))
        body += text + b"\n"
    header = b" ".join(offsets) + b"\n"
    stream_num = max(objects) + 1
    length_num, xref_num = stream_num + 1, stream_num + 2
    content = data(header + body)
    length = b"%d 0 R" % length_num if indirect_length else b"%d" % len(content)
    out = b"%PDF-1.5\n"
    stream_at = len(out)
    out += b"%d 0 obj\n<< %s %s /N %d /First %d /Length %s >>\nstream\n" % (
        stream_num, stream_entries, filter_entry, len(objects), len(header), length,
    )  # fmt: skip
    out += content + b"\nendstream\nendobj\n"
    length_at = len(out)
    out += b"%d 0 obj\n%d\nendobj\n" % (length_num, len(content))
    rows = [struct.pack(">BHH", 0, 0, 65535)]
    for at, num in enumerate(sorted(objects)):
        rows.append(struct.pack(">BHH", 2, stream_num, (index or {}).get(num, at)))
    xref_at = len(out)
    rows += [struct.pack(">BHH", 1, at, 0) for at in (stream_at, length_at, xref_at)]
    table = b"".join(rows)
    out += b"%d 0 obj\n<< /Type /XRef /W [1 2 2] /Size %d /Root 1 0 R /Length %d >>\nstream\n" % (
        xref_num, xref_num + 1, len(table),
    )  # fmt: skip
    return out + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at


OBJECTS = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"[ 3 0 R (two) ]", 3: b"42"}


def test_objects_in_an_object_stream_are_read() -> None:
    document = Document(_pdf(OBJECTS))
    assert document.get(Ref(1, 0)).value == {"Type": "Catalog", "Pages": Ref(2, 0)}
    assert document.resolve(Ref(2, 0)) == [Ref(3, 0), b"two"]
    assert document.resolve(Ref(3, 0)) == 42
    located = document.get(Ref(2, 0))
    assert located.source[located.start : located.end] == b"[ 3 0 R (two) ]"


@pytest.mark.parametrize(
    ("pdf", "reason"),
    [
        (_pdf(OBJECTS, index={2: 0}), "has no object 2 at index 0"),
        (_pdf(OBJECTS, index={2: 7}), "has no object 2 at index 7"),
        (_pdf(OBJECTS, stream_entries=b"/Type /XObject"), "is not an object stream"),
        (
            _pdf(
                OBJECTS,
                data=lambda d: d.hex().encode() + b">",
                filter_entry=b"/Filter /ASCIIHexDecode",
            ),
            "is not Flate",
        ),
        (
            _pdf(OBJECTS, data=lambda d: zlib.compress(d[:8])),
            "header of object stream 4 is malformed",
        ),
        (_pdf(OBJECTS, data=lambda d: b"not zlib"), "does not inflate"),
        (_pdf({**OBJECTS, 2: b"<< /Length 0 >> stream"}), "is not allowed there"),
        (_pdf({**OBJECTS, 2: b"3 0 R"}), "is not allowed there"),
    ],
)
def test_object_streams_not_understood_are_refused(pdf: bytes, reason: str) -> None:
    with pytest.raises(Unsupported, match=reason):
        Document(pdf).get(Ref(2, 0))


def test_a_compressed_object_of_another_generation_is_refused() -> None:
    with pytest.raises(Unsupported, match="not generation 0"):
        Document(_pdf(OBJECTS)).get(Ref(2, 1))


def test_an_object_stream_inflating_beyond_the_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pdfread, "_MAX_OBJECT_STREAM_BYTES", 16)
    with pytest.raises(Unsupported, match="inflates to more than 16 bytes"):
        Document(_pdf(OBJECTS)).get(Ref(1, 0))


def test_an_indirect_length_is_followed() -> None:
    document = Document(_pdf(OBJECTS, indirect_length=True))
    assert document.resolve(Ref(3, 0)) == 42


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return by_qpdf(record(), tmp_path_factory.mktemp("qpdf"), "--object-streams=generate")


lenient = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)


@lenient
@given(st.data())
def test_mutated_files_with_object_streams_are_read_or_refused(
    compressed: bytes, data: st.DataObject
) -> None:
    pdf = bytearray(compressed)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(pdf) - 1))
        pdf[at] = data.draw(st.integers(0, 255))
    try:
        document = Document(bytes(pdf))
        for num in range(1, 20):
            document.get(Ref(num, 0))
    except Unsupported:
        pass


@lenient
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.data())
def test_any_object_stream_content_is_read_or_refused(
    objects: list[bytes], data: st.DataObject
) -> None:
    numbered = dict(enumerate(objects, start=1))
    index = {num: data.draw(st.integers(0, 5)) for num in numbered}
    try:
        Document(_pdf(numbered, index=index)).get(Ref(1, 0))
    except Unsupported:
        pass
