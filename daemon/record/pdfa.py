"""A PDF/A-3b file from page contents, written directly: the record's few objects.

What is the same for every record (the sRGB output profile, both fonts with their
widths, ToUnicode maps and font files, the page resources) is objects 1-12, written
once per process with their offsets; a record adds its catalogue, pages, XMP and the
embedded XML after them. Nothing depends on the clock: the dates are the caller's
and the document id is a hash of the record's own objects.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources

from daemon.record.fonts import Face, face

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
_ICC, _RESOURCES = 1, 12
_FIRST_DYNAMIC = 13


@dataclass(frozen=True)
class Attachment:
    """The associated file: its bytes, name, MIME type, description and dates."""

    data: bytes
    filename: str
    mime_type: str
    description: str
    created: datetime


def text_string(value: str) -> str:
    """A PDF text string: literal when ASCII, else UTF-16BE with its byte-order mark."""
    if value.isascii():
        escaped = value.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        return f"({escaped})"
    return "<feff" + value.encode("utf-16-be").hex() + ">"


def pdf_date(moment: datetime) -> str:
    offset = moment.strftime("%z") or "+0000"
    return f"(D:{moment.strftime('%Y%m%d%H%M%S')}{offset[:3]}'{offset[3:]}')"


def _stream(body: bytes, entries: str = "", *, compress: bool = False) -> bytes:
    if compress:
        body = zlib.compress(body, 6)
        entries = f"{entries} /Filter /FlateDecode".strip()
    head = f"<< {entries} /Length {len(body)} >>".replace("<<  ", "<< ")
    return head.encode("ascii") + b"\nstream\n" + body + b"\nendstream"


def _font_objects(f: Face, first: int) -> list[bytes]:
    """Type0 font, its CIDFontType2, descriptor, font file and ToUnicode, from `first`."""
    cid, desc, file, cmap = first + 1, first + 2, first + 3, first + 4
    return [
        (
            f"<< /Type /Font /Subtype /Type0 /BaseFont /{f.base_font} /Encoding /Identity-H "
            f"/DescendantFonts [{cid} 0 R] /ToUnicode {cmap} 0 R >>"
        ).encode("ascii"),
        (
            f"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /{f.base_font} "
            "/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> "
            f"/FontDescriptor {desc} 0 R /CIDToGIDMap /Identity "
            f"/DW {f.widths.missing} /W {f.w_array} >>"
        ).encode("ascii"),
        f"<< {f.descriptor} /FontFile2 {file} 0 R >>".encode("ascii"),
        _stream(f.font_file, f"/Filter /FlateDecode /Length1 {f.font_file_length}"),
        _stream(f.to_unicode, "/Filter /FlateDecode"),
    ]


@cache
def _static() -> tuple[bytes, tuple[int, ...]]:
    """Header and objects 1-12, and each object's offset: built once per process."""
    icc = resources.files("fpdf").joinpath("data/color_profiles/sRGB2014.icc").read_bytes()
    regular, bold = face(""), face("B")
    bodies = [
        _stream(icc, "/N 3 /Alternate /DeviceRGB", compress=True),
        *_font_objects(regular, 2),
        *_font_objects(bold, 7),
        (
            f"<< /Font << {regular.resource} 2 0 R {bold.resource} 7 0 R >> "
            "/ProcSet [/PDF /Text] >>"
        ).encode("ascii"),
    ]
    out = bytearray(HEADER)
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
    assert len(bodies) == _RESOURCES
    return bytes(out), tuple(offsets)


def warm() -> None:
    """Build the shared objects now (a render worker's start), not in its first record."""
    _static()


def write_pdfa(
    pages: Sequence[bytes],
    size_pt: tuple[float, float],
    xmp: str,
    attachment: Attachment,
    catalog_extra: str = "",
) -> bytes:
    """The file: `pages` (content streams), the XMP, and `attachment` as /AF Data."""
    prefix, static_offsets = _static()
    catalog, pages_obj, metadata, spec, embedded = range(_FIRST_DYNAMIC, _FIRST_DYNAMIC + 5)
    first_page = _FIRST_DYNAMIC + 5
    page_ids = [first_page + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    made = pdf_date(attachment.created)
    name = text_string(attachment.filename)
    mime = attachment.mime_type.replace("/", "#2f")
    bodies: list[bytes] = [
        (
            f"<< /Type /Catalog /Pages {pages_obj} 0 R /Metadata {metadata} 0 R "
            f"/Lang (vi-VN) /PageLayout /OneColumn /OpenAction [{page_ids[0]} 0 R /FitH null] "
            "/OutputIntents [<< /Type /OutputIntent /S /GTS_PDFA1 "
            "/OutputConditionIdentifier (sRGB) /OutputCondition (IEC 61966-2-1:1999) "
            "/RegistryName (http://www.color.org) /Info (sRGB2014 \\(v2\\)) "
            f"/DestOutputProfile {_ICC} 0 R >>] "
            f"/AF [{spec} 0 R] /Names << /EmbeddedFiles << /Names [{name} {spec} 0 R] >> >>"
            f"{catalog_extra} >>"
        ).encode("ascii"),
        (
            f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} "
            f"/MediaBox [0 0 {size_pt[0]:.2f} {size_pt[1]:.2f}] >>"
        ).encode("ascii"),
        _stream(
            (
                '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
                + xmp
                + '\n<?xpacket end="w"?>'
            ).encode("utf-8"),
            "/Type /Metadata /Subtype /XML",
        ),
        (
            f"<< /Type /Filespec /F {name} /UF {name} "
            f"/Desc {text_string(attachment.description)} "
            f"/EF << /F {embedded} 0 R /UF {embedded} 0 R >> /AFRelationship /Data >>"
        ).encode("ascii"),
        _stream(
            attachment.data,
            f"/Type /EmbeddedFile /Subtype /{mime} /Params << /Size {len(attachment.data)} "
            f"/CreationDate {made} /ModDate {made} >>",
            compress=True,
        ),
    ]
    for page_id, content in zip(page_ids, pages, strict=True):
        bodies.append(
            (
                f"<< /Type /Page /Parent {pages_obj} 0 R /Resources {_RESOURCES} 0 R "
                f"/Contents {page_id + 1} 0 R >>"
            ).encode("ascii")
        )
        bodies.append(_stream(content, compress=True))
    out = bytearray(prefix)
    offsets = list(static_offsets)
    for number, body in enumerate(bodies, start=_FIRST_DYNAMIC):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
    doc_id = hashlib.md5(out[len(prefix) :], usedforsecurity=False).hexdigest().upper()
    xref_at = len(out)
    size = len(offsets) + 1
    table = "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += (
        f"xref\n0 {size}\n0000000000 65535 f \n{table}"
        f"trailer\n<< /Size {size} /Root {catalog} 0 R /ID [<{doc_id}> <{doc_id}>] >>\n"
        f"startxref\n{xref_at}\n%%EOF\n"
    ).encode("ascii")
    return bytes(out)
