"""Visible signatures: where a document wants them, and what each one shows.

A PDF that wants visible signatures says so in its catalogue (the record renderer,
daemon/record/render.py, writes it): `/HocbaSignatureBoxes << /GVCN << /Page 0 /Rect
[llx lly urx ury] >> ... >>`, one entry per field, page index from 0, in user space.
Without it (any v1 PDF a school sends as it always has) the signatures stay invisible.

Stage 1 embeds one font for all three appearances, DejaVu Sans cut to the Vietnamese
Latin letters (a subset of ~15 KB compressed), in the AcroForm's default resources
(/DR /Font /HocbaSans). Its character codes are Unicode code points (a CIDToGIDMap
maps them to glyphs), so a later stage, maybe on another machine with another build
of the font, writes text by code point alone; a ToUnicode CMap lets text extraction
read it back. Each signature's appearance is written in the update that signs it,
when the signer's name and the time are known: "Ký bởi", "Chức vụ" (or, for the
seal, "Đơn vị", the school), "Ngày ký".
"""

from __future__ import annotations

import functools
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

from asn1crypto import x509

from daemon.pdf.syntax import PdfDict, PdfObject, Ref, serialize
from daemon.repertoire import REPERTOIRE
from daemon.stages import FIELD_NAMES, Stage

BOXES_KEY = "HocbaSignatureBoxes"
FONT_RESOURCE = "HocbaSans"
FONT_FILE = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_BASE_FONT = "HBSIGN+DejaVuSans"  # a subset's name carries a six-letter tag
_FONT_SIZE_PT = 7.5
_LEADING_PT = 9.5
_PADDING_PT = 4.0
_INK = b"0 0.2 0.6 rg"  # the blue of a signed paper
_VIETNAM = timezone(timedelta(hours=7))
_ROLES = {
    Stage.HOMEROOM_TEACHER: "Giáo viên chủ nhiệm",
    Stage.PRINCIPAL: "Hiệu trưởng",
}


@dataclass(frozen=True)
class Box:
    """Where a field's widget goes: page index from 0, rectangle in user space."""

    page: int
    rect: tuple[float, float, float, float]  # llx, lly, urx, ury

    @property
    def width(self) -> float:
        return round(self.rect[2] - self.rect[0], 4)

    @property
    def height(self) -> float:
        return round(self.rect[3] - self.rect[1], 4)


@dataclass(frozen=True)
class Stamp:
    """What a visible signature says: who, in what role (or for which school), when."""

    lines: tuple[str, ...]

    @classmethod
    def of(cls, stage: Stage, cert: x509.Certificate, signed_at: datetime) -> Stamp:
        subject = cert.subject.native
        name = str(subject.get("common_name") or subject.get("organization_name") or "")
        when = signed_at.astimezone(_VIETNAM).strftime("%d/%m/%Y %H:%M")
        if stage is Stage.SCHOOL_SEAL:
            school = str(subject.get("organization_name") or name)
            middle = f"Đơn vị: {school}"
        else:
            middle = f"Chức vụ: {_ROLES[stage]}"
        return cls((f"Ký bởi: {name}", middle, f"Ngày ký: {when}"))


def read_boxes(value: PdfObject, pages: int) -> dict[str, Box] | None:
    """The catalogue's /HocbaSignatureBoxes, resolved; None unless every field has a box.

    A box off the page tree, of no area, or missing for a field makes the signatures
    invisible, as if the document asked for nothing: both signing paths read it here.
    """
    if not isinstance(value, dict):
        return None
    boxes = {}
    for name in FIELD_NAMES:
        entry = value.get(name)
        if not isinstance(entry, dict):
            return None
        page, rect = entry.get("Page"), entry.get("Rect")
        if not _is_int(page) or not 0 <= page < pages:  # type: ignore[operator]
            return None
        if not isinstance(rect, list) or len(rect) != 4 or not all(map(_is_number, rect)):
            return None
        llx, lly, urx, ury = (round(float(v), 4) for v in rect)  # type: ignore[arg-type]
        if urx - llx < 1 or ury - lly < 1:
            return None
        boxes[name] = Box(int(page), (llx, lly, urx, ury))  # type: ignore[arg-type]
    return boxes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rect_is_visible(rect: PdfObject) -> bool:
    """A widget /Rect of some area (pyHanko's invisible fields have [0 0 0 0])."""
    if not isinstance(rect, list) or len(rect) != 4 or not all(map(_is_number, rect)):
        return False
    llx, lly, urx, ury = (float(v) for v in rect)  # type: ignore[arg-type]
    return abs(urx - llx) >= 1 and abs(ury - lly) >= 1


# Appearance streams


def form_xobject(content: bytes, width: float, height: float, font: Ref | None) -> PdfDict:
    """A form XObject's dictionary as pyHanko's init_xobject_dictionary writes one."""
    resources: PdfDict = {"Font": {FONT_RESOURCE: font}} if font is not None else {}
    return {
        "BBox": [0.0, float(height), float(width), 0.0],
        "Resources": resources,
        "Type": "XObject",
        "Subtype": "Form",
        "Length": len(content),
    }


def empty_appearance(width: float, height: float) -> tuple[PdfDict, bytes]:
    """An unsigned visible field's appearance: nothing, as pyHanko draws it."""
    return form_xobject(b"", width, height, None), b""


def signed_appearance(
    stamp: Stamp, width: float, height: float, font: Ref
) -> tuple[PdfDict, bytes]:
    """The stamp's lines, wrapped to the box, in the embedded font, centred vertically."""
    metrics = signature_font()
    room = width - 2 * _PADDING_PT
    lines = [part for line in stamp.lines for part in metrics.wrap(line, room, _FONT_SIZE_PT)]
    fitting = max(1, int((height - 2 * _PADDING_PT) // _LEADING_PT))
    lines = lines[:fitting]
    top = (height + len(lines) * _LEADING_PT) / 2 - _FONT_SIZE_PT
    ops = [b"q", _INK, b"BT", b"/%s %g Tf" % (FONT_RESOURCE.encode(), _FONT_SIZE_PT)]
    ops.append(b"%g %g Td" % (_PADDING_PT, round(top, 2)))
    for n, line in enumerate(lines):
        if n:
            ops.append(b"0 %g Td" % -_LEADING_PT)
        ops.append(b"<" + metrics.encode(line).hex().upper().encode() + b"> Tj")
    ops += [b"ET", b"Q"]
    content = b"\n".join(ops)
    return form_xobject(content, width, height, font), content


def stream_object(ref: Ref, dictionary: PdfDict, data: bytes) -> bytes:
    """An indirect stream object's bytes."""
    head = b"%d %d obj\n%s\nstream\n" % (*ref, serialize(dictionary))
    return head + data + b"\nendstream\nendobj\n"


# The font


@dataclass(frozen=True)
class SignatureFont:
    """DejaVu Sans cut to REPERTOIRE, as the PDF objects embedding it need it."""

    font_file: bytes  # compressed
    font_file_length: int
    cid_to_gid: bytes  # compressed
    to_unicode: bytes  # compressed
    widths: dict[int, int]  # code point -> advance in 1/1000 em
    bbox: list[PdfObject]
    ascent: int
    descent: int
    cap_height: int

    def encode(self, text: str) -> bytes:
        """Two bytes per character, its code point; '?' for one the font lacks."""
        text = unicodedata.normalize("NFC", text)
        return b"".join(
            (ord(c) if ord(c) in self.widths else 0x3F).to_bytes(2, "big") for c in text
        )

    def width_pt(self, text: str, size_pt: float) -> float:
        return sum(self.widths.get(ord(c), 600) for c in text) * size_pt / 1000

    def wrap(self, text: str, width_pt: float, size_pt: float) -> list[str]:
        """`text` in lines no wider than `width_pt`, broken at spaces where it can be."""
        lines: list[str] = []
        current = ""
        for word in unicodedata.normalize("NFC", text).split(" "):
            candidate = f"{current} {word}" if current else word
            if self.width_pt(candidate, size_pt) <= width_pt or not current:
                current = candidate
            else:
                lines.append(current)
                current = "  " + word  # continuation lines are indented
        lines.append(current)
        return lines

    def objects(self, refs: FontRefs) -> list[PdfStreamOrDict]:
        """The font's six objects at `refs`, each after those it refers to."""
        w: list[PdfObject] = []
        for first, last in REPERTOIRE:
            codes = [c for c in range(first, last + 1) if c in self.widths]
            if len(codes) == last - first + 1:
                w += [first, [self.widths[c] for c in codes]]
            else:
                for c in codes:
                    w += [c, [self.widths[c]]]
        type0: PdfDict = {
            "Type": "Font",
            "Subtype": "Type0",
            "BaseFont": _BASE_FONT,
            "Encoding": "Identity-H",
            "DescendantFonts": [refs.cid_font],
            "ToUnicode": refs.to_unicode,
        }
        cid_font: PdfDict = {
            "Type": "Font",
            "Subtype": "CIDFontType2",
            "BaseFont": _BASE_FONT,
            "CIDSystemInfo": {"Registry": b"Adobe", "Ordering": b"Identity", "Supplement": 0},
            "FontDescriptor": refs.descriptor,
            "DW": 600,
            "W": w,
            "CIDToGIDMap": refs.cid_to_gid,
        }
        descriptor: PdfDict = {
            "Type": "FontDescriptor",
            "FontName": _BASE_FONT,
            "Flags": 32,
            "FontBBox": self.bbox,
            "ItalicAngle": 0,
            "Ascent": self.ascent,
            "Descent": self.descent,
            "CapHeight": self.cap_height,
            "StemV": 80,
            "FontFile2": refs.font_file,
        }

        def flate(data: bytes, **extra: PdfObject) -> PdfDict:
            return {"Filter": "FlateDecode", **extra, "Length": len(data)}

        return [
            (refs.font_file, flate(self.font_file, Length1=self.font_file_length), self.font_file),
            (refs.cid_to_gid, flate(self.cid_to_gid), self.cid_to_gid),
            (refs.to_unicode, flate(self.to_unicode), self.to_unicode),
            (refs.descriptor, descriptor, None),
            (refs.cid_font, cid_font, None),
            (refs.type0, type0, None),
        ]


PdfStreamOrDict = tuple[Ref, PdfDict, bytes | None]  # a stream's data, or None


def written(objects: list[PdfStreamOrDict]) -> list[tuple[Ref, bytes]]:
    """The objects' bytes, streams and dictionaries."""
    return [
        (ref, stream_object(ref, value, data) if data is not None else _indirect(ref, value))
        for ref, value, data in objects
    ]


@dataclass(frozen=True)
class FontRefs:
    type0: Ref
    cid_font: Ref
    descriptor: Ref
    font_file: Ref
    cid_to_gid: Ref
    to_unicode: Ref

    @classmethod
    def starting_at(cls, num: int) -> FontRefs:
        return cls(*(Ref(num + n, 0) for n in range(6)))


def _indirect(ref: Ref, value: PdfObject) -> bytes:
    return b"%d %d obj\n%s\nendobj\n" % (*ref, serialize(value))


@functools.cache
def signature_font() -> SignatureFont:
    """The font, cut once per process (0.2 s), only by a process that makes a visible one."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    codes = [c for first, last in REPERTOIRE for c in range(first, last + 1)]
    font = TTFont(FONT_FILE, recalcTimestamp=False)
    options = subset.Options(notdef_outline=True, recommended_glyphs=True, hinting=False)
    options.layout_features = []
    options.drop_tables += ["FFTM", "GSUB", "GPOS", "GDEF"]
    options.glyph_names = False
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=codes)
    subsetter.subset(font)
    out = BytesIO()
    font.save(out)
    data = out.getvalue()
    font = TTFont(BytesIO(data))
    scale = 1000 / font["head"].unitsPerEm
    cmap = font.getBestCmap()
    hmtx = font["hmtx"]
    gids = {c: font.getGlyphID(cmap[c]) for c in codes if c in cmap}
    widths = {c: round(hmtx[cmap[c]][0] * scale) for c in gids}
    table = bytearray(2 * (max(gids) + 1))
    for code, gid in gids.items():
        table[2 * code : 2 * code + 2] = gid.to_bytes(2, "big")
    head, os2 = font["head"], font["OS/2"]
    return SignatureFont(
        font_file=zlib.compress(data, 9),
        font_file_length=len(data),
        cid_to_gid=zlib.compress(bytes(table), 9),
        to_unicode=zlib.compress(_to_unicode(sorted(gids)), 9),
        widths=widths,
        bbox=[round(v * scale) for v in (head.xMin, head.yMin, head.xMax, head.yMax)],
        ascent=round(font["hhea"].ascent * scale),
        descent=round(font["hhea"].descent * scale),
        cap_height=round(getattr(os2, "sCapHeight", 729) * scale),
    )


def _to_unicode(codes: list[int]) -> bytes:
    """A ToUnicode CMap mapping each two-byte code to the code point it is."""
    runs: list[tuple[int, int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1 and (code & 0xFF):
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    lines = [
        "/CIDInit /ProcSet findresource begin",
        "12 dict begin",
        "begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def",
        "/CMapType 2 def",
        "1 begincodespacerange",
        "<0000> <FFFF>",
        "endcodespacerange",
    ]
    for start in range(0, len(runs), 100):
        block = runs[start : start + 100]
        lines.append(f"{len(block)} beginbfrange")
        lines += [f"<{a:04X}> <{b:04X}> <{a:04X}>" for a, b in block]
        lines.append("endbfrange")
    lines += ["endcmap", "CMapName currentdict /CMap defineresource pop", "end", "end"]
    return ("\n".join(lines) + "\n").encode("ascii")
