"""A stream's data decoded as the readers need it: Flate, with or without a PNG Up predictor.

Anything else raises `Unsupported` (the caller then leaves the file to pyHanko), and
inflating is bounded, so a small stream cannot unpack into gigabytes.
"""

from __future__ import annotations

import zlib

from daemon.pdf.syntax import PdfDict, Unsupported, as_int


def decode(data: bytes, stream: PdfDict, limit: int, what: str) -> bytes:
    """A stream's data: Flate with or without a PNG predictor, or no filter."""
    filters, params = stream.get("Filter"), stream.get("DecodeParms")
    if isinstance(filters, list) and len(filters) == 1:
        filters = filters[0]
        params = params[0] if isinstance(params, list) and len(params) == 1 else params
    if filters is None:
        decoded = data
    elif filters == "FlateDecode":
        decoded = _inflate(data, limit, what)
    else:
        raise Unsupported(f"{what}'s filter {filters!r} is not Flate.")
    return _unpredict(decoded, params if isinstance(params, dict) else {}, what)


def _inflate(data: bytes, limit: int, what: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        decoded = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise Unsupported(f"{what} does not inflate: {exc}") from exc
    if inflater.unconsumed_tail:
        raise Unsupported(f"{what} inflates to more than {limit} bytes.")
    if not inflater.eof:  # pyHanko refuses truncated data (zlib.error), as zlib.decompress does
        raise Unsupported(f"{what}'s Flate data is truncated.")
    return decoded


def _unpredict(data: bytes, params: PdfDict, what: str) -> bytes:
    predictor = params.get("Predictor", 1)
    if predictor == 1:
        return data
    layout = (params.get("Colors", 1), params.get("BitsPerComponent", 8))
    if not isinstance(predictor, int) or not 10 <= predictor <= 15 or layout != (1, 8):
        raise Unsupported(f"{what}'s predictor {predictor!r} is not PNG on bytes.")
    columns = as_int(params.get("Columns", 1), "/Columns")
    stride = columns + 1
    if columns < 1 or len(data) % stride:
        raise Unsupported(f"{what}'s rows do not fit its /Columns.")
    out, above = bytearray(), bytes(columns)
    for at in range(0, len(data), stride):
        above = _png_unfilter(data[at], data[at + 1 : at + stride], above)
        out += above
    return bytes(out)


def _png_unfilter(kind: int, row: bytes, above: bytes) -> bytes:
    """One row restored from PNG filter Up, the one xref stream writers use.

    pyHanko 0.38 decodes Up alone as the PNG specification does (it reads None rows
    as zeros and Sub wrongly); any other filter goes to pyHanko, so that both paths
    read a file the same way.
    """
    if kind != 2:
        raise Unsupported(f"A stream uses PNG filter type {kind}, not Up.")
    return bytes((x + up) & 0xFF for x, up in zip(row, above, strict=True))
