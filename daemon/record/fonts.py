"""The renderer's two DejaVu faces, cut to the intake repertoire once per process.

A record may only hold the characters of `REPERTOIRE` (checked at intake), so one
subset of each font covers every record: it is cut, parsed and written out as PDF
objects once, and each record embeds those same bytes. Text is then encoded with a
`str.translate` table (character -> four hex digits of its glyph id, which is also its
CID under /Identity) and measured with a per-character width table, in the font's
1/1000 em units, as PDF's /W array says.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

from daemon.repertoire import REPERTOIRE

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


class _GlyphHex(dict[int, str]):
    """Character -> glyph id in hex; a character outside the font is .notdef (0)."""

    def __missing__(self, key: int) -> str:
        return "0000"


class _Widths(dict[str, int]):
    def __init__(self, widths: dict[str, int], missing: int) -> None:
        super().__init__(widths)
        self.missing = missing

    def __missing__(self, key: str) -> int:
        return self.missing


@dataclass(frozen=True)
class Face:
    """One embedded font: its resource name, encoding and widths, and its PDF objects."""

    resource: str  # /F1, /F2 in the page resources
    base_font: str  # subset tag + PostScript name
    hex_table: _GlyphHex
    widths: _Widths  # character -> advance, 1/1000 em
    font_file: bytes  # the subset TrueType, Flate-compressed
    font_file_length: int
    to_unicode: bytes  # the ToUnicode CMap, Flate-compressed
    w_array: str  # /W [...]
    descriptor: str  # /FontDescriptor entries without /FontFile2

    def encode(self, text: str) -> str:
        """`text` as the hex string of a Tj operand (without the angle brackets)."""
        return text.translate(self.hex_table)

    def width_pt(self, text: str, size_pt: float) -> float:
        w = self.widths
        return sum([w[c] for c in text]) * size_pt * 0.001


_FILES = {
    "": ("/F1", "HOCBAR", "DejaVuSans.ttf"),
    "B": ("/F2", "HOCBAB", "DejaVuSans-Bold.ttf"),
}


@cache
def face(style: str) -> Face:
    """The face of `style` ("" regular, "B" bold), built on first use in a process."""
    resource, tag, file = _FILES[style]
    data = _subset_bytes(file)
    font = TTFont(BytesIO(data), recalcTimestamp=False)
    scale = 1000 / font["head"].unitsPerEm
    hmtx = font["hmtx"].metrics
    glyph_id = font.getGlyphID
    cmap: dict[int, str] = font.getBestCmap()
    hex_table = _GlyphHex()
    widths: dict[str, int] = {}
    to_unicode: dict[int, int] = {}
    for code, name in sorted(cmap.items()):
        gid = glyph_id(name)
        hex_table[code] = f"{gid:04x}"
        widths[chr(code)] = round(scale * hmtx[name][0] + 0.001)
        to_unicode.setdefault(gid, code)
    missing = round(scale * hmtx[".notdef"][0] + 0.001)
    by_gid = [round(scale * hmtx[font.getGlyphName(g)][0] + 0.001) for g in range(len(hmtx))]
    name = font["name"].getDebugName(6) or file.removesuffix(".ttf")
    return Face(
        resource=resource,
        base_font=f"{tag}+{name}",
        hex_table=hex_table,
        widths=_Widths(widths, missing),
        font_file=zlib.compress(data, 9),
        font_file_length=len(data),
        to_unicode=zlib.compress(_cmap(to_unicode), 9),
        w_array="[0 [" + " ".join(map(str, by_gid)) + "]]",
        descriptor=_descriptor(font, scale, f"{tag}+{name}", missing),
    )


def _descriptor(font: TTFont, scale: float, base_font: str, missing: int) -> str:
    head, hhea, os2, post = font["head"], font["hhea"], font["OS/2"], font["post"]
    flags = 4  # symbolic: the glyphs are addressed by CID, not by a standard encoding
    if post.isFixedPitch:
        flags |= 1
    if post.italicAngle != 0:
        flags |= 64
    if os2.usWeightClass >= 600:
        flags |= 1 << 18
    cap = getattr(os2, "sCapHeight", hhea.ascent)
    bbox = " ".join(f"{v * scale:.0f}" for v in (head.xMin, head.yMin, head.xMax, head.yMax))
    return (
        f"/Type /FontDescriptor /FontName /{base_font} /Flags {flags} /FontBBox [{bbox}] "
        f"/ItalicAngle {int(post.italicAngle)} /Ascent {round(hhea.ascent * scale)} "
        f"/Descent {round(hhea.descent * scale)} /CapHeight {round(cap * scale)} "
        f"/StemV {round(50 + int(pow(os2.usWeightClass / 65, 2)))} /MissingWidth {missing}"
    )


def _cmap(to_unicode: dict[int, int]) -> bytes:
    entries = [
        f"<{gid:04X}> <{chr(code).encode('utf-16-be').hex().upper()}>"
        for gid, code in sorted(to_unicode.items())
    ]
    blocks = []
    for i in range(0, len(entries), 100):
        chunk = entries[i : i + 100]
        blocks.append(f"{len(chunk)} beginbfchar\n" + "\n".join(chunk) + "\nendbfchar\n")
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        + "".join(blocks)
        + "endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend"
    ).encode("ascii")


@cache
def _subset_bytes(file: str) -> bytes:
    """The font cut down to REPERTOIRE: ~450 characters of DejaVu's 6,000 glyphs."""
    font = TTFont(FONT_DIR / file, recalcTimestamp=False)
    options = subset.Options(notdef_outline=True, recommended_glyphs=True, hinting=False)
    options.layout_features = []
    options.drop_tables += ["FFTM", "GSUB", "GPOS", "GDEF", "hdmx"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[c for a, b in REPERTOIRE for c in range(a, b + 1)])
    subsetter.subset(font)
    out = BytesIO()
    font.save(out)
    return out.getvalue()
