"""Direct annotations made indirect objects, in the first signature's update.

ISO 32000-1 (table 30) says a page's /Annots "shall contain indirect references" to
its annotations; fpdf2 writes each link's dictionary inline in the array. pyHanko's
difference analysis reads every page's /Annots as references only whenever a revision
after a signature adds a signature field (`_walk_page_tree_annots` in its
form_field_rules: "Array contains direct objects"), and compares against the signed
revision, not the previous one. At B-LTA the document timestamp is such a field, so a
record with one inline link anywhere would have all three signatures judged modified
(level OTHER) by the seal's last update, whoever writes it; no later update can repair
a signed revision. The first stage's update, which the homeroom teacher's signature
covers, therefore writes each inline annotation as an object of its own and each page
holding one (or its indirect /Annots array) again with references, unchanged otherwise.
A document without inline annotations gets nothing of it: its bytes are as before.

Both signing paths do it, in the same order (pages in page order, each page's items in
array order, before the fields are added): `relink` on daemon/pdf/reader.py's objects
for daemon/pdf/certification.py, `relink_in_writer` on pyHanko's writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.pdf.reader import Document
from daemon.pdf.syntax import MAX_DEPTH, PdfDict, PdfObject, Ref, Unsupported, as_dict, as_ref

if TYPE_CHECKING:
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter


@dataclass(frozen=True)
class RelinkedPage:
    """A page whose /Annots held inline annotations, and that array's items now."""

    value: PdfDict  # the page dictionary as it was
    array: Ref | None  # its /Annots, when that is an indirect array
    items: list[PdfObject]  # each inline annotation replaced by its new object's reference


@dataclass(frozen=True)
class Relinked:
    """What `relink` found: the pages to write again and the new annotation objects."""

    pages: dict[Ref, RelinkedPage]
    annotations: dict[Ref, PdfObject]

    def items(self, page: Ref, items: list[PdfObject]) -> list[PdfObject]:
        """The page's /Annots items as the update writes them (`items`: as they were)."""
        relinked = self.pages.get(page)
        return items if relinked is None else relinked.items

    def changed(self) -> dict[Ref, PdfObject]:
        """The objects to write: each annotation, and each page or indirect array."""
        changed: dict[Ref, PdfObject] = dict(self.annotations)
        for ref, page in self.pages.items():
            if page.array is None:
                changed[ref] = {**page.value, "Annots": page.items}
            else:
                changed[page.array] = page.items
        return changed


def relink(document: Document, catalog: PdfDict, first_num: int) -> Relinked:
    """Every inline annotation of every page, numbered from `first_num` on.

    Raises `Unsupported` for a page tree or an /Annots this module does not expect
    (pyHanko signs the document, and `relink_in_writer` relinks it there).
    """
    pages: dict[Ref, RelinkedPage] = {}
    annotations: dict[Ref, PdfObject] = {}
    arrays: set[Ref] = set()
    for ref, value in _pages(document, as_ref(catalog.get("Pages"), "/Pages")):
        entry = value.get("Annots")
        items = document.resolve(entry)
        if items is None:
            continue
        if not isinstance(items, list):
            raise Unsupported(f"Page object {ref.num}'s /Annots is not an array.")
        if all(isinstance(item, Ref) for item in items):
            continue
        array = entry if isinstance(entry, Ref) else None
        if array is not None:
            if array in arrays:
                raise Unsupported(f"Two pages share the /Annots array {array.num}.")
            arrays.add(array)
        relinked: list[PdfObject] = []
        for item in items:
            if not isinstance(item, Ref):
                new = Ref(first_num + len(annotations), 0)
                annotations[new] = item
                item = new
            relinked.append(item)
        pages[ref] = RelinkedPage(value, array, relinked)
    return Relinked(pages, annotations)


def _pages(document: Document, root: Ref) -> Iterator[tuple[Ref, PdfDict]]:
    """The page tree's leaves in page order, as pyHanko's difference analysis walks it."""
    seen: set[Ref] = set()

    def walk(ref: Ref, depth: int) -> Iterator[tuple[Ref, PdfDict]]:
        if depth > MAX_DEPTH:
            raise Unsupported(f"The page tree is deeper than {MAX_DEPTH}.")
        if ref in seen:
            raise Unsupported("The page tree has a loop.")
        seen.add(ref)
        node = as_dict(document.get(ref).value, "A page tree node")
        kind = document.resolve(node.get("Type"))
        if kind == "Page":
            yield ref, node
            return
        kids = document.resolve(node.get("Kids"))
        if kind != "Pages" or not isinstance(kids, list):
            raise Unsupported(f"Page tree node {ref.num} is neither a page nor a branch.")
        for kid in kids:
            yield from walk(as_ref(kid, "A page tree kid"), depth + 1)

    yield from walk(root, 0)


def relink_in_writer(writer: IncrementalPdfFileWriter) -> None:
    """`relink` on pyHanko's path: each inline annotation added to `writer` as an object.

    A page tree pyHanko's difference analysis could not walk either is left as it is.
    """
    from pyhanko.pdf_utils import generic

    for page in _writer_pages(writer.root.raw_get("/Pages"), 0, set()):
        value = page.get_object()
        if "/Annots" not in value:
            continue
        entry = value.raw_get("/Annots")
        items = entry.get_object()
        if not isinstance(items, generic.ArrayObject):
            continue
        inline = [n for n, item in enumerate(items.iterate()) if not _is_ref(item)]
        for n in inline:
            items[n] = writer.add_object(items.raw_get(n))
        if inline:
            writer.mark_update(entry if _is_ref(entry) else page)


def _writer_pages(
    node: generic.PdfObject, depth: int, seen: set[int]
) -> Iterator[generic.IndirectObject]:
    """The page tree's leaves in page order, in pyHanko's objects."""
    from pyhanko.pdf_utils import generic

    if not isinstance(node, generic.IndirectObject) or depth > MAX_DEPTH or node.idnum in seen:
        return
    seen.add(node.idnum)
    value = node.get_object()
    if not isinstance(value, generic.DictionaryObject):
        return
    if "/Type" in value and value["/Type"] == "/Page":
        yield node
        return
    kids = value.get("/Kids")
    kids = kids.get_object() if kids is not None else None
    if isinstance(kids, generic.ArrayObject):
        for kid in kids.iterate():
            yield from _writer_pages(kid, depth + 1, seen)


def _is_ref(value: object) -> bool:
    from pyhanko.pdf_utils import generic

    return isinstance(value, generic.IndirectObject)
