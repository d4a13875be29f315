"""The outbox's transports, and every statement over their `<transport>_published_at` columns.

Each transport marks the rows it has published in a column of its own (see
migrations/0001_initial.sql), so a broker that is down delays only its own events.
Those column names reach SQL from here only, built from `Transport`: a name that is
not one of its members raises before any statement is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any


class Transport(StrEnum):
    """Where status events go; the value is the metrics label and the column's prefix."""

    AMQP = "amqp"
    MQTT = "mqtt"

    @property
    def column(self) -> str:
        return f"{self.value}_published_at"


def column(transport: str) -> str:
    """The outbox column of `transport`; ValueError if it is not a Transport."""
    return Transport(transport).column


def pending_sql(transports: Iterable[str]) -> str:
    """Rows any of these transports still has to publish, oldest first ($1: the limit).

    One statement text per set of transports, so each is planned on its own partial
    indexes (a broker that is down does not make the others scan its backlog).
    """
    lacking = " OR ".join(f"{column(t)} IS NULL" for t in transports)
    every = ", ".join(t.column for t in Transport)
    return (
        f"SELECT id, payload, repeat, created_at, {every} "
        f"FROM outbox WHERE {lacking} ORDER BY id LIMIT $1"
    )


def mark_sql(transports: Iterable[str]) -> str:
    """Mark, in one statement, the rows each of these transports took ($1, $2, … in order)."""
    columns = [column(t) for t in transports]
    sets = ", ".join(
        f"{c} = CASE WHEN id = ANY(${n}::bigint[]) THEN now() ELSE {c} END"
        for n, c in enumerate(columns, 1)
    )
    took = " OR ".join(f"id = ANY(${n}::bigint[])" for n in range(1, len(columns) + 1))
    return f"UPDATE outbox SET {sets} WHERE {took}"


def backlog_sql(transport: str) -> str:
    """How many rows `transport` still has to publish."""
    return f"SELECT count(*) FROM outbox WHERE {column(transport)} IS NULL"


def _backlogs_sql() -> str:
    parts = []
    for t in Transport:
        parts += [
            f"count(*) FILTER (WHERE {t.column} IS NULL) AS {t.value}_backlog",
            f"coalesce(extract(epoch FROM now() - min(created_at) "
            f"FILTER (WHERE {t.column} IS NULL)), 0) AS {t.value}_age_s",
        ]
    lacking = " OR ".join(f"{t.column} IS NULL" for t in Transport)
    return f"SELECT {', '.join(parts)} FROM outbox WHERE {lacking}"


# Per transport: the rows not yet published, and the age of the oldest (0 if none).
BACKLOGS_SQL = _backlogs_sql()


def backlogs(row: Mapping[str, Any]) -> dict[Transport, tuple[int, float]]:
    """(rows pending, oldest age in seconds) per transport, from a BACKLOGS_SQL row."""
    return {t: (int(row[f"{t.value}_backlog"]), float(row[f"{t.value}_age_s"])) for t in Transport}
