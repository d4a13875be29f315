"""The trail's cross-checks: anchors against their tokens and entries, signatures against
their `signed` entries, versions against signatures and the stored documents."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg
from asn1crypto import cms, x509

from daemon.audit import chain
from daemon.audit.report import Break, Report, pages
from daemon.audit.tokens import TokenProblem, check_token
from daemon.blobs.base import BlobReader
from daemon.errors import StoreCorrupt, StoreUnavailable


async def anchors(
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


# A row per signature and `signed` entry of its stage (one, but a forged second entry
# makes two): the entry's id is part of the page key, so two rows of one signature on
# either side of a page's end are both judged.
_SIGNED = """
SELECT s.school_id, s.record_id, s.stage, s.signer_id, s.cert_serial, s.digest_before,
       s.digest_after, a.id AS entry_id, coalesce(a.id, 0) AS entry_key, a.seq,
       a.detail::text AS detail,
       EXISTS (SELECT FROM record_versions v WHERE v.school_id = s.school_id
               AND v.record_id = s.record_id AND v.sha256 = s.digest_after) AS versioned
FROM signatures s
LEFT JOIN audit_log a ON a.chain = s.school_id AND a.record_id = s.record_id
     AND a.action = 'signed' AND a.detail->>'stage' = s.stage
WHERE ($1::text IS NULL OR s.school_id = $1)
  AND (s.school_id, s.record_id, s.stage, coalesce(a.id, 0)) > ($2, $3, $4, $5)
ORDER BY s.school_id, s.record_id, s.stage, coalesce(a.id, 0) LIMIT $6
"""
_FIELDS = ("signer_id", "cert_serial", "digest_before", "digest_after")


async def signatures(
    conn: asyncpg.Connection, report: Report, school_id: str | None, page_rows: int
) -> None:
    """Every signature has its `signed` entry, saying the same, and its version."""
    key = ("school_id", "record_id", "stage", "entry_key")
    async for row in pages(conn, _SIGNED, (school_id,), key, ("", "", "", 0), page_rows):
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
  AND (v.school_id, v.record_id, v.version) > ($3, $4, $5)
ORDER BY v.school_id, v.record_id, v.version LIMIT $6
"""


async def documents(
    conn: asyncpg.Connection,
    report: Report,
    store: BlobReader,
    school_id: str | None,
    since: datetime | None,
    page_rows: int,
) -> None:
    """Each version is accounted for by a signature or a renewal, and its bytes are stored."""
    key, first = ("school_id", "record_id", "version"), ("", "", -1)
    async for row in pages(conn, _VERSIONS, (school_id, since), key, first, page_rows):
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
