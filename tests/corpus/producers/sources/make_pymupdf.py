"""PyMuPDF (MuPDF): a record drawn from scratch, or an incremental update to a file.

Usage: `python make_pymupdf.py new OUT.pdf`, or `python make_pymupdf.py stamp IN_OUT.pdf`
to write "Da kiem tra" on page 1 of IN_OUT.pdf and save it incrementally (saveIncr).
"""

from __future__ import annotations

import sys

import pymupdf
from record_text import FONT, pages


def new(path: str) -> None:
    doc = pymupdf.open()
    for lines in pages():
        page = doc.new_page(width=595, height=842)
        page.insert_font(fontname="dejavu", fontfile=str(FONT))
        page.insert_text((60, 60), "\n".join(lines), fontname="dejavu", fontsize=11)
    doc.subset_fonts()
    doc.set_metadata({"title": "Học bạ số — Nguyễn Thị Hồng Nhung"})
    doc.save(path, garbage=3, deflate=True, no_new_id=True)


def stamp(path: str) -> None:
    """What a school's review tool does: stamp the page and save in place.

    Helvetica, without diacritics, keeps the update small: a new font would be embedded whole.
    """
    doc = pymupdf.open(path)
    doc[0].insert_text((400, 40), "Da kiem tra", fontname="helv", fontsize=10)
    doc.saveIncr()


{"new": new, "stamp": stamp}[sys.argv[1]](sys.argv[2])
