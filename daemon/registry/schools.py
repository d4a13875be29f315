"""The SQL of schools and their consent keys; each change with its audit entry.

The school's current key stays in `schools` (every instance reads it with the sign
request); `consent_keys` keeps the history, a rotated-out key with the end of its
grace period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from daemon.audit import chain
from daemon.consent import ConsentKey
from daemon.errors import InvalidMessage, UnknownSchool
from daemon.registry.keyring import fingerprint


@dataclass(frozen=True)
class KeyEntry:
    key_id: int
    key: ConsentKey
    activated_at: datetime
    valid_until: datetime | None  # None: the current key

    def describe(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "alg": self.key.alg,
            "fingerprint": fingerprint(self.key),
            "activated_at": self.activated_at.isoformat(),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
        }


async def audit(
    conn: asyncpg.Connection, school_id: str | None, action: str, detail: dict[str, Any]
) -> None:
    """An audit entry (chained: daemon/audit/chain.py) for a registry change."""
    await chain.append(conn, school_id, action, detail)


async def add(
    conn: asyncpg.Connection, school_id: str, name: str, key: ConsentKey, operator: str
) -> None:
    """Register a school with its first consent key; refuse one registered already."""
    inserted = await conn.fetchval(
        """INSERT INTO schools (school_id, name, consent_alg, consent_key)
           VALUES ($1, $2, $3, $4) ON CONFLICT (school_id) DO NOTHING
           RETURNING school_id""",
        school_id,
        name,
        key.alg,
        key.key,
    )
    if inserted is None:
        raise InvalidMessage(f"School {school_id} is registered already (school show).")
    await conn.execute(
        """INSERT INTO consent_keys (school_id, key_id, alg, key) VALUES ($1, 1, $2, $3)""",
        school_id,
        key.alg,
        key.key,
    )
    detail = {"name": name, "consent_alg": key.alg, "key": fingerprint(key), "operator": operator}
    await audit(conn, school_id, "school_added", detail)


async def rotate_key(
    conn: asyncpg.Connection,
    school_id: str,
    key: ConsentKey,
    grace: timedelta,
    now: datetime,
    operator: str,
) -> tuple[KeyEntry, KeyEntry]:
    """Make `key` current; the previous key stays valid until `now + grace`.

    Returns (the retired key, the new key). Locks the school's row, so two rotations
    at once happen one after the other.
    """
    row = await conn.fetchrow(
        "SELECT consent_alg, consent_key FROM schools WHERE school_id = $1 FOR UPDATE",
        school_id,
    )
    if row is None:
        raise UnknownSchool(f"School {school_id} is not registered.")
    if row["consent_alg"] == key.alg and bytes(row["consent_key"]) == key.key:
        raise InvalidMessage(f"That key is school {school_id}'s current consent key already.")
    valid_until = now + grace
    old_key = ConsentKey(row["consent_alg"], bytes(row["consent_key"]))
    retired = await _retire(conn, school_id, old_key, now, valid_until)
    new_id = await conn.fetchval(
        """INSERT INTO consent_keys (school_id, key_id, alg, key, activated_at)
           SELECT $1, max(key_id) + 1, $2, $3, $4 FROM consent_keys WHERE school_id = $1
           RETURNING key_id""",
        school_id,
        key.alg,
        key.key,
        now,
    )
    await conn.execute(
        "UPDATE schools SET consent_alg = $2, consent_key = $3 WHERE school_id = $1",
        school_id,
        key.alg,
        key.key,
    )
    old = _entry(retired)
    new = KeyEntry(new_id, key, now, None)
    detail = {
        "retired_key": fingerprint(old.key),
        "retired_key_valid_until": valid_until.isoformat(),
        "key": fingerprint(key),
        "consent_alg": key.alg,
        "operator": operator,
    }
    await audit(conn, school_id, "consent_key_rotated", detail)
    return old, new


async def listing(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT s.school_id, s.name, s.consent_alg, s.created_at,
                  count(g.signer_id) FILTER (WHERE g.active) AS active_signers
           FROM schools s LEFT JOIN signers g ON g.school_id = s.school_id
           GROUP BY s.school_id ORDER BY s.school_id"""
    )
    return [
        {
            "school_id": r["school_id"],
            "name": r["name"],
            "consent_alg": r["consent_alg"],
            "active_signers": r["active_signers"],
            "created_at": r["created_at"].isoformat(),
        }
        for r in rows
    ]


async def show(conn: asyncpg.Connection, school_id: str) -> dict[str, Any]:
    """The school, its consent keys (fingerprints only), signers per stage, rosters."""
    school = await conn.fetchrow(
        "SELECT school_id, name, created_at FROM schools WHERE school_id = $1", school_id
    )
    if school is None:
        raise UnknownSchool(f"School {school_id} is not registered.")
    keys = await conn.fetch(
        """SELECT key_id, alg, key, activated_at, valid_until FROM consent_keys
           WHERE school_id = $1 ORDER BY key_id DESC""",
        school_id,
    )
    signers = await conn.fetch(
        """SELECT stage, count(*) FILTER (WHERE active) AS active,
                  count(*) FILTER (WHERE NOT active) AS deactivated,
                  min(cert_not_after) FILTER (WHERE active) AS soonest_expiry
           FROM signers WHERE school_id = $1 GROUP BY stage ORDER BY stage""",
        school_id,
    )
    rosters = await conn.fetch(
        """SELECT r.academic_year, r.submission_round, r.expected_records, r.sent_at,
                  (SELECT count(*) FROM roster_classes c
                   WHERE c.school_id = r.school_id AND c.academic_year = r.academic_year
                     AND c.submission_round = r.submission_round) AS classes
           FROM rosters r WHERE r.school_id = $1
           ORDER BY r.academic_year DESC, r.submission_round DESC""",
        school_id,
    )
    return {
        "school_id": school["school_id"],
        "name": school["name"],
        "created_at": school["created_at"].isoformat(),
        "consent_keys": [_entry(k).describe() for k in keys],
        "signers": {
            s["stage"]: {
                "active": s["active"],
                "deactivated": s["deactivated"],
                "soonest_expiry": s["soonest_expiry"].isoformat() if s["soonest_expiry"] else None,
            }
            for s in signers
        },
        "rosters": [
            {
                "academic_year": r["academic_year"],
                "submission_round": r["submission_round"],
                "expected_records": r["expected_records"],
                "classes": r["classes"],
                "sent_at": r["sent_at"].isoformat(),
            }
            for r in rosters
        ],
    }


async def _retire(
    conn: asyncpg.Connection,
    school_id: str,
    key: ConsentKey,
    now: datetime,
    valid_until: datetime,
) -> asyncpg.Record:
    """Retire the school's current key (what `schools` holds) until `valid_until`."""
    returning = "RETURNING key_id, alg, key, activated_at, valid_until"
    retired = await conn.fetchrow(
        f"""UPDATE consent_keys SET retired_at = $2, valid_until = $3
            WHERE school_id = $1 AND retired_at IS NULL AND alg = $4 AND key = $5
            {returning}""",
        school_id,
        now,
        valid_until,
        key.alg,
        key.key,
    )
    if retired is not None:
        return retired
    # The history does not know the current key (set by `dev init` or by hand): a
    # stray current entry gets no grace, and the real current key is written down.
    await conn.execute(
        """UPDATE consent_keys SET retired_at = $2, valid_until = $2
           WHERE school_id = $1 AND retired_at IS NULL""",
        school_id,
        now,
    )
    row = await conn.fetchrow(
        f"""INSERT INTO consent_keys (school_id, key_id, alg, key, activated_at,
                                      retired_at, valid_until)
            SELECT $1, coalesce(max(key_id), 0) + 1, $2, $3, $4, $4, $5
            FROM consent_keys WHERE school_id = $1
            {returning}""",
        school_id,
        key.alg,
        key.key,
        now,
        valid_until,
    )
    assert row is not None
    return row


def _entry(row: asyncpg.Record) -> KeyEntry:
    key = ConsentKey(row["alg"], bytes(row["key"]))
    return KeyEntry(row["key_id"], key, row["activated_at"], row["valid_until"])
