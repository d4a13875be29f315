"""`hocba-signer audit verify`: walk the chains and anchors, cross-check what they say.

A chain is broken at its first entry whose sequence, link or hash is wrong; the rest of
that chain is not judged (everything after a break is suspect). Anchors are checked
against their token (imprint, TSA signature to a trust root) and against the entries
they name, so a chain rewritten wholesale after an anchor still disagrees with it. The
entries are then cross-checked against signatures, versions and the stored documents.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from asn1crypto import cms, x509

from daemon.audit import chain
from daemon.audit.tokens import TokenProblem, check_token
from daemon.blobs.base import BlobReader
from daemon.errors import StoreCorrupt, StoreUnavailable


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


# From each chain's first entry at or after `since` (all of it without), to its end.
_ENTRIES = """
WITH start AS (
    SELECT chain, min(seq) AS seq FROM audit_log
    WHERE ($1::text IS NULL OR chain = $1) AND ($2::timestamptz IS NULL OR at >= $2)
    GROUP BY chain
)
SELECT a.id, a.chain, a.seq, a.prev_hash, a.hash, a.at, a.school_id, a.record_id,
       a.request_id, a.action, a.detail::text AS detail
FROM audit_log a JOIN start USING (chain)
WHERE a.seq >= start.seq
ORDER BY a.chain, a.seq
"""


async def verify(
    conn: asyncpg.Connection,
    store: BlobReader | None,
    trust_roots: list[x509.Certificate],
    *,
    school_id: str | None = None,
    since: datetime | None = None,
    documents_since: datetime | None = None,
) -> Report:
    """Everything checked; `since` limits the walk and the documents to what is newer,
    `documents_since` the documents only (the daemon's daily run)."""
    report = Report()
    entries = [chain.Entry(**dict(row)) for row in await conn.fetch(_ENTRIES, school_id, since)]
    by_chain: dict[str, list[chain.Entry]] = {}
    for entry in entries:
        by_chain.setdefault(entry.chain, []).append(entry)
    heads = {
        r["chain"]: chain.Head(r["chain"], r["seq"], r["hash"])
        for r in await conn.fetch(
            "SELECT chain, seq, hash FROM audit_heads WHERE $1::text IS NULL OR chain = $1",
            school_id,
        )
    }
    broken: set[str] = set()
    # With `since`, a chain with nothing newer is not walked (its head is older).
    names = set(by_chain) if since is not None else set(by_chain) | set(heads)
    for name in sorted(names):
        found = _walk(name, by_chain.get(name, []), heads.get(name), since is None)
        report.chains += 1
        report.entries += len(by_chain.get(name, []))
        if found is not None:
            report.breaks.append(found)
            broken.add(name)
    await _anchors(conn, report, trust_roots, school_id, broken)
    await _signatures(conn, report, school_id, broken)
    if store is not None:
        await _documents(conn, report, store, school_id, documents_since or since)
    return report


def _walk(
    name: str, entries: list[chain.Entry], head: chain.Head | None, from_genesis: bool
) -> Break | None:
    """The first entry of the chain that is not where, or what, it claims to be."""
    prev: chain.Entry | None = None
    for entry in entries:
        expected_seq = prev.seq + 1 if prev else (1 if from_genesis else entry.seq)
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
        prev = entry
    if head is not None and (prev is None or (head.seq, head.hash) != (prev.seq, prev.hash)):
        last = prev.seq if prev else 0
        return Break(
            "entry_missing",
            name,
            f"Chain {name!r} ends at entry {last}, its head says {head.seq}"
            " (the newest entries were removed).",
            last + 1,
        )
    return None


async def _anchors(
    conn: asyncpg.Connection,
    report: Report,
    trust_roots: list[x509.Certificate],
    school_id: str | None,
    broken: set[str],
) -> None:
    rows = await conn.fetch(
        "SELECT id, heads::text AS heads, heads_sha256, token FROM audit_anchors ORDER BY id"
    )
    stored = {
        (r["chain"], r["seq"]): r["hash"]
        for r in await conn.fetch(
            """SELECT a.chain, a.seq, a.hash FROM audit_log a
               JOIN (SELECT h->>'chain' AS chain, (h->>'seq')::bigint AS seq
                     FROM audit_anchors, jsonb_array_elements(heads) AS h) n
                 ON n.chain = a.chain AND n.seq = a.seq"""
        )
    }
    last_time: datetime | None = None
    for row in rows:
        report.anchors += 1
        heads = chain.heads_from_json(row["heads"])
        digest = chain.heads_digest(heads)
        try:
            at = await check_token(cms.ContentInfo.load(bytes(row["token"])), digest, trust_roots)
        except TokenProblem as exc:
            report.breaks.append(Break("anchor_invalid", "", f"Anchor {row['id']}: {exc}"))
            continue
        if digest.hex() != row["heads_sha256"]:
            report.breaks.append(
                Break("anchor_invalid", "", f"Anchor {row['id']}: its digest is not its heads'.")
            )
        if last_time is not None and at < last_time:
            report.breaks.append(
                Break("anchor_invalid", "", f"Anchor {row['id']} is older than the one before.")
            )
        last_time = at
        for head in heads:
            if school_id is not None and head.chain != school_id:
                continue
            if stored.get((head.chain, head.seq)) != head.hash and head.chain not in broken:
                report.breaks.append(
                    Break(
                        "anchor_mismatch",
                        head.chain,
                        f"Entry {head.seq} of chain {head.chain!r} is not the one anchor "
                        f"{row['id']} timestamped at {at.isoformat()} (the chain was rewritten).",
                        head.seq,
                    )
                )
                broken.add(head.chain)


_SIGNED = """
SELECT s.school_id, s.record_id, s.stage, s.signer_id, s.cert_serial, s.digest_before,
       s.digest_after, a.id AS entry_id, a.seq, a.detail::text AS detail,
       EXISTS (SELECT FROM record_versions v WHERE v.school_id = s.school_id
               AND v.record_id = s.record_id AND v.sha256 = s.digest_after) AS versioned
FROM signatures s
LEFT JOIN audit_log a ON a.chain = s.school_id AND a.record_id = s.record_id
     AND a.action = 'signed' AND a.detail->>'stage' = s.stage
WHERE $1::text IS NULL OR s.school_id = $1
ORDER BY s.school_id, a.seq NULLS FIRST, s.record_id, s.stage
"""
_FIELDS = ("signer_id", "cert_serial", "digest_before", "digest_after")


async def _signatures(
    conn: asyncpg.Connection, report: Report, school_id: str | None, broken: set[str]
) -> None:
    """Every signature has its `signed` entry, saying the same, and its version."""
    for row in await conn.fetch(_SIGNED, school_id):
        where = f"record {row['record_id']} stage {row['stage']}"
        problem: Break | None
        if row["entry_id"] is None:
            problem = Break("signature_unaudited", row["school_id"], f"{where}: no audit entry.")
        else:
            said = json.loads(row["detail"])
            wrong = [f for f in _FIELDS if said.get(f) != row[f]]
            problem = (
                Break(
                    "signature_disagrees",
                    row["school_id"],
                    f"{where}: the signature's {', '.join(wrong)} differ from entry {row['seq']}.",
                    row["seq"],
                    row["entry_id"],
                )
                if wrong
                else None
            )
        if problem is None and not row["versioned"]:
            problem = Break(
                "version_missing", row["school_id"], f"{where}: its signed version is not stored."
            )
        if problem is not None:
            report.breaks.append(problem)


_VERSIONS = """
SELECT v.school_id, v.record_id, v.version, v.sha256,
       (v.version = 0 AND EXISTS (SELECT FROM signatures s WHERE s.school_id = v.school_id
            AND s.record_id = v.record_id AND s.stage = 'homeroom_teacher'
            AND s.digest_before = v.sha256))
       OR EXISTS (SELECT FROM signatures s WHERE s.school_id = v.school_id
            AND s.record_id = v.record_id AND s.digest_after = v.sha256)
       OR EXISTS (SELECT FROM audit_log a WHERE a.chain = v.school_id
            AND a.record_id = v.record_id AND a.action = 'ltv_renewed'
            AND a.detail->>'digest_after' = v.sha256) AS accounted
FROM record_versions v
WHERE ($1::text IS NULL OR v.school_id = $1) AND ($2::timestamptz IS NULL OR v.created_at >= $2)
ORDER BY v.school_id, v.record_id, v.version
"""


async def _documents(
    conn: asyncpg.Connection,
    report: Report,
    store: BlobReader,
    school_id: str | None,
    since: datetime | None,
) -> None:
    """Each version is accounted for by a signature or a renewal, and its bytes are stored."""
    for row in await conn.fetch(_VERSIONS, school_id, since):
        where = f"record {row['record_id']} version {row['version']}"
        report.documents += 1
        if not row["accounted"]:
            report.breaks.append(
                Break(
                    "version_unaudited",
                    row["school_id"],
                    f"{where}: no signature or audit entry made it ({row['sha256'][:12]}…).",
                )
            )
            continue
        try:
            await store.get(row["sha256"])
        except StoreCorrupt:
            report.breaks.append(
                Break("document_altered", row["school_id"], f"{where}: the stored file changed.")
            )
        except StoreUnavailable:
            report.breaks.append(
                Break("document_missing", row["school_id"], f"{where}: the stored file is gone.")
            )
