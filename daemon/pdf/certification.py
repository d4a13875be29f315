"""Stage 1 without pyHanko: three signature fields and a certification in one update.

The homeroom teacher's signature is the record's first: it adds the three signature
fields (the seal's with its lock), certifies the document for form filling (DocMDP)
and registers the ESIC extension, all in the revision it signs. pyHanko's reader and
writer cost most of a millisecond for that; this module reads the few objects it
changes through daemon/pdf/reader.py (the trailers, the catalogue, the page tree down to
the first page) and appends what daemon/pdf/pades.py has pyHanko write, object for
object: the catalogue with /AcroForm, /Perms, /Extensions and, for a PDF older than
1.7, /Version; the first page with the fields in its /Annots (or, when that is an
indirect array, the array); the AcroForm; three invisible field widgets; the seal's
/Lock; the signature dictionary with its DocMDP reference. Object numbers start at
the trailer's /Size (pyHanko skips one), and the new /ID half is a function of the
request (pyHanko draws it at random).

The input passed intake (`pades.inspect_pdf`), so it is not encrypted and has no
signature fields; anything else this module does not handle exactly as pyHanko does
(a form, /Perms, /Annots on a page-tree node, a catalogue whose /Extensions would need
merging) raises `Unsupported`, and pyHanko signs it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from daemon.pdf.incremental import (
    PreparedSignature,
    SignedUpdate,
    catalog_version,
    id_digest,
    indirect,
    next_trailer,
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
) -> PreparedSignature:
    """Lay out stage 1's update: create `field_names`, certify, sign the first field.

    The last field carries the seal's lock: every field locked once it is signed,
    then no changes at all.
    """
    source = _read_source(pdf)
    hasher = hashlib.sha256(pdf)
    trailer = next_trailer(
        source.trailer, source.startxref, id_digest(hasher, field_names[0], signing_time)
    )
    form = Ref(source.size, 0)
    fields = [Ref(form.num + 1 + n, 0) for n in range(len(field_names))]
    lock = Ref(fields[-1].num + 1, 0)
    signature = Ref(lock.num + 1, 0)
    values: dict[Ref, PdfObject] = {
        source.root: _catalog(source, form, signature),
        **_annotations(source, fields),
        # SignaturesExist | AppendOnly, as pyHanko sets them when it writes a signature:
        # a document timestamp added later (B-LTA) then changes nothing in the form.
        form: {"Fields": list(fields), "SigFlags": 3},
        **_fields(field_names, fields, source.page, signature, lock),
        lock: {"Action": "All", "Type": "SigFieldLock", "P": _NO_CHANGES},
    }
    update = SignedUpdate(
        objects=[(ref, indirect(ref, values[ref])) for ref in sorted(values)],
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
    page: Ref
    page_value: PdfDict
    annots: tuple[Ref, list[PdfObject]] | None  # an indirect /Annots array and its items


def _read_source(pdf: bytes) -> _Source:
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
    page, page_value = _first_page(document, catalog)
    if page.num == root.num:
        raise Unsupported("The first page is the catalogue.")
    return _Source(
        startxref=document.startxref,
        trailer=trailer,
        xref_stream=any(section.is_stream for section in sections),
        size=size,
        root=root,
        catalog=catalog,
        version=catalog_version(document, catalog),
        extensions=_extensions(document, catalog.get("Extensions")),
        page=page,
        page_value=page_value,
        annots=_indirect_annots(document, page_value),
    )


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


def _first_page(document: Document, catalog: PdfDict) -> tuple[Ref, PdfDict]:
    """The first page, walking the page tree as pyHanko's find_page_for_modification(0).

    Branches that count no pages are skipped; /Annots on a branch (where it means
    nothing, though a reader might honour it) goes to pyHanko.
    """
    node_ref = as_ref(catalog.get("Pages"), "/Pages")
    node = as_dict(document.get(node_ref).value, "The page tree")
    if as_int(document.resolve(node.get("Count")), "/Count") < 1:
        raise Unsupported("The page tree counts no pages.")
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
            if kind == "Page":
                return kid_ref, kid_value
            if kind != "Pages":
                raise Unsupported(f"Page tree kid {kid_ref.num} has /Type {kind!r}.")
            if as_int(document.resolve(kid_value.get("Count")), "/Count") > 0:
                break  # the first page is in this branch
        else:
            raise Unsupported(f"Page tree node {node_ref.num} has no first page.")
        if kid_ref in seen:
            raise Unsupported("The page tree has a loop.")
        seen.add(kid_ref)
        node_ref, node = kid_ref, kid_value
    raise Unsupported(f"The page tree is deeper than {MAX_DEPTH}.")


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


def _annotations(source: _Source, fields: list[Ref]) -> dict[Ref, PdfObject]:
    """The fields' widgets after the first page's annotations, as pyHanko adds them.

    An indirect /Annots array is written again with them (the page stays as it is);
    otherwise the page is, with its /Annots.
    """
    if source.annots is not None:
        ref, items = source.annots
        return {ref: [*items, *fields]}
    annots = source.page_value.get("Annots", [])
    if not isinstance(annots, list):
        raise Unsupported("The first page's /Annots is not an array.")
    return {source.page: {**source.page_value, "Annots": [*annots, *fields]}}


def _fields(
    names: tuple[str, ...], refs: list[Ref], page: Ref, signature: Ref, lock: Ref
) -> dict[Ref, PdfObject]:
    """Each field merged with its widget, pyHanko's invisible field; the first signed."""
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
            "P": page,
        }
        if n == 0:
            field["V"] = signature
        if n == len(names) - 1:
            field["Lock"] = lock
        fields[ref] = field
    return fields
