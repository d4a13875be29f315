"""ReportLab: two pages, DejaVu Sans embedded as a subset, a link on the first page.

Usage: `python make_reportlab.py OUT.pdf`
"""

from __future__ import annotations

import sys

from record_text import FONT, pages
from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

pdfmetrics.registerFont(TTFont("DejaVuSans", str(FONT)))
pdf = canvas.Canvas(sys.argv[1], pagesize=A4, invariant=True)
pdf.setTitle("Học bạ số — Nguyễn Thị Hồng Nhung")
for n, lines in enumerate(pages()):
    pdf.setFont("DejaVuSans", 11)
    y = 780
    for line in lines:
        pdf.drawString(60, y, line)
        y -= 18
    if n == 0:
        pdf.drawString(60, y - 18, "Tra cứu: moet.gov.vn")
        pdf.linkURL("https://moet.gov.vn", (60, y - 22, 240, y - 6), relative=0)
    pdf.showPage()
pdf.save()
