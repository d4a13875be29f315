"""Stages 2 and 3 without pyHanko: fill an empty signature field with a byte-level update.

Stage 1 is written by pyHanko and each later revision by this module, so the input is
always a PDF this daemon wrote, and filling a field needs a handful of its objects:
the trailer, the catalogue, its AcroForm and the fields. Reading only those, from the
end of the file back, and appending the two changed objects (the field, now with /V,
and a new signature dictionary) with an xref section of the kind the file already
uses, costs a fraction of pyHanko's full parse and write. The update mirrors what
pyHanko's PdfSigner writes for these stages (see daemon/pades.py): the same
signature dictionary and, for the seal, its FieldMDP reference; a trailer keeping
/Root, /Info and the first /ID; /Info and /Extensions left alone, as pyHanko leaves
them once stage 1 has registered the ESIC extension.

Anything this reader does not expect (objects in object streams, encryption, hybrid
or broken xref sections, a filled field, bytes after %%EOF) raises `Unsupported`;
the caller then signs with pyHanko, which reads any PDF and refuses bad ones with a
precise reason. Only the standard library is used, so a worker using it stays small.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, TypeAlias

# The byte range array is written into a fixed-width slot, as pyHanko does, so that
# every offset is known before the digest is computed.
BYTE_RANGE_WIDTH = 62
MAX_DEPTH = 32  # nesting of arrays and dictionaries; ours never pass 4
_TAIL_WINDOW = 1024  # where readers look for startxref, as pyHanko does
_MAX_SECTIONS = 64  # a record has four revisions; a longer /Prev chain is not ours

_WS = b"\x00\t\n\x0c\r "
_S = rb"[\x00\t\n\x0c\r ]"  # one whitespace byte
_TOKEN_END = rb"(?![^\x00\t\n\x0c\r ()<>\[\]{}/%])"  # a delimiter, whitespace or the end
_SKIP = re.compile(_S + rb"*(?:%[^\r\n]*" + _S + rb"*)*")
# One match per token. Whitespace in a VERBOSE pattern is ignored outside classes.
_TOKEN = re.compile(
    rb"""
    [\x00\t\n\x0c\r\ ]* (?: %[^\r\n]* [\x00\t\n\x0c\r\ ]* )*  # whitespace, comments
    (?: / ([^\x00\t\n\x0c\r\ ()<>\[\]{}/%]*)                      # 1: a name
      | ( (\d+) [\x00\t\n\x0c\r\ ]+ (\d+) [\x00\t\n\x0c\r\ ]+ R    # 2: a reference (3, 4)
          (?![^\x00\t\n\x0c\r\ ()<>\[\]{}/%]) )
      | ([+-]?\d+) (?![^\x00\t\n\x0c\r\ ()<>\[\]{}/%])           # 5: an integer
      | (<<|\[) | (>>|\])                                         # 6: opens, 7: closes
      | ([^\x00\t\n\x0c\r\ ()<>\[\]{}/%]+)                        # 8: a real or a keyword
      | < ([0-9A-Fa-f\x00\t\n\x0c\r\ ]*) >                        # 9: a hex string
      | (\()                                                      # 10: a literal string
    )
    """,
    re.VERBOSE,
)
_NAME, _REF, _NUM, _GEN, _INT, _OPEN, _CLOSE, _WORD, _HEX, _LITERAL = range(1, 11)
_CLOSING = {b"<<": b">>", b"[": b"]"}
_REAL = re.compile(rb"[+-]?(?:\d+\.\d*|\.\d+)")
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_LITERAL_PART = re.compile(rb"[^()\\\r]+|\\([0-7]{1,3}|\r\n|[\s\S])|\r\n?|[()]")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_ESCAPES.update({b"\r\n": b"", b"\r": b"", b"\n": b""})  # a line continuation
_KEYWORDS = {b"true": True, b"false": False, b"null": None}

_HEADER = re.compile(rb"%PDF-(\d).(\d)")  # pyHanko's patterns, `.` included
_CATALOG_VERSION = re.compile(r"(\d).(\d)")
_STARTXREF = re.compile(rb"startxref" + _S + rb"+(\d+)" + _S + rb"+%%EOF(?:\r\n|\r|\n)")
_OBJ_HEADER = re.compile(rb"(\d+)" + _S + rb"+(\d+)" + _S + rb"+obj" + _TOKEN_END)
_ENDOBJ = re.compile(_S + rb"*endobj" + _TOKEN_END)
_STREAM = re.compile(_S + rb"*stream(?:\r\n|\n)")
_ENDSTREAM = re.compile(_S + rb"*endstream" + _TOKEN_END)
_SUBSECTION = re.compile(rb"(\d+)[ \t]+(\d+)[ \t]*(?:\r\n|\r|\n)")
_TABLE_ROW = re.compile(rb"(\d{10}) (\d{5}) ([nf])(?: \r| \n|\r\n)")
_TABLE_ROW_BYTES = 20

# Dictionary keys that describe an xref stream, not the document (pyHanko's list).
_NOT_TRAILER_KEYS = frozenset({"Length", "Filter", "DecodeParms", "W", "Type", "Index", "XRefStm"})
_FREE_HEAD = (0, 65535)  # object 0: head of the free list, written in every section
_STREAM_WIDTHS = (1, 8, 2)  # what pyHanko writes


class Unsupported(Exception):
    """Raised when a document is not one this module updates; sign it with pyHanko."""


class ContentsTooLarge(ValueError):
    """Raised when a CMS does not fit the space reserved for /Contents."""


class Ref(NamedTuple):
    """An indirect reference, `num gen R`."""

    num: int
    gen: int


# Names are str (no slash, #xx decoded), strings bytes, arrays lists, booleans bool.
PdfObject: TypeAlias = (
    bool | int | float | bytes | str | Ref | list["PdfObject"] | dict[str, "PdfObject"] | None
)
PdfDict: TypeAlias = dict[str, PdfObject]


# Filling a field


@dataclass(frozen=True)
class PreparedSignature:
    """The update but for the CMS: sign `document_digest`, then `complete` it."""

    document_digest: bytes
    contents_bytes: int
    document: bytes = field(repr=False)
    before_contents: bytes = field(repr=False)
    after_contents: bytes = field(repr=False)

    def complete(self, cms: bytes) -> bytes:
        """The signed PDF: the input, then the update with `cms` hex-encoded in /Contents."""
        digits = binascii.hexlify(cms).upper()
        reserved = 2 * self.contents_bytes
        if len(digits) > reserved:
            raise ContentsTooLarge(
                f"The CMS has {len(cms)} bytes; {self.contents_bytes} are reserved."
            )
        # Zeros after a shorter CMS, as pyHanko pads; DER ignores what follows it.
        contents = digits.ljust(reserved, b"0")
        return b"".join(
            (self.document, self.before_contents, b"<", contents, b">", self.after_contents)
        )


def prepare_signature(
    pdf: bytes,
    field_name: str,
    *,
    contents_bytes: int,
    signing_time: datetime,
    lock_fields: bool,
) -> PreparedSignature:
    """Lay out the update that fills `field_name`, around a /Contents of `contents_bytes`.

    `lock_fields` adds the seal's FieldMDP reference (every field locked, then no
    changes at all), as pyHanko's SigMDPSetup writes it for the seal's field.
    """
    target = _read_target(pdf, field_name)
    hasher = hashlib.sha256(pdf)
    # The new /ID half is a function of the input, the field and the time: the same
    # request gives the same bytes.
    id_source = hasher.copy()
    id_source.update(f"\n{field_name}\n{signing_time.isoformat()}".encode())
    trailer = _next_trailer(target.trailer, target.startxref, id_source.digest())

    signature = Ref(target.size, 0)
    field_object = _filled_field(pdf, target.field, signature)
    head = field_object + b"%d 0 obj\n<<\n/Contents " % signature.num
    contents_start = len(pdf) + len(head)
    contents_end = contents_start + 2 * contents_bytes + 2
    rest = _signature_rest(signing_time, target.root if lock_fields else None)
    xref_at = contents_end + len(_BYTE_RANGE_KEY) + BYTE_RANGE_WIDTH + len(rest)
    offsets = {
        target.field.ref.num: (len(pdf), target.field.ref.gen),
        signature.num: (len(pdf) + len(field_object), 0),
    }
    xref = _xref_section(target.xref_stream, offsets, xref_at, trailer)
    byte_range = _byte_range(contents_start, contents_end, xref_at + len(xref))
    tail = _BYTE_RANGE_KEY + byte_range + rest + xref
    hasher.update(head)
    hasher.update(tail)
    return PreparedSignature(hasher.digest(), contents_bytes, pdf, head, tail)


# Reading objects


def read_object(data: bytes, pos: int = 0) -> tuple[PdfObject, int]:
    """The PDF object at `pos` (after any whitespace and comments), and where it ends.

    One regular expression match per token and containers on a stack, with names and
    references (most of what a signature reads) handled inline: the few dictionaries
    a signature needs cost tens of microseconds.
    """
    stack: list[tuple[bytes, list[PdfObject]]] = []  # open containers: opener, items
    while True:
        token = _TOKEN.match(data, pos)
        if token is None:
            raise Unsupported(f"No PDF object at byte {pos}.")
        pos, kind = token.end(), token.lastindex
        value: PdfObject
        if kind == _NAME:
            raw = token[_NAME]
            value = (_unescape_name(raw) if b"#" in raw else raw).decode("latin-1")
        elif kind == _REF:
            value = Ref(int(token[_NUM]), int(token[_GEN]))
        elif kind == _INT:
            value = int(token[_INT])
        elif kind == _OPEN:
            if len(stack) >= MAX_DEPTH:
                raise Unsupported(f"Objects nest deeper than {MAX_DEPTH} at byte {pos}.")
            stack.append((token[_OPEN], []))
            continue
        elif kind == _CLOSE:
            value = _close(stack, token[_CLOSE], pos)
        else:
            value, pos = _scalar(data, token)
        if not stack:
            return value, pos
        stack[-1][1].append(value)


def _close(stack: list[tuple[bytes, list[PdfObject]]], closer: bytes, at: int) -> PdfObject:
    if not stack or _CLOSING[stack[-1][0]] != closer:
        raise Unsupported(f"Unbalanced brackets before byte {at}.")
    opener, items = stack.pop()
    if opener == b"[":
        return items
    if len(items) % 2:
        raise Unsupported(f"The dictionary ending at byte {at} has a key without a value.")
    entries: PdfDict = {}
    for at_key in range(0, len(items), 2):  # a plain loop: the quickest way here
        key = items[at_key]
        if not isinstance(key, str):
            raise Unsupported(f"The dictionary ending at byte {at} has a key {key!r}.")
        entries[key] = items[at_key + 1]
    return entries


def _scalar(data: bytes, token: re.Match[bytes]) -> tuple[PdfObject, int]:
    """A number, keyword or string token's value, and where it ends."""
    kind, pos = token.lastindex, token.end()
    if kind == _LITERAL:
        return _literal(data, pos)
    if kind == _HEX:
        digits = token[_HEX].translate(None, _WS)
        return binascii.unhexlify(digits + b"0" if len(digits) % 2 else digits), pos
    word = token[_WORD]
    if word in _KEYWORDS:
        return _KEYWORDS[word], pos
    if _REAL.fullmatch(word):
        return float(word), pos
    raise Unsupported(f"Unexpected keyword {word!r} at byte {token.start(_WORD)}.")


def _unescape_name(raw: bytes) -> bytes:
    return _NAME_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw)


def _literal(data: bytes, pos: int) -> tuple[bytes, int]:
    """The literal string whose opening parenthesis ends at `pos`, and where it ends."""
    start, depth, out = pos - 1, 1, bytearray()
    while True:
        part = _LITERAL_PART.match(data, pos)
        if part is None:
            raise Unsupported(f"The string at byte {start} is not terminated.")
        pos, piece = part.end(), part.group()
        depth += piece == b"("
        depth -= piece == b")"
        if not depth:
            return bytes(out), pos
        out += _unescape(piece)


def _unescape(piece: bytes) -> bytes:
    """A literal string's piece as the bytes it stands for (ISO 32000-1, 7.3.4.2)."""
    if piece[:1] == b"\r":
        return b"\n"  # an unescaped end of line reads as a line feed
    if piece[:1] != b"\\":
        return piece
    code = piece[1:]
    if b"0" <= code[:1] <= b"7":
        return bytes([int(code, 8) & 0xFF])
    return _ESCAPES.get(code, code)


def _skip(data: bytes, pos: int) -> int:
    """Where the next token starts: after whitespace and comments."""
    match = _SKIP.match(data, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


# Finding objects through the xref sections


@dataclass(frozen=True)
class _Section:
    """One xref section: its trailer, and where each object it lists has its row."""

    trailer: PdfDict
    ranges: tuple[tuple[int, int, int], ...]  # first object, count, offset of its row
    rows: bytes  # a table's text (the whole file), or a stream's decoded rows
    widths: tuple[int, int, int] | None  # a stream's /W; None for a table

    def entry(self, num: int) -> tuple[int, int] | None:
        """(offset, generation) of object `num`; None if this section does not list it."""
        row_bytes = sum(self.widths) if self.widths else _TABLE_ROW_BYTES
        for first, count, start in self.ranges:
            if first <= num < first + count:
                at = start + (num - first) * row_bytes
                return self._stream_row(at, num) if self.widths else self._table_row(at, num)
        return None

    def _table_row(self, at: int, num: int) -> tuple[int, int]:
        match = _TABLE_ROW.match(self.rows, at)
        if match is None:
            raise Unsupported(f"The xref row of object {num} is malformed.")
        if match[3] == b"f":
            raise Unsupported(f"Object {num} is free.")
        return int(match[1]), int(match[2])

    def _stream_row(self, at: int, num: int) -> tuple[int, int]:
        assert self.widths is not None
        fields = []
        for width in self.widths:
            fields.append(int.from_bytes(self.rows[at : at + width], "big"))
            at += width
        kind = fields[0] if self.widths[0] else 1  # no type field: every row is in use
        if kind == 2:
            raise Unsupported(f"Object {num} is in an object stream.")
        if kind != 1:
            raise Unsupported(f"Object {num} is free.")
        return fields[1], fields[2]


@dataclass(frozen=True)
class _Located:
    """An indirect object's value and where its bytes are."""

    ref: Ref
    value: PdfObject
    start: int
    end: int


class _Document:
    """A PDF's objects, found through its xref sections from the newest back, lazily."""

    def __init__(self, pdf: bytes, startxref: int) -> None:
        self.pdf = pdf
        self.sections = [_read_section(pdf, startxref)]
        self._seen = {startxref}

    @property
    def trailer(self) -> PdfDict:
        return self.sections[0].trailer

    def get(self, ref: Ref) -> _Located:
        offset, gen = self._locate(ref.num)
        if gen != ref.gen:
            raise Unsupported(f"Object {ref.num} has generation {gen}, not {ref.gen}.")
        found = _read_indirect(self.pdf, offset)
        if found.ref != ref:
            raise Unsupported(f"The xref points object {ref.num} at another object.")
        return found

    def resolve(self, value: PdfObject) -> PdfObject:
        return self.get(value).value if isinstance(value, Ref) else value

    def _locate(self, num: int) -> tuple[int, int]:
        for section in self._sections():
            entry = section.entry(num)
            if entry is not None:
                return entry
        raise Unsupported(f"Object {num} is in no xref section.")

    def _sections(self) -> Iterator[_Section]:
        """The sections read so far, then older ones by /Prev as they are needed."""
        yield from list(self.sections)
        while (prev := self.sections[-1].trailer.get("Prev")) is not None:
            offset = _int(prev, "/Prev")
            if offset in self._seen or len(self.sections) >= _MAX_SECTIONS:
                raise Unsupported("The /Prev chain loops or is too long.")
            self._seen.add(offset)
            self.sections.append(_read_section(self.pdf, offset))
            yield self.sections[-1]


def _read_section(pdf: bytes, offset: int) -> _Section:
    is_table = pdf.startswith(b"xref", offset)
    section = _read_table(pdf, offset) if is_table else _read_stream(pdf, offset)
    for key in ("XRefStm", "Encrypt"):
        if key in section.trailer:
            raise Unsupported(f"The trailer has /{key}.")
    return section


def _read_table(pdf: bytes, offset: int) -> _Section:
    pos, ranges = offset + 4, []
    while True:
        pos = _skip(pdf, pos)
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
    return _Section(_dict(trailer, "The trailer"), tuple(ranges), pdf, None)


def _read_stream(pdf: bytes, offset: int) -> _Section:
    found = _read_indirect(pdf, offset, stream=True)
    stream = _dict(found.value, "The xref stream")
    if stream.get("Type") != "XRef":
        raise Unsupported(f"No xref section at byte {offset}.")
    widths = _widths(stream)
    index = stream.get("Index", [0, stream.get("Size")])
    if not isinstance(index, list) or len(index) % 2:
        raise Unsupported("The xref stream's /Index is malformed.")
    ranges, rows = [], 0
    for first, count in zip(index[::2], index[1::2], strict=True):
        ranges.append((_int(first, "/Index"), _int(count, "/Index"), rows * sum(widths)))
        rows += _int(count, "/Index")
    data = _stream_data(pdf, found.end, stream)
    decoded = _decode_xref_rows(data, stream, rows, sum(widths))
    return _Section(stream, tuple(ranges), decoded, widths)


def _read_indirect(pdf: bytes, offset: int, *, stream: bool = False) -> _Located:
    """The object `num gen obj ... endobj` at `offset`; a stream only if `stream`."""
    header = _OBJ_HEADER.match(pdf, offset)
    if header is None:
        raise Unsupported(f"No object at byte {offset}.")
    start = _skip(pdf, header.end())
    value, end = read_object(pdf, start)
    if not stream and _ENDOBJ.match(pdf, end) is None:
        raise Unsupported(f"The object at byte {offset} is not followed by endobj.")
    return _Located(Ref(int(header[1]), int(header[2])), value, start, end)


def _stream_data(pdf: bytes, dict_end: int, stream: PdfDict) -> bytes:
    keyword = _STREAM.match(pdf, dict_end)
    if keyword is None:
        raise Unsupported(f"No stream data after the dictionary ending at byte {dict_end}.")
    end = keyword.end() + _int(stream.get("Length"), "/Length")
    if _ENDSTREAM.match(pdf, end) is None:
        raise Unsupported(f"The stream at byte {keyword.end()} does not end at its /Length.")
    return pdf[keyword.end() : end]


def _decode_xref_rows(data: bytes, stream: PdfDict, rows: int, row_bytes: int) -> bytes:
    """An xref stream's rows: Flate with or without a PNG predictor, or no filter."""
    filters, params = stream.get("Filter"), stream.get("DecodeParms")
    if isinstance(filters, list) and len(filters) == 1:
        filters = filters[0]
        params = params[0] if isinstance(params, list) and len(params) == 1 else params
    if filters is None:
        decoded = data
    elif filters == "FlateDecode":
        # Bounded: a row is at most one predictor byte longer than its fields.
        decoded = _inflate(data, rows * (row_bytes + 1) + 1)
    else:
        raise Unsupported(f"The xref stream's filter {filters!r} is not Flate.")
    decoded = _unpredict(decoded, params if isinstance(params, dict) else {})
    if len(decoded) != rows * row_bytes:
        raise Unsupported("The xref stream's length does not match its /W and /Index.")
    return decoded


def _inflate(data: bytes, limit: int) -> bytes:
    try:
        return zlib.decompressobj().decompress(data, limit)
    except zlib.error as exc:
        raise Unsupported(f"The xref stream does not inflate: {exc}") from exc


def _unpredict(data: bytes, params: PdfDict) -> bytes:
    predictor = params.get("Predictor", 1)
    if predictor == 1:
        return data
    layout = (params.get("Colors", 1), params.get("BitsPerComponent", 8))
    if not isinstance(predictor, int) or not 10 <= predictor <= 15 or layout != (1, 8):
        raise Unsupported(f"The xref stream's predictor {predictor!r} is not PNG on bytes.")
    columns = _int(params.get("Columns", 1), "/Columns")
    stride = columns + 1
    if columns < 1 or len(data) % stride:
        raise Unsupported("The xref stream's rows do not fit its /Columns.")
    out, above = bytearray(), bytes(columns)
    for at in range(0, len(data), stride):
        above = _png_unfilter(data[at], data[at + 1 : at + stride], above)
        out += above
    return bytes(out)


def _png_unfilter(kind: int, row: bytes, above: bytes) -> bytes:
    """One row restored from PNG filter Up, the one xref stream writers use.

    pyHanko 0.38 decodes Up alone as the PNG specification does (it reads None rows
    as zeros and Sub wrongly); any other filter goes to pyHanko, so that both paths
    read a file the same way.
    """
    if kind != 2:
        raise Unsupported(f"The xref stream uses PNG filter type {kind}, not Up.")
    return bytes((x + up) & 0xFF for x, up in zip(row, above, strict=True))


def _widths(stream: PdfDict) -> tuple[int, int, int]:
    widths = stream.get("W")
    if not isinstance(widths, list) or len(widths) != 3:
        raise Unsupported("The xref stream's /W is not three numbers.")
    first, second, third = (_int(w, "/W") for w in widths)
    if not all(0 <= w <= 8 for w in (first, second, third)) or not second:
        raise Unsupported(f"The xref stream's /W {widths} is not usable.")
    return first, second, third


def _dict(value: PdfObject, what: str) -> PdfDict:
    if not isinstance(value, dict):
        raise Unsupported(f"{what} is not a dictionary.")
    return value


def _int(value: PdfObject, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Unsupported(f"{what} is not a non-negative integer: {value!r}.")
    return value


def _ref(value: PdfObject, what: str) -> Ref:
    if not isinstance(value, Ref):
        raise Unsupported(f"{what} is not an indirect reference.")
    return value


# The catalogue and the field


@dataclass(frozen=True)
class _Target:
    """What filling a field needs from the document."""

    startxref: int
    trailer: PdfDict
    xref_stream: bool  # the newest section's kind, which the next one repeats
    root: Ref
    size: int
    field: _Located


def _read_target(pdf: bytes, field_name: str) -> _Target:
    header = _HEADER.match(pdf)
    if header is None:
        raise Unsupported("The document does not start with a %PDF- header.")
    startxref = _startxref(pdf)
    document = _Document(pdf, startxref)
    trailer = document.trailer
    root = _ref(trailer.get("Root"), "/Root")
    catalog = _dict(document.get(root).value, "The catalogue")
    _check_pyhanko_leaves_catalog(document, catalog, (int(header[1]), int(header[2])))
    field = _field_to_fill(document, catalog, field_name)
    size = _int(trailer.get("Size"), "/Size")
    if field.ref.num >= size:
        raise Unsupported(f"Field object {field.ref.num} is beyond the trailer's /Size.")
    xref_stream = document.sections[0].widths is not None
    return _Target(startxref, trailer, xref_stream, root, size, field)


def _startxref(pdf: bytes) -> int:
    at = pdf.rfind(b"startxref", max(0, len(pdf) - _TAIL_WINDOW))
    match = _STARTXREF.fullmatch(pdf, at) if at >= 0 else None
    if match is None:
        raise Unsupported("The document does not end with startxref, an offset and %%EOF.")
    return int(match[1])


def _check_pyhanko_leaves_catalog(
    document: _Document, catalog: PdfDict, header: tuple[int, int]
) -> None:
    """Refuse a catalogue pyHanko would update: PDF older than 1.7, or no ESIC extension.

    pyHanko's incremental writer raises the version to 1.7 and registers the ESIC
    extension; stage 1 has done both, and then neither touches the catalogue again.
    """
    version = document.resolve(catalog.get("Version"))
    declared = _CATALOG_VERSION.match(version) if isinstance(version, str) else None
    if (int(declared[1]), int(declared[2])) < (1, 7) if declared else header < (1, 7):
        raise Unsupported("The document declares a PDF version before 1.7.")
    extensions = document.resolve(catalog.get("Extensions"))
    esic = document.resolve(extensions.get("ESIC")) if isinstance(extensions, dict) else None
    first = document.resolve(esic[0]) if isinstance(esic, list) and esic else esic
    level = first.get("ExtensionLevel") if isinstance(first, dict) else None
    if not isinstance(level, int) or isinstance(level, bool) or level < 1:
        raise Unsupported("The catalogue does not register the ESIC extension.")


def _field_to_fill(document: _Document, catalog: PdfDict, name: str) -> _Located:
    """The empty signature field `name`; the last of that name, as daemon/pades.py finds it.

    Read from the end, so the fields after it (none, for the seal) are never parsed;
    stage 1 had pyHanko read every one of them already.
    """
    form = _dict(document.resolve(catalog.get("AcroForm")), "The AcroForm")
    fields = document.resolve(form.get("Fields"))
    if not isinstance(fields, list):
        raise Unsupported("The AcroForm's /Fields is not an array.")
    for ref in reversed(fields):
        candidate = document.get(_ref(ref, "A form field"))
        if _is_signature_field(document, _dict(candidate.value, "A form field"), name):
            if "V" in _dict(candidate.value, "The field"):
                raise Unsupported(f"The signature field {name} is already signed.")
            return candidate
    raise Unsupported(f"The document has no signature field {name}.")


def _is_signature_field(document: _Document, field: PdfDict, name: str) -> bool:
    if "T" not in field or document.resolve(field.get("FT")) != "Sig":
        return False
    title = document.resolve(field["T"])
    return isinstance(title, bytes) and _text(title) == name


def _text(raw: bytes) -> str:
    """A text string: UTF-16 after its byte order mark, else (for ASCII) PDFDocEncoding."""
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", errors="replace")
    return raw.decode("latin-1")


# Writing the update


_BYTE_RANGE_KEY = b"\n/ByteRange "
_SIGNATURE_ENTRIES = (
    b"\n/Type /Sig\n/Filter /Adobe.PPKLite\n/SubFilter /ETSI.CAdES.detached\n/M (%s)\n"
)
# pyHanko's fieldmdp_reference_dictionary for FieldMDPSpec(ALL), with DocMDP's /P 1
# (no changes) in its transform parameters, as Acrobat expects; /Data is the catalogue.
_FIELD_LOCK_REFERENCE = (
    b"/Reference [ <<\n/Type /SigRef\n/TransformMethod /FieldMDP\n/Data %d %d R\n"
    b"/TransformParams <<\n/Action /All\n/Type /TransformParams\n/V /1.2\n/P 1\n>>\n>> ]\n"
)
_NAME_SPECIAL = re.compile(rb"[^\x21-\x7e]|[()<>\[\]{}/%#]")


def _filled_field(pdf: bytes, field: _Located, signature: Ref) -> bytes:
    """The field object again with /V: its own bytes, one entry added at the end."""
    entries = pdf[field.start : field.end - 2]  # the dictionary up to its closing >>
    num, gen = field.ref
    return b"%d %d obj\n%s/V %d %d R\n>>\nendobj\n" % (num, gen, entries, *signature)


def _signature_rest(signing_time: datetime, lock_data: Ref | None) -> bytes:
    """The signature dictionary after its /ByteRange, as pyHanko's SignatureObject has it."""
    entries = _SIGNATURE_ENTRIES % _literal_string(_pdf_date(signing_time))
    lock = _FIELD_LOCK_REFERENCE % lock_data if lock_data else b""
    return entries + lock + b">>\nendobj\n"


def _pdf_date(moment: datetime) -> str:
    """A PDF date string, with the apostrophes pyHanko writes for Adobe Reader's sake."""
    text = moment.strftime("D:%Y%m%d%H%M%S")
    offset = moment.utcoffset()
    if offset is None:
        return text
    seconds = int(offset.total_seconds())
    if not seconds:
        return text + "Z"
    hours, rest = divmod(abs(seconds), 3600)
    return f"{text}{'-' if seconds < 0 else '+'}{hours:02d}'{rest // 60:02d}'"


def _literal_string(text: str) -> bytes:
    raw = text.encode("latin-1")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _byte_range(contents_start: int, contents_end: int, eof: int) -> bytes:
    text = b"[0 %d %d %d]" % (contents_start, contents_end, eof - contents_end)
    if len(text) > BYTE_RANGE_WIDTH:
        raise Unsupported("The document is too large for the /ByteRange slot.")
    return text.ljust(BYTE_RANGE_WIDTH)


def _next_trailer(previous: PdfDict, startxref: int, id_digest: bytes) -> PdfDict:
    """The previous trailer's entries, a new second /ID half and /Prev; /Size comes later."""
    trailer = {key: value for key, value in previous.items() if key not in _NOT_TRAILER_KEYS}
    old_id = previous.get("ID")
    if old_id is None:
        first = id_digest[:16]  # pyHanko makes one up too
    elif isinstance(old_id, list) and len(old_id) == 2 and isinstance(old_id[0], bytes):
        first = old_id[0]
    else:
        raise Unsupported("The trailer's /ID is not a pair of strings.")
    trailer["ID"] = [first, id_digest[16:]]
    trailer["Prev"] = startxref
    return trailer


def _xref_section(
    as_stream: bool, offsets: dict[int, tuple[int, int]], at: int, trailer: PdfDict
) -> bytes:
    """The new objects' xref section at byte `at`, its trailer, startxref and %%EOF."""
    if as_stream:
        return _xref_stream(offsets, at, trailer)
    lines = [b"xref\n"]
    for first, chunk in _chunks({0: _FREE_HEAD, **offsets}):
        lines.append(b"%d %d\n" % (first, len(chunk)))
        lines.extend(
            b"%010d %05d %s \n" % (offset, gen, b"n" if num else b"f")
            for num, (offset, gen) in chunk
        )
    trailer = {**trailer, "Size": max(offsets) + 1}
    lines += [b"trailer\n", _serialize(trailer), b"\nstartxref\n%d\n%%%%EOF\n" % at]
    return b"".join(lines)


def _xref_stream(offsets: dict[int, tuple[int, int]], at: int, trailer: PdfDict) -> bytes:
    """An xref stream as pyHanko writes one: /W [1 8 2], Flate, listing itself too."""
    num = max(offsets) + 1
    index: list[PdfObject] = []
    rows = []
    for first, chunk in _chunks({0: _FREE_HEAD, **offsets, num: (at, 0)}):
        index += [first, len(chunk)]
        rows += [struct.pack(">BQH", 1 if n else 0, offset, gen) for n, (offset, gen) in chunk]
    data = zlib.compress(b"".join(rows))
    stream: PdfDict = {
        "W": list(_STREAM_WIDTHS),
        "Type": "XRef",
        "Filter": "FlateDecode",
        **trailer,
        "Size": num + 1,
        "Index": index,
        "Length": len(data),
    }
    return b"%d 0 obj\n%s\nstream\n%s\nendstream\nendobj\n\nstartxref\n%d\n%%%%EOF\n" % (
        num,
        _serialize(stream),
        data,
        at,
    )


def _chunks(
    entries: dict[int, tuple[int, int]],
) -> Iterator[tuple[int, list[tuple[int, tuple[int, int]]]]]:
    """Runs of consecutive object numbers, as xref subsections list them."""
    chunk: list[tuple[int, tuple[int, int]]] = []
    for num in sorted(entries):
        if chunk and num != chunk[-1][0] + 1:
            yield chunk[0][0], chunk
            chunk = []
        chunk.append((num, entries[num]))
    yield chunk[0][0], chunk


def _serialize(value: PdfObject) -> bytes:
    """A PDF object's bytes: dictionaries an entry a line, strings in hex, as pyHanko does."""
    if value is None or isinstance(value, bool):
        return {None: b"null", True: b"true", False: b"false"}[value]
    if isinstance(value, str):
        return b"/" + _NAME_SPECIAL.sub(lambda m: b"#%02X" % m[0][0], value.encode("latin-1"))
    if isinstance(value, Ref):
        return b"%d %d R" % value
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return _real(value)
    if isinstance(value, bytes):
        return b"<" + binascii.hexlify(value) + b">"
    if isinstance(value, list):
        return b"[ " + b" ".join(_serialize(item) for item in value) + b" ]"
    entries = (_serialize(key) + b" " + _serialize(item) for key, item in value.items())
    return b"<<\n" + b"\n".join(entries) + b"\n>>"


def _real(value: float) -> bytes:
    text = repr(value)
    if "e" in text or "n" in text:  # exponents, inf and nan are not PDF numbers
        raise Unsupported(f"The number {text} cannot be written in PDF.")
    return text.encode("ascii")
