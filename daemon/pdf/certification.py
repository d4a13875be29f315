"""Stage 1 without pyHanko: three signature fields and a certification in one update.

The homeroom teacher's signature is the record's first: it adds the three signature
fields (the seal's with its lock), certifies the document for form filling (DocMDP)
and registers the ESIC extension, all in the revision it signs. pyHanko's reader and
writer cost most of a millisecond for that; this module reads the few objects it
changes through daemon/pdf/reader.py (the trailers, the catalogue, the page tree) and
appends what daemon/pdf/pades.py has pyHanko write, object for object: every page's
inline annotations as objects of their own, their pages written again with references
(daemon/pdf/annotations.py says why; a document without any gets none of this); the
catalogue with /AcroForm, /Perms, /Extensions and, for a PDF older than 1.7, /Version;
the first page with the fields in its /Annots (or, when that is an indirect array, the
array); the AcroForm; three invisible field widgets; the seal's /Lock; the signature
dictionary with its DocMDP reference. Object numbers start at the trailer's /Size
(pyHanko skips one), and the new /ID half is a function of the request (pyHanko draws
it at random).

A document whose catalogue asks for visible signatures (daemon/pdf/appearance.py) gets
them as pyHanko's `SigFieldSpec(box=..., on_page=...)` makes them: each field's widget
with its /Rect on its box's page (that page, not the first, gets the /Annots), an empty
appearance for the unsigned ones; then, as daemon/pdf/pades.py adds them on pyHanko's
path, the signature font in the AcroForm's /DR and the teacher's appearance.

The input passed intake (`pades.inspect_pdf`), so it is not encrypted and has no
signature fields; anything else this module does not handle exactly as pyHanko does
(a form, /Perms, /Annots on a page-tree node, a catalogue whose /Extensions would need
merging) raises `Unsupported`, and pyHanko signs it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from daemon.pdf.annotations import Relinked, relink
from daemon.pdf.appearance import (
    BOXES_KEY,
    FONT_RESOURCE,
    Box,
    FontRefs,
    Stamp,
    empty_appearance,
    read_boxes,
    signature_font,
    signed_appearance,
    stream_object,
    written,
)
from daemon.pdf.incremental import (
    PreparedSignature,
    SignedUpdate,
    catalog_version,
    id_digest,
    indirect,
    signature_entries,
)
from daemon.pdf.reader import NOT_TRAILER_KEYS, Document
from daemon.pdf.syntax import (
    MAX_DEPTH,
    PdfDict,
    PdfObject,
    Ref,
    Unsupported,
    as_dict,
    as_int,
    as_ref,
)
from daemon.pdf.xref import next_trailer

# An invisible field as pyHanko's SignatureFormField makes one: locked (128) and
# printed (4), on the first page, with an empty rectangle and no appearance.
_FIELD_FLAGS = 132
_ESIC: PdfDict = {"Type": "DeveloperExtensions", "BaseVersion": "1.7", "ExtensionLevel": 1}
_MIN_VERSION = (1, 7)  # what pyHanko's incremental writer raises older documents to
# pyHanko's docmdp_reference_dictionary(MDPPerm.FILL_FORMS).
_DOCMDP_REFERENCE = (
    b"/Reference [ <<\n/Type /SigRef\n/TransformMethod /DocMDP\n/TransformParams <<\n"
    b"/Type /TransformParams\n/V /1.2\n/P 2\n>>\n>> ]\n"
)
_NO_CHANGES = 1  # MDPPerm.NO_CHANGES: the DocMDP level the seal's signature sets


def prepare_certification(
    pdf: bytes,
    field_names: tuple[str, ...],
    *,
    contents_bytes: int,
    signing_time: datetime,
    stamp: Stamp | None = None,
) -> PreparedSignature:
    """Lay out stage 1's update: create `field_names`, certify, sign the first field.

    The last field carries the seal's lock: every field locked once it is signed,
    then no changes at all. With a `stamp`, a document that asks for visible
    signatures gets them, the first showing the stamp.
    """
    source = _read_source(pdf, visible=stamp is not None)
    hasher = hashlib.sha256(pdf)
    trailer = next_trailer(
        source.trailer, source.startxref, id_digest(hasher, field_names[0], signing_time)
    )
    # Inline annotations first (daemon/pdf/annotations.py), as pyHanko's path adds them.
    form = Ref(source.size + len(source.relinked.annotations), 0)
    fields = [Ref(form.num + 1 + n, 0) for n in range(len(field_names))]
    lock = Ref(fields[-1].num + 1, 0)
    signature = Ref(lock.num + 1, 0)
    pages = {n: source.pages[n].ref for n in source.pages}
    boxes = source.boxes
    # SignaturesExist | AppendOnly, as pyHanko sets them when it writes a signature:
    # a document timestamp added later (B-LTA) then changes nothing in the form.
    form_value: PdfDict = {"Fields": list(fields), "SigFlags": 3}
    streams: list[tuple[Ref, bytes]] = []
    appearances: list[Ref] = []
    if boxes is not None and stamp is not None:
        font = FontRefs.starting_at(signature.num + 1)
        form_value["DR"] = {"Font": {FONT_RESOURCE: font.type0}}
        streams += written(signature_font().objects(font))
        appearances = [Ref(font.to_unicode.num + 1 + n, 0) for n in range(len(field_names))]
        for n, (name, ref) in enumerate(zip(field_names, appearances, strict=True)):
            box = boxes[name]
            if n == 0:
                value, data = signed_appearance(stamp, box.width, box.height, font.type0)
            else:
                value, data = empty_appearance(box.width, box.height)
            streams.append((ref, stream_object(ref, value, data)))
    values: dict[Ref, PdfObject] = {
        **source.relinked.changed(),
        source.root: _catalog(source, form, signature),
        **_annotations(source, fields, field_names),
        form: form_value,
        **_fields(field_names, fields, pages, boxes, appearances, signature, lock),
        lock: {"Action": "All", "Type": "SigFieldLock", "P": _NO_CHANGES},
    }
    objects = [(ref, indirect(ref, values[ref])) for ref in sorted(values)]
    update = SignedUpdate(
        objects=objects + streams,
        signature=signature,
        signature_entries=signature_entries(signing_time, _DOCMDP_REFERENCE),
        trailer=trailer,
        xref_stream=source.xref_stream,
    )
    return update.prepare(pdf, hasher, contents_bytes)


@dataclass(frozen=True)
class _Source:
    """What stage 1 reads from a school's PDF."""

    startxref: int
    trailer: PdfDict  # every revision's entries, the newest winning, as pyHanko sees it
    xref_stream: bool  # pyHanko writes an xref stream if any section is one
    size: int
    root: Ref
    catalog: PdfDict
    version: tuple[int, int]
    extensions: PdfObject  # the catalogue's /Extensions with ESIC registered
    pages: dict[int, _Page]  # by index: the pages the fields' widgets go on
    relinked: Relinked  # every page's inline annotations, as new objects
    boxes: dict[str, Box] | None  # where visible signatures go; None: invisible


@dataclass(frozen=True)
class _Page:
    ref: Ref
    value: PdfDict
    annots: tuple[Ref, list[PdfObject]] | None  # an indirect /Annots array and its items


def _read_source(pdf: bytes, *, visible: bool) -> _Source:
    document = Document(pdf)
    sections = document.all_sections()
    size = as_int(document.trailer.get("Size"), "/Size")
    if any(section.end > size for section in sections):
        raise Unsupported("An xref section lists objects beyond the trailer's /Size.")
    trailer: PdfDict = {}
    for section in reversed(sections):
        trailer.update(section.trailer)
    for key in NOT_TRAILER_KEYS:
        trailer.pop(key, None)
    root = as_ref(trailer.get("Root"), "/Root")
    catalog = as_dict(document.get(root).value, "The catalogue")
    for key in ("AcroForm", "Perms"):
        if key in catalog:
            raise Unsupported(f"The catalogue already has /{key}.")
    boxes = _boxes(document, catalog) if visible else None
    pages = {}
    for index in sorted({box.page for box in boxes.values()} if boxes else {0}):
        page, page_value = _page_at(document, catalog, index)
        if page.num == root.num:
            raise Unsupported("A page is the catalogue.")
        pages[index] = _Page(page, page_value, _indirect_annots(document, page_value))
    return _Source(
        startxref=document.startxref,
        trailer=trailer,
        xref_stream=any(section.is_stream for section in sections),
        size=size,
        root=root,
        catalog=catalog,
        version=catalog_version(document, catalog),
        extensions=_extensions(document, catalog.get("Extensions")),
        pages=pages,
        relinked=relink(document, catalog, size),
        boxes=boxes,
    )


def _boxes(document: Document, catalog: PdfDict) -> dict[str, Box] | None:
    """The catalogue's signature boxes, resolved as pyHanko's path reads them."""
    value = document.resolve(catalog.get(BOXES_KEY))
    if not isinstance(value, dict):
        return None
    resolved: PdfDict = {}
    for name, entry in value.items():
        entry = document.resolve(entry)
        if isinstance(entry, dict):
            entry = {key: document.resolve(item) for key, item in entry.items()}
            rect = entry.get("Rect")
            if isinstance(rect, list):
                entry["Rect"] = [document.resolve(item) for item in rect]
        resolved[name] = entry
    tree = as_dict(document.resolve(catalog.get("Pages")), "The page tree")
    return read_boxes(resolved, as_int(document.resolve(tree.get("Count")), "/Count"))


def _extensions(document: Document, extensions: PdfObject) -> PdfObject:
    """The catalogue's /Extensions once pyHanko has registered ESIC level 1 in it.

    Handled: no /Extensions, a direct dictionary without ESIC (ESIC is added), and any
    dictionary whose ESIC entry is a dictionary of level 1 or more (left alone).
    """
    if extensions is None:
        return {"ESIC": dict(_ESIC)}
    value = as_dict(document.resolve(extensions), "The catalogue's /Extensions")
    if "ESIC" not in value:
        if isinstance(extensions, Ref):
            raise Unsupported("The catalogue's /Extensions is an indirect object.")
        return {**value, "ESIC": dict(_ESIC)}
    esic = as_dict(document.resolve(value["ESIC"]), "The ESIC extension")
    level = esic.get("ExtensionLevel")
    if not isinstance(level, int) or isinstance(level, bool) or level < 1:
        raise Unsupported(f"The ESIC extension has level {level!r}, which pyHanko replaces.")
    return extensions


def _page_at(document: Document, catalog: PdfDict, index: int) -> tuple[Ref, PdfDict]:
    """Page `index`, walking the page tree as pyHanko's find_page_for_modification.

    Branches are skipped by their /Count; /Annots on a branch (where it means
    nothing, though a reader might honour it) goes to pyHanko.
    """
    node_ref = as_ref(catalog.get("Pages"), "/Pages")
    node = as_dict(document.get(node_ref).value, "The page tree")
    if as_int(document.resolve(node.get("Count")), "/Count") <= index:
        raise Unsupported(f"The page tree counts no page {index}.")
    seen = {node_ref}
    for _ in range(MAX_DEPTH):
        if "Annots" in node:
            raise Unsupported(f"Page tree node {node_ref.num} has /Annots.")
        kids = document.resolve(node.get("Kids"))
        if not isinstance(kids, list):
            raise Unsupported(f"Page tree node {node_ref.num} has no /Kids array.")
        for kid in kids:
            kid_ref = as_ref(kid, "A page tree kid")
            kid_value = as_dict(document.get(kid_ref).value, "A page tree kid")
            kind = document.resolve(kid_value.get("Type"))
            count = 1 if kind == "Page" else _branch_count(document, kid_ref, kid_value, kind)
            if index < count:
                if kind == "Page":
                    return kid_ref, kid_value
                break  # the page is in this branch
            index -= count
        else:
            raise Unsupported(f"Page tree node {node_ref.num} has no page {index}.")
        if kid_ref in seen:
            raise Unsupported("The page tree has a loop.")
        seen.add(kid_ref)
        node_ref, node = kid_ref, kid_value
    raise Unsupported(f"The page tree is deeper than {MAX_DEPTH}.")


def _branch_count(document: Document, ref: Ref, node: PdfDict, kind: PdfObject) -> int:
    if kind != "Pages":
        raise Unsupported(f"Page tree kid {ref.num} has /Type {kind!r}.")
    return as_int(document.resolve(node.get("Count")), "/Count")


def _catalog(source: _Source, form: Ref, signature: Ref) -> PdfDict:
    """The catalogue with the entries pyHanko adds, in the order it adds them."""
    catalog = dict(source.catalog)
    if source.version < _MIN_VERSION:
        catalog["Version"] = "{}.{}".format(*_MIN_VERSION)
    catalog["Extensions"] = source.extensions
    catalog["AcroForm"] = form
    catalog["Perms"] = {"DocMDP": signature}
    return catalog


def _indirect_annots(document: Document, page: PdfDict) -> tuple[Ref, list[PdfObject]] | None:
    """The first page's /Annots when it is an indirect array (wkhtmltopdf writes one)."""
    annots = page.get("Annots")
    if not isinstance(annots, Ref):
        return None
    value = document.get(annots).value
    if not isinstance(value, list):
        raise Unsupported("The first page's indirect /Annots is not an array.")
    return annots, value


def _annotations(
    source: _Source, fields: list[Ref], names: tuple[str, ...]
) -> dict[Ref, PdfObject]:
    """The fields' widgets after their pages' annotations, as pyHanko adds them.

    An indirect /Annots array is written again with them (the page stays as it is);
    otherwise the page is, with its /Annots; inline annotations there as references.
    """
    changed: dict[Ref, PdfObject] = {}
    for index, page in source.pages.items():
        on_page = [
            ref
            for name, ref in zip(names, fields, strict=True)
            if (source.boxes[name].page if source.boxes else 0) == index
        ]
        if page.annots is not None:
            ref, items = page.annots
            changed[ref] = [*source.relinked.items(page.ref, items), *on_page]
            continue
        annots = page.value.get("Annots", [])
        if not isinstance(annots, list):
            raise Unsupported(f"Page {index}'s /Annots is not an array.")
        annots = source.relinked.items(page.ref, annots)
        changed[page.ref] = {**page.value, "Annots": [*annots, *on_page]}
    return changed


def _fields(
    names: tuple[str, ...],
    refs: list[Ref],
    pages: dict[int, Ref],
    boxes: dict[str, Box] | None,
    appearances: list[Ref],
    signature: Ref,
    lock: Ref,
) -> dict[Ref, PdfObject]:
    """Each field merged with its widget, as pyHanko makes it; the first signed.

    Invisible (no `appearances`): an empty rectangle on the first page. Visible: its
    box's rectangle on its page, and its appearance.
    """
    fields: dict[Ref, PdfObject] = {}
    for n, (name, ref) in enumerate(zip(names, refs, strict=True)):
        if not name.isascii():
            raise Unsupported(f"The field name {name!r} is not ASCII.")
        field: PdfDict = {
            "FT": "Sig",
            "T": name.encode("ascii"),
            "Type": "Annot",
            "Subtype": "Widget",
            "F": _FIELD_FLAGS,
            "Rect": [0, 0, 0, 0],
            "P": pages[0] if 0 in pages else None,
        }
        if appearances and boxes is not None:
            box = boxes[name]
            field["Rect"] = list(box.rect)
            field["P"] = pages[box.page]
            field["AP"] = {"N": appearances[n]}
        if n == 0:
            field["V"] = signature
        if n == len(names) - 1:
            field["Lock"] = lock
        fields[ref] = field
    return fields
