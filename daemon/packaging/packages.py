"""The SQL of packages: which records wait, which package holds them, how far it got.

Each state change of a package is stored with the status event of every record in
it (audit and outbox) in the caller's transaction, and is conditional on the state
it comes from, so two instances racing on one package cannot both move it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from daemon import records
from daemon.audit import chain
from daemon.errors import ConcurrentUpdate
from daemon.messages import Reason, StatusEvent
from daemon.packaging.container import PackageContent, PackagedRecord
from daemon.stages import ORDER, State


class PackageState(StrEnum):
    BUILDING = "building"
    BUILT = "built"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    # Given up on: the ministry kept losing its receipt. Not resumed until an operator
    # says so (`package-resume`, back to submitting; or `package-reject`).
    ATTENTION = "attention"


@dataclass(frozen=True)
class Package:
    package_id: UUID
    school_id: str
    academic_year: str
    submission_round: int
    sequence: int
    state: PackageState
    signing_time: datetime
    record_count: int
    # The container's blob digest and size, once built.
    sha256: str | None
    size_bytes: int | None
    # Only packages built before packages were blobs have one (a local file): kept for
    # them, never written now.
    path: str | None
    receipt_id: str | None
    attempts: int

    @property
    def file_name(self) -> str:
        tail = "" if self.sequence == 1 else f"-{self.sequence}"
        return f"{self.academic_year}-round{self.submission_round}{tail}.asice"


_COLUMNS = """package_id, school_id, academic_year, submission_round, sequence, state,
              signing_time, record_count, sha256, size_bytes, path, receipt_id, attempts"""


def _package(row: asyncpg.Record) -> Package:
    return Package(**{**dict(row), "state": PackageState(row["state"])})


async def get(conn: asyncpg.Connection, package_id: UUID) -> Package:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM packages WHERE package_id = $1", package_id)
    if row is None:
        raise KeyError(f"No package {package_id}.")
    return _package(row)


async def lock_round(conn: asyncpg.Connection, school_id: str, year: str, round_: int) -> None:
    """Serialise builders of one (school, year, round) until the transaction ends."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"package:{school_id}:{year}:{round_}",
    )


async def open_package(
    conn: asyncpg.Connection, school_id: str, year: str, round_: int
) -> Package | None:
    """The round's package that is created but not yet sent, if any (it is reused)."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM packages
            WHERE school_id = $1 AND academic_year = $2 AND submission_round = $3
                  AND state IN ('building', 'built')
            ORDER BY sequence LIMIT 1""",
        school_id,
        year,
        round_,
    )
    return _package(row) if row else None


async def waiting(
    conn: asyncpg.Connection, school_id: str, year: str, round_: int
) -> list[PackagedRecord]:
    """Issued records of the round that are in no live package.

    A correction is a record of its own, so once issued it waits here like any other
    (even when the record it corrects was accepted by the ministry); a superseded
    record is never sent again.
    """
    rows = await conn.fetch(
        """SELECT r.record_id, r.student_id, r.grade, r.class_name, r.current_sha256
           FROM records r
           WHERE r.school_id = $1 AND r.academic_year = $2 AND r.submission_round = $3
                 AND r.signatures = $4 AND r.state <> 'superseded'
                 AND NOT EXISTS (SELECT 1 FROM package_records p WHERE p.active
                                 AND p.school_id = r.school_id AND p.record_id = r.record_id)
           ORDER BY r.record_id""",
        school_id,
        year,
        round_,
        len(ORDER),
    )
    return [PackagedRecord(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def create(
    conn: asyncpg.Connection,
    school_id: str,
    year: str,
    round_: int,
    content: list[PackagedRecord],
    signing_time: datetime,
) -> Package:
    """A new package (state building) holding `content`; call under `lock_round`."""
    row = await conn.fetchrow(
        f"""INSERT INTO packages (package_id, school_id, academic_year, submission_round,
                                  sequence, state, signing_time, record_count)
            SELECT $1, $2, $3, $4, coalesce(max(sequence), 0) + 1, 'building', $5, $6
            FROM packages WHERE school_id = $2 AND academic_year = $3 AND submission_round = $4
            RETURNING {_COLUMNS}""",
        uuid.uuid4(),
        school_id,
        year,
        round_,
        signing_time,
        len(content),
    )
    await conn.executemany(
        """INSERT INTO package_records (package_id, school_id, record_id, sha256)
           VALUES ($1, $2, $3, $4)""",
        [(row["package_id"], school_id, r.record_id, r.sha256) for r in content],
    )
    return _package(row)


async def content(conn: asyncpg.Connection, package: Package) -> PackageContent:
    rows = await conn.fetch(
        """SELECT r.record_id, r.student_id, r.grade, r.class_name, p.sha256
           FROM package_records p JOIN records r USING (school_id, record_id)
           WHERE p.package_id = $1 ORDER BY r.record_id""",
        package.package_id,
    )
    found = tuple(PackagedRecord(r[0], r[1], r[2], r[3], r[4]) for r in rows)
    return PackageContent(package.school_id, package.academic_year, package.submission_round, found)


async def move(
    conn: asyncpg.Connection,
    package: Package,
    to: PackageState,
    sets: dict[str, Any] | None = None,
    *,
    came_from: tuple[PackageState, ...],
) -> Package:
    """Change the package's state (and columns) if it is still in one of `came_from`."""
    sets = dict(sets or {})
    assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(sets, start=4))
    row = await conn.fetchrow(
        f"""UPDATE packages SET state = $2, updated_at = now(){", " if sets else ""}{assignments}
            WHERE package_id = $1 AND state = ANY($3::text[])
            RETURNING {_COLUMNS}""",
        package.package_id,
        to.value,
        [s.value for s in came_from],
        *sets.values(),
    )
    if row is None:
        raise ConcurrentUpdate(f"Package {package.package_id} is no longer {came_from[0]}.")
    return _package(row)


async def finish(
    conn: asyncpg.Connection,
    package: Package,
    state: PackageState,
    errors: list[Any],
    accepted_records: int,
    at: datetime,
    *,
    reason: Reason | None = None,
    came_from: tuple[PackageState, ...],
) -> Package:
    """Accept or reject the package and tell its records; a rejection releases them."""
    package = await move(
        conn,
        package,
        state,
        {"accepted_records": accepted_records, "errors": json.dumps(errors, ensure_ascii=False)},
        came_from=came_from,
    )
    if state is PackageState.REJECTED:
        await release_records(conn, package)
        await tell_records(conn, package, State.REJECTED_BY_MINISTRY, at, reason)
    else:
        await tell_records(conn, package, State.ACCEPTED_BY_MINISTRY, at)
    return package


async def tell_records(
    conn: asyncpg.Connection,
    package: Package,
    state: State,
    at: datetime,
    reason: Reason | None = None,
) -> int:
    """Set the state of every record in the package and enqueue its status event."""
    rows = await conn.fetch(
        """UPDATE records r SET state = $2, updated_at = now()
           FROM package_records p
           WHERE p.package_id = $1 AND r.school_id = p.school_id AND r.record_id = p.record_id
           RETURNING r.record_id, p.sha256""",
        package.package_id,
        state.value,
    )
    events = [
        StatusEvent(
            event_id=uuid.uuid4(),
            request_id=None,
            school_id=package.school_id,
            record_id=row["record_id"],
            state=state,
            stage=None,
            document_sha256=row["sha256"],
            signatures=len(ORDER),
            reason=reason,
            at=at,
        )
        for row in sorted(rows, key=lambda r: r["record_id"])
    ]
    detail = {"package_id": str(package.package_id), "receipt_id": package.receipt_id}
    if reason is not None:
        detail["reason"] = reason.code
    await records.announce(conn, events, state.value, detail)
    return len(events)


async def release_records(conn: asyncpg.Connection, package: Package) -> None:
    """After a rejection: the records may go into another package."""
    await conn.execute(
        "UPDATE package_records SET active = false WHERE package_id = $1", package.package_id
    )


async def record_attempt(
    conn: asyncpg.Connection,
    package_id: UUID,
    kind: str,
    outcome: str,
    *,
    http_status: int | None = None,
    receipt_id: str | None = None,
    detail: str | None = None,
    latency_s: float | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO submission_attempts (package_id, kind, http_status, outcome,
                                            receipt_id, detail, latency_s)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        package_id,
        kind,
        http_status,
        outcome,
        receipt_id,
        detail,
        latency_s,
    )
    if kind == "submit":
        await conn.execute(
            "UPDATE packages SET attempts = attempts + 1 WHERE package_id = $1", package_id
        )


async def lost_receipts(conn: asyncpg.Connection, package_id: UUID) -> int:
    """How many times polling found the package's receipt unknown (404) at the ministry,
    since an operator last resumed it."""
    count = await conn.fetchval(
        """SELECT count(*) FROM submission_attempts
           WHERE package_id = $1 AND kind = 'poll' AND outcome = 'lost'
                 AND id > coalesce((SELECT max(id) FROM submission_attempts
                                    WHERE package_id = $1 AND kind = 'operator'
                                          AND outcome = 'resumed'), 0)""",
        package_id,
    )
    return int(count)


async def audit(
    conn: asyncpg.Connection, package: Package, action: str, detail: dict[str, Any]
) -> None:
    """One audit trail entry about the package as a whole (not one of its records)."""
    await chain.append(
        conn, package.school_id, action, {"package_id": str(package.package_id), **detail}
    )


async def in_state(
    conn: asyncpg.Connection, state: PackageState, school_id: str | None = None
) -> list[Package]:
    """The packages in `state` (of one school, if given), oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM packages
            WHERE state = $1 AND ($2::text IS NULL OR school_id = $2)
            ORDER BY created_at""",
        state.value,
        school_id,
    )
    return [_package(r) for r in rows]


async def unfinished(conn: asyncpg.Connection) -> list[Package]:
    """Every package not yet accepted, rejected or given up on, oldest first (resumed at
    start-up)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM packages
            WHERE state NOT IN ('accepted', 'rejected', 'attention')
            ORDER BY created_at"""
    )
    return [_package(r) for r in rows]


async def schools_waiting(conn: asyncpg.Connection, year: str, round_: int) -> list[str]:
    """Schools with issued records of this round in no live package."""
    rows = await conn.fetch(
        """SELECT DISTINCT r.school_id FROM records r
           WHERE r.academic_year = $1 AND r.submission_round = $2 AND r.signatures = $3
                 AND r.state <> 'superseded'
                 AND NOT EXISTS (SELECT 1 FROM package_records p WHERE p.active
                                 AND p.school_id = r.school_id AND p.record_id = r.record_id)
           ORDER BY 1""",
        year,
        round_,
        len(ORDER),
    )
    return [r[0] for r in rows]


async def waiting_counts(conn: asyncpg.Connection) -> list[tuple[str, int, int]]:
    """(academic year, round, issued records in no live package), for the metrics."""
    rows = await conn.fetch(
        """SELECT r.academic_year, r.submission_round, count(*) FROM records r
           WHERE r.signatures = $1 AND r.state <> 'superseded'
                 AND NOT EXISTS (SELECT 1 FROM package_records p WHERE p.active
                                 AND p.school_id = r.school_id AND p.record_id = r.record_id)
           GROUP BY 1, 2""",
        len(ORDER),
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def seal_key(conn: asyncpg.Connection, school_id: str) -> tuple[str, str] | None:
    """(token label, key label) of the school's active seal key."""
    row = await conn.fetchrow(
        """SELECT token_label, key_label FROM signers
           WHERE school_id = $1 AND stage = 'school_seal' AND active
           ORDER BY signer_id LIMIT 1""",
        school_id,
    )
    return (row[0], row[1]) if row else None
