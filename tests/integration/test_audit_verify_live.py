"""Walking the audit trail while it is written, and a trail longer than a page.

Every instance appends to the trail while one of them walks it on a schedule; a walk
must never call the trail broken because a record was signed meanwhile (that would
page the security officer at the peak of the year). The walk reads by pages, so its
memory does not grow with the trail; a break is still named on any page.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from daemon.audit import verify
from tests.integration.audit_kit import *  # noqa: F403
from tests.integration.audit_kit import OTHER, SCHOOL, Trail, codes
from tests.pki_services_fixtures import *  # noqa: F403


class Interleaved(asyncpg.Connection):
    """A connection that lets another writer in after each of its statements."""

    between: Callable[[], Awaitable[None]] | None = None

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        rows = await super().fetch(query, *args, **kwargs)
        if self.between is not None:
            await self.between()
        return rows


async def test_records_signed_during_a_walk_leave_it_whole(trail: Trail) -> None:
    # Given records of two schools, anchored
    await trail.issue(SCHOOL, "R-1")
    await trail.issue(OTHER, "R-1")
    await trail.anchor()
    # When the trail is walked while a record is signed after each of the walk's
    # statements, in one school and then the other
    walker = await asyncpg.connect(trail.dsn, connection_class=Interleaved)
    signed = itertools.count(1)

    async def sign_one() -> None:
        n = next(signed)
        await trail.issue(SCHOOL if n % 2 else OTHER, f"L-{n}")

    walker.between = sign_one
    try:
        report = await verify.verify(walker, trail.store, trail.roots)
    finally:
        walker.between = None
        await walker.close()
    # Then the walk found the trail whole, though it grew under it
    assert next(signed) > 4
    assert report.ok, report.breaks
    # And a walk after it sees every record signed meanwhile, whole too
    after = await trail.verify()
    assert after.ok, after.breaks
    assert after.entries > report.entries


async def test_an_entry_slipped_in_past_its_head_is_named(trail: Trail) -> None:
    await trail.issue(SCHOOL, "R-1")
    # When a superuser writes an entry past the chain's head, with the trigger off
    await trail.as_superuser(
        """INSERT INTO audit_log (chain, seq, prev_hash, hash, school_id, action, detail)
           SELECT chain, seq + 1, hash, repeat('0', 64), chain, 'signed', '{}'
           FROM audit_heads WHERE chain = $1""",
        SCHOOL,
    )
    # Then the walk names it, though it only walks each chain up to its head
    report = await trail.verify()
    assert codes(report) == [("link_broken", SCHOOL, 4)]


async def test_a_trail_longer_than_a_page_is_walked_whole_and_judged_on_every_page(
    trail: Trail,
) -> None:
    # Given 4 records of one school and 1 of another: 15 entries, 15 signatures, 20 versions
    for n in range(4):
        await trail.issue(SCHOOL, f"R-{n}")
    await trail.issue(OTHER, "R-1")
    # When it is walked two rows a statement
    report = await verify.verify(trail.conn, trail.store, trail.roots, page_rows=2)
    # Then it counts what a one-page walk counts
    whole = await trail.verify()
    assert report.ok and whole.ok, (report.breaks, whole.breaks)
    assert (report.chains, report.entries, report.documents) == (2, 15, 20)
    assert (whole.chains, whole.entries, whole.documents) == (2, 15, 20)
    # And an entry changed on its fourth page is named there
    await trail.as_superuser(
        'UPDATE audit_log SET detail = \'{"stage": "forged"}\' WHERE chain = $1 AND seq = 8',
        SCHOOL,
    )
    report = await verify.verify(trail.conn, trail.store, trail.roots, page_rows=2)
    assert codes(report)[0] == ("entry_altered", SCHOOL, 8)


async def test_a_second_signed_entry_for_a_signature_is_judged_across_a_page_end(
    trail: Trail,
) -> None:
    # Given a record, and a second `signed` entry for its first signature, saying another
    # signer (written through the trigger, so the chain itself stays whole)
    await trail.issue(SCHOOL, "R-1")
    await trail.conn.execute(
        """INSERT INTO audit_log (school_id, record_id, action, detail)
           VALUES ($1, 'R-1', 'signed', '{"stage": "homeroom_teacher", "signer_id": "forged"}')""",
        SCHOOL,
    )
    # When the trail is walked one row a statement, the two rows on either side of a page end
    report = await verify.verify(trail.conn, trail.store, trail.roots, page_rows=1)
    # Then the second entry is judged as a one-page walk judges it
    whole = await trail.verify()
    assert codes(whole) == [("signature_disagrees", SCHOOL, 4)]
    assert codes(report) == codes(whole)
