"""The record XML a teacher's PDF may carry (hocba-record.xml), checked like v2 data.

A v1 PDF rendered by a school system with its data attached is held to the same rules
as a v2 request: the XML must follow hocba-record.xsd and the model, and describe the
record the request names. PDFs without it are left alone; the first look is a byte
search, since embedded-file streams (never inside object streams) carry
/Type /EmbeddedFile, so that a plain PDF costs no second parse.

Intake (daemon/documents.py) finds the XML with daemon/pdf/intake.py for the usual
file and with `attached_record_xml` (pyHanko) for the others, then checks it with
`check_record_xml`.
"""

from __future__ import annotations

from typing import Any

from daemon.errors import InvalidMessage, NotAPdf
from daemon.messages import RecordInfo
from daemon.pdf.intake import MAX_TREE_DEPTH
from daemon.pdf.pades import parse_errors, read_pdf
from daemon.record.xml import FILENAME, MAX_XML_BYTES, read_xml


def check_attached_record(pdf: bytes, school_id: str, record: RecordInfo) -> bool:
    """Check the PDF's hocba-record.xml against the request; False when it has none."""
    if b"EmbeddedFile" not in pdf:
        return False
    xml = attached_record_xml(pdf)
    if xml is None:
        return False
    check_record_xml(xml, school_id, record)
    return True


def check_record_xml(xml: bytes, school_id: str, record: RecordInfo) -> None:
    """The attached XML must be valid record data describing the request's record."""
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


def attached_record_xml(pdf: bytes) -> bytes | None:
    """The bytes of the PDF's embedded file named hocba-record.xml, if there is one."""
    reader = read_pdf(pdf)
    try:
        names = _get(reader.root, "/Names")
        tree = _get(names, "/EmbeddedFiles") if names is not None else None
        spec = _find(tree, depth=0) if tree is not None else None
        if spec is None:
            return None
        stream = spec["/EF"]["/F"]
        if int(_get(stream, "/Length", 0)) > MAX_XML_BYTES:
            raise InvalidMessage(f"The attached {FILENAME} is larger than {MAX_XML_BYTES} bytes.")
        return bytes(stream.data)
    except parse_errors() as exc:
        raise NotAPdf(f"The document's attachments cannot be read: {exc}") from exc


def _get(node: Any, key: str, default: Any = None) -> Any:
    """node[key], references resolved; `default` when it is missing or null.

    Not `.get`: pyHanko's dictionaries resolve references in `[]` only, and most
    writers make /Names, the tree's nodes and /Length indirect objects.
    """
    try:
        return node[key]
    except KeyError:
        return default


def _find(node: Any, depth: int) -> Any:
    """The file specification named FILENAME in a name tree (kids followed 8 deep)."""
    if depth > MAX_TREE_DEPTH:
        raise NotAPdf("The document's attachment tree is nested too deep.")
    pairs = _get(node, "/Names")
    if pairs is not None:
        for i in range(0, len(pairs) - 1, 2):
            spec = pairs[i + 1]  # pyHanko's arrays resolve references in [] too
            if FILENAME in (str(_get(spec, "/UF", "")), str(_get(spec, "/F", ""))):
                return spec
    kids = _get(node, "/Kids", ())
    for i in range(len(kids)):
        found = _find(kids[i], depth + 1)
        if found is not None:
            return found
    return None
