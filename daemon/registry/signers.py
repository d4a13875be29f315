"""The SQL of signers: register (or update) checked signers, deactivate, list.

A registration never changes whether a signer is active: importing the whole CSV
again after certificates were renewed does not bring back a deactivated signer
(`signer add --reactivate` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from daemon.errors import UnknownSchool, UnknownSigner
from daemon.registry.checks import CheckedCertificate
from daemon.registry.schools import audit
from daemon.stages import Stage


class Change(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Registration:
    school_id: str
    signer_id: str
    stage: Stage
    token_label: str
    key_label: str
    cert: CheckedCertificate


_UPSERT = """
WITH prior AS (
    SELECT stage, token_label, cert_sha256, active FROM signers
    WHERE school_id = $1 AND signer_id = $2
),
saved AS (
    INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                         cert_serial, cert_not_after, cert_sha256)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (school_id, signer_id) DO UPDATE
    SET stage = EXCLUDED.stage, token_label = EXCLUDED.token_label,
        key_label = EXCLUDED.key_label, cert_serial = EXCLUDED.cert_serial,
        cert_not_after = EXCLUDED.cert_not_after, cert_sha256 = EXCLUDED.cert_sha256,
        active = signers.active OR $9, updated_at = now(),
        deactivated_at = CASE WHEN $9 THEN NULL ELSE signers.deactivated_at END
    WHERE (signers.stage, signers.token_label, signers.cert_sha256, signers.active OR $9)
          IS DISTINCT FROM (EXCLUDED.stage, EXCLUDED.token_label, EXCLUDED.cert_sha256,
                            signers.active)
    RETURNING active
)
SELECT (SELECT count(*) FROM prior) AS existed, (SELECT active FROM saved) AS active,
       (SELECT count(*) FROM saved) AS written, (SELECT active FROM prior) AS was_active
"""


async def register(
    conn: asyncpg.Connection,
    signers: Sequence[Registration],
    operator: str,
    *,
    reactivate: bool = False,
) -> list[Change]:
    """Insert or update each signer, with an audit entry for each change; in order."""
    changes = []
    for s in signers:
        row = await conn.fetchrow(
            _UPSERT,
            s.school_id,
            s.signer_id,
            s.stage.value,
            s.token_label,
            s.key_label,
            s.cert.serial,
            s.cert.not_after,
            s.cert.sha256,
            reactivate,
        )
        if not row["written"]:
            changes.append(Change.UNCHANGED)
            continue
        change = Change.UPDATED if row["existed"] else Change.ADDED
        detail: dict[str, Any] = {
            "signer_id": s.signer_id,
            "stage": s.stage.value,
            "key_label": s.key_label,
            "cert_serial": s.cert.serial,
            "cert_not_after": s.cert.not_after.isoformat(),
            "operator": operator,
        }
        if row["existed"] and row["active"] and not row["was_active"]:
            detail["reactivated"] = True
        await audit(conn, s.school_id, f"signer_{change}", detail)
        changes.append(change)
    return changes


async def deactivate(
    conn: asyncpg.Connection,
    school_id: str,
    signer_id: str,
    reason: str | None,
    now: datetime,
    operator: str,
) -> bool:
    """Deactivate a signer (refused from then on); False if it was already inactive."""
    row = await conn.fetchrow(
        "SELECT active FROM signers WHERE school_id = $1 AND signer_id = $2 FOR UPDATE",
        school_id,
        signer_id,
    )
    if row is None:
        raise UnknownSigner(f"Signer {signer_id} is not registered for school {school_id}.")
    if not row["active"]:
        return False
    await conn.execute(
        """UPDATE signers SET active = false, deactivated_at = $3, updated_at = $3
           WHERE school_id = $1 AND signer_id = $2""",
        school_id,
        signer_id,
        now,
    )
    detail = {"signer_id": signer_id, "reason": reason, "operator": operator}
    await audit(conn, school_id, "signer_deactivated", detail)
    return True


async def registered_schools(conn: asyncpg.Connection, school_ids: Sequence[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT school_id FROM schools WHERE school_id = ANY($1::text[])", list(school_ids)
    )
    return {r["school_id"] for r in rows}


async def listing(
    conn: asyncpg.Connection, school_id: str, stage: Stage | None, inactive: bool
) -> list[dict[str, Any]]:
    if not await registered_schools(conn, [school_id]):
        raise UnknownSchool(f"School {school_id} is not registered.")
    rows = await conn.fetch(
        """SELECT signer_id, stage, active, key_label, cert_serial, cert_not_after,
                  deactivated_at
           FROM signers
           WHERE school_id = $1 AND ($2::text IS NULL OR stage = $2) AND (active OR $3)
           ORDER BY stage, signer_id""",
        school_id,
        stage.value if stage else None,
        inactive,
    )
    return [
        {
            "signer_id": r["signer_id"],
            "stage": r["stage"],
            "active": r["active"],
            "key_label": r["key_label"],
            "cert_serial": r["cert_serial"],
            "cert_not_after": r["cert_not_after"].isoformat(),
            "deactivated_at": r["deactivated_at"].isoformat() if r["deactivated_at"] else None,
        }
        for r in rows
    ]
