"""Rosters (`hocba.roster.v1`): the latest per (school, year, round) replaces the previous.

From a roster the daemon knows the records a school must sign that round (the sum of
its classes' students, kept for the deadline foresight), the homeroom teacher of each
class (who alone signs that class's records, daemon/rules.py) and its principals.
"Latest" is by `sent_at`: a roster sent before the one held (a late redelivery) is
acknowledged and ignored, and a replay of the one held changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from daemon.database import Database
from daemon.errors import HocbaError, UnknownSchool, UnknownSigner
from daemon.messages import Roster
from daemon.registry.schools import audit
from daemon.stages import Stage

NOTIFY_CHANNEL = "hocba_roster"


class RosterOutcome(StrEnum):
    STORED = "stored"  # the first for its round
    REPLACED = "replaced"
    UNCHANGED = "unchanged"  # the very roster held (a redelivery)
    OLDER = "older"  # sent before the one held: ignored


@dataclass(frozen=True)
class ClassBinding:
    """What a school's roster says of a record's round: its class's teacher, its principals."""

    homeroom_teacher: str | None  # None: the roster does not list the record's class
    principals: tuple[str, ...]


async def store(conn: asyncpg.Connection, roster: Roster, message_id: str | None) -> RosterOutcome:
    """Check the roster against the registry and keep it if it is the latest; one transaction."""
    await _check_signers(conn, roster)
    key = (roster.school_id, roster.academic_year, roster.submission_round)
    held = await conn.fetchrow(
        """SELECT sent_at FROM rosters
           WHERE school_id = $1 AND academic_year = $2 AND submission_round = $3
           FOR UPDATE""",
        *key,
    )
    if held is not None and held["sent_at"] > roster.sent_at:
        await audit(conn, roster.school_id, "roster_ignored", _detail(roster, message_id))
        return RosterOutcome.OLDER
    if held is not None and held["sent_at"] == roster.sent_at and await _same(conn, roster):
        return RosterOutcome.UNCHANGED
    await conn.execute(
        """DELETE FROM rosters
           WHERE school_id = $1 AND academic_year = $2 AND submission_round = $3""",
        *key,
    )
    await conn.execute(
        """INSERT INTO rosters (school_id, academic_year, submission_round, sent_at,
                               message_id, expected_records, principals)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        *key,
        roster.sent_at,
        message_id,
        roster.expected_records,
        list(roster.principals),
    )
    await conn.executemany(
        """INSERT INTO roster_classes (school_id, academic_year, submission_round,
                                      class_name, grade, homeroom_teacher, students)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [(*key, c.class_name, c.grade, c.homeroom_teacher, c.students) for c in roster.classes],
    )
    outcome = RosterOutcome.STORED if held is None else RosterOutcome.REPLACED
    await audit(conn, roster.school_id, f"roster_{outcome}", _detail(roster, message_id))
    return outcome


async def refused(
    conn: asyncpg.Connection, school_id: str | None, message_id: str | None, code: str, why: str
) -> None:
    """The audit entry of a roster refused for good."""
    detail = {"message_id": message_id, "code": code, "message": why}
    await audit(conn, school_id, "roster_refused", detail)


async def _check_signers(conn: asyncpg.Connection, roster: Roster) -> None:
    """Every teacher and principal named is an active signer of that stage at this school."""
    known = await conn.fetchval("SELECT 1 FROM schools WHERE school_id = $1", roster.school_id)
    if known is None:
        raise UnknownSchool(f"School {roster.school_id} is not registered.")
    rows = await conn.fetch(
        "SELECT signer_id, stage, active FROM signers WHERE school_id = $1", roster.school_id
    )
    signers = {r["signer_id"]: (Stage(r["stage"]), r["active"]) for r in rows}
    named = [(c.homeroom_teacher, Stage.HOMEROOM_TEACHER, f"class {c.class_name}")
             for c in roster.classes]  # fmt: skip
    named += [(p, Stage.PRINCIPAL, "principals") for p in roster.principals]
    for signer_id, stage, where in named:
        found = signers.get(signer_id)
        if found is None:
            state = "not registered"
        elif found[0] is not stage:
            state = f"registered as {found[0]}"
        elif not found[1]:
            state = "deactivated"
        else:
            continue
        raise UnknownSigner(
            f"Roster {where}: signer {signer_id} is {state}; "
            f"it must be an active {stage} of school {roster.school_id}."
        )


async def _same(conn: asyncpg.Connection, roster: Roster) -> bool:
    rows = await conn.fetch(
        """SELECT class_name, grade, homeroom_teacher, students FROM roster_classes
           WHERE school_id = $1 AND academic_year = $2 AND submission_round = $3""",
        roster.school_id,
        roster.academic_year,
        roster.submission_round,
    )
    principals = await conn.fetchval(
        """SELECT principals FROM rosters
           WHERE school_id = $1 AND academic_year = $2 AND submission_round = $3""",
        roster.school_id,
        roster.academic_year,
        roster.submission_round,
    )
    held = {(r["class_name"], r["grade"], r["homeroom_teacher"], r["students"]) for r in rows}
    sent = {(c.class_name, c.grade, c.homeroom_teacher, c.students) for c in roster.classes}
    return held == sent and list(principals) == list(roster.principals)


def _detail(roster: Roster, message_id: str | None) -> dict[str, object]:
    return {
        "academic_year": roster.academic_year,
        "submission_round": roster.submission_round,
        "sent_at": roster.sent_at.isoformat(),
        "classes": len(roster.classes),
        "expected_records": roster.expected_records,
        "message_id": message_id,
    }


@dataclass(frozen=True)
class RosterStore:
    """Rosters kept in the database, as the roster consumer needs them."""

    db: Database

    async def receive(self, roster: Roster, message_id: str | None) -> RosterOutcome:
        async with self.db.transaction() as conn:
            outcome = await store(conn, roster, message_id)
            # Delivered on commit: whoever waits for a school's roster (a test, an
            # operator's `LISTEN hocba_roster`) hears it without asking again and again.
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, roster.school_id)
        return outcome

    async def note_refusal(
        self, school_id: str | None, message_id: str | None, error: HocbaError
    ) -> None:
        async with self.db.transaction() as conn:
            await refused(conn, school_id, message_id, error.code, error.message)
