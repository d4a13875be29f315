"""Page content for the record: text measured once per word, broken greedily into lines.

Positions are in points from the top-left corner of the page, as the template reads
them; `Canvas` turns them into PDF content (origin bottom-left). The layout model is
the one fpdf2 used for the record before (cell baseline at half the line height plus
0.3 em, 2.835 pt cell margins, table padding, rows as tall as their tallest cell with
text centred vertically), so the page looks the same, but each word is measured once
from the face's width table instead of the whole line again per character.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from daemon.record.fonts import Face

CELL_MARGIN_PT = 2.835  # fpdf2's default in points: 1 cm / 10
LINE_WIDTH_PT = 0.57

Run = tuple[Face, float, str]  # face, size in points, text


@dataclass(frozen=True)
class Line:
    runs: tuple[Run, ...]
    width_pt: float
    spaces: int


@dataclass
class _Word:
    pieces: list[Run]
    width_pt: float
    space: Run | None  # the space before it, in the face it was typed in
    space_pt: float


def _words(runs: Sequence[Run]) -> list[_Word]:
    words: list[_Word] = []
    for face, size, text in runs:
        for i, part in enumerate(text.split(" ")):
            width = face.width_pt(part, size)
            if i == 0 and words:  # no space before: the previous run's word goes on
                last = words[-1]
                if part:
                    last.pieces.append((face, size, part))
                    last.width_pt += width
                continue
            space = None if i == 0 else (face, size, " ")
            space_pt = face.width_pt(" ", size) if space else 0.0
            words.append(_Word([(face, size, part)] if part else [], width, space, space_pt))
    return words


def wrap(runs: Sequence[Run], max_pt: float) -> list[Line]:
    """Greedy line breaking at spaces (the breaking space is dropped); a word wider
    than the line is broken between characters."""
    whole = _whole(runs, max_pt)
    if whole is not None:
        return [whole]
    lines: list[Line] = []
    pieces: list[Run] = []
    width = 0.0
    spaces = 0
    for word in _words(runs):
        if pieces or width:
            if width + word.space_pt + word.width_pt <= max_pt:
                if word.space:
                    pieces.append(word.space)
                    spaces += 1
                pieces.extend(word.pieces)
                width += word.space_pt + word.width_pt
                continue
            lines.append(_line(pieces, width, spaces))
            pieces, width, spaces = [], 0.0, 0
        if word.width_pt <= max_pt:
            pieces, width = list(word.pieces), word.width_pt
            continue
        for chunk, chunk_pt in _split_word(word.pieces, max_pt):
            if pieces:
                lines.append(_line(pieces, width, 0))
            pieces, width = chunk, chunk_pt
    if pieces or not lines:
        lines.append(_line(pieces, width, spaces))
    return lines


def _whole(runs: Sequence[Run], max_pt: float) -> Line | None:
    """The text as one line when it fits, as most cells' does: measured once."""
    if not runs or runs[0][2].startswith(" "):
        return None
    width = sum(f.width_pt(text, size) for f, size, text in runs)
    if width > max_pt:
        return None
    return _line(list(runs), width, sum(text.count(" ") for _, _, text in runs))


def _split_word(pieces: list[Run], max_pt: float) -> list[tuple[list[Run], float]]:
    chunks: list[tuple[list[Run], float]] = []
    current: list[Run] = []
    width = 0.0
    for face, size, text in pieces:
        for char in text:
            char_pt = face.width_pt(char, size)
            if current and width + char_pt > max_pt:
                chunks.append((current, width))
                current, width = [], 0.0
            current.append((face, size, char))
            width += char_pt
    if current:
        chunks.append((current, width))
    return chunks


def _line(pieces: list[Run], width: float, spaces: int) -> Line:
    merged: list[Run] = []
    for face, size, text in pieces:
        if merged and merged[-1][0] is face and merged[-1][1] == size:
            merged[-1] = (face, size, merged[-1][2] + text)
        else:
            merged.append((face, size, text))
    return Line(tuple(merged), width, spaces)


class Canvas:
    """Pages of PDF content, drawn top-down, with fpdf2's automatic page break."""

    def __init__(self, width_pt: float, height_pt: float, margin_pt: float) -> None:
        self.width_pt, self.height_pt, self.margin_pt = width_pt, height_pt, margin_pt
        self.epw_pt = width_pt - 2 * margin_pt
        self.pages: list[list[str]] = []
        self.y = margin_pt
        self.add_page()

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def break_at_pt(self) -> float:
        return self.height_pt - self.margin_pt

    def add_page(self) -> None:
        self.pages.append(["2 J", f"{LINE_WIDTH_PT:.2f} w"])
        self.y = self.margin_pt

    def content(self, page: int) -> bytes:
        return "\n".join(self.pages[page]).encode("ascii")

    def text_line(
        self, x: float, top: float, h: float, line: Line, justify_pt: float | None = None
    ) -> None:
        """The line with its baseline where fpdf2 puts a cell's of height `h` at `top`."""
        if not line.runs:
            return
        size = max(r[1] for r in line.runs)
        base = self.height_pt - (top + 0.5 * h + 0.3 * size)
        parts = [f"BT {x:.2f} {base:.2f} Td"]
        extra = 0.0
        if justify_pt is not None and line.spaces:
            extra = (justify_pt - line.width_pt) / line.spaces
        for face, run_size, text in line.runs:
            parts.append(f"{face.resource} {run_size:.2f} Tf")
            if extra and " " in text:
                # each word after the first is "<space><word>", preceded by the stretch
                adjust = f"{-extra * 1000 / run_size:.3f}"
                parts.append(f"[{_join_justified(face, text.split(' '), adjust)}] TJ")
            else:
                parts.append(f"<{face.encode(text)}> Tj")
        parts.append("ET")
        self.pages[-1].append(" ".join(parts))

    def cell(self, x: float, w: float, h: float, line: Line, align: str = "L") -> None:
        """fpdf2's cell(): one line in a box `w` wide at the current y."""
        self.text_line(_aligned_x(x, w, line.width_pt, align, CELL_MARGIN_PT), self.y, h, line)

    def paragraph(self, x: float, w: float, h: float, runs: Sequence[Run], align: str) -> None:
        """fpdf2's multi_cell(): lines `h` apart from the current y, breaking pages."""
        inner = w - 2 * CELL_MARGIN_PT
        lines = wrap(runs, inner)
        for i, line in enumerate(lines):
            if self.y + h > self.break_at_pt:
                self.add_page()
            if align == "J" and i < len(lines) - 1:
                self.text_line(x + CELL_MARGIN_PT, self.y, h, line, justify_pt=inner)
            else:
                left = "L" if align == "J" else align
                self.cell(x, w, h, line, left)
            self.y += h

    def rect(self, x: float, top: float, w: float, h: float, fill_grey: int | None = None) -> None:
        bottom = self.height_pt - top - h
        if fill_grey is None:
            self.pages[-1].append(f"{x:.2f} {bottom:.2f} {w:.2f} {h:.2f} re S")
        else:
            g = f"{fill_grey / 255:.4f}"
            self.pages[-1].append(f"q {g} {g} {g} rg {x:.2f} {bottom:.2f} {w:.2f} {h:.2f} re B Q")

    def stroke_grey(self, grey: int) -> None:
        g = f"{grey / 255:.4f}"
        self.pages[-1].append(f"{g} {g} {g} RG")


def _join_justified(face: Face, words: list[str], adjust: str) -> str:
    space = face.encode(" ")
    out = [f"<{face.encode(words[0])}>"]
    out.extend(f"{adjust} <{space}{face.encode(w)}>" for w in words[1:])
    return " ".join(out)


def _aligned_x(x: float, w: float, text_pt: float, align: str, margin_pt: float) -> float:
    if align == "C":
        return x + (w - text_pt) / 2
    if align == "R":
        return x + w - margin_pt - text_pt
    return x + margin_pt


@dataclass(frozen=True)
class Table:
    """A table as fpdf2 drew the record's: fractions of the page width per column."""

    col_fractions: tuple[float, ...]
    line_pt: float
    padding_pt: tuple[float, float]  # top and bottom, left and right
    aligns: tuple[str, ...]
    borders: bool = True
    heading_grey: int | None = None  # the first row is a heading, repeated on a new page


def draw_table(canvas: Canvas, table: Table, rows: Sequence[Sequence[Sequence[Run]]]) -> None:
    """Rows of cells, each cell a sequence of runs (its text, possibly mixed faces)."""
    total = sum(table.col_fractions)
    widths = [canvas.epw_pt * f / total for f in table.col_fractions]
    laid = [_lay_row(table, widths, row) for row in rows]
    heading = laid[0] if table.heading_grey is not None else None
    for i, row in enumerate(laid):
        height = max(h for _, h in row)
        if canvas.y + height > canvas.break_at_pt and canvas.y > canvas.margin_pt:
            canvas.add_page()
            if heading is not None and i > 0:
                _draw_row(canvas, table, widths, heading, table.heading_grey)
        fill = table.heading_grey if heading is not None and i == 0 else None
        _draw_row(canvas, table, widths, row, fill)


def _lay_row(
    table: Table, widths: list[float], row: Sequence[Sequence[Run]]
) -> list[tuple[list[Line], float]]:
    pad_v, pad_h = table.padding_pt
    cells = []
    for runs, width in zip(row, widths, strict=True):
        has_text = any(text for _, _, text in runs)
        lines = wrap(runs, width - 2 * pad_h) if has_text else []
        cells.append((lines, len(lines) * table.line_pt + 2 * pad_v if lines else 0.0))
    return cells


def _draw_row(
    canvas: Canvas,
    table: Table,
    widths: list[float],
    row: list[tuple[list[Line], float]],
    fill_grey: int | None,
) -> None:
    pad_v, pad_h = table.padding_pt
    height = max(h for _, h in row)
    x = canvas.margin_pt
    top = canvas.y
    for (lines, text_h), width, align in zip(row, widths, table.aligns, strict=True):
        if table.borders:
            canvas.rect(x, top, width, height, fill_grey)
        y = top + (height - text_h) / 2 + pad_v
        for line in lines:
            canvas.text_line(
                _aligned_x(x, width, line.width_pt, align, pad_h), y, table.line_pt, line
            )
            y += table.line_pt
        x += width
    canvas.y = top + height
