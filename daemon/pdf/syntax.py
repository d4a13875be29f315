"""PDF objects to and from bytes: the tokenizer, the parser and the serializer.

daemon/pdf/reader.py finds objects in a file and daemon/pdf/incremental.py writes updates;
both speak PDF objects through this module. Names are str (no slash, #xx decoded),
strings bytes, arrays lists, dictionaries dicts, references `Ref`. Only the standard
library is used, so a worker using it stays small.
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

MAX_DEPTH = 32  # nesting of arrays and dictionaries; ours never pass 4

_WS = b"\x00\t\n\x0c\r "
WHITESPACE = rb"[\x00\t\n\x0c\r ]"  # one whitespace byte
TOKEN_END = rb"(?![^\x00\t\n\x0c\r ()<>\[\]{}/%])"  # a delimiter, whitespace or the end
_SKIP = re.compile(WHITESPACE + rb"*(?:%[^\r\n]*" + WHITESPACE + rb"*)*")
# One match per token. Whitespace in a VERBOSE pattern is ignored outside classes.
_TOKEN = re.compile(
    rb"""
    (?> [\x00\t\n\x0c\r\ ]* (?: %[^\r\n]* [\x00\t\n\x0c\r\ ]* )* )  # whitespace, comments:
    # atomic, so that a token that does not match is not looked for inside a comment
    (?: / ([^\x00\t\n\x0c\r\ ()<>\[\]{}/%]*)                      # 1: a name
      | ( (\d+) [\x00\t\n\x0c\r\ ]+ (\d+) [\x00\t\n\x0c\r\ ]+ R    # 2: a reference (3, 4)
          (?![^\x00\t\n\x0c\r\ ()<>\[\]{}/%]) )
      | ([+-]?\d+) (?![^\x00\t\n\x0c\r\ ()<>\[\]{}/%])           # 5: an integer
      | (<<|\[) | (>>|\])                                         # 6: opens, 7: closes
      | ([^\x00\t\n\x0c\r\ ()<>\[\]{}/%]+)                        # 8: a real or a keyword
      | (<)                                                       # 9: a hex string
      | (\()                                                      # 10: a literal string
    )
    """,
    re.VERBOSE,
)
_NAME, _REF, _NUM, _GEN, _INT, _OPEN, _CLOSE, _WORD, _HEX, _LITERAL = range(1, 11)
_CLOSING = {b"<<": b">>", b"[": b"]"}
_REAL = re.compile(rb"[+-]?(?:\d+\.\d*|\.\d+)")
_HEX_BODY = re.compile(rb"[0-9A-Fa-f\x00\t\n\x0c\r ]*>")  # a hex string's digits and its end
_HEX_FAST_BYTES = 1 << 20  # a signature's /Contents is tens of kilobytes
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_LITERAL_PART = re.compile(rb"[^()\\\r]+|\\([0-7]{1,3}|\r\n|[\s\S])|\r\n?|[()]")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_ESCAPES.update({b"\r\n": b"", b"\r": b"", b"\n": b""})  # a line continuation
_KEYWORDS = {b"true": True, b"false": False, b"null": None}
_NAME_SPECIAL = re.compile(rb"[^\x21-\x7e]|[()<>\[\]{}/%#]")


class Unsupported(Exception):
    """Raised when a document is not one this reader handles; sign it with pyHanko."""


class Ref(NamedTuple):
    """An indirect reference, `num gen R`."""

    num: int
    gen: int


# Names are str (no slash, #xx decoded), strings bytes, arrays lists, booleans bool.
PdfObject: TypeAlias = (
    bool | int | float | bytes | str | Ref | list["PdfObject"] | dict[str, "PdfObject"] | None
)
PdfDict: TypeAlias = dict[str, PdfObject]


# Reading


def read_object(data: bytes, pos: int = 0) -> tuple[PdfObject, int]:
    """The PDF object at `pos` (after any whitespace and comments), and where it ends.

    One regular expression match per token and containers on a stack, with names and
    references (most of what a signature reads) handled inline: the few dictionaries
    a signature needs cost tens of microseconds.
    """
    stack: list[tuple[bytes, list[PdfObject]]] = []  # open containers: opener, items
    while True:
        token = _TOKEN.match(data, pos)
        if token is None:
            raise Unsupported(f"No PDF object at byte {pos}.")
        pos, kind = token.end(), token.lastindex
        value: PdfObject
        if kind == _NAME:
            raw = token[_NAME]
            value = (_unescape_name(raw) if b"#" in raw else raw).decode("latin-1")
        elif kind == _REF:
            value = Ref(int(token[_NUM]), int(token[_GEN]))
        elif kind == _INT:
            value = int(token[_INT])
        elif kind == _OPEN:
            if len(stack) >= MAX_DEPTH:
                raise Unsupported(f"Objects nest deeper than {MAX_DEPTH} at byte {pos}.")
            stack.append((token[_OPEN], []))
            continue
        elif kind == _CLOSE:
            value = _close(stack, token[_CLOSE], pos)
        else:
            value, pos = _scalar(data, token)
        if not stack:
            return value, pos
        stack[-1][1].append(value)


def _hex(data: bytes, pos: int) -> tuple[bytes, int]:
    """The hex string whose digits start at `pos`, and where it ends.

    A signature's /Contents is tens of kilobytes of digits with no whitespace:
    unhexlify alone reads and checks those, in a quarter of a regular expression's
    time. Anything else (whitespace, an odd count, a stray byte, no `>` nearby) is
    read by the expression, which stops at the first byte that is neither.
    """
    end = data.find(b">", pos, pos + _HEX_FAST_BYTES)
    if end >= 0 and not (end - pos) % 2:
        with contextlib.suppress(binascii.Error):
            return binascii.unhexlify(memoryview(data)[pos:end]), end + 1
    found = _HEX_BODY.match(data, pos)
    if found is None:
        raise Unsupported(f"The hex string at byte {pos - 1} holds a byte that is no hex digit.")
    digits = data[pos : found.end() - 1].translate(None, _WS)
    return binascii.unhexlify(digits + b"0" if len(digits) % 2 else digits), found.end()


def _close(stack: list[tuple[bytes, list[PdfObject]]], closer: bytes, at: int) -> PdfObject:
    if not stack or _CLOSING[stack[-1][0]] != closer:
        raise Unsupported(f"Unbalanced brackets before byte {at}.")
    opener, items = stack.pop()
    if opener == b"[":
        return items
    if len(items) % 2:
        raise Unsupported(f"The dictionary ending at byte {at} has a key without a value.")
    entries: PdfDict = {}
    for at_key in range(0, len(items), 2):  # a plain loop: the quickest way here
        key = items[at_key]
        if not isinstance(key, str):
            raise Unsupported(f"The dictionary ending at byte {at} has a key {key!r}.")
        if key in entries:  # pyHanko keeps the first value, other readers the last
            raise Unsupported(f"The dictionary ending at byte {at} repeats /{key}.")
        entries[key] = items[at_key + 1]
    return entries


def _scalar(data: bytes, token: re.Match[bytes]) -> tuple[PdfObject, int]:
    """A number, keyword or string token's value, and where it ends."""
    kind, pos = token.lastindex, token.end()
    if kind == _LITERAL:
        return _literal(data, pos)
    if kind == _HEX:
        return _hex(data, pos)
    word = token[_WORD]
    if word in _KEYWORDS:
        return _KEYWORDS[word], pos
    if _REAL.fullmatch(word):
        return float(word), pos
    raise Unsupported(f"Unexpected keyword {word!r} at byte {token.start(_WORD)}.")


def _unescape_name(raw: bytes) -> bytes:
    return _NAME_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw)


def _literal(data: bytes, pos: int) -> tuple[bytes, int]:
    """The literal string whose opening parenthesis ends at `pos`, and where it ends."""
    start, depth, out = pos - 1, 1, bytearray()
    while True:
        part = _LITERAL_PART.match(data, pos)
        if part is None:
            raise Unsupported(f"The string at byte {start} is not terminated.")
        pos, piece = part.end(), part.group()
        depth += piece == b"("
        depth -= piece == b")"
        if not depth:
            return bytes(out), pos
        out += _unescape(piece)


def _unescape(piece: bytes) -> bytes:
    """A literal string's piece as the bytes it stands for (ISO 32000-1, 7.3.4.2)."""
    if piece[:1] == b"\r":
        return b"\n"  # an unescaped end of line reads as a line feed
    if piece[:1] != b"\\":
        return piece
    code = piece[1:]
    if b"0" <= code[:1] <= b"7":
        return bytes([int(code, 8) & 0xFF])
    return _ESCAPES.get(code, code)


def skip(data: bytes, pos: int) -> int:
    """Where the next token starts: after whitespace and comments."""
    match = _SKIP.match(data, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


# Checking what was read


def as_dict(value: PdfObject, what: str) -> PdfDict:
    if not isinstance(value, dict):
        raise Unsupported(f"{what} is not a dictionary.")
    return value


def as_int(value: PdfObject, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Unsupported(f"{what} is not a non-negative integer: {value!r}.")
    return value


def as_ref(value: PdfObject, what: str) -> Ref:
    if not isinstance(value, Ref):
        raise Unsupported(f"{what} is not an indirect reference.")
    return value


# Writing


def serialize(value: PdfObject) -> bytes:
    """A PDF object's bytes: dictionaries an entry a line, as pyHanko writes them.

    Strings are written in hex, which needs no escaping. Dispatch is on the exact
    type, the values being what `read_object` makes: a signature serializes a
    hundred of them, and isinstance chains cost more than the writing.
    """
    write = _WRITERS.get(type(value))
    if write is None:
        raise TypeError(f"{value!r} is not a PDF object.")
    return write(value)


@functools.lru_cache(maxsize=1024)  # names repeat: /Type, /Annot, /Rect...
def _name(value: str) -> bytes:
    return b"/" + _NAME_SPECIAL.sub(lambda m: b"#%02X" % m[0][0], value.encode("latin-1"))


def _real(value: float) -> bytes:
    text = repr(value)
    if "e" in text or "n" in text:  # exponents, inf and nan are not PDF numbers
        raise Unsupported(f"The number {text} cannot be written in PDF.")
    return text.encode("ascii")


def _array(value: list[PdfObject]) -> bytes:
    return b"[ " + b" ".join([serialize(item) for item in value]) + b" ]"


def _dictionary(value: PdfDict) -> bytes:
    entries = [_name(key) + b" " + serialize(item) for key, item in value.items()]
    return b"<<\n" + b"\n".join(entries) + b"\n>>"


_WRITERS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda _: b"null",
    bool: lambda value: b"true" if value else b"false",
    str: _name,
    Ref: lambda value: b"%d %d R" % value,
    int: lambda value: b"%d" % value,
    float: _real,
    bytes: lambda value: b"<" + binascii.hexlify(value) + b">",
    list: _array,
    dict: _dictionary,
}
