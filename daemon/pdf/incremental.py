"""Stages 2 and 3 without pyHanko: fill an empty signature field with a byte-level update.

Each record's first revision is written by daemon/pdf/certification.py (or pyHanko) and
each later one by this module, so the input is always a PDF this daemon wrote, and
filling a field needs a handful of its objects: the trailer, the catalogue, its
AcroForm and the fields, which daemon/pdf/reader.py finds from the end of the file.
Appending the two changed objects (the field, now with /V, and a new signature
dictionary) with an xref section of the kind the file already uses costs a fraction
of pyHanko's full parse and write. The update mirrors what pyHanko's PdfSigner
writes for these stages (see daemon/pdf/pades.py): the same signature dictionary and,
for the seal, its FieldMDP reference; a trailer keeping /Root, /Info and the first
/ID; /Info and /Extensions left alone, as pyHanko leaves them once stage 1 has
registered the ESIC extension.

A visible field (a widget /Rect of some area, and the signature font stage 1 put in
the AcroForm's /DR; see daemon/pdf/appearance.py) gets its appearance in the same
update: the field is written again, parsed and serialized, with /AP pointing at the
new stream, as pyHanko's path sets it.

The layout of a signing update (objects, signature dictionary, byte range, xref
section, digest) is shared with daemon/pdf/certification.py. Anything unexpected (a
filled field, a catalogue pyHanko would change) raises `Unsupported`; the caller
then signs with pyHanko.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

from daemon.pdf.appearance import (
    FONT_RESOURCE,
    Stamp,
    rect_is_visible,
    signed_appearance,
    stream_object,
)
from daemon.pdf.reader import Document, Located
from daemon.pdf.syntax import (
    PdfDict,
    PdfObject,
    Ref,
    Unsupported,
    as_dict,
    as_int,
    as_ref,
    serialize,
)
from daemon.pdf.xref import next_trailer, xref_section

__all__ = ["ContentsTooLarge", "PreparedSignature", "SignedPdf", "Unsupported", "prepare_signature"]

# The byte range array is written into a fixed-width slot, as pyHanko does, so that
# every offset is known before the digest is computed.
BYTE_RANGE_WIDTH = 62
_CATALOG_VERSION = re.compile(r"(\d).(\d)")  # pyHanko's pattern, `.` included


class ContentsTooLarge(ValueError):
    """Raised when a CMS does not fit the space reserved for /Contents."""


@dataclass(frozen=True)
class SignedPdf:
    """A signed PDF and the SHA-256 of its bytes."""

    pdf: bytes = field(repr=False)
    sha256: bytes


@dataclass(frozen=True)
class PreparedSignature:
    """The update but for the CMS: sign `document_digest`, then `complete` it."""

    document_digest: bytes
    contents_bytes: int
    document: bytes = field(repr=False)
    before_contents: bytes = field(repr=False)
    after_contents: bytes = field(repr=False)
    # SHA-256 of `document` and `before_contents`, hashed while laying them out.
    head_hash: hashlib._Hash = field(repr=False, compare=False)

    def complete(self, cms: bytes) -> bytes:
        """The signed PDF: the input, then the update with `cms` hex-encoded in /Contents."""
        return self.signed(cms).pdf

    def signed(self, cms: bytes) -> SignedPdf:
        """The signed PDF and its SHA-256, hashing only the bytes after `head_hash`'s."""
        digits = binascii.hexlify(cms).upper()
        reserved = 2 * self.contents_bytes
        if len(digits) > reserved:
            raise ContentsTooLarge(
                f"The CMS has {len(cms)} bytes; {self.contents_bytes} are reserved."
            )
        # Zeros after a shorter CMS, as pyHanko pads; DER ignores what follows it.
        rest = b"".join((b"<", digits.ljust(reserved, b"0"), b">", self.after_contents))
        hasher = self.head_hash.copy()
        hasher.update(rest)
        return SignedPdf(b"".join((self.document, self.before_contents, rest)), hasher.digest())


# Filling a field


def prepare_signature(
    pdf: bytes,
    field_name: str,
    *,
    contents_bytes: int,
    signing_time: datetime,
    lock_fields: bool,
    stamp: Stamp | None = None,
) -> PreparedSignature:
    """Lay out the update that fills `field_name`, around a /Contents of `contents_bytes`.

    `lock_fields` adds the seal's FieldMDP reference (every field locked, then no
    changes at all), as pyHanko's SigMDPSetup writes it for the seal's field. With a
    `stamp`, a visible field shows it.
    """
    target = _read_target(pdf, field_name)
    hasher = hashlib.sha256(pdf)
    trailer = next_trailer(
        target.trailer, target.startxref, id_digest(hasher, field_name, signing_time)
    )
    signature = Ref(target.size, 0)
    objects = [(target.field.ref, _filled_field(target.field, signature))]
    field_value = as_dict(target.field.value, "The field")
    if stamp is not None and target.font is not None and rect_is_visible(field_value.get("Rect")):
        appearance = Ref(target.size + 1, 0)
        llx, lly, urx, ury = (float(v) for v in field_value["Rect"])  # type: ignore[arg-type, union-attr]
        value, data = signed_appearance(stamp, abs(urx - llx), abs(ury - lly), target.font)
        filled: PdfDict = {**field_value, "AP": {"N": appearance}, "V": signature}
        objects = [
            (target.field.ref, indirect(target.field.ref, filled)),
            (appearance, stream_object(appearance, value, data)),
        ]
    update = SignedUpdate(
        objects=objects,
        signature=signature,
        signature_entries=signature_entries(
            signing_time, _FIELD_LOCK_REFERENCE % target.root if lock_fields else b""
        ),
        trailer=trailer,
        xref_stream=target.xref_stream,
    )
    return update.prepare(pdf, hasher, contents_bytes)


@dataclass(frozen=True)
class _Target:
    """What filling a field needs from the document."""

    startxref: int
    trailer: PdfDict
    xref_stream: bool  # the newest section's kind, which the next one repeats
    root: Ref
    size: int
    field: Located
    font: Ref | None  # the signature font in the AcroForm's /DR, if stage 1 put it there


def _read_target(pdf: bytes, field_name: str) -> _Target:
    document = Document(pdf)
    trailer = document.trailer
    root = as_ref(trailer.get("Root"), "/Root")
    catalog = as_dict(document.get(root).value, "The catalogue")
    _check_pyhanko_leaves_catalog(document, catalog)
    field = _field_to_fill(document, catalog, field_name)
    size = as_int(trailer.get("Size"), "/Size")
    if field.ref.num >= size:
        raise Unsupported(f"Field object {field.ref.num} is beyond the trailer's /Size.")
    xref_stream = document.sections[0].is_stream
    font = _signature_font(document, catalog)
    return _Target(document.startxref, trailer, xref_stream, root, size, field, font)


def _signature_font(document: Document, catalog: PdfDict) -> Ref | None:
    """The AcroForm's /DR /Font /HocbaSans, when it is a reference."""
    form = document.resolve(catalog.get("AcroForm"))
    resources = document.resolve(form.get("DR")) if isinstance(form, dict) else None
    fonts = document.resolve(resources.get("Font")) if isinstance(resources, dict) else None
    font = fonts.get(FONT_RESOURCE) if isinstance(fonts, dict) else None
    return font if isinstance(font, Ref) else None


def catalog_version(document: Document, catalog: PdfDict) -> tuple[int, int]:
    """The PDF version as pyHanko reads it: the catalogue's /Version, else the header's."""
    version = document.resolve(catalog.get("Version"))
    declared = _CATALOG_VERSION.match(version) if isinstance(version, str) else None
    return (int(declared[1]), int(declared[2])) if declared else document.header_version


def _check_pyhanko_leaves_catalog(document: Document, catalog: PdfDict) -> None:
    """Refuse a catalogue pyHanko would update: PDF older than 1.7, or no ESIC extension.

    pyHanko's incremental writer raises the version to 1.7 and registers the ESIC
    extension; stage 1 has done both, and then neither touches the catalogue again.
    """
    if catalog_version(document, catalog) < (1, 7):
        raise Unsupported("The document declares a PDF version before 1.7.")
    extensions = document.resolve(catalog.get("Extensions"))
    esic = document.resolve(extensions.get("ESIC")) if isinstance(extensions, dict) else None
    first = document.resolve(esic[0]) if isinstance(esic, list) and esic else esic
    level = first.get("ExtensionLevel") if isinstance(first, dict) else None
    if not isinstance(level, int) or isinstance(level, bool) or level < 1:
        raise Unsupported("The catalogue does not register the ESIC extension.")


def _field_to_fill(document: Document, catalog: PdfDict, name: str) -> Located:
    """The empty signature field `name`; the last of that name, as daemon/pdf/pades.py finds it.

    Read from the end, so the fields after it (none, for the seal) are never parsed;
    stage 1 had pyHanko read every one of them already.
    """
    form = as_dict(document.resolve(catalog.get("AcroForm")), "The AcroForm")
    fields = document.resolve(form.get("Fields"))
    if not isinstance(fields, list):
        raise Unsupported("The AcroForm's /Fields is not an array.")
    for ref in reversed(fields):
        candidate = document.get(as_ref(ref, "A form field"))
        if _is_signature_field(document, as_dict(candidate.value, "A form field"), name):
            if "V" in as_dict(candidate.value, "The field"):
                raise Unsupported(f"The signature field {name} is already signed.")
            return candidate
    raise Unsupported(f"The document has no signature field {name}.")


def _is_signature_field(document: Document, field: PdfDict, name: str) -> bool:
    if "T" not in field or document.resolve(field.get("FT")) != "Sig":
        return False
    title = document.resolve(field["T"])
    return isinstance(title, bytes) and _text(title) == name


def _text(raw: bytes) -> str:
    """A text string: UTF-16 after its byte order mark, else (for ASCII) PDFDocEncoding."""
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", errors="replace")
    return raw.decode("latin-1")


def _filled_field(field: Located, signature: Ref) -> bytes:
    """The field object again with /V: its own bytes, one entry added at the end."""
    entries = field.source[field.start : field.end - 2]  # the dictionary up to its >>
    num, gen = field.ref
    return b"%d %d obj\n%s/V %d %d R\n>>\nendobj\n" % (num, gen, entries, *signature)


# Writing a signing update


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


@dataclass(frozen=True)
class SignedUpdate:
    """A revision that signs: changed objects, then the signature dictionary, then xref."""

    objects: list[tuple[Ref, bytes]]  # each `num gen obj ... endobj\n`, in file order
    signature: Ref  # generation 0, written after `objects`
    signature_entries: bytes  # the dictionary after /ByteRange, from `signature_entries`
    trailer: PdfDict  # without /Size, which the xref section adds
    xref_stream: bool

    def prepare(self, pdf: bytes, hasher: hashlib._Hash, contents_bytes: int) -> PreparedSignature:
        """The update's bytes around /Contents; `hasher` has hashed `pdf` already."""
        # A file ending right after %%EOF gets a line break first, so that the first
        # object does not start on the %%EOF comment's line.
        head = b"" if pdf.endswith((b"\n", b"\r")) else b"\n"
        offsets, at = {}, len(pdf) + len(head)
        for ref, text in self.objects:
            offsets[ref.num] = (at, ref.gen)
            at += len(text)
        offsets[self.signature.num] = (at, 0)
        head += b"".join(text for _, text in self.objects)
        head += b"%d 0 obj\n<<\n/Contents " % self.signature.num
        contents_start = len(pdf) + len(head)
        contents_end = contents_start + 2 * contents_bytes + 2
        rest = self.signature_entries
        xref_at = contents_end + len(_BYTE_RANGE_KEY) + BYTE_RANGE_WIDTH + len(rest)
        xref = xref_section(self.xref_stream, offsets, xref_at, self.trailer)
        byte_range = _byte_range(contents_start, contents_end, xref_at + len(xref))
        tail = _BYTE_RANGE_KEY + byte_range + rest + xref
        hasher.update(head)
        head_hash = hasher.copy()
        hasher.update(tail)
        return PreparedSignature(hasher.digest(), contents_bytes, pdf, head, tail, head_hash)


def id_digest(hasher: hashlib._Hash, field_name: str, signing_time: datetime) -> bytes:
    """What the new /ID half comes from: the input (hashed so far), the field, the time.

    pyHanko draws it at random; a function of the request gives the same bytes for
    the same request.
    """
    source = hasher.copy()
    source.update(f"\n{field_name}\n{signing_time.isoformat()}".encode())
    return source.digest()


def signature_entries(signing_time: datetime, references: bytes) -> bytes:
    """The signature dictionary after its /ByteRange, as pyHanko's SignatureObject has it.

    `references` is the /Reference entry (DocMDP or FieldMDP), or nothing.
    """
    entries = _SIGNATURE_ENTRIES % _literal_string(_pdf_date(signing_time))
    return entries + references + b">>\nendobj\n"


def indirect(ref: Ref, value: PdfObject) -> bytes:
    """An indirect object's bytes, as pyHanko writes one."""
    return b"%d %d obj\n%s\nendobj\n" % (*ref, serialize(value))


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
