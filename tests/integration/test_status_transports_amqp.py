"""AmqpStatus on the real broker: what a subscriber receives, and what makes a batch fail.

AmqpStatus publishes below aio-pika's `Message`/`Exchange.publish`; a subscriber must
not see the difference, and a broker's refusal or a closed channel must still fail the
batch, so the relay keeps its rows and retries.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from daemon import topology
from daemon.errors import BrokerUnavailable
from daemon.messages import Reason, StatusEvent, StatusEventV2
from daemon.settings import Settings
from daemon.stages import Stage, State
from producers.status import Pending
from producers.transports import AmqpStatus

# What differs between two deliveries of equal messages.
_DELIVERY = {
    "delivery_tag",
    "redelivered",
    "consumer_tag",
    "exchange",
    "routing_key",
    "message_count",
}


def _event(school: str, state: State = State.SIGNED_BY_TEACHER, v2: bool = False) -> dict[str, Any]:
    model = StatusEventV2 if v2 else StatusEvent
    event = model(
        event_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        school_id=school,
        record_id=f"2025-2026-5A-{uuid.uuid4().hex[:4]}",
        state=state,
        stage=Stage.HOMEROOM_TEACHER,
        document_sha256="ab" * 32,
        signatures=1,
        reason=Reason(code="hash_mismatch", message="Tài liệu đã đổi")
        if state == "rejected"
        else None,
        at=datetime.now(UTC),
    )
    # As the relay has it: the stored JSON, parsed.
    return json.loads(event.model_dump_json())


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    async with await aio_pika.connect_robust(settings.amqp.url) as connection:
        yield await connection.channel()


@pytest.fixture
async def exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        topology.STATUS, aio_pika.ExchangeType.TOPIC, durable=True
    )


async def _take(queue: aio_pika.abc.AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    taken = []
    while len(taken) < count:
        message = await queue.get(no_ack=True, timeout=10)
        assert message is not None
        taken.append(message)
    return taken


async def test_a_subscriber_gets_the_body_key_and_properties_aio_pika_messages_carried(
    channel: AbstractChannel, exchange: AbstractExchange
) -> None:
    # Given a subscriber to one school's v1 and v2 status events
    school = "amqp-" + uuid.uuid4().hex[:8]
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, routing_key=f"status.{school}.#")
    await queue.bind(exchange, routing_key=f"status_v2.{school}.#")
    events = [_event(school), _event(school, State.REJECTED), _event(school, v2=True)]

    # When each event goes out as aio-pika's Exchange.publish sent it, then through AmqpStatus
    for event in events:
        reference = aio_pika.Message(
            body=json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode(),
            content_type="application/json",
            message_id=event["event_id"],
            type=event["type"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(reference, routing_key=AmqpStatus.routing_key(event))
    await AmqpStatus(exchange).publish([Pending(e, repeat=False) for e in events])

    # Then the subscriber receives each twice, the same both times
    received = await _take(queue, 2 * len(events))
    before, after = received[: len(events)], received[len(events) :]
    for event, old, new in zip(events, before, after, strict=True):
        assert new.body == old.body
        assert json.loads(new.body) == event
        assert new.routing_key == old.routing_key
        assert {k: v for k, v in new.info().items() if k not in _DELIVERY} == {
            k: v for k, v in old.info().items() if k not in _DELIVERY
        }
        assert new.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert (new.message_id, new.type, new.content_type) == (
            event["event_id"],
            event["type"],
            "application/json",
        )
    keys = [m.routing_key for m in after]
    assert keys == [
        f"status.{school}.signed_by_teacher",
        f"status.{school}.rejected",
        f"status_v2.{school}.signed_by_teacher",
    ]


async def test_a_batch_with_one_event_the_broker_refuses_fails(
    channel: AbstractChannel, exchange: AbstractExchange
) -> None:
    # Given a school whose status queue refuses every publish, beside one that takes them
    taking, refusing = "amqp-" + uuid.uuid4().hex[:8], "amqp-" + uuid.uuid4().hex[:8]
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, routing_key=f"status.{taking}.#")
    full = await channel.declare_queue(
        "", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(exchange, routing_key=f"status.{refusing}.#")
    transport = AmqpStatus(exchange)

    # When a batch holds one event for the refusing school among others
    batch = [_event(taking), _event(refusing), _event(taking)]

    # Then the broker's nack fails the batch (it was waited for), as ours
    with pytest.raises(BrokerUnavailable, match="confirming status events"):
        await transport.publish([Pending(e, repeat=False) for e in batch])
    # And the channel still publishes a batch the broker takes
    await transport.publish([Pending(_event(taking), repeat=False)])
    assert len(await _take(queue, 3)) == 3


async def test_a_closed_channel_fails_the_batch_so_the_relay_retries(
    channel: AbstractChannel, exchange: AbstractExchange
) -> None:
    transport = AmqpStatus(exchange)
    await channel.close()

    with pytest.raises(BrokerUnavailable, match="confirming status events"):
        await transport.publish([Pending(_event("amqp-closed"), repeat=False)])


async def test_a_long_batch_arrives_whole_and_in_order_and_the_next_follows(
    channel: AbstractChannel, exchange: AbstractExchange
) -> None:
    # Given a subscriber, and a batch of 300 events (the broker confirms them in runs)
    school = "amqp-" + uuid.uuid4().hex[:8]
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, routing_key=f"status.{school}.#")
    transport = AmqpStatus(exchange)
    batch = [_event(school) for _ in range(300)]

    # When it is published, then a second batch after it
    await transport.publish([Pending(e, repeat=False) for e in batch])
    after = [_event(school, State.SIGNED_BY_PRINCIPAL) for _ in range(3)]
    await transport.publish([Pending(e, repeat=False) for e in after])

    # Then the subscriber has every event once, in the order published
    received = await _take(queue, len(batch) + len(after))
    assert [m.message_id for m in received] == [e["event_id"] for e in [*batch, *after]]
    assert [json.loads(m.body) for m in received] == [*batch, *after]


async def test_events_of_a_school_no_one_subscribes_to_are_confirmed_not_failed(
    exchange: AbstractExchange,
) -> None:
    # Given no queue bound for a school (the broker returns each mandatory publish)
    lonely = "amqp-" + uuid.uuid4().hex[:8]
    transport = AmqpStatus(exchange)

    # When its events are published, Then the batch succeeds, as with aio-pika before
    await transport.publish([Pending(_event(lonely), repeat=False) for _ in range(5)])
    # And the channel still publishes
    await transport.publish([Pending(_event(lonely), repeat=False)])
