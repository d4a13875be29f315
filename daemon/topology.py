"""The RabbitMQ topology, declared idempotently by every instance at start-up.

    hocba.requests (topic) --sign.#--> hocba.sign.shards (x-consistent-hash on the
        routing key, i.e. the school) --> hocba.sign.shard.<i> (quorum, i < amqp.sign_shards)
        --x-dead-letter--> hocba.dead
    hocba.sign (quorum) --x-dead-letter--> hocba.dead: the single queue of before the
        shards; still consumed (it drains), bound to sign.# only when amqp.sign_shards = 0
    hocba.retry (headers, hocba-retry-ms=N) --> hocba.sign.retry.N (quorum, TTL N ms)
        --expired--> hocba.sign.return (fanout) --> hocba.sign.shards (hocba.sign if 0 shards)
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

Fairness (README "Fairness between schools"): every school's requests hash to one shard,
and each instance consumes every shard with a small prefetch, so a school's burst fills
its own shard while the others keep flowing. A message goes to exactly one shard; the
shards are bound before hocba.sign is unbound, so a request published meanwhile lands
in both at worst (the pipeline is idempotent), never in neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import ConnectionCommandInvalid
from yarl import URL

from daemon.backoff import retry_delay_ms, retry_delays_ms
from daemon.errors import ServiceUnusable
from daemon.settings import AmqpSettings

REQUESTS = "hocba.requests"
STATUS = "hocba.status"
DEAD = "hocba.dead"
RETRY = "hocba.retry"
RETURN = "hocba.sign.return"
PACKAGE_RETRY = "hocba.package.retry"
PACKAGE_RETURN = "hocba.package.return"
SIGN_QUEUE = "hocba.sign"
SIGN_SHARDS = "hocba.sign.shards"
SIGN_SHARD_QUEUE = "hocba.sign.shard.{}"
# RabbitMQ's plugin rabbitmq_consistent_hash_exchange provides this exchange type.
CONSISTENT_HASH = "x-consistent-hash"
HASH_PLUGIN = "rabbitmq_consistent_hash_exchange"
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
    # hocba.sign.shard.<i>, on the channel given for them (their own prefetch).
    sign_shards: tuple[AbstractQueue, ...] = ()


def shard_queue_names(settings: AmqpSettings) -> list[str]:
    """The sign shards, as declared."""
    return [SIGN_SHARD_QUEUE.format(i) for i in range(settings.sign_shards)]


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


async def declare(
    channel: AbstractChannel,
    settings: AmqpSettings,
    shard_channel: AbstractChannel | None = None,
) -> Topology:
    """Declare everything on `channel`, the shard queues on `shard_channel` (default: the same)."""
    shards_exchange = await _declare_shards_exchange(channel, settings)
    requests = await channel.declare_exchange(REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True)
    status = await channel.declare_exchange(STATUS, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD, aio_pika.ExchangeType.TOPIC, durable=True)
    retry = await channel.declare_exchange(RETRY, aio_pika.ExchangeType.HEADERS, durable=True)
    back = await channel.declare_exchange(RETURN, aio_pika.ExchangeType.FANOUT, durable=True)

    sign_queue = await _declare_work_queue(
        channel, "sign", requests, dead, settings, bound=shards_exchange is None
    )
    shards: tuple[AbstractQueue, ...] = ()
    if shards_exchange is None:
        await sign_queue.bind(back)
    else:
        shards = await _declare_shards(shard_channel or channel, shards_exchange, settings)
        # Bound before hocba.sign is unbound: a request meanwhile goes to both, never neither.
        await shards_exchange.bind(requests, routing_key="sign.#")
        await shards_exchange.bind(back)
        await sign_queue.unbind(requests, routing_key="sign.#")
        await sign_queue.unbind(back)
    await _declare_delay_queues(channel, SIGN_QUEUE, retry, RETURN, settings)

    package_queue, package_retry = await _declare_retried_queue(
        channel, "package", PACKAGE_QUEUE, PACKAGE_RETRY, PACKAGE_RETURN, requests, dead, settings
    )
    roster_queue, roster_retry = await _declare_retried_queue(
        channel, "roster", ROSTER_QUEUE, ROSTER_RETRY, ROSTER_RETURN, requests, dead, settings
    )
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
        sign_shards=shards,
    )


async def _declare_shards_exchange(
    channel: AbstractChannel, settings: AmqpSettings
) -> AbstractExchange | None:
    """hocba.sign.shards, or None without shards; a clear error if the plugin is missing.

    Declared first: the broker closes the whole connection on an unknown exchange type,
    and nothing else should be half-declared when it does.
    """
    if settings.sign_shards == 0:
        return None
    try:
        return await channel.declare_exchange(SIGN_SHARDS, CONSISTENT_HASH, durable=True)
    except ConnectionCommandInvalid as exc:
        url = URL(settings.url)
        raise ServiceUnusable(
            "RabbitMQ",
            f"{url.host}:{url.port}",
            f"has no {CONSISTENT_HASH} exchange type (amqp.sign_shards = {settings.sign_shards})",
            f"enable its plugin with `rabbitmq-plugins enable {HASH_PLUGIN}` (online, on every "
            "node), or set amqp.sign_shards = 0 for the single queue of before",
        ) from exc


async def _declare_shards(
    channel: AbstractChannel,
    exchange: AbstractExchange,
    settings: AmqpSettings,
) -> tuple[AbstractQueue, ...]:
    """hocba.sign.shard.<i>, each with hocba.sign's arguments, one point each on the ring."""
    shards = []
    for name in shard_queue_names(settings):
        queue = await channel.declare_queue(name, durable=True, arguments=_work_arguments(settings))
        await queue.bind(exchange, routing_key="1")
        shards.append(queue)
    return tuple(shards)


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


async def _declare_retried_queue(
    channel: AbstractChannel,
    kind: str,
    queue_name: str,
    retry_name: str,
    return_name: str,
    requests: AbstractExchange,
    dead: AbstractExchange,
    settings: AmqpSettings,
) -> tuple[AbstractQueue, AbstractExchange]:
    """A work queue with its own delay exchange, delay queues and return route."""
    queue = await _declare_work_queue(channel, kind, requests, dead, settings)
    retry = await channel.declare_exchange(retry_name, aio_pika.ExchangeType.HEADERS, durable=True)
    back = await channel.declare_exchange(return_name, aio_pika.ExchangeType.FANOUT, durable=True)
    await queue.bind(back)
    await _declare_delay_queues(channel, queue_name, retry, return_name, settings)
    return queue, retry


async def _declare_work_queue(
    channel: AbstractChannel,
    kind: str,
    requests: AbstractExchange,
    dead: AbstractExchange,
    settings: AmqpSettings,
    *,
    bound: bool = True,
) -> AbstractQueue:
    """`hocba.<kind>`, bound to `<kind>.#` (if `bound`), and its dead-letter queue."""
    dead_queue = await channel.declare_queue(
        f"hocba.{kind}.dead", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead, routing_key=f"{kind}.#")
    queue = await channel.declare_queue(
        f"hocba.{kind}", durable=True, arguments=_work_arguments(settings)
    )
    if bound:
        await queue.bind(requests, routing_key=f"{kind}.#")
    return queue


def _work_arguments(settings: AmqpSettings) -> dict[str, Any]:
    """A work queue's: quorum, dead-lettered to hocba.dead past the delivery limit."""
    return {
        **_QUORUM_DLX,
        "x-dead-letter-exchange": DEAD,
        "x-delivery-limit": settings.delivery_limit,
    }
