"""The intake check of a teacher's PDF without pyHanko, for the files our reader reads.

`pades.inspect_pdf` and `record.attached.attached_record_xml` each parse the file with
pyHanko's reader. For a file daemon/pdf/reader.py reads, `accepted` makes the checks of
`inspect_pdf` (size limit, magic, catalogue and page tree readable, /Count >= 1, not
encrypted, trailer /Size above every object number of every xref section, no signature
field) and `embedded_file` finds the embedded file as `attached_record_xml` does, both
on one `Document`: 0.13 ms for a bench sample where pyHanko's check takes 0.41 ms.

This module only ever accepts. Anything it does not expect, and anything either
function would refuse, raises `Unsupported`; the caller (daemon/documents.py) then asks
pyHanko, so every refusal, message included, is pyHanko's as before. To accept only
what pyHanko accepts, it reads as pyHanko reads where the two could differ (fuzzing
found most of these): a null is a missing entry; the file's last lines are startxref,
the offset and %%EOF; each trailer has its /Size, no stream after it; names, references
and string escapes are ones pyHanko's parser takes; xref rows of a generation above
65535, which pyHanko skips, are not followed; a predictor without /Columns is not
decoded; object and xref streams stay within pyHanko's decoding limits (truncated Flate
data is refused by daemon/pdf/streams.py, as pyHanko refuses it); and a form is accepted only
when every field is a plain top-level field of a type other than /Sig (a signature
field, filled or not, goes to pyHanko, which tells a signed file from a file with a
field of ours).
"""

from __future__ import annotations

import codecs
import itertools
import re

from daemon.pdf.reader import Document, PdfDict, PdfObject, Ref, Section, Unsupported
from daemon.pdf.streams import decode
from daemon.pdf.syntax import as_dict, as_int

PDF_MAGIC = b"%PDF-"
MAX_GENERATION = 0xFFFF  # pyHanko (not strict) skips xref rows of a higher generation
MAX_TREE_DEPTH = 8  # kids followed in the /EmbeddedFiles name tree, as attached.py does
# pyHanko 0.38's DecodeLimits: an object stream may inflate 100-fold once over 4 MiB,
# any other stream (an xref stream) 1100-fold once over 1 MiB. Within these floors
# no ratio applies, and a school's PDF has object and xref streams of a few kB.
_OBJECT_STREAM_FLOOR = 4 * 1024 * 1024
_XREF_STREAM_FLOOR = 1024 * 1024
# pyHanko reads the end of the file a line at a time: %%EOF, the offset, startxref.
# The offset's line may have spaces about it (wkhtmltopdf writes one): int() strips them.
_EOL = rb"(?:\r\n|\r|\n)"
_TAIL = re.compile(
    rb"[\r\n]startxref[ \t]*" + _EOL + rb"[ \t]*\d{1,20}[ \t]*" + _EOL + rb"%%EOF" + _EOL + rb"?\Z"
)
_REF_TEXT = re.compile(rb"(?<![0-9])[0-9]++[\x00\t\n\x0c\r ]++[0-9]++[\x00\t\n\x0c\r ]++R")
_BAD_ESCAPE = re.compile(rb"\\(?:[^() /%<>\[\]#_&$\\nrtbf0-9\r\n]|\d{0,2}[89]|[4-7][0-7]{2})")
_PLAIN_NAME = re.compile(r"[!-\"$-~]*")  # printable ASCII but #
_TABLE_ROWS = re.compile(rb"(?:\d{10} \d{5} [nf](?: \r| \n|\r\n))*")
_ROW = re.compile(rb"(\d{10}) (\d{5}) ([nf])")
_BOMS = (
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF8, "utf-8"),
)  # what pyHanko decodes a text string by; PDFDocEncoding otherwise


def accepted(pdf: bytes, max_bytes: int) -> Document:
    """The document, read once, when `inspect_pdf` accepts it; `Unsupported` otherwise."""
    if len(pdf) > max_bytes or not pdf.startswith(PDF_MAGIC):
        raise Unsupported("The document is over the size limit or does not start with %PDF-.")
    if _TAIL.search(pdf, max(0, len(pdf) - 64)) is None:
        raise Unsupported("The file does not end with startxref, its offset and %%EOF a line each.")
    document = Document(pdf)  # refuses /Encrypt in any trailer
    _check_sections(document)
    catalog = _dict(document, document.trailer.get("Root"), "The catalogue")
    pages = _dict(document, catalog.get("Pages"), "The page tree")
    if as_int(_resolve(document, pages.get("Count")), "/Count") < 1:
        raise Unsupported("The page tree has no pages.")
    _check_form(document, catalog)
    _check_object_streams(document)
    return document


def embedded_file(document: Document, filename: str, max_bytes: int) -> bytes | None:
    """The embedded file named `filename`, decoded, as `attached_record_xml` finds it.

    `Unsupported` for anything `attached_record_xml` might read otherwise or refuse,
    and for a file over `max_bytes` (pyHanko refuses its /Length over the limit).
    """
    catalog = _dict(document, document.trailer.get("Root"), "The catalogue")
    names = _resolve(document, catalog.get("Names"))
    if names is None:
        return None
    tree = _resolve(document, as_dict(names, "/Names").get("EmbeddedFiles"))
    spec = _find(document, tree, filename, 0) if tree is not None else None
    if spec is None:
        return None
    files = _dict(document, spec.get("EF"), "The file specification's /EF")
    ref = files.get("F")
    if not isinstance(ref, Ref) or ref.gen > MAX_GENERATION:
        raise Unsupported("The embedded file's /F is not a reference to a stream.")
    found, data = document.stream(ref)
    stream = _checked(found.value, found.source, found.start, found.end)
    assert isinstance(stream, dict)  # Document.stream reads a dictionary
    if len(data) > max_bytes:
        raise Unsupported(f"The embedded file is larger than {max_bytes} bytes.")
    _check_decode_params(stream)
    _check_object_streams(document)  # those the tree's objects are in
    return decode(data, stream, max_bytes, "The embedded file")


def _resolve(document: Document, value: PdfObject) -> PdfObject:
    if not isinstance(value, Ref):
        return value
    if value.gen > MAX_GENERATION:
        raise Unsupported(f"The reference {value.num} {value.gen} R has too high a generation.")
    found = document.get(value)
    return _checked(found.value, found.source, found.start, found.end)


def _checked(value: PdfObject, source: bytes, start: int, end: int) -> PdfObject:
    """`value`, read from source[start:end], when pyHanko reads the bytes as well.

    pyHanko reads `N G R` only with \\s between (not NUL) and within 20 bytes, and
    refuses a string escape it does not know (\\' or \\8, octal over 255) that
    daemon/pdf/syntax.py reads as the PDF standard says. The search looks at the raw
    bytes, strings included: a false alarm only leaves the file to pyHanko.
    """
    for match in _REF_TEXT.finditer(source, start, end):
        if b"\x00" in match[0] or len(match[0]) > 19:
            raise Unsupported(f"A reference at byte {match.start()} is not one pyHanko reads.")
    if _BAD_ESCAPE.search(source, start, end):
        raise Unsupported("A string has an escape pyHanko does not read.")
    return _plain_names(value)


def _plain_names(value: PdfObject) -> PdfObject:
    """`value`, when each name in it is one pyHanko reads; `Unsupported` otherwise.

    pyHanko refuses a name with a byte outside ! to ~ or a # not followed by two hex
    digits, which daemon/pdf/syntax.py reads as they are (a name it decoded from #xx
    to such a byte, or to #, is refused here too: no record has one).
    """
    if isinstance(value, str):
        if not _PLAIN_NAME.fullmatch(value):
            raise Unsupported(f"The name /{value!r} is not one pyHanko reads.")
    elif isinstance(value, list):
        for item in value:
            _plain_names(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _plain_names(key)
            _plain_names(item)
    return value


def _dict(document: Document, value: PdfObject, what: str) -> PdfDict:
    return as_dict(_resolve(document, value), what)


def _check_sections(document: Document) -> None:
    """Each xref section as pyHanko reads it, and the trailer /Size above every object
    number any of them lists (pades._check_size)."""
    pdf, sections = document.pdf, document.all_sections()
    offset = document.startxref
    for section in sections:
        if section.is_stream:
            end = pdf.find(b"stream", offset)
        else:  # pyHanko takes the byte after `xref` for whitespace
            if pdf[offset + 4 : offset + 5] not in (b" ", b"\t", b"\r", b"\n", b"\x0c", b"\x00"):
                raise Unsupported("The keyword xref is not followed by whitespace.")
            end = pdf.find(b"startxref", offset)
            if pdf.find(b"stream", offset, end) >= 0:  # pyHanko would read the trailer as one
                raise Unsupported("The trailer is followed by a stream.")
            offset = max(offset, pdf.rfind(b"trailer", offset, end))  # not the rows
        _checked(section.trailer, pdf, offset, end if end >= 0 else len(pdf))
        as_int(section.trailer.get("Size"), "/Size")  # pyHanko needs one in each
        offset = as_int(section.trailer.get("Prev", 0), "/Prev")
    size = as_int(document.trailer.get("Size"), "/Size")
    used = max(_highest(section) for section in sections)
    if used >= size:
        raise Unsupported(f"The trailer /Size ({size}) is not above object number {used}.")


def _highest(section: Section) -> int:
    """The highest object number the section lists, as pyHanko counts them.

    pyHanko parses every row of a table (ours looks rows up as needed), so each is
    checked here; it skips object 0 and a row of a generation above 65535, or of an
    unknown type in a stream, so a highest row like those is left to pyHanko.
    """
    ranges = [(first, count, at) for first, count, at in section.ranges if count]
    for (first, count, _), (following, _, _) in itertools.pairwise(ranges):
        if following < first + count:
            raise Unsupported("The xref section's subsections overlap or are out of order.")
    if section.is_stream:
        if len(section.rows) > _XREF_STREAM_FLOOR:
            raise Unsupported("The xref stream is larger than pyHanko inflates freely.")
        _check_decode_params(section.trailer)
    else:
        for _, count, at in ranges:
            block = section.rows[at : at + 20 * count]
            if _TABLE_ROWS.fullmatch(block) is None:
                raise Unsupported("A row of the xref table is malformed.")
    if not ranges:
        return 0
    first, count, at = ranges[-1]
    num = first + count - 1
    kind, gen = _row(section, at, count - 1)
    if kind not in (0, 1, 2) or gen > MAX_GENERATION:
        raise Unsupported(f"pyHanko does not count the xref row of object {num}.")
    return num


def _row(section: Section, at: int, index: int) -> tuple[int, int]:
    """A row's type (0 free, 1 in use, 2 in an object stream) and generation."""
    if section.widths is None:
        match = _ROW.match(section.rows, at + 20 * index)
        assert match is not None  # every row was checked
        return (1 if match[3] == b"n" else 0), int(match[2])
    widths = section.widths
    start = at + index * sum(widths)
    fields = []
    for width in widths:
        fields.append(int.from_bytes(section.rows[start : start + width], "big"))
        start += width
    kind = fields[0] if widths[0] else 1
    return kind, (0 if kind == 2 else fields[2])


def _check_decode_params(stream: PdfDict) -> None:
    """pyHanko refuses a PNG predictor without /Columns; ours would read 1 column."""
    params = stream.get("DecodeParms")
    if isinstance(params, list) and len(params) == 1:
        params = params[0]
    if isinstance(params, Ref) or (isinstance(params, list) and any(map(_is_ref, params))):
        raise Unsupported("The stream's /DecodeParms is an indirect object.")
    if isinstance(params, dict) and params.get("Predictor", 1) != 1 and "Columns" not in params:
        raise Unsupported("The stream's predictor has no /Columns.")


def _is_ref(value: PdfObject) -> bool:
    return isinstance(value, Ref)


def _check_object_streams(document: Document) -> None:
    for found, size in document.object_streams():
        stream = _checked(found.value, found.source, found.start, found.end)
        _check_decode_params(as_dict(stream, "An object stream"))
        if size > _OBJECT_STREAM_FLOOR:
            raise Unsupported("An object stream is larger than pyHanko inflates freely.")


def _check_form(document: Document, catalog: PdfDict) -> None:
    """No signature field: only plain top-level fields of other types (text, buttons)."""
    form = _resolve(document, catalog.get("AcroForm"))
    if form is None:
        return
    fields = _resolve(document, as_dict(form, "The AcroForm").get("Fields"))
    if fields is None:
        return
    if not isinstance(fields, list):
        raise Unsupported("The AcroForm's /Fields is not an array.")
    for item in fields:
        if not isinstance(item, Ref):
            raise Unsupported("The AcroForm lists a field that is not an indirect object.")
        field = _dict(document, item, "A form field")
        kind = _resolve(document, field.get("FT"))
        if _resolve(document, field.get("T")) is None or not isinstance(kind, str):
            raise Unsupported("A form field has no name or no type of its own.")
        if kind == "Sig" or field.get("Kids") is not None:
            raise Unsupported("The form has a signature field or a field with kids.")


def _find(document: Document, node: PdfObject, filename: str, depth: int) -> PdfDict | None:
    """The file specification named `filename` in a name tree, as attached.py finds it."""
    if depth > MAX_TREE_DEPTH:
        raise Unsupported("The attachment tree is nested too deep.")
    node = as_dict(node, "A name tree node")
    pairs = _resolve(document, node.get("Names"))
    if pairs is not None:
        if not isinstance(pairs, list):
            raise Unsupported("A name tree node's /Names is not an array.")
        for value in pairs[1::2]:  # attached.py's pairs: every other item, from the second
            spec = _dict(document, value, "A file specification")
            uf = _resolve(document, spec.get("UF"))
            f = _resolve(document, spec.get("F"))
            if _names(uf, filename) or _names(f, filename):
                return spec
    kids = _resolve(document, node.get("Kids"))
    if kids is None:
        return None
    if not isinstance(kids, list):
        raise Unsupported("A name tree node's /Kids is not an array.")
    for kid in kids:
        found = _find(document, _resolve(document, kid), filename, depth + 1)
        if found is not None:
            return found
    return None


def _names(value: PdfObject, filename: str) -> bool:
    """Whether a file specification's /UF or /F reads as `filename` in pyHanko (str())."""
    if not isinstance(value, bytes):
        return False  # a name reads with its slash, a number as digits: never a file name
    for bom, codec in _BOMS:
        if value.startswith(bom):
            return value[len(bom) :] == filename.encode(codec)
    return value == filename.encode("ascii")  # PDFDocEncoding is ASCII there
