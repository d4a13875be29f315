"""Finding a few objects of a PDF from its end, without pyHanko.

Signing a record changes a handful of objects (the catalogue, the first page, the
fields), so the signing path reads only those: startxref, the newest xref section
(a classic table or an xref stream, object streams included), older sections by
/Prev as a lookup needs them, and the objects themselves. That costs microseconds
where pyHanko's reader costs a fraction of a millisecond, and only the standard
library is used, so a worker using it stays small.

Anything this reader does not expect (encryption, hybrid or broken xref sections,
filters other than Flate, bytes after %%EOF) raises `Unsupported`; the caller then
signs with pyHanko, which reads any PDF and refuses bad ones with a precise reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from daemon.pdf.streams import decode
from daemon.pdf.syntax import (
    TOKEN_END,
    PdfDict,
    PdfObject,
    Ref,
    Unsupported,
    as_dict,
    as_int,
    read_object,
    skip,
)
from daemon.pdf.syntax import WHITESPACE as _S

# The object layer comes from daemon/pdf/syntax.py; a caller needs only this module.
__all__ = [
    "NOT_TRAILER_KEYS",
    "Document",
    "Located",
    "PdfDict",
    "PdfObject",
    "Ref",
    "Section",
    "Unsupported",
    "read_object",
]

_TAIL_WINDOW = 1024  # where readers look for startxref, as pyHanko does
_MAX_SECTIONS = 64  # a record has four revisions; a longer /Prev chain is not ours
# An object stream holds dictionaries, not content: a few MB at most in a school's
# PDF. The bound keeps a hostile stream from inflating without end.
_MAX_OBJECT_STREAM_BYTES = 32 * 1024 * 1024

_HEADER = re.compile(rb"%PDF-(\d).(\d)")  # pyHanko's pattern, `.` included
# pdf-lib and jsPDF end the file right after %%EOF; the update then starts on a new line.
_STARTXREF = re.compile(rb"startxref" + _S + rb"+(\d+)" + _S + rb"+%%EOF(?:\r\n|\r|\n)?")
_OBJ_HEADER = re.compile(rb"(\d+)" + _S + rb"+(\d+)" + _S + rb"+obj" + TOKEN_END)
_ENDOBJ = re.compile(_S + rb"*endobj" + TOKEN_END)
_STREAM = re.compile(_S + rb"*stream(?:\r\n|\n)")
_ENDSTREAM = re.compile(_S + rb"*endstream" + TOKEN_END)
_STREAM_AFTER = re.compile(_S + rb"*stream" + TOKEN_END)
_SUBSECTION = re.compile(rb"(\d+)[ \t]+(\d+)[ \t]*(?:\r\n|\r|\n)")
_TABLE_ROW = re.compile(rb"(\d{10}) (\d{5}) ([nf])(?: \r| \n|\r\n)")
_TABLE_ROW_BYTES = 20
_PAIR = re.compile(_S + rb"*(\d+)" + _S + rb"+(\d+)" + TOKEN_END)

# Dictionary keys that describe an xref stream, not the document (pyHanko's list).
NOT_TRAILER_KEYS = frozenset({"Length", "Filter", "DecodeParms", "W", "Type", "Index", "XRefStm"})


# Finding objects through the xref sections


class Entry(NamedTuple):
    """Where an xref section says an object is."""

    offset: int  # in the file; for an object in an object stream, the stream's number
    gen: int  # for an object in an object stream, its index there
    compressed: bool  # in an object stream


@dataclass(frozen=True)
class Section:
    """One xref section: its trailer, and where each object it lists has its row."""

    trailer: PdfDict
    ranges: tuple[tuple[int, int, int], ...]  # first object, count, offset of its row
    rows: bytes  # a table's text (the whole file), or a stream's decoded rows
    widths: tuple[int, int, int] | None  # a stream's /W; None for a table

    @property
    def is_stream(self) -> bool:
        return self.widths is not None

    @property
    def end(self) -> int:
        """One past the highest object number the section lists."""
        return max((first + count for first, count, _ in self.ranges), default=0)

    def entry(self, num: int) -> Entry | None:
        """Where object `num` is; None if this section does not list it."""
        row_bytes = sum(self.widths) if self.widths else _TABLE_ROW_BYTES
        for first, count, start in self.ranges:
            if first <= num < first + count:
                at = start + (num - first) * row_bytes
                return self._stream_row(at, num) if self.widths else self._table_row(at, num)
        return None

    def _table_row(self, at: int, num: int) -> Entry:
        match = _TABLE_ROW.match(self.rows, at)
        if match is None:
            raise Unsupported(f"The xref row of object {num} is malformed.")
        if match[3] == b"f":
            raise Unsupported(f"Object {num} is free.")
        return Entry(int(match[1]), int(match[2]), compressed=False)

    def _stream_row(self, at: int, num: int) -> Entry:
        assert self.widths is not None
        fields = []
        for width in self.widths:
            fields.append(int.from_bytes(self.rows[at : at + width], "big"))
            at += width
        kind = fields[0] if self.widths[0] else 1  # no type field: every row is in use
        if kind not in (1, 2):
            raise Unsupported(f"Object {num} is free.")
        return Entry(fields[1], fields[2], compressed=kind == 2)


@dataclass(frozen=True)
class Located:
    """An indirect object's value and where its bytes are in `source`.

    `source` is the file, or the decoded object stream that holds the object.
    """

    ref: Ref
    value: PdfObject
    source: bytes
    start: int
    end: int


class Document:
    """A PDF's objects, found through its xref sections from the newest back, lazily."""

    def __init__(self, pdf: bytes) -> None:
        header = _HEADER.match(pdf)
        if header is None:
            raise Unsupported("The document does not start with a %PDF- header.")
        self.pdf = pdf
        self.header_version = (int(header[1]), int(header[2]))
        self.startxref = _startxref(pdf)
        self.sections = [_read_section(pdf, self.startxref)]
        self._seen = {self.startxref}
        self._object_streams: dict[int, _ObjectStream] = {}

    @property
    def trailer(self) -> PdfDict:
        """The newest trailer."""
        return self.sections[0].trailer

    def all_sections(self) -> list[Section]:
        """Every xref section, newest first, reading the /Prev chain to its end."""
        for _ in self._sections():
            pass
        return self.sections

    def get(self, ref: Ref) -> Located:
        entry = self._locate(ref.num)
        if entry.compressed:
            if ref.gen:
                raise Unsupported(f"Object {ref.num} is in an object stream but not generation 0.")
            return self._object_stream(entry.offset).get(ref.num, entry.gen)
        if entry.gen != ref.gen:
            raise Unsupported(f"Object {ref.num} has generation {entry.gen}, not {ref.gen}.")
        found = _read_indirect(self.pdf, entry.offset)
        if found.ref != ref:
            raise Unsupported(f"The xref points object {ref.num} at another object.")
        return found

    def resolve(self, value: PdfObject) -> PdfObject:
        return self.get(value).value if isinstance(value, Ref) else value

    def _locate(self, num: int) -> Entry:
        for section in self._sections():
            entry = section.entry(num)
            if entry is not None:
                return entry
        raise Unsupported(f"Object {num} is in no xref section.")

    def _sections(self) -> Iterator[Section]:
        """The sections read so far, then older ones by /Prev as they are needed."""
        yield from list(self.sections)
        while (prev := self.sections[-1].trailer.get("Prev")) is not None:
            offset = as_int(prev, "/Prev")
            if offset in self._seen or len(self.sections) >= _MAX_SECTIONS:
                raise Unsupported("The /Prev chain loops or is too long.")
            self._seen.add(offset)
            self.sections.append(_read_section(self.pdf, offset))
            yield self.sections[-1]

    def _object_stream(self, num: int) -> _ObjectStream:
        stream = self._object_streams.get(num)
        if stream is None:
            stream = self._object_streams[num] = self._open_object_stream(num)
        return stream

    def stream(self, ref: Ref) -> tuple[Located, bytes]:
        """A stream object (its dictionary) and its data as the file has it (not decoded)."""
        entry = self._locate(ref.num)
        if entry.compressed or entry.gen != ref.gen:
            raise Unsupported(f"Stream {ref.num} is not a plain object of generation {ref.gen}.")
        found = _read_indirect(self.pdf, entry.offset, stream=True)
        if found.ref != ref:
            raise Unsupported(f"The xref points stream {ref.num} at another object.")
        length = as_dict(found.value, f"Stream {ref.num}").get("Length")
        if isinstance(length, Ref):  # written after the data, so never compressed itself
            if self._locate(length.num).compressed:
                raise Unsupported(f"The /Length of stream {ref.num} is compressed.")
            length = self.get(length).value
        return found, _stream_data(self.pdf, found.end, as_int(length, "/Length"))

    def object_streams(self) -> list[tuple[Located, int]]:
        """The object streams read so far: each one (its dictionary) and its decoded size."""
        return [(s.located, len(s.data)) for s in self._object_streams.values()]

    def _open_object_stream(self, num: int) -> _ObjectStream:
        found, data = self.stream(Ref(num, 0))
        stream = as_dict(found.value, f"Object stream {num}")
        if stream.get("Type") != "ObjStm":
            raise Unsupported(f"Object {num} is not an object stream.")
        decoded = decode(data, stream, _MAX_OBJECT_STREAM_BYTES, f"Object stream {num}")
        return _ObjectStream.parse(found, decoded)


@dataclass(frozen=True)
class _ObjectStream:
    """A decoded object stream: its objects' numbers and offsets, and their bytes."""

    num: int
    data: bytes
    first: int  # where the objects start
    pairs: tuple[tuple[int, int], ...]  # (object number, offset from `first`) each
    located: Located  # the stream's dictionary, in the file

    @classmethod
    def parse(cls, located: Located, data: bytes) -> _ObjectStream:
        num, stream = located.ref.num, as_dict(located.value, "An object stream")
        count = as_int(stream.get("N"), "/N")
        first = as_int(stream.get("First"), "/First")
        pairs, pos = [], 0
        for _ in range(count):
            pair = _PAIR.match(data, pos, first)
            if pair is None:
                raise Unsupported(f"The header of object stream {num} is malformed.")
            pairs.append((int(pair[1]), int(pair[2])))
            pos = pair.end()
        return cls(num, data, first, tuple(pairs), located)

    def get(self, num: int, index: int) -> Located:
        """Object `num`, which the xref says is the `index`th here (pyHanko's strict check)."""
        if index >= len(self.pairs) or self.pairs[index][0] != num:
            raise Unsupported(f"Object stream {self.num} has no object {num} at index {index}.")
        start = skip(self.data, self.first + self.pairs[index][1])
        value, end = read_object(self.data, start)
        if isinstance(value, Ref) or _STREAM_AFTER.match(self.data, end):
            raise Unsupported(f"Object {num} in object stream {self.num} is not allowed there.")
        return Located(Ref(num, 0), value, self.data, start, end)


def _startxref(pdf: bytes) -> int:
    at = pdf.rfind(b"startxref", max(0, len(pdf) - _TAIL_WINDOW))
    match = _STARTXREF.fullmatch(pdf, at) if at >= 0 else None
    if match is None:
        raise Unsupported("The document does not end with startxref, an offset and %%EOF.")
    return int(match[1])


def _read_section(pdf: bytes, offset: int) -> Section:
    is_table = pdf.startswith(b"xref", offset)
    section = _read_table(pdf, offset) if is_table else _read_stream(pdf, offset)
    for key in ("XRefStm", "Encrypt"):
        if key in section.trailer:
            raise Unsupported(f"The trailer has /{key}.")
    return section


def _read_table(pdf: bytes, offset: int) -> Section:
    pos, ranges = offset + 4, []
    while True:
        pos = skip(pdf, pos)
        if pdf.startswith(b"trailer", pos):
            break
        match = _SUBSECTION.match(pdf, pos)
        if match is None:
            raise Unsupported(f"The xref table at byte {offset} is malformed.")
        first, count = int(match[1]), int(match[2])
        ranges.append((first, count, match.end()))
        pos = match.end() + count * _TABLE_ROW_BYTES
        if pos > len(pdf):
            raise Unsupported(f"The xref table at byte {offset} is truncated.")
    trailer, _ = read_object(pdf, pos + len(b"trailer"))
    return Section(as_dict(trailer, "The trailer"), tuple(ranges), pdf, None)


def _read_stream(pdf: bytes, offset: int) -> Section:
    found = _read_indirect(pdf, offset, stream=True)
    stream = as_dict(found.value, "The xref stream")
    if stream.get("Type") != "XRef":
        raise Unsupported(f"No xref section at byte {offset}.")
    widths = _widths(stream)
    index = stream.get("Index", [0, stream.get("Size")])
    if not isinstance(index, list) or len(index) % 2:
        raise Unsupported("The xref stream's /Index is malformed.")
    ranges, rows = [], 0
    for first, count in zip(index[::2], index[1::2], strict=True):
        ranges.append((as_int(first, "/Index"), as_int(count, "/Index"), rows * sum(widths)))
        rows += as_int(count, "/Index")
    data = _stream_data(pdf, found.end, as_int(stream.get("Length"), "/Length"))
    # Bounded: a row is at most one predictor byte longer than its fields.
    decoded = decode(data, stream, rows * (sum(widths) + 1) + 1, "The xref stream")
    if len(decoded) != rows * sum(widths):
        raise Unsupported("The xref stream's length does not match its /W and /Index.")
    return Section(stream, tuple(ranges), decoded, widths)


def _read_indirect(pdf: bytes, offset: int, *, stream: bool = False) -> Located:
    """The object `num gen obj ... endobj` at `offset`; a stream only if `stream`."""
    header = _OBJ_HEADER.match(pdf, offset)
    if header is None:
        raise Unsupported(f"No object at byte {offset}.")
    start = skip(pdf, header.end())
    value, end = read_object(pdf, start)
    if not stream and _ENDOBJ.match(pdf, end) is None:
        raise Unsupported(f"The object at byte {offset} is not followed by endobj.")
    return Located(Ref(int(header[1]), int(header[2])), value, pdf, start, end)


def _stream_data(pdf: bytes, dict_end: int, length: int) -> bytes:
    keyword = _STREAM.match(pdf, dict_end)
    if keyword is None:
        raise Unsupported(f"No stream data after the dictionary ending at byte {dict_end}.")
    end = keyword.end() + length
    if _ENDSTREAM.match(pdf, end) is None:
        raise Unsupported(f"The stream at byte {keyword.end()} does not end at its /Length.")
    return pdf[keyword.end() : end]


def _widths(stream: PdfDict) -> tuple[int, int, int]:
    widths = stream.get("W")
    if not isinstance(widths, list) or len(widths) != 3:
        raise Unsupported("The xref stream's /W is not three numbers.")
    first, second, third = (as_int(w, "/W") for w in widths)
    if not all(0 <= w <= 8 for w in (first, second, third)) or not second:
        raise Unsupported(f"The xref stream's /W {widths} is not usable.")
    return first, second, third
