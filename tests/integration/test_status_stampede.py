"""N instances whose cached status answer expires at once ask the responder once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from cryptography import x509

from daemon import migrate
from daemon.database import Database
from daemon.dev import env as devenv
from daemon.hsm import SigningPool
from daemon.ltv.status import CertificateStatus, DatabaseStatusCache
from daemon.settings import DatabaseSettings
from tests import services
from tests.pki_services_fixtures import *  # noqa: F403
from tests.pki_services_fixtures import SERVICED_SCHOOL, ServicedHsm

pytestmark = pytest.mark.integration

# A waiter is visible in pg_locks within milliseconds; this only bounds a failure.
_WAITER_DEADLINE_S = 10.0


@pytest.fixture
async def database(run_id: str) -> AsyncIterator[tuple[str, list[Database]]]:
    """A migrated database of its own, and two pools on it: two instances' views."""
    name = f"hocba_test_{run_id}_stampede"
    dsn = services.dsn(name)
    await devenv.ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
        await conn.execute("DELETE FROM certificate_status")
    finally:
        await conn.close()
    pools = [Database(DatabaseSettings(dsn=dsn)) for _ in range(2)]
    for pool in pools:
        await pool.open()
    try:
        yield dsn, pools
    finally:
        for pool in pools:
            await pool.close()
        await services.drop_database(name)


async def _certificate(serviced: ServicedHsm, signer_id: str) -> tuple[x509.Certificate, ...]:
    pool = SigningPool(serviced.dev.settings(1), serviced.signing("B-B"))
    await pool.start()
    try:
        key = serviced.dev.key(SERVICED_SCHOOL, signer_id)
        cert = x509.load_der_x509_certificate((await pool.certificate(key)).dump())
        issuer = x509.load_der_x509_certificate((await pool.chain())[0].dump())
    finally:
        await pool.close()
    return cert, issuer


async def _waiting_for_lock(dsn: str) -> None:
    """Return once some session waits for an advisory lock (the second checker)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = asyncio.get_running_loop().time() + _WAITER_DEADLINE_S
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        while not await conn.fetchval(query):
            assert asyncio.get_running_loop().time() < deadline, "nobody waits for the lock"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def _checkers(
    serviced: ServicedHsm, session: aiohttp.ClientSession, pools: list[Database]
) -> list[CertificateStatus]:
    settings = serviced.signing("B-B")
    return [CertificateStatus(session, DatabaseStatusCache(db, 10.0), settings) for db in pools]


async def test_two_instances_on_a_cold_cache_ask_the_responder_once(
    serviced_hsm: ServicedHsm, database
) -> None:
    dsn, pools = database
    cert, issuer = await _certificate(serviced_hsm, "BGH-0001")
    async with aiohttp.ClientSession() as session:
        first, second = _checkers(serviced_hsm, session, pools)
        before = serviced_hsm.running.counts["ocsp"]
        # Given a slow responder, and the first instance asking it (holding the lock)
        held = serviced_hsm.running.hold("ocsp")
        try:
            asking = asyncio.create_task(first.answer(cert, issuer))
            await held.arrived.wait()
            waiting = asyncio.create_task(second.answer(cert, issuer))
            # When the second instance needs the same certificate's status meanwhile,
            # it waits on the lock rather than asking the responder too
            await _waiting_for_lock(dsn)
            assert not asking.done() and not waiting.done()
        finally:
            held.release()
        answers = await asyncio.gather(asking, waiting)

    # Then the responder was asked once, and both use that one answer
    assert serviced_hsm.running.counts["ocsp"] - before == 1
    assert answers[0] is not None and answers[1] is not None
    assert answers[0].status == answers[1].status == "good"
    assert answers[0].answer == answers[1].answer


async def test_an_answer_that_just_expired_serves_while_one_instance_refreshes(
    serviced_hsm: ServicedHsm, database
) -> None:
    _, pools = database
    cert, issuer = await _certificate(serviced_hsm, "SEAL")
    async with aiohttp.ClientSession() as session:
        first, second = _checkers(serviced_hsm, session, pools)
        # Given an answer in the shared cache, which expired a moment ago for everyone
        old = await first.answer(cert, issuer)
        assert old is not None
        async with pools[0].connection() as conn:
            await conn.execute(
                "UPDATE certificate_status SET next_update = $1",
                datetime.now(UTC) - timedelta(seconds=2),
            )
        first, second = _checkers(serviced_hsm, session, pools)  # empty memories
        before = serviced_hsm.running.counts["ocsp"]
        held = serviced_hsm.running.hold("ocsp")
        try:
            # When one instance refreshes it from a slow responder
            refreshing = asyncio.create_task(first.answer(cert, issuer))
            await held.arrived.wait()
            # Then the other uses the answer that just expired, without waiting
            stale = await asyncio.wait_for(second.answer(cert, issuer), 5)
            assert stale is not None and stale.answer == old.answer
            assert not refreshing.done()
        finally:
            held.release()
        fresh = await refreshing

    # and the responder was asked once, for a fresh answer that the cache now holds
    assert serviced_hsm.running.counts["ocsp"] - before == 1
    assert fresh is not None and fresh.next_update > datetime.now(UTC)
    async with pools[1].connection() as conn:
        stored = await conn.fetchval("SELECT next_update FROM certificate_status")
    assert stored == fresh.next_update
