"""Each signature's CMS, read from the file by daemon/pdf/reader.py; pyHanko where it cannot.

The evidence pass (daemon.verification.evidence) needs only the signatures' CMS and
the field names, not pyHanko's whole view of each signature: pyHanko's reader spends
most of the pass decoding the /Contents hex strings (about 60% of it on a B-LTA
record), the hand-written reader a fraction of that. A file it does not expect
(`Unsupported`: kids in the form, object layouts it does not read) is read by pyHanko
instead, which reads any PDF; both give the same list (tests/unit/test_verification_evidence.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms

from daemon.pdf.reader import Document
from daemon.pdf.syntax import PdfObject, Unsupported, as_dict

_MAX_FIELDS = 64


@dataclass(frozen=True)
class SignedField:
    """A filled signature field (not a document timestamp): its name and its CMS."""

    field_name: str
    signed_data: cms.SignedData


def signed_fields(pdf: bytes) -> list[SignedField]:
    """The regular signatures, in the form's order; `Unsupported` for a file to leave to pyHanko."""
    document = Document(pdf)
    catalog = as_dict(document.resolve(document.trailer.get("Root")), "The catalogue")
    form = as_dict(document.resolve(catalog.get("AcroForm")), "The AcroForm")
    fields = document.resolve(form.get("Fields"))
    if not isinstance(fields, list) or len(fields) > _MAX_FIELDS:
        raise Unsupported("The AcroForm's /Fields is not a short array.")
    return [s for s in (_signed(document, f) for f in fields) if s is not None]


def _signed(document: Document, entry: PdfObject) -> SignedField | None:
    value = as_dict(document.resolve(entry), "A form field")
    if "Kids" in value:
        raise Unsupported("A form field has kids.")
    if document.resolve(value.get("FT")) != "Sig" or "V" not in value:
        return None
    signature = as_dict(document.resolve(value["V"]), "A signature dictionary")
    if document.resolve(signature.get("Type")) == "DocTimeStamp":
        return None
    name, contents = document.resolve(value.get("T")), document.resolve(signature.get("Contents"))
    if not isinstance(name, bytes) or not isinstance(contents, bytes):
        raise Unsupported("A signature field's /T or /Contents is not a string.")
    try:
        field_name = name.decode("ascii")
        info = cms.ContentInfo.load(contents, strict=False)
        signed_data = info["content"]
        if not isinstance(signed_data, cms.SignedData):
            raise Unsupported("A signature's /Contents is not CMS SignedData.")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise Unsupported(f"A signature cannot be read here: {exc}") from exc
    return SignedField(field_name, signed_data)
