"""The end of an incremental update: the next trailer and the new objects' xref section.

Written as pyHanko writes them (a table, or an xref stream with /W [1 8 2] listing
itself), so an update made here is byte for byte the one pyHanko would append.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from daemon.pdf.reader import NOT_TRAILER_KEYS, Unsupported
from daemon.pdf.syntax import PdfDict, PdfObject, serialize

_FREE_HEAD = (0, 65535)  # object 0: head of the free list, written in every section
_STREAM_WIDTHS = (1, 8, 2)  # what pyHanko writes


def next_trailer(previous: PdfDict, startxref: int, digest: bytes) -> PdfDict:
    """The previous trailer's entries, a new second /ID half and /Prev; /Size comes later."""
    trailer = {key: value for key, value in previous.items() if key not in NOT_TRAILER_KEYS}
    old_id = previous.get("ID")
    if old_id is None:
        first = digest[:16]  # pyHanko makes one up too
    elif isinstance(old_id, list) and len(old_id) == 2 and isinstance(old_id[0], bytes):
        first = old_id[0]
    else:
        raise Unsupported("The trailer's /ID is not a pair of strings.")
    trailer["ID"] = [first, digest[16:]]
    trailer["Prev"] = startxref
    return trailer


def xref_section(
    as_stream: bool, offsets: dict[int, tuple[int, int]], at: int, trailer: PdfDict
) -> bytes:
    """The new objects' xref section at byte `at`, its trailer, startxref and %%EOF."""
    if as_stream:
        return _xref_stream(offsets, at, trailer)
    lines = [b"xref\n"]
    for first, chunk in _chunks({0: _FREE_HEAD, **offsets}):
        lines.append(b"%d %d\n" % (first, len(chunk)))
        lines.extend(
            b"%010d %05d %s \n" % (offset, gen, b"n" if num else b"f")
            for num, (offset, gen) in chunk
        )
    trailer = {**trailer, "Size": max(offsets) + 1}
    lines += [b"trailer\n", serialize(trailer), b"\nstartxref\n%d\n%%%%EOF\n" % at]
    return b"".join(lines)


def _xref_stream(offsets: dict[int, tuple[int, int]], at: int, trailer: PdfDict) -> bytes:
    """An xref stream as pyHanko writes one: /W [1 8 2], Flate, listing itself too."""
    num = max(offsets) + 1
    index: list[PdfObject] = []
    rows = []
    for first, chunk in _chunks({0: _FREE_HEAD, **offsets, num: (at, 0)}):
        index += [first, len(chunk)]
        rows += [struct.pack(">BQH", 1 if n else 0, offset, gen) for n, (offset, gen) in chunk]
    data = zlib.compress(b"".join(rows))
    stream: PdfDict = {
        "W": list(_STREAM_WIDTHS),
        "Type": "XRef",
        "Filter": "FlateDecode",
        **trailer,
        "Size": num + 1,
        "Index": index,
        "Length": len(data),
    }
    return b"%d 0 obj\n%s\nstream\n%s\nendstream\nendobj\n\nstartxref\n%d\n%%%%EOF\n" % (
        num,
        serialize(stream),
        data,
        at,
    )


def _chunks(
    entries: dict[int, tuple[int, int]],
) -> Iterator[tuple[int, list[tuple[int, tuple[int, int]]]]]:
    """Runs of consecutive object numbers, as xref subsections list them."""
    chunk: list[tuple[int, tuple[int, int]]] = []
    for num in sorted(entries):
        if chunk and num != chunk[-1][0] + 1:
            yield chunk[0][0], chunk
            chunk = []
        chunk.append((num, entries[num]))
    yield chunk[0][0], chunk
