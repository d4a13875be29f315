"""The RabbitMQ topology, declared idempotently by every instance at start-up.

    hocba.requests (topic) --sign.#--> hocba.sign (quorum) --x-dead-letter--> hocba.dead
    hocba.retry (headers, hocba-retry-ms=N) --> hocba.sign.retry.N (quorum, TTL N ms)
        --expired--> hocba.sign.return (fanout) --> hocba.sign
    hocba.dead (topic) --sign.#--> hocba.sign.dead (quorum)
    hocba.status (topic): status.<school_id>.<state>
    hocba.requests --package.#--> hocba.package (quorum) --x-dead-letter--> hocba.dead
    hocba.package.retry (headers, hocba-retry-ms=N) --> hocba.package.retry.N (quorum, TTL N)
        --expired--> hocba.package.return (fanout) --> hocba.package
    hocba.dead --package.#--> hocba.package.dead (quorum)
    hocba.requests --roster.#--> hocba.roster (quorum), with hocba.roster.retry and
        hocba.roster.return as the package queue's; hocba.dead --roster.#--> hocba.roster.dead

The consumers dead-letter refusals themselves (publishing to hocba.dead with the reason
in headers); the queue's own dead-lettering catches what exceeds the delivery limit,
such as a message that crashes every instance that takes it. Package requests wait in
delay queues of their own, behind an exchange of their own: a headers binding matches
every message that carries its header, so a package message sent to hocba.retry would
also land in the sign queue's delay queues and come back to hocba.sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from daemon.backoff import retry_delay_ms, retry_delays_ms
from daemon.settings import AmqpSettings

REQUESTS = "hocba.requests"
STATUS = "hocba.status"
DEAD = "hocba.dead"
RETRY = "hocba.retry"
RETURN = "hocba.sign.return"
PACKAGE_RETRY = "hocba.package.retry"
PACKAGE_RETURN = "hocba.package.return"
SIGN_QUEUE = "hocba.sign"
DEAD_QUEUE = "hocba.sign.dead"
PACKAGE_QUEUE = "hocba.package"
PACKAGE_DEAD_QUEUE = "hocba.package.dead"
ROSTER_QUEUE = "hocba.roster"
ROSTER_DEAD_QUEUE = "hocba.roster.dead"
ROSTER_RETRY = "hocba.roster.retry"
ROSTER_RETURN = "hocba.roster.return"
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
    package_retry: AbstractExchange | None = None
    roster_queue: AbstractQueue | None = None
    roster_retry: AbstractExchange | None = None


def _retried_attempts(settings: AmqpSettings) -> int:
    """The attempts after which a message waits in a delay queue (at least the first)."""
    return max(settings.max_attempts - 1, 1)


def delays_ms(settings: AmqpSettings) -> list[int]:
    """Every delay a message can wait, one delay queue each per work queue."""
    return retry_delays_ms(
        _retried_attempts(settings) + 1, settings.retry_base_ms, settings.retry_cap_ms
    )


def delay_ms(attempt: int, settings: AmqpSettings) -> int:
    """The delay queue a message waits in after failed attempt `attempt` (1-based).

    Past the last retried attempt (a give-up whose refusal could not be stored yet)
    it keeps the longest declared delay, so the copy always has a queue to go to.
    """
    retried = min(attempt, _retried_attempts(settings))
    return retry_delay_ms(retried, settings.retry_base_ms, settings.retry_cap_ms)


def retry_queue_names(settings: AmqpSettings) -> list[str]:
    """The delay queues of both work queues, as declared."""
    return [
        f"{queue}.retry.{delay}"
        for queue in (SIGN_QUEUE, PACKAGE_QUEUE, ROSTER_QUEUE)
        for delay in delays_ms(settings)
    ]


async def declare(channel: AbstractChannel, settings: AmqpSettings) -> Topology:
    requests = await channel.declare_exchange(REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True)
    status = await channel.declare_exchange(STATUS, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD, aio_pika.ExchangeType.TOPIC, durable=True)
    retry = await channel.declare_exchange(RETRY, aio_pika.ExchangeType.HEADERS, durable=True)
    back = await channel.declare_exchange(RETURN, aio_pika.ExchangeType.FANOUT, durable=True)

    sign_queue = await _declare_work_queue(channel, "sign", requests, dead, settings)
    await sign_queue.bind(back)
    await _declare_delay_queues(channel, SIGN_QUEUE, retry, RETURN, settings)

    package_queue = await _declare_work_queue(channel, "package", requests, dead, settings)
    package_retry = await channel.declare_exchange(
        PACKAGE_RETRY, aio_pika.ExchangeType.HEADERS, durable=True
    )
    package_back = await channel.declare_exchange(
        PACKAGE_RETURN, aio_pika.ExchangeType.FANOUT, durable=True
    )
    await package_queue.bind(package_back)
    await _declare_delay_queues(channel, PACKAGE_QUEUE, package_retry, PACKAGE_RETURN, settings)

    roster_queue = await _declare_work_queue(channel, "roster", requests, dead, settings)
    roster_retry = await channel.declare_exchange(
        ROSTER_RETRY, aio_pika.ExchangeType.HEADERS, durable=True
    )
    roster_back = await channel.declare_exchange(
        ROSTER_RETURN, aio_pika.ExchangeType.FANOUT, durable=True
    )
    await roster_queue.bind(roster_back)
    await _declare_delay_queues(channel, ROSTER_QUEUE, roster_retry, ROSTER_RETURN, settings)
    return Topology(
        requests,
        status,
        dead,
        retry,
        sign_queue,
        package_queue,
        package_retry,
        roster_queue=roster_queue,
        roster_retry=roster_retry,
    )


async def _declare_delay_queues(
    channel: AbstractChannel,
    work_queue: str,
    retry: AbstractExchange,
    back: str,
    settings: AmqpSettings,
) -> None:
    """`<work_queue>.retry.N` for each delay N: a message waits N ms, then goes `back`."""
    for delay in delays_ms(settings):
        queue = await channel.declare_queue(
            f"{work_queue}.retry.{delay}",
            durable=True,
            arguments={**_QUORUM_DLX, "x-dead-letter-exchange": back, "x-message-ttl": delay},
        )
        await queue.bind(retry, arguments={"x-match": "all", RETRY_HEADER: str(delay)})


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
