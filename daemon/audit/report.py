"""What a walk of the audit trail found, and how it reads: a page of rows a statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Break:
    """What is wrong, and where: the first broken entry of a chain, or another row."""

    code: str
    chain: str
    message: str
    seq: int | None = None
    entry_id: int | None = None


@dataclass
class Report:
    chains: int = 0
    entries: int = 0
    anchors: int = 0
    documents: int = 0
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chains": self.chains,
            "entries": self.entries,
            "anchors": self.anchors,
            "documents": self.documents,
            "breaks": [asdict(b) for b in self.breaks],
        }


async def pages(
    conn: asyncpg.Connection,
    query: str,
    args: tuple[Any, ...],
    key: tuple[str, ...],
    first: tuple[Any, ...],
    *rest: Any,
) -> AsyncIterator[asyncpg.Record]:
    """The rows of `query`, a page a statement: it takes `args`, the key columns' values
    of the last row seen (`first` before any), then `rest`, the page size last."""
    after, page_rows = first, rest[-1]
    while True:
        rows = await conn.fetch(query, *args, *after, *rest)
        for row in rows:
            yield row
        if len(rows) < page_rows:
            return
        after = tuple(rows[-1][k] for k in key)
