"""`hocba-signer audit verify`: walk the chains and anchors, cross-check what they say.

A chain is broken at its first entry whose sequence, link or hash is wrong; the rest of
that chain is not judged (everything after a break is suspect). Anchors are checked
against their token (imprint, TSA signature to a trust root) and against the entries
they name, so a chain rewritten wholesale after an anchor still disagrees with it. The
entries are then cross-checked against signatures, versions and the stored documents.

The daemon verifies while it writes, and the trail grows all year, so the walk reads in
pages (`PAGE_ROWS` rows a statement, by key; no snapshot is held open while documents
are read) and keeps only the page in hand: its memory does not grow with the trail.
The heads are read first and each chain is walked up to its head, so an entry written
during the walk is newer than the verification, not a missing head.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
from asn1crypto import x509

from daemon.audit import chain, crosscheck
from daemon.audit.report import Break, Report, pages
from daemon.blobs.base import BlobReader

PAGE_ROWS = 1000

# Where each chain's walk starts: its first entry at or after `since` (all of it without).
_STARTS = """
SELECT chain, min(seq) AS seq FROM audit_log
WHERE ($1::text IS NULL OR chain = $1) AND ($2::timestamptz IS NULL OR at >= $2)
GROUP BY chain
"""
# One page of a chain, after `$3` and up to `$4` (its head when the walk began).
_ENTRIES = """
SELECT id, chain, seq, prev_hash, hash, at, school_id, record_id, request_id, action,
       detail::text AS detail
FROM audit_log
WHERE chain = $1 AND seq >= $2 AND seq > $3 AND ($4::bigint IS NULL OR seq <= $4)
ORDER BY seq LIMIT $5
"""


async def verify(
    conn: asyncpg.Connection,
    store: BlobReader | None,
    trust_roots: list[x509.Certificate],
    *,
    school_id: str | None = None,
    since: datetime | None = None,
    documents_since: datetime | None = None,
    page_rows: int = PAGE_ROWS,
) -> Report:
    """Everything checked; `since` limits the walk and the documents to what is newer,
    `documents_since` the documents only (the daemon's daily run)."""
    report = Report()
    # The heads first: what the walk must reach. Entries written after this are newer.
    heads = {
        r["chain"]: chain.Head(r["chain"], r["seq"], r["hash"])
        for r in await conn.fetch(
            "SELECT chain, seq, hash FROM audit_heads WHERE $1::text IS NULL OR chain = $1",
            school_id,
        )
    }
    starts = {r["chain"]: r["seq"] for r in await conn.fetch(_STARTS, school_id, since)}
    broken: set[str] = set()
    # With `since`, a chain with nothing newer is not walked (its head is older).
    names = set(starts) if since is not None else set(starts) | set(heads)
    for name in sorted(names):
        walk = _Walk(name, heads.get(name), since is None)
        async for entry in _entries(conn, name, starts.get(name, 1), walk.head, page_rows):
            report.entries += 1
            walk.step(entry)
        report.chains += 1
        found = walk.end()
        if found is not None:
            report.breaks.append(found)
            broken.add(name)
    for found in await _behind_heads(conn, school_id, broken):
        report.breaks.append(found)
        broken.add(found.chain)
    await crosscheck.anchors(conn, report, trust_roots, school_id, broken)
    await crosscheck.signatures(conn, report, school_id, page_rows)
    if store is not None:
        await crosscheck.documents(
            conn, report, store, school_id, documents_since or since, page_rows
        )
    return report


# Entries past their chain's head, in one statement: the trigger writes an entry and its
# head together, so one snapshot sees both or neither of a genuine one.
_BEHIND = """
SELECT h.chain, h.seq AS head, a.seq, a.id
FROM audit_heads h
JOIN LATERAL (SELECT seq, id FROM audit_log a WHERE a.chain = h.chain AND a.seq > h.seq
              ORDER BY seq LIMIT 1) a ON true
WHERE $1::text IS NULL OR h.chain = $1
"""


async def _behind_heads(
    conn: asyncpg.Connection, school_id: str | None, broken: set[str]
) -> list[Break]:
    """Entries written past their chain's head: inserted behind the trigger's back."""
    return [
        Break(
            "link_broken",
            r["chain"],
            f"Entry {r['seq']} of chain {r['chain']!r} comes after its head (entry {r['head']}):"
            " it was inserted without the chain.",
            r["seq"],
            r["id"],
        )
        for r in await conn.fetch(_BEHIND, school_id)
        if r["chain"] not in broken
    ]


async def _entries(
    conn: asyncpg.Connection, name: str, start: int, head: chain.Head | None, page_rows: int
) -> AsyncIterator[chain.Entry]:
    """The chain's entries from `start` to its head (to its end, if it had none)."""
    upto = head.seq if head is not None else None
    async for row in pages(conn, _ENTRIES, (name, start), ("seq",), (0,), upto, page_rows):
        yield chain.Entry(**dict(row))


class _Walk:
    """One chain, entry by entry: the first entry that is not where, or what, it claims."""

    def __init__(self, name: str, head: chain.Head | None, from_genesis: bool) -> None:
        self.name, self.head, self._from_genesis = name, head, from_genesis
        self._prev: chain.Entry | None = None
        self._found: Break | None = None

    def step(self, entry: chain.Entry) -> None:
        if self._found is None:  # after a break, the rest of the chain is not judged
            self._found = self._judge(entry)
            self._prev = entry

    def end(self) -> Break | None:
        """The break found, or the head's: the walk must end where the head says."""
        if self._found is not None:
            return self._found
        head, prev = self.head, self._prev
        if head is not None and (prev is None or (head.seq, head.hash) != (prev.seq, prev.hash)):
            last = prev.seq if prev else 0
            return Break(
                "entry_missing",
                self.name,
                f"Chain {self.name!r} ends at entry {last}, its head says {head.seq}"
                " (the newest entries were removed).",
                last + 1,
            )
        return None

    def _judge(self, entry: chain.Entry) -> Break | None:
        name, prev = self.name, self._prev
        expected_seq = prev.seq + 1 if prev else (1 if self._from_genesis else entry.seq)
        expected_prev = prev.hash if prev else (chain.GENESIS if entry.seq == 1 else None)
        if entry.seq != expected_seq:
            return Break(
                "entry_missing",
                name,
                f"Entry {expected_seq} of chain {name!r} is missing (next is {entry.seq}).",
                expected_seq,
                entry.id,
            )
        if expected_prev is not None and entry.prev_hash != expected_prev:
            return Break(
                "link_broken",
                name,
                f"Entry {entry.seq} of chain {name!r} does not follow entry {entry.seq - 1}"
                " (removed, inserted or reordered).",
                entry.seq,
                entry.id,
            )
        if chain.entry_hash(entry) != entry.hash:
            return Break(
                "entry_altered",
                name,
                f"Entry {entry.seq} of chain {name!r} ({entry.action}) was changed after it"
                " was written.",
                entry.seq,
                entry.id,
            )
        return None


__all__ = ["PAGE_ROWS", "Break", "Report", "verify"]
