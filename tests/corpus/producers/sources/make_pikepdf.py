"""pikepdf (qpdf's library): a file written again, with object streams and/or linearized.

Usage: `python make_pikepdf.py IN.pdf OUT.pdf [--linearize]`
"""

from __future__ import annotations

import sys

import pikepdf

with pikepdf.open(sys.argv[1]) as pdf:
    pdf.save(
        sys.argv[2],
        object_stream_mode=pikepdf.ObjectStreamMode.generate,
        linearize="--linearize" in sys.argv[3:],
        deterministic_id=True,
    )
