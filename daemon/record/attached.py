"""The record XML a teacher's PDF may carry (hocba-record.xml), checked like v2 data.

A v1 PDF rendered by a school system with its data attached is held to the same rules
as a v2 request: the XML must follow hocba-record.xsd and the model, and describe the
record the request names. PDFs without it are left alone; the first look is a byte
search, since embedded-file streams (never inside object streams) carry
/Type /EmbeddedFile, so that a plain PDF costs no second parse.
"""

from __future__ import annotations

from typing import Any

from daemon.errors import InvalidMessage, NotAPdf
from daemon.messages import RecordInfo
from daemon.pdf.pades import parse_errors, read_pdf
from daemon.record.xml import FILENAME, MAX_XML_BYTES, read_xml


def check_attached_record(pdf: bytes, school_id: str, record: RecordInfo) -> bool:
    """Check the PDF's hocba-record.xml against the request; False when it has none."""
    if b"EmbeddedFile" not in pdf:
        return False
    xml = attached_record_xml(pdf)
    if xml is None:
        return False
    record_id, data = read_xml(xml, f"attached {FILENAME}")
    expected = {
        "record_id": (record_id, record.record_id),
        "student.student_id": (data.student.student_id, record.student_id),
        "academic_year": (data.academic_year, record.academic_year),
        "grade": (data.grade, record.grade),
        "class_name": (data.class_name, record.class_name),
        "school.school_id": (data.school.school_id, school_id),
    }
    for where, (found, wanted) in expected.items():
        if found != wanted:
            raise InvalidMessage(
                f"The attached {FILENAME} says {where} {found!r}; the request says {wanted!r}."
            )
    return True


def attached_record_xml(pdf: bytes) -> bytes | None:
    """The bytes of the PDF's embedded file named hocba-record.xml, if there is one."""
    reader = read_pdf(pdf)
    try:
        names = reader.root.get("/Names")
        tree = names.get("/EmbeddedFiles") if names is not None else None
        spec = _find(tree, depth=0) if tree is not None else None
        if spec is None:
            return None
        stream = spec["/EF"]["/F"]
        if int(stream.get("/Length", 0)) > MAX_XML_BYTES:
            raise InvalidMessage(f"The attached {FILENAME} is larger than {MAX_XML_BYTES} bytes.")
        return bytes(stream.data)
    except parse_errors() as exc:
        raise NotAPdf(f"The document's attachments cannot be read: {exc}") from exc


def _find(node: Any, depth: int) -> Any:
    """The file specification named FILENAME in a name tree (kids followed 8 deep)."""
    if depth > 8:
        raise NotAPdf("The document's attachment tree is nested too deep.")
    pairs = node.get("/Names")
    if pairs is not None:
        for i in range(0, len(pairs) - 1, 2):
            spec = pairs[i + 1]
            if FILENAME in (str(spec.get("/UF", "")), str(spec.get("/F", ""))):
                return spec
    for kid in node.get("/Kids", ()):
        found = _find(kid, depth + 1)
        if found is not None:
            return found
    return None
