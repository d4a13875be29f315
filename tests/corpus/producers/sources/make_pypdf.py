"""pypdf: an incremental update that sets the document's title and keywords.

Usage: `python make_pypdf.py IN.pdf OUT.pdf`
"""

from __future__ import annotations

import sys

from pypdf import PdfWriter

writer = PdfWriter(sys.argv[1], incremental=True)
writer.add_metadata({"/Title": "Học bạ số — 3A — 2024\u20132025", "/Keywords": "hocba"})
writer.write(sys.argv[2])
