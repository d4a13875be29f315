"""Comparing a fast-path update with pyHanko's, object for object.

Apart from tests/unit/signing_kit.py, which a probe imports to show that signing on
the fast paths loads no pyHanko.
"""

from __future__ import annotations

from collections.abc import Set

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader


def update_objects(reader: PdfFileReader) -> set[generic.Reference]:
    """The objects the last revision writes, but for an xref stream."""
    refs = reader.xrefs.explicit_refs_in_revision(reader.xrefs.total_revisions - 1)
    return {ref for ref in refs if not isinstance(ref.get_object(), generic.StreamObject)}


def same_object(ours: object, theirs: object, old: int, skip: Set[str] = frozenset()) -> bool:
    """Equal as PDF objects: objects older than the update by number, new ones by value.

    The signature (and document timestamp) dictionaries differ only in /Contents and
    /ByteRange.
    """
    if isinstance(ours, generic.IndirectObject) and isinstance(theirs, generic.IndirectObject):
        if ours.idnum < old or theirs.idnum < old:
            return (ours.idnum, ours.generation) == (theirs.idnum, theirs.generation)
        return same_object(ours.get_object(), theirs.get_object(), old)
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if ours.get("/Type") in ("/Sig", "/DocTimeStamp"):
            skip = {*skip, "/Contents", "/ByteRange"}
        keys = set(ours) - set(skip)
        return keys == set(theirs) - set(skip) and all(
            same_object(ours.raw_get(key), theirs.raw_get(key), old) for key in keys
        )
    if isinstance(ours, list) and isinstance(theirs, list):
        pairs = zip(iter(ours), iter(theirs), strict=False)  # iter() keeps references
        return len(ours) == len(theirs) and all(same_object(a, b, old) for a, b in pairs)
    if isinstance(ours, generic.TextStringObject | generic.ByteStringObject):
        return isinstance(theirs, generic.TextStringObject | generic.ByteStringObject) and (
            ours.original_bytes == theirs.original_bytes
        )
    if isinstance(ours, generic.NumberObject | generic.FloatObject):
        return isinstance(theirs, generic.NumberObject | generic.FloatObject) and ours == theirs
    return type(ours) is type(theirs) and ours == theirs


def relinked_objects(reader: PdfFileReader) -> int:
    """How many more objects stage 1 writes for the document's inline annotations.

    Each becomes an object (daemon/pdf/annotations.py), and a page holding one, but the
    first (whose /Annots the fields' widgets change anyway), is written again.
    """
    count = 0
    for index in range(int(reader.root["/Pages"]["/Count"])):
        page, _ = reader.find_page_for_modification(index)
        annots = page.get_object().get("/Annots", generic.ArrayObject()).get_object()
        inline = sum(not isinstance(item, generic.IndirectObject) for item in annots.iterate())
        count += inline + (1 if inline and index else 0)
    return count
