"""Visible signatures on pyHanko's path: what certification.py and incremental.py write.

daemon/pdf/pades.py signs with pyHanko the documents the fast paths do not expect; for
one that asks for visible signatures (daemon/pdf/appearance.py), pyHanko's
`SigFieldSpec(box=..., on_page=...)` places the fields and this module adds the same
signature font and appearances as the fast paths, object for object. Imported only on
that path: it loads pyHanko.
"""

from __future__ import annotations

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader

from daemon.pdf.appearance import (
    BOXES_KEY,
    FONT_RESOURCE,
    Box,
    FontRefs,
    PdfStreamOrDict,
    Stamp,
    read_boxes,
    rect_is_visible,
    signature_font,
    signed_appearance,
)
from daemon.pdf.syntax import PdfObject, Ref


def boxes(reader: PdfFileReader) -> dict[str, Box] | None:
    """The catalogue's signature boxes, read as daemon/pdf/certification.py reads them."""
    root = reader.root
    if "/" + BOXES_KEY not in root:
        return None
    return read_boxes(_plain(root["/" + BOXES_KEY], 0), int(root["/Pages"]["/Count"]))


def _plain(value: object, depth: int) -> PdfObject:
    """A pyHanko object as daemon/pdf/syntax.py reads one, references resolved, 4 deep."""
    if isinstance(value, generic.IndirectObject):
        value = value.get_object()
    if depth > 4:
        return None
    if isinstance(value, generic.BooleanObject):
        return bool(value)
    if isinstance(value, generic.NumberObject):
        return int(value)
    if isinstance(value, generic.FloatObject):
        return float(value)
    if isinstance(value, generic.NameObject):
        return str(value)[1:]
    if isinstance(value, generic.DictionaryObject):
        return {str(k)[1:]: _plain(value.raw_get(k), depth + 1) for k in value}
    if isinstance(value, list):
        return [_plain(item, depth + 1) for item in value]
    return None


def _generic(value: PdfObject, refs: dict[Ref, generic.IndirectObject]) -> generic.PdfObject:
    """One of our objects as pyHanko's, our references mapped by `refs`."""
    if isinstance(value, Ref):
        return refs[value]
    if isinstance(value, bool):
        return generic.BooleanObject(value)
    if isinstance(value, int):
        return generic.NumberObject(value)
    if isinstance(value, float):
        return generic.FloatObject(value)
    if isinstance(value, str):
        return generic.pdf_name("/" + value)
    if isinstance(value, bytes):
        return generic.ByteStringObject(value)
    if isinstance(value, list):
        return generic.ArrayObject([_generic(item, refs) for item in value])
    if isinstance(value, dict):
        return generic.DictionaryObject(
            {generic.pdf_name("/" + k): _generic(v, refs) for k, v in value.items()}
        )
    raise TypeError(f"{value!r} is not a PDF object.")


def _add(
    writer: IncrementalPdfFileWriter,
    objects: list[PdfStreamOrDict],
    refs: dict[Ref, generic.IndirectObject],
) -> None:
    """Our objects added to `writer`, each after those it refers to; `refs` gets theirs."""
    for ref, value, data in objects:
        if data is None:
            refs[ref] = writer.add_object(_generic(value, refs))
            continue
        entries = {k: v for k, v in value.items() if k != "Length"}
        stream = _generic(entries, refs)
        assert isinstance(stream, generic.DictionaryObject)
        if "Filter" in value:
            refs[ref] = writer.add_object(generic.StreamObject(stream, encoded_data=data))
        else:
            refs[ref] = writer.add_object(generic.StreamObject(stream, stream_data=data))


def add_signature_font(writer: IncrementalPdfFileWriter) -> None:
    """The signature font, in the AcroForm's /DR, as certification.py adds it."""
    placeholders = FontRefs.starting_at(-10)  # names for the objects until pyHanko numbers them
    refs: dict[Ref, generic.IndirectObject] = {}
    _add(writer, signature_font().objects(placeholders), refs)
    form = writer.root["/AcroForm"]
    font = generic.DictionaryObject(
        {generic.pdf_name("/" + FONT_RESOURCE): refs[placeholders.type0]}
    )
    form["/DR"] = generic.DictionaryObject({generic.pdf_name("/Font"): font})
    writer.update_container(form)


def add_appearance(
    writer: IncrementalPdfFileWriter, field_ref: generic.IndirectObject, stamp: Stamp
) -> None:
    """The stamp as the field's appearance, when it is visible and the font is there."""
    field = field_ref.get_object()
    rect = _plain(field.raw_get("/Rect"), 0) if "/Rect" in field else None
    form = writer.root["/AcroForm"]
    resources = form.get("/DR")
    fonts = resources.get("/Font") if isinstance(resources, generic.DictionaryObject) else None
    font = (
        fonts.raw_get("/" + FONT_RESOURCE)
        if isinstance(fonts, generic.DictionaryObject) and "/" + FONT_RESOURCE in fonts
        else None
    )
    if not isinstance(font, generic.IndirectObject) or not rect_is_visible(rect):
        return
    assert isinstance(rect, list)
    llx, lly, urx, ury = (float(v) for v in rect)  # type: ignore[arg-type]
    placeholder = Ref(-1, 0)
    value, data = signed_appearance(stamp, abs(urx - llx), abs(ury - lly), placeholder)
    refs = {placeholder: font}
    _add(writer, [(Ref(-2, 0), value, data)], refs)
    field["/AP"] = generic.DictionaryObject({generic.pdf_name("/N"): refs[Ref(-2, 0)]})
    writer.mark_update(field_ref)
