"""Whether a file is a version registered here, and its state: read-only, no personal data.

For the verification server and the printed copy. A version is named by its sha256
(record_versions); the answer carries the school and record ids, the version, the
record's state and when each stage was signed, never the student or the signers' ids.
Every query runs in a READ ONLY transaction, so this module cannot write even by mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon.database import Database
from daemon.stages import ORDER

SHA256 = re.compile(r"[0-9a-f]{64}")

_VERSION = """
SELECT v.school_id, v.record_id, v.version, r.state, r.signatures,
       r.current_sha256 = v.sha256 AS current, s.name AS school_name,
       c.record_id AS replaced_by, c.current_sha256 AS replaced_by_sha256
FROM record_versions v
JOIN records r USING (school_id, record_id)
JOIN schools s USING (school_id)
LEFT JOIN LATERAL (
    SELECT c.record_id, c.current_sha256 FROM records c
    WHERE c.school_id = r.school_id AND c.corrects = r.record_id AND c.signatures = 3
    ORDER BY c.created_at LIMIT 1
) AS c ON true
WHERE v.sha256 = $1
ORDER BY (r.current_sha256 = v.sha256) DESC, v.version DESC
LIMIT 1
"""

_SIGNED = """
SELECT stage, signed_at FROM signatures WHERE school_id = $1 AND record_id = $2
"""


@dataclass(frozen=True)
class Registered:
    """What the registry says of one exact file.

    `state`: `issued` (the issued version of a record nothing replaced), `superseded`
    (a correction replaced the record, or a later version replaced this one),
    `in_progress` (the current version of a record not yet sealed), `unknown`.
    """

    sha256: str
    state: str
    school_id: str | None = None
    school_name: str | None = None
    record_id: str | None = None
    version: int | None = None
    record_state: str | None = None
    replaced_by: str | None = None
    # The issued version of the correction that replaced the record.
    replaced_by_sha256: str | None = None
    signed: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "registered": self.state != "unknown",
            "state": self.state,
            "school_id": self.school_id,
            "school_name": self.school_name,
            "record_id": self.record_id,
            "version": self.version,
            "record_state": self.record_state,
            "replaced_by": self.replaced_by,
            "replaced_by_sha256": self.replaced_by_sha256,
            "signed": self.signed,
        }

    def summary(self) -> dict[str, Any]:
        """The `registered` member of a verification report (DESIGN.md's shape)."""
        return {
            "state": self.state,
            "school_id": self.school_id,
            "record_id": self.record_id,
            "replaced_by": self.replaced_by,
            "replaced_by_sha256": self.replaced_by_sha256,
        }


async def registered(db: Database, sha256: str) -> Registered:
    """The registry's word on the file whose sha256 is `sha256` (lower-case hex)."""
    if not SHA256.fullmatch(sha256):
        return Registered(sha256, "unknown")
    async with db.connection() as conn, conn.transaction(readonly=True):
        row = await conn.fetchrow(_VERSION, sha256)
        if row is None:
            return Registered(sha256, "unknown")
        signed = await conn.fetch(_SIGNED, row["school_id"], row["record_id"])
    return Registered(
        sha256,
        _state(row["current"], row["signatures"], row["replaced_by"]),
        school_id=row["school_id"],
        school_name=row["school_name"],
        record_id=row["record_id"],
        version=row["version"],
        record_state=row["state"],
        replaced_by=row["replaced_by"],
        replaced_by_sha256=row["replaced_by_sha256"],
        signed=_in_order(signed),
    )


def _state(current: bool, signatures: int, replaced_by: str | None) -> str:
    if replaced_by is not None or not current:
        return "superseded"
    return "issued" if signatures == len(ORDER) else "in_progress"


def _in_order(rows: list[Any]) -> list[dict[str, str]]:
    at: dict[str, datetime] = {r["stage"]: r["signed_at"] for r in rows}
    return [{"stage": s.value, "signed_at": at[s].isoformat()} for s in ORDER if s in at]
