"""The seal's long-term validation update without pyHanko: a DSS, then a document timestamp.

At B-LT and B-LTA the sealed record gets one more revision: a document security
store (ISO 32000-2 12.8.4.3, ETSI EN 319 142-1 5.4) with the certificates and the
OCSP and CRL answers that prove its signatures, and at B-LTA a document timestamp
over the whole file. pyHanko writes the same revision after parsing the whole file,
and most of that cost is its byte-by-byte reading of the three signatures' /Contents
(tens of kilobytes of hex each); here daemon/pdf/reader.py finds the few objects the
update changes from the end of the file, and the signing update's layout is the one
daemon/pdf/incremental.py uses for the later stages.

The revision is the one pyHanko writes for `DocumentSecurityStore.supply_dss_in_writer`
followed by `PdfTimeStamper.timestamp_pdf`: the DSS's certificates, OCSP responses and
CRLs as plain streams (no /VRI, which EN 319 142-1 leaves optional and pyHanko does not
write either), the catalogue with /DSS, an invisible widget field /DocTimeStamp on the
first page (flags Print and Locked, /TU Timestamp) added to the form's /Fields, and
its signature dictionary /Type /DocTimeStamp, /SubFilter /ETSI.RFC3161, whose byte
range covers the whole file. (pyHanko also rewrites /Info's ModDate and Producer; this
writer leaves /Info as the seal left it.) The field is a new one, so pyHanko's difference
analysis then wants every page's /Annots to hold references only, in each signed
revision too: stage 1 makes inline annotations objects (daemon/pdf/annotations.py).
It also compares the page before and after by value, every digit of a real counted:
an object this writer would write with a real rounded (daemon/pdf/syntax.py reads
reals as floats; jsPDF writes 595.2799999999999727, which pyHanko keeps when it signs
stage 1) is left to pyHanko as well.

Only a file with no DSS and no document timestamp yet is written here: the issuance
path. A renewal (a DSS to merge with, a DocTimeStamp2 to add) raises `Unsupported`,
and daemon/ltv/dss.py leaves it to pyHanko.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal

from daemon.pdf.appearance import stream_object
from daemon.pdf.incremental import ContentsTooLarge, PreparedSignature, SignedUpdate, indirect
from daemon.pdf.reader import Document, Located
from daemon.pdf.syntax import PdfDict, PdfObject, Ref, Unsupported, as_dict, as_int, as_ref
from daemon.pdf.xref import next_trailer, xref_section

__all__ = ["ContentsTooLarge", "LtvTarget", "Unsupported", "ValidationData", "read_ltv_target"]

DOC_TIMESTAMP_FIELD = "DocTimeStamp"
_WIDGET_FLAGS = 132  # Print | Locked, as pyHanko sets them on a timestamp's widget
_MAX_PAGE_DEPTH = 16
_REAL = re.compile(rb"[+-]?(?:\d+\.\d*|\.\d+)")
_DOC_TIMESTAMP_ENTRIES = (
    b"\n/Type /DocTimeStamp\n/Filter /Adobe.PPKLite\n/SubFilter /ETSI.RFC3161\n>>\nendobj\n"
)


@dataclass(frozen=True)
class ValidationData:
    """What the DSS holds, each item DER: certificates, OCSP responses, CRLs."""

    certs: list[bytes] = field(default_factory=list)
    ocsps: list[bytes] = field(default_factory=list)
    crls: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class _Changed:
    """An object the update writes again, and its new value."""

    ref: Ref
    value: PdfObject


@dataclass(frozen=True)
class LtvTarget:
    """A sealed record as the LTV update needs it: its signatures and the objects it changes."""

    pdf: bytes = field(repr=False)
    startxref: int
    trailer: PdfDict
    xref_stream: bool
    size: int
    root: Ref
    catalog: PdfDict
    form: Ref | None  # the AcroForm, when it is an indirect object
    form_value: PdfDict
    fields: tuple[Ref | None, list[PdfObject]]  # an indirect /Fields array, and its items
    page: Ref
    page_value: PdfDict
    annots: tuple[Ref | None, list[PdfObject]]  # the first page's /Annots, and its items
    # Objects holding a number this writer would write rounded (daemon/pdf/syntax.py
    # reads reals as floats): pyHanko's difference analysis would see it changed.
    inexact: frozenset[Ref]
    # Each filled signature field's CMS (DER, the padding after it included), in /Fields order.
    signatures: list[bytes] = field(repr=False)

    def dss_update(self, data: ValidationData) -> bytes:
        """The record with a revision adding the DSS (B-LT)."""
        objects, _ = self._dss_objects(data, with_field=False)
        head = b"" if self.pdf.endswith((b"\n", b"\r")) else b"\n"
        offsets, at = {}, len(self.pdf) + len(head)
        for ref, text in objects:
            offsets[ref.num] = (at, ref.gen)
            at += len(text)
        trailer = next_trailer(self.trailer, self.startxref, self._id_digest())
        body = head + b"".join(text for _, text in objects)
        return self.pdf + body + xref_section(self.xref_stream, offsets, at, trailer)

    def prepare_timestamp(self, data: ValidationData, contents_bytes: int) -> PreparedSignature:
        """The revision adding the DSS and a document timestamp, but for the token.

        Ask the TSA for a token over `document_digest` (the SHA-256 of the byte range),
        then `complete` it with the token's DER.
        """
        objects, field_ref = self._dss_objects(data, with_field=True)
        assert field_ref is not None
        read = hashlib.sha256(self.pdf)  # the file so far, for the /ID and the byte range
        update = SignedUpdate(
            objects=objects,
            signature=Ref(field_ref.num + 1, 0),
            signature_entries=_DOC_TIMESTAMP_ENTRIES,
            trailer=next_trailer(self.trailer, self.startxref, self._id_digest(read.copy())),
            xref_stream=self.xref_stream,
        )
        return update.prepare(self.pdf, read, contents_bytes)

    def _dss_objects(
        self, data: ValidationData, *, with_field: bool
    ) -> tuple[list[tuple[Ref, bytes]], Ref | None]:
        """The changed objects, the DSS's streams and dictionary, and the field; in that order."""
        num = self.size
        streams: list[tuple[Ref, bytes]] = []
        dss: PdfDict = {}
        for key, items in (("Certs", data.certs), ("OCSPs", data.ocsps), ("CRLs", data.crls)):
            refs: list[PdfObject] = []
            for item in dict.fromkeys(items):  # each once, in the order given
                ref = Ref(num, 0)
                streams.append((ref, stream_object(ref, {"Length": len(item)}, item)))
                refs.append(ref)
                num += 1
            if refs:
                dss[key] = refs
        dss_ref = Ref(num, 0)
        field_ref = Ref(num + 1, 0) if with_field else None
        changed = self._changed(dss_ref, field_ref)
        rounded = self.inexact.intersection(c.ref for c in changed)
        if rounded:
            raise Unsupported(f"Object {min(rounded).num} has a number written more precisely.")
        objects = [(c.ref, indirect(c.ref, c.value)) for c in changed]
        objects += [*streams, (dss_ref, indirect(dss_ref, dss))]
        if field_ref is not None:
            widget: PdfDict = {
                "FT": "Sig",
                "T": DOC_TIMESTAMP_FIELD.encode("ascii"),
                "Type": "Annot",
                "Subtype": "Widget",
                "F": _WIDGET_FLAGS,
                "Rect": [0, 0, 0, 0],
                "P": self.page,
                "TU": b"Timestamp",
                "V": Ref(field_ref.num + 1, 0),
            }
            objects.append((field_ref, indirect(field_ref, widget)))
        return objects, field_ref

    def _changed(self, dss: Ref, widget: Ref | None) -> list[_Changed]:
        """The catalogue with /DSS; with a widget, the form's /Fields and the page's /Annots."""
        catalog = {**self.catalog, "DSS": dss}
        if widget is None:
            return [_Changed(self.root, catalog)]
        changed: dict[Ref, PdfObject] = {}
        form = dict(self.form_value)
        fields_ref, fields = self.fields
        if fields_ref is None:
            form["Fields"] = [*fields, widget]
        else:
            changed[fields_ref] = [*fields, widget]
        if self.form is None:
            catalog["AcroForm"] = form
        elif fields_ref is None:
            changed[self.form] = form
        page = dict(self.page_value)
        annots_ref, annots = self.annots
        if annots_ref is None:
            page["Annots"] = [*annots, widget]
        else:
            changed[annots_ref] = [*annots, widget]
        changed[self.page] = page
        changed[self.root] = catalog
        return [_Changed(ref, changed[ref]) for ref in sorted(changed)]

    def _id_digest(self, read: hashlib._Hash | None = None) -> bytes:
        """What the new /ID half comes from: the input and the update's purpose.

        `read`: a SHA-256 that has read the input already (the input is not hashed twice).
        """
        digest = read if read is not None else hashlib.sha256(self.pdf)
        digest.update(b"\nLTV " + DOC_TIMESTAMP_FIELD.encode())
        return digest.digest()


def read_ltv_target(pdf: bytes) -> LtvTarget:
    """The record's signatures and the objects its LTV update changes.

    Raises `Unsupported` for a file this writer does not extend (a DSS or a document
    timestamp already there, an unexpected form or page tree); pyHanko extends it.
    """
    document = Document(pdf)
    trailer = document.trailer
    size = as_int(trailer.get("Size"), "/Size")
    root = as_ref(trailer.get("Root"), "/Root")
    catalog = as_dict(document.get(root).value, "The catalogue")
    if "DSS" in catalog:
        raise Unsupported("The document already has a DSS.")
    form_entry = catalog.get("AcroForm")
    form = form_entry if isinstance(form_entry, Ref) else None
    form_value = as_dict(document.resolve(form_entry), "The AcroForm")
    fields = _array(document, form_value.get("Fields"), "The AcroForm's /Fields")
    signatures = _signatures(document, fields[1])
    page, page_value = _first_page(document, catalog)
    annots = _array(document, page_value.get("Annots", []), "The first page's /Annots")
    changed = [root, page, *(ref for ref in (form, fields[0], annots[0]) if ref is not None)]
    if any(ref.num >= size for ref in changed):
        raise Unsupported("An object the update changes is beyond the trailer's /Size.")
    inexact = frozenset(ref for ref in changed if not _exact(document.get(ref)))
    return LtvTarget(
        pdf=pdf,
        startxref=document.startxref,
        trailer=trailer,
        xref_stream=document.sections[0].is_stream,
        size=size,
        root=root,
        catalog=catalog,
        form=form,
        form_value=form_value,
        fields=fields,
        page=page,
        page_value=page_value,
        annots=annots,
        inexact=inexact,
        signatures=signatures,
    )


def _exact(located: Located) -> bool:
    """Whether every real in the object reads back as the same number once written.

    pyHanko keeps a real's every digit (jsPDF writes 595.2799999999999727) and compares
    a page before and after an update by value; this writer would write 595.28.
    """
    source = located.source
    return all(
        Decimal(repr(float(token[0]))) == Decimal(token[0].decode("ascii"))
        for token in _REAL.finditer(source, located.start, located.end)
    )


def _array(document: Document, value: PdfObject, what: str) -> tuple[Ref | None, list[PdfObject]]:
    """An array that may be an indirect object: its reference (or None) and its items."""
    items = document.resolve(value)
    if not isinstance(items, list):
        raise Unsupported(f"{what} is not an array.")
    return (value if isinstance(value, Ref) else None), items


def _signatures(document: Document, fields: list[PdfObject]) -> list[bytes]:
    """The CMS of every filled signature field; a document timestamp means a renewal."""
    found = []
    for entry in fields:
        value = as_dict(document.resolve(entry), "A form field")
        if "Kids" in value:  # the daemon's fields have none; pyHanko walks any tree
            raise Unsupported("A form field has kids.")
        if document.resolve(value.get("FT")) != "Sig" or "V" not in value:
            continue
        signature = as_dict(document.resolve(value["V"]), "A signature dictionary")
        if signature.get("Type") == "DocTimeStamp":
            raise Unsupported("The document already has a document timestamp.")
        contents = signature.get("Contents")
        if not isinstance(contents, bytes):
            raise Unsupported("A signature's /Contents is not a string.")
        found.append(contents)
    return found


def _first_page(document: Document, catalog: PdfDict) -> tuple[Ref, PdfDict]:
    """The first page, where pyHanko puts a new field's widget."""
    node: PdfObject = catalog.get("Pages")
    for _ in range(_MAX_PAGE_DEPTH):
        ref = as_ref(node, "A page tree node")
        located: Located = document.get(ref)
        value = as_dict(located.value, "A page tree node")
        if value.get("Type") == "Page":
            return ref, value
        kids = document.resolve(value.get("Kids"))
        if not isinstance(kids, list) or not kids:
            raise Unsupported("A page tree node has no kids.")
        node = kids[0]
    raise Unsupported("The page tree is too deep.")
