"""A DER walk: elements by offset, without building an ASN.1 tree.

asn1crypto decodes a structure into Python objects and, for anything it writes,
encodes it again; where only a few fields of a known shape are read or written (a
CMS's signer, a TSA's answer, the certificates a signature carries), walking the
bytes costs a small fraction of that. Only the forms DER allows are read:
single-byte tags and definite lengths of at most four bytes; anything else is a
ValueError, and the caller falls back to asn1crypto.
"""

from __future__ import annotations

from typing import NamedTuple

SEQUENCE, SET, OCTET_STRING, INTEGER, BOOLEAN, OID, NULL = 0x30, 0x31, 0x04, 0x02, 0x01, 0x06, 0x05
GENERALIZED_TIME = 0x18
EXPLICIT_0, IMPLICIT_1 = 0xA0, 0xA1


class Element(NamedTuple):
    """A DER element: its tag, where its header starts, where its content starts and ends.

    A tuple, not a dataclass: a walk makes dozens, and a tuple is made in a third the time.
    """

    tag: int
    start: int
    content: int
    end: int


def element(der: bytes, at: int = 0, limit: int | None = None) -> Element:
    """The element at `at`, which must end by `limit` (default: the end of `der`)."""
    if limit is None:
        limit = len(der)
    if at + 2 > limit:
        raise ValueError(f"No DER element at byte {at}.")
    tag, first = der[at], der[at + 1]
    if tag & 0x1F == 0x1F or first == 0x80 or first > 0x84:
        raise ValueError(f"The DER element at byte {at} has a form this walk does not read.")
    if first < 0x80:
        content, length = at + 2, first
    else:
        content = at + 2 + (first & 0x7F)
        length = int.from_bytes(der[at + 2 : content], "big")
    if content + length > limit:
        raise ValueError(f"The DER element at byte {at} overruns its container.")
    return Element(tag, at, content, content + length)


def children(der: bytes, parent: Element) -> list[Element]:
    """The elements inside `parent`, in order."""
    found, at = [], parent.content
    while at < parent.end:
        child = element(der, at, parent.end)
        found.append(child)
        at = child.end
    return found


def tagged(der: bytes, parent: Element, *tags: int) -> list[Element]:
    """`parent`'s children, which must carry `tags` in that order."""
    found = children(der, parent)
    if [c.tag for c in found] != list(tags):
        raise ValueError(f"The DER element at byte {parent.start} has other children.")
    return found


def header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((tag, length))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


def tlv(tag: int, content: bytes) -> bytes:
    return header(tag, len(content)) + content


def integer(value: int) -> bytes:
    """A non-negative INTEGER's DER."""
    if value < 0:
        raise ValueError("Only non-negative integers are written here.")
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def value(der: bytes, of: Element) -> bytes:
    return der[of.content : of.end]


def whole(der: bytes, of: Element) -> bytes:
    return der[of.start : of.end]


def unsigned(der: bytes, of: Element) -> int:
    """An INTEGER's value (which must be non-negative)."""
    if of.tag != INTEGER or of.end == of.content or der[of.content] & 0x80:
        raise ValueError(f"The DER element at byte {of.start} is not a non-negative INTEGER.")
    return int.from_bytes(der[of.content : of.end], "big")
