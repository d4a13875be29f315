"""The daemon's scheduled walk of the audit trail: the cluster's schedule, in the database.

Two keepers stand for two instances on one database; the clock is theirs to move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from daemon.audit.anchors import DOCUMENTS_MARGIN, AuditKeeper
from daemon.database import Database
from daemon.metrics import AUDIT_VERIFICATION_OK, AUDIT_VERIFICATION_TIME
from daemon.settings import AuditSettings, DatabaseSettings
from tests.integration.audit_kit import *  # noqa: F403
from tests.integration.audit_kit import SCHOOL, Trail
from tests.pki_services_fixtures import *  # noqa: F403

EVERY_S = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def keepers(trail: Trail) -> AsyncIterator[Callable[[str, Clock], AuditKeeper]]:
    opened: list[Database] = []

    async def make(instance: str, clock: Clock) -> AuditKeeper:
        db = Database(DatabaseSettings(dsn=trail.dsn, pool_min=1, pool_max=2))
        await db.open()
        opened.append(db)
        settings = AuditSettings(anchor_every_s=None, verify_every_s=EVERY_S)
        return AuditKeeper(db, None, trail.store, trail.roots, settings, {}, clock, instance)

    yield make
    for db in opened:
        await db.close()


def _gauges() -> tuple[float | None, float | None]:
    return (
        REGISTRY.get_sample_value("hocba_audit_last_verification_ok"),
        REGISTRY.get_sample_value("hocba_audit_verification_timestamp_seconds"),
    )


async def _walks(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM audit_verifications ORDER BY id")


async def test_an_instance_that_starts_after_a_walk_waits_for_the_next_one(
    trail: Trail, keepers
) -> None:
    # Given a record, and one instance that walked the trail when it started
    await trail.issue(SCHOOL, "R-1")
    clock = Clock()
    first = await keepers("a", clock)
    await first.tick()

    # When a second instance starts a minute later (a process of its own: no gauges yet)
    clock.now += timedelta(minutes=1)
    second = await keepers("b", clock)
    AUDIT_VERIFICATION_OK.set(0)
    AUDIT_VERIFICATION_TIME.set(0)
    wait_s = await second.tick()

    # Then it does not walk the trail again, and waits for the walk due an hour after
    [walk] = await _walks(trail.conn)
    assert (walk["instance"], walk["ok"], walk["documents_since"]) == ("a", True, None)
    assert walk["documents"] == 4  # all of them, the first time
    assert wait_s == pytest.approx(EVERY_S - 60, abs=1)
    # and it reports the walk the other one made
    assert _gauges() == (1.0, walk["finished_at"].timestamp())

    # and when it is due, one of them walks: the documents since the last whole walk
    clock.now += timedelta(seconds=EVERY_S)
    await second.tick()
    await first.tick()
    walks = await _walks(trail.conn)
    assert [w["instance"] for w in walks] == ["a", "b"]
    assert walks[1]["documents_since"] == walk["database_started_at"] - DOCUMENTS_MARGIN


async def test_a_walk_reads_only_the_documents_stored_since_the_last_whole_one(
    trail: Trail, keepers
) -> None:
    # Given a record stored a day ago, walked since
    await trail.issue(SCHOOL, "R-old")
    await trail.as_superuser(
        "UPDATE record_versions SET created_at = created_at - interval '1 day'"
    )
    clock = Clock()
    keeper = await keepers("a", clock)
    await keeper.tick()

    # When a record is stored and the next walk is due
    await trail.issue(SCHOOL, "R-new")
    clock.now += timedelta(seconds=EVERY_S)
    await keeper.tick()

    # Then that walk read the new record's four documents, not the old one's again
    assert [w["documents"] for w in await _walks(trail.conn)] == [4, 4]


async def test_a_walk_that_finds_a_break_keeps_the_documents_for_the_next(
    trail: Trail, keepers
) -> None:
    # Given a whole walk, then a record whose stored document is then altered
    clock = Clock()
    keeper = await keepers("a", clock)
    await trail.issue(SCHOOL, "R-1")
    await keeper.tick()
    digests = await trail.issue(SCHOOL, "R-2")
    trail.store.path(digests[1]).write_bytes(b"%PDF-1.7 not what was signed")

    # When the next two walks are due
    for _ in range(2):
        clock.now += timedelta(seconds=EVERY_S)
        await keeper.tick()

    # Then both found it: the mark of the documents read stayed at the last whole walk
    walks = await _walks(trail.conn)
    assert [(w["ok"], w["breaks"]) for w in walks] == [(True, 0), (False, 1), (False, 1)]
    assert walks[1]["documents_since"] == walks[2]["documents_since"]
    assert walks[2]["documents_since"] == walks[0]["database_started_at"] - DOCUMENTS_MARGIN
    assert _gauges() == (0.0, walks[2]["finished_at"].timestamp())
