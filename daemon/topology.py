"""The RabbitMQ topology, declared idempotently by every instance at start-up.

    hocba.requests (topic) --sign.#--> hocba.sign (quorum) --x-dead-letter--> hocba.dead
    hocba.retry (headers, hocba-retry-ms=N) --> hocba.sign.retry.N (quorum, TTL N ms)
        --expired--> hocba.sign.return (fanout) --> hocba.sign
    hocba.dead (topic) --sign.#--> hocba.sign.dead (quorum)
    hocba.status (topic): status.<school_id>.<state>
    hocba.requests --package.#--> hocba.package (quorum) --x-dead-letter--> hocba.dead
    hocba.dead --package.#--> hocba.package.dead (quorum)

The consumer dead-letters refusals itself (publishing to hocba.dead with the reason in
headers); the queue's own dead-lettering catches what exceeds the delivery limit, such
as a message that crashes every instance that takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import AMQPError

from daemon.backoff import retry_delays_ms
from daemon.settings import AmqpSettings

REQUESTS = "hocba.requests"
STATUS = "hocba.status"
DEAD = "hocba.dead"
RETRY = "hocba.retry"
RETURN = "hocba.sign.return"

# What a channel call raises when the broker closed the channel or went away.
CHANNEL_ERRORS: tuple[type[Exception], ...] = (
    AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
)
# The same, and the connection under it failing.
BROKER_ERRORS: tuple[type[Exception], ...] = (*CHANNEL_ERRORS, ConnectionError)
# A publish or acknowledgement that failed, or got no confirmation in time.
SEND_ERRORS: tuple[type[Exception], ...] = (*BROKER_ERRORS, TimeoutError)
SIGN_QUEUE = "hocba.sign"
DEAD_QUEUE = "hocba.sign.dead"
PACKAGE_QUEUE = "hocba.package"
PACKAGE_DEAD_QUEUE = "hocba.package.dead"
RETRY_HEADER = "hocba-retry-ms"

_QUORUM_DLX = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


@dataclass(frozen=True)
class Topology:
    requests: AbstractExchange
    status: AbstractExchange
    dead: AbstractExchange
    retry: AbstractExchange
    sign_queue: AbstractQueue
    package_queue: AbstractQueue | None = None


async def declare(channel: AbstractChannel, settings: AmqpSettings) -> Topology:
    requests = await channel.declare_exchange(REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True)
    status = await channel.declare_exchange(STATUS, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD, aio_pika.ExchangeType.TOPIC, durable=True)
    retry = await channel.declare_exchange(RETRY, aio_pika.ExchangeType.HEADERS, durable=True)
    back = await channel.declare_exchange(RETURN, aio_pika.ExchangeType.FANOUT, durable=True)

    sign_queue = await _declare_work_queue(channel, "sign", requests, dead, settings)
    await sign_queue.bind(back)

    delays = retry_delays_ms(settings.max_attempts, settings.retry_base_ms, settings.retry_cap_ms)
    for delay_ms in delays:
        queue = await channel.declare_queue(
            f"{SIGN_QUEUE}.retry.{delay_ms}",
            durable=True,
            arguments={**_QUORUM_DLX, "x-dead-letter-exchange": RETURN, "x-message-ttl": delay_ms},
        )
        await queue.bind(retry, arguments={"x-match": "all", RETRY_HEADER: str(delay_ms)})
    package_queue = await _declare_work_queue(channel, "package", requests, dead, settings)
    return Topology(requests, status, dead, retry, sign_queue, package_queue)


async def _declare_work_queue(
    channel: AbstractChannel,
    kind: str,
    requests: AbstractExchange,
    dead: AbstractExchange,
    settings: AmqpSettings,
) -> AbstractQueue:
    """`hocba.<kind>`, bound to `<kind>.#`, and its dead-letter queue `hocba.<kind>.dead`."""
    dead_queue = await channel.declare_queue(
        f"hocba.{kind}.dead", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead, routing_key=f"{kind}.#")
    queue = await channel.declare_queue(
        f"hocba.{kind}",
        durable=True,
        arguments={
            **_QUORUM_DLX,
            "x-dead-letter-exchange": DEAD,
            "x-delivery-limit": settings.delivery_limit,
        },
    )
    await queue.bind(requests, routing_key=f"{kind}.#")
    return queue
