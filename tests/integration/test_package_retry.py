"""A package request that failed for a moment waits in the broker, not in the handler.

Against the real RabbitMQ: the copy goes through `hocba.package.retry`, waits in its
delay queue, comes back through `hocba.package.return` to `hocba.package`, and is
tried again; nothing is left behind and nothing reaches the sign queue.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field

import aio_pika

from consumers.package_requests import PackageRequestConsumer
from daemon import topology
from daemon.errors import DatabaseUnavailable
from daemon.settings import Settings
from tests.services import dead_letters

SCHOOL = "31000102"


@dataclass
class FlakyRunner:
    """Fails the first attempt at this year's package, then builds nothing."""

    year: str
    attempts_s: list[float] = field(default_factory=list)
    twice: asyncio.Event = field(default_factory=asyncio.Event)

    async def package(self, school_id: str, year: str, round_: int, *, submit: bool) -> None:
        if year != self.year:
            return  # another test's request, still queued: nothing to package
        self.attempts_s.append(time.monotonic())
        if len(self.attempts_s) == 1:
            raise DatabaseUnavailable("The database restarts.")
        self.twice.set()


async def _depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(name, passive=True)
    return declared.message_count or 0


async def test_a_transient_failure_comes_back_through_the_package_delay_queue(
    settings: Settings,
) -> None:
    start = 2100 + random.randrange(800)
    runner = FlakyRunner(f"{start}-{start + 1}")
    request_id = str(uuid.uuid4())
    async with await aio_pika.connect(settings.amqp.url) as connection:
        channel = await connection.channel(on_return_raises=True)
        topo = await topology.declare(channel, settings.amqp)
        sign_before = await _depth(channel, topology.SIGN_QUEUE)
        # Given an instance's package consumer whose first attempt fails for a moment
        consumer = PackageRequestConsumer(topo, runner, settings.amqp, "retry-test")
        await consumer.start()
        try:
            # When a school system asks for a package
            body = {
                "type": "hocba.package_request.v1",
                "request_id": request_id,
                "school_id": SCHOOL,
                "academic_year": runner.year,
                "submission_round": 1,
                "submit": False,
                "requested_at": "2026-06-23T08:00:00+07:00",
            }
            message = aio_pika.Message(
                json.dumps(body).encode(), content_type="application/json", message_id=request_id
            )
            await topo.requests.publish(message, routing_key=f"package.{SCHOOL}")
            # Then it is tried again, once its first delay has passed in the broker
            async with asyncio.timeout(30):
                await runner.twice.wait()
        finally:
            await consumer.stop()
        first_delay_s = topology.delay_ms(1, settings.amqp) / 1000
        assert len(runner.attempts_s) == 2
        assert runner.attempts_s[1] - runner.attempts_s[0] >= first_delay_s * 0.9
        # And nothing is left waiting, nor routed to the sign queue
        for name in topology.retry_queue_names(settings.amqp):
            if name.startswith(topology.PACKAGE_QUEUE):
                assert await _depth(channel, name) == 0, name
        assert await _depth(channel, topology.SIGN_QUEUE) == sign_before
    dead = await dead_letters(settings.amqp.url, topology.PACKAGE_DEAD_QUEUE)
    assert request_id not in {m.message_id for m in dead}
