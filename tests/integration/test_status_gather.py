"""The relay under load (status.gather_ms): commits that come while it waits after a pass
leave in one pass together; an event after a quiet spell leaves in a pass of its own;
and what was committed while it waited leaves when it stops, not at the next leader's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
from prometheus_client import REGISTRY

from daemon import migrate, records, topology
from daemon.database import Database
from daemon.settings import Settings
from producers.status import Pending, StatusRelay
from producers.transports import AmqpStatus
from tests import services

SCHOOL = "31000301"


def _metrics() -> tuple[float, float]:
    """AMQP's published signed_by_teacher events and publication delays observed."""
    published = REGISTRY.get_sample_value(
        "hocba_status_events_published_total",
        {"transport": "amqp", "state": "signed_by_teacher"},
    )
    delays = REGISTRY.get_sample_value(
        "hocba_status_publish_delay_seconds_count", {"transport": "amqp"}
    )
    return published or 0.0, delays or 0.0


class Passes(AmqpStatus):
    """The real AMQP publisher, noting how many events each pass handed it."""

    sizes: list[int]

    async def publish(self, events: list[Pending]) -> None:
        await super().publish(events)
        self.sizes.append(len(events))


async def _published(db: Database, count: int) -> None:
    """Wait until the relay has published `count` events on AMQP."""
    while True:
        async with db.connection() as conn:
            done = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE amqp_published_at IS NOT NULL"
            )
        if done >= count:
            return
        await asyncio.sleep(0.02)


@dataclass
class Relaying:
    db: Database
    queue: aio_pika.abc.AbstractQueue
    transport: Passes
    stop: asyncio.Event
    running: asyncio.Task[None]

    async def received(self) -> int:
        count = 0
        while await self.queue.get(fail=False, no_ack=True) is not None:
            count += 1
        return count


@contextlib.asynccontextmanager
async def relaying(settings: Settings, gather_s: float) -> AsyncIterator[Relaying]:
    """A relay on AMQP alone, over a database of its own (it drains every pending row
    it can see), waiting `gather_s` after each pass that published."""
    async with services.scratch_database("hocba_gather") as (dsn, admin):
        await migrate.migrate(admin)
        # The relay's queries and marks with the daemon's privileges, not the admin's.
        as_daemon = services.same_role_on(settings.database.dsn, dsn)
        db = Database(settings.database.model_copy(update={"dsn": as_daemon}))
        await db.open()
        connection = await aio_pika.connect(settings.amqp.url)
        stop = asyncio.Event()
        running: asyncio.Task[None] | None = None
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                topology.STATUS, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue("", exclusive=True)
            await queue.bind(exchange, routing_key=f"status.{SCHOOL}.#")
            transport = Passes(exchange)
            transport.sizes = []
            relay = StatusRelay(db, [transport], sweep_s=30, gather_s=gather_s)
            running = asyncio.create_task(relay.run(stop))
            yield Relaying(db, queue, transport, stop, running)
        finally:
            stop.set()
            if running is not None:
                await asyncio.wait_for(running, 30)
            await connection.close()
            await db.close()


async def test_commits_during_the_wait_after_a_pass_leave_in_one_pass(
    settings: Settings,
) -> None:
    # Given a relay that waits a (long, for a slow machine) second after a pass
    before = _metrics()
    async with relaying(settings, gather_s=1.0) as relay:
        # When one event is committed after a quiet spell
        async with relay.db.transaction() as conn:
            await records.enqueue(conn, services.teacher_signed(SCHOOL, "G0000"))
        async with asyncio.timeout(30):
            await _published(relay.db, 1)
        # and then five more, each in a transaction of its own, as batches commit
        for n in range(1, 6):
            async with relay.db.transaction() as conn:
                await records.enqueue(conn, services.teacher_signed(SCHOOL, f"G{n:04d}"))
        async with asyncio.timeout(30):
            await _published(relay.db, 6)

        # Then the first left alone, the five together in the next pass
        assert relay.transport.sizes == [1, 5]
        assert await relay.received() == 6
        # and each is counted once by state, its delay observed once
        published, delays = _metrics()
        assert (published - before[0], delays - before[1]) == (6, 6)


async def test_what_was_committed_during_the_wait_leaves_when_the_relay_stops(
    settings: Settings,
) -> None:
    # Given a relay that waits long after a pass, and has just published one event
    async with relaying(settings, gather_s=30.0) as relay:
        async with relay.db.transaction() as conn:
            await records.enqueue(conn, services.teacher_signed(SCHOOL, "G0100"))
        async with asyncio.timeout(30):
            await _published(relay.db, 1)
        # When another is committed while it waits, and the instance stops
        async with relay.db.transaction() as conn:
            await records.enqueue(conn, services.teacher_signed(SCHOOL, "G0101"))
        relay.stop.set()
        await asyncio.wait_for(relay.running, 30)

        # Then that one left before the relay ended, in a last pass
        assert relay.transport.sizes == [1, 1]
        assert await relay.received() == 2
