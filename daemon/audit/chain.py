"""The canonical form of an audit entry and of the chains' heads, and the one INSERT.

Migration 0010's trigger computes each entry's hash in the database (0012 only made
it cheaper: the same bytes, so one format for every entry); this module
computes the same bytes independently, so a verifier trusts neither the trigger nor
whoever could have replaced it. Fields are length-prefixed, never escaped or quoted:
one reading only, whatever a school id or a detail holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

GENESIS = "0" * 64
_ENTRY_TAG = b"hocba-audit-v1\n"
_HEADS_TAG = b"hocba-anchor-v1\n"


@dataclass(frozen=True)
class Entry:
    """One audit_log row as stored; `detail` is jsonb's own text of it."""

    id: int
    chain: str
    seq: int
    prev_hash: str
    hash: str
    at: datetime
    school_id: str | None
    record_id: str | None
    request_id: UUID | None
    action: str
    detail: str

    @property
    def details(self) -> dict[str, Any]:
        value = json.loads(self.detail)
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Head:
    chain: str
    seq: int
    hash: str


def _field(value: str | None) -> bytes:
    if value is None:
        return b"~\n"
    raw = value.encode("utf-8")
    return str(len(raw)).encode() + b":" + raw + b"\n"


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(entry: Entry, prev_hash: str | None = None) -> str:
    """The sha256 (hex) of the entry's canonical form, after `prev_hash` (default: its own)."""
    fields = (
        entry.chain,
        str(entry.seq),
        entry.prev_hash if prev_hash is None else prev_hash,
        _utc(entry.at),
        entry.school_id,
        entry.record_id,
        None if entry.request_id is None else str(entry.request_id),
        entry.action,
        entry.detail,
    )
    return hashlib.sha256(_ENTRY_TAG + b"".join(_field(f) for f in fields)).hexdigest()


def heads_digest(heads: Iterable[Head]) -> bytes:
    """The sha256 of a set of heads in canonical form: the imprint an anchor's token signs."""
    body = b"".join(
        _field(h.chain) + _field(str(h.seq)) + _field(h.hash)
        for h in sorted(heads, key=lambda h: h.chain)
    )
    return hashlib.sha256(_HEADS_TAG + body).digest()


def heads_json(heads: Sequence[Head]) -> str:
    return json.dumps([{"chain": h.chain, "seq": h.seq, "hash": h.hash} for h in heads])


def heads_from_json(text: str) -> list[Head]:
    return [Head(h["chain"], int(h["seq"]), h["hash"]) for h in json.loads(text)]


_INSERT = """INSERT INTO audit_log (school_id, record_id, request_id, action, detail)
              VALUES ($1, $2, $3, $4, $5)"""


async def append(
    conn: asyncpg.Connection,
    school_id: str | None,
    action: str,
    detail: dict[str, Any],
    *,
    record_id: str | None = None,
    request_id: UUID | None = None,
) -> None:
    """One entry, chained by the database, in the caller's transaction."""
    await conn.execute(_INSERT, school_id, record_id, request_id, action, json.dumps(detail))


async def append_many(
    conn: asyncpg.Connection,
    entries: Iterable[tuple[str | None, str | None, UUID | None, str, dict[str, Any]]],
) -> None:
    """Many entries (school, record, request, action, detail) in the caller's transaction."""
    await conn.executemany(_INSERT, [(s, r, q, a, json.dumps(d)) for s, r, q, a, d in entries])
