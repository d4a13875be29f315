"""The characters a record's text may use: Latin with every Vietnamese letter and tone mark.

Combining marks, punctuation and the đồng sign too. The record model refuses anything
else at intake, and the fonts the renderer and the signature stamps embed carry exactly
these (XML 1.0 could not carry the C0 control characters anyway).
"""

# Inclusive ranges of code points.
REPERTOIRE = (
    (0x20, 0x7E),
    (0xA0, 0x17F),
    (0x1A0, 0x1A1),
    (0x1AF, 0x1B0),
    (0x300, 0x304),
    (0x306, 0x306),
    (0x309, 0x309),
    (0x323, 0x323),
    (0x1EA0, 0x1EF9),
    (0x2010, 0x2026),
    (0x20AB, 0x20AB),
)
