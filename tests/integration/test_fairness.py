"""Fairness between schools on a real RabbitMQ: the sign shards (daemon/topology.py).

A burst from one school fills its own shard; another school's requests, sent after it,
finish long before the burst does. A request goes to one shard only, and one that sits
in hocba.sign (an older instance's queue) is still consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest

from daemon import app, topology
from daemon.errors import ServiceUnusable
from daemon.settings import Settings
from tests.integration.conftest import Published, SchoolSystem

BURST = 120
SMALL = 5


class Arrivals:
    """Every status event on hocba.status, in the order they arrive."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self._arrived = asyncio.Condition()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            async with self._arrived:
                self.events.append(json.loads(message.body))
                self._arrived.notify_all()

    def finished(self, sent: list[Published]) -> list[str]:
        """The request ids of `sent` that have an event, in the order their first arrived."""
        ids = {p.request_id for p in sent}
        order: list[str] = []
        for event in self.events:
            rid = str(event["request_id"])
            if rid in ids and rid not in order:
                order.append(rid)
        return order

    def count(self, request_id: str) -> int:
        return sum(1 for e in self.events if str(e["request_id"]) == request_id)

    async def wait_all(self, sent: list[Published], timeout_s: float = 240, each: int = 1) -> None:
        """Until every request of `sent` has `each` events."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(
                lambda: all(self.count(p.request_id) >= each for p in sent)
            )


@pytest.fixture
async def arrivals(settings: Settings) -> AsyncIterator[Arrivals]:
    collected = Arrivals()
    async with await aio_pika.connect(settings.amqp.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.STATUS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(collected.on_message)
        yield collected


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel of our own on the test vhost, with the topology declared."""
    async with await aio_pika.connect(settings.amqp.url) as connection:
        channel = await connection.channel()
        await topology.declare(channel, settings.amqp)
        yield channel


async def shard_of(channel: aio_pika.abc.AbstractChannel, school: str, settings: Settings) -> str:
    """The shard a school's requests land in, found by routing a probe (no daemon runs)."""
    requests = await channel.get_exchange(topology.REQUESTS)
    probe = f"probe-{school}"
    await requests.publish(aio_pika.Message(b"{}", message_id=probe), routing_key=f"sign.{school}")
    for name in topology.shard_queue_names(settings.amqp):
        queue = await channel.get_queue(name)
        while (message := await queue.get(fail=False)) is not None:
            if message.message_id == probe:
                await message.ack()
                return name
            await message.nack(requeue=True)
            break
    raise AssertionError(f"the probe of school {school} reached no shard")


async def two_schools_on_two_shards(
    channel: aio_pika.abc.AbstractChannel, school_system: SchoolSystem, settings: Settings
) -> tuple[str, str]:
    schools = school_system.env.schools
    shards = {school: await shard_of(channel, school, settings) for school in schools}
    for a in schools:
        for b in schools:
            if shards[a] != shards[b]:
                return a, b
    pytest.fail(f"every dev school hashes to one shard: {shards}")


async def depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    declared = await channel.declare_queue(name, passive=True)
    return declared.declaration_result.message_count or 0


async def test_a_burst_from_one_school_does_not_hold_back_another(
    settings: Settings, school_system: SchoolSystem, arrivals: Arrivals
) -> None:
    async with broker(settings) as channel:
        big, small = await two_schools_on_two_shards(channel, school_system, settings)

        # Given a burst from one school, and a few requests from another sent after it,
        # all waiting before any instance consumes
        burst = [(await school_system.first_stage(big))[2] for _ in range(BURST)]
        few = [(await school_system.first_stage(small))[2] for _ in range(SMALL)]

        # When an instance starts consuming
        stop = asyncio.Event()
        async with app.started(settings, stop):
            await arrivals.wait_all(few)
            burst_done_when_few_done = len(arrivals.finished(burst))
            await arrivals.wait_all(burst)
            stop.set()

        # Then the small school finished before the burst was half done (one FIFO
        # queue would have served it last), and every request finished exactly once
        assert burst_done_when_few_done < BURST // 2, burst_done_when_few_done
        print(f"burst done when the small school was: {burst_done_when_few_done}/{BURST}")
        for name in [topology.SIGN_QUEUE, *topology.shard_queue_names(settings.amqp)]:
            assert await depth(channel, name) == 0, name


async def test_each_request_is_signed_once_across_shards_and_instances(
    settings: Settings, school_system: SchoolSystem, arrivals: Arrivals
) -> None:
    async with broker(settings) as channel:
        # Given requests from every school; some of them also reach hocba.sign, as while
        # an older instance had bound it again (the upgrade window); and one request
        # only in hocba.sign, as an older instance left it there
        sent: list[Published] = []
        for school in school_system.env.schools:
            sent += [(await school_system.first_stage(school))[2] for _ in range(4)]
        old = await channel.declare_exchange("test.old-binding", aio_pika.ExchangeType.TOPIC)
        sign_queue = await channel.get_queue(topology.SIGN_QUEUE)
        await sign_queue.bind(old, routing_key="sign.#")
        old_system = SchoolSystem(school_system.env, old)
        twins = sent[::3]
        for twin in twins:
            await old_system.publish(twin.routing_key, twin.body, twin.request_id)
        only_old = (await old_system.first_stage(school_system.env.schools[0]))[2]
        assert await depth(channel, topology.SIGN_QUEUE) == len(twins) + 1

        # When two instances consume every shard and hocba.sign
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            running = [
                await stack.enter_async_context(
                    app.started(settings.model_copy(update={"instance": f"fair-{n}"}), stop)
                )
                for n in range(2)
            ]
            await arrivals.wait_all([*sent, only_old])
            await arrivals.wait_all(twins, each=2)
            async with running[0].db.connection() as conn:
                signatures = await conn.fetch(
                    "SELECT request_id::text AS rid, count(*) AS n FROM signatures "
                    "WHERE request_id = ANY($1::uuid[]) GROUP BY request_id",
                    [p.request_id for p in [*sent, only_old]],
                )
            stop.set()

        # Then every request is signed exactly once, its twin answered with the same
        # status, and nothing is left in any sign queue
        assert sorted(r["rid"] for r in signatures) == sorted(
            p.request_id for p in [*sent, only_old]
        )
        assert {r["n"] for r in signatures} == {1}
        for twin in twins:
            states = {
                str(e["state"]) for e in arrivals.events if e["request_id"] == twin.request_id
            }
            assert states == {"signed_by_teacher"}, states
        for name in [topology.SIGN_QUEUE, *topology.shard_queue_names(settings.amqp)]:
            assert await depth(channel, name) == 0, name


async def test_a_broker_without_the_hash_exchange_is_named_with_its_fix(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that does not know the shards' exchange type (as without the plugin)
    monkeypatch.setattr(topology, "CONSISTENT_HASH", "x-hocba-test-no-such-type")

    # When an instance declares the topology
    with pytest.raises(ServiceUnusable) as refused:
        async with broker(settings):
            pass

    # Then the error says what is missing and how to enable it, not a traceback
    assert "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange" in refused.value.message
    assert "amqp.sign_shards = 0" in refused.value.message
