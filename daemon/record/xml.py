"""The record's XML: the canonical bytes the PDF embeds and the consent's `dig` names.

The mapping from `record_data` is mechanical, so any school system can build the same
bytes: the root `hocba_record` (namespace NAMESPACE, attribute version="1") holds
`record_id`, then every field of record_data in the order of the model (and of
schemas/hocba-record.xsd), each an element of the same name; a nested object is an
element holding its fields; a list is an element holding one `result` (or
`commendation`) per item; an absent value, an empty string and an empty list are
omitted. The canonical form is the Canonical XML 2.0 of that document with no
whitespace between elements, in UTF-8, without an XML declaration.

Reading is for untrusted bytes (an attachment inside a v1 PDF): no DTD, no entities,
no network, checked against the XSD, then against the model's own rules.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from lxml import etree
from pydantic import BaseModel, ValidationError

from daemon.errors import InvalidMessage
from daemon.record.model import RecordData

NAMESPACE = "urn:vn:hocba:record:1"
FILENAME = "hocba-record.xml"
MAX_XML_BYTES = 256 * 1024
_LISTS = {"subjects": "result", "commendations": "commendation"}


def canonical_xml(record_id: str, data: RecordData) -> bytes:
    """The record's XML in canonical form: the exact bytes whose sha256 the consent names."""
    root = ET.Element("hocba_record", {"xmlns": NAMESPACE, "version": "1"})
    _text(root, "record_id", record_id)
    _fields(root, data)
    return ET.canonicalize(ET.tostring(root, encoding="unicode")).encode()


def record_sha256(record_id: str, data: RecordData) -> str:
    """The digest a v2 consent's `dig` names for record_data: that of its canonical XML."""
    return hashlib.sha256(canonical_xml(record_id, data)).hexdigest()


def _fields(parent: ET.Element, model: BaseModel) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, BaseModel):
            _fields(ET.SubElement(parent, name), value)
        elif isinstance(value, list):
            holder = ET.SubElement(parent, name)
            for item in value:
                if isinstance(item, BaseModel):
                    _fields(ET.SubElement(holder, _LISTS[name]), item)
                else:
                    _text(holder, _LISTS[name], item)
        else:
            _text(parent, name, value)


def _text(parent: ET.Element, name: str, value: object) -> None:
    element = ET.SubElement(parent, name)
    element.text = value.isoformat() if isinstance(value, date) else str(value)


def read_xml(xml: bytes, where: str = "record XML") -> tuple[str, RecordData]:
    """(record_id, record_data) from untrusted record XML, or InvalidMessage saying why."""
    if len(xml) > MAX_XML_BYTES:
        raise InvalidMessage(f"The {where} is larger than {MAX_XML_BYTES} bytes.")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        tree = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidMessage(f"The {where} is not well-formed XML: {exc.msg}.") from exc
    if tree.getroottree().docinfo.doctype:
        raise InvalidMessage(f"The {where} has a DOCTYPE; record XML has none.")
    schema = _schema()
    if not schema.validate(tree):
        error = schema.error_log.last_error
        raise InvalidMessage(
            f"The {where} breaks hocba-record.xsd: line {error.line}: {error.message}"
        )
    raw = _to_dict(tree)
    record_id = raw.pop("record_id")
    try:
        return record_id, RecordData.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        at = ".".join(
            str(p) for p in (*first["loc"], (first.get("ctx") or {}).get("at", "")) if p != ""
        )
        raise InvalidMessage(f"The {where} is not a valid record: {at}: {first['msg']}.") from exc


def _to_dict(element: Any) -> Any:
    children = list(element)
    if not children:
        return element.text or ""
    name = etree.QName(element).localname
    if name in _LISTS:
        return [_to_dict(child) for child in children]
    return {etree.QName(child).localname: _to_dict(child) for child in children}


@cache
def _schema() -> etree.XMLSchema:
    source = resources.files("daemon.record").joinpath("hocba-record.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source))


def schema_bytes() -> bytes:
    """The record XSD as published in schemas/hocba-record.xsd."""
    return resources.files("daemon.record").joinpath("hocba-record.xsd").read_bytes()
