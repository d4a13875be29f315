"""The record's text, page by page, for the generators that draw text themselves."""

from __future__ import annotations

from pathlib import Path

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def pages() -> list[list[str]]:
    """record.txt's lines; a form feed on a line of its own starts a new page."""
    text = (Path(__file__).parent / "record.txt").read_text(encoding="utf-8")
    return [page.strip("\n").splitlines() for page in text.split("\f")]
