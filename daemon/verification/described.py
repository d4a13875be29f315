"""What a record's PDF says about itself: its record, student and school, in its XMP.

A school system describes each record in the catalogue's XMP metadata stream with
the properties of `NAMESPACE` (`hocba:RecordId`, `hocba:StudentId`, `hocba:SchoolId`,
`hocba:AcademicYear`), as Factur-X describes an invoice. The seal's signature covers
the whole file, so once a record is issued its description is the school's word. A
PDF without one can still be judged on its signatures; who it is about cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree
from xml.sax.saxutils import escape

NAMESPACE = "http://ns.hocba.edu.vn/record/1.0/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_FIELDS = {
    "RecordId": "record_id",
    "StudentId": "student_id",
    "SchoolId": "school_id",
    "AcademicYear": "academic_year",
}


@dataclass(frozen=True)
class RecordDescription:
    record_id: str | None = None
    student_id: str | None = None
    school_id: str | None = None
    academic_year: str | None = None


def xmp(description: RecordDescription) -> str:
    """The <x:xmpmeta> element describing a record (fpdf2: `FPDF.set_xmp_metadata`)."""
    properties = "".join(
        f"<hocba:{name}>{escape(value)}</hocba:{name}>"
        for name, attr in _FIELDS.items()
        if (value := getattr(description, attr)) is not None
    )
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        f'<rdf:RDF xmlns:rdf="{_RDF}">'
        f'<rdf:Description rdf:about="" xmlns:hocba="{NAMESPACE}">{properties}</rdf:Description>'
        "</rdf:RDF></x:xmpmeta>"
    )


def parse_xmp(packet: bytes) -> RecordDescription | None:
    """The record description in an XMP packet; None if it has none (or is not XML)."""
    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        return None
    found: dict[str, str] = {}
    for description in root.iter(f"{{{_RDF}}}Description"):
        for name, attr in _FIELDS.items():
            # A property is an element, or an attribute in XMP's abbreviated form.
            element = description.find(f"{{{NAMESPACE}}}{name}")
            value = element.text if element is not None else None
            value = value or description.get(f"{{{NAMESPACE}}}{name}")
            if value and attr not in found:
                found[attr] = value.strip()
    return RecordDescription(**found) if found else None


def describe_pdf(pdf: bytes) -> RecordDescription | None:
    """The description in the XMP of the PDF's current catalogue; None if it has none."""
    from pyhanko.pdf_utils import generic

    from daemon.errors import NotAPdf
    from daemon.pdf.pades import parse_errors, read_pdf

    errors: tuple[type[Exception], ...] = (
        *parse_errors(),
        NotAPdf,
        ValueError,
        KeyError,
        TypeError,
    )
    try:
        metadata = read_pdf(pdf).root.get("/Metadata")
        if metadata is None:
            return None
        stream = metadata.get_object()
        if not isinstance(stream, generic.StreamObject):
            return None
        return parse_xmp(stream.data)
    except errors:
        return None
