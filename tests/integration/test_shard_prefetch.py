"""The sign shards' prefetch, as the broker sees it (README "Fairness between schools").

Each shard's consumer holds amqp.sign_shard_prefetch unacknowledged requests, by
default twice the handlers, so a handler that finishes finds the next request already
delivered; hocba.sign keeps amqp.prefetch. Read from RabbitMQ itself (rabbitmqctl).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from urllib.parse import unquote, urlsplit

from daemon import app, topology
from daemon.settings import Settings
from tests import services


def _prefetch_by_queue(vhost: str) -> dict[str, int]:
    """Each consumed queue of `vhost` and its consumer's prefetch count (one consumer each)."""
    endpoints = services.endpoints
    if endpoints.rabbitmq_node is None:
        command, env = ["rabbitmqctl"], None
    else:
        command = [str(services.RABBITMQ_LIB / "rabbitmqctl"), "-n", endpoints.rabbitmq_node]
        env = {**os.environ, **dict(endpoints.rabbitmq_env)}
    listed = subprocess.run(
        [*command, "-s", "list_consumers", "-p", vhost, "queue_name", "prefetch_count"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout
    rows = [line.split("\t") for line in listed.splitlines() if line.strip()]
    return {name: int(count) for name, count in rows}


def _with_shard_prefetch(settings: Settings, prefetch: int) -> Settings:
    amqp = settings.amqp.model_copy(update={"sign_shard_prefetch": prefetch})
    return settings.model_copy(update={"amqp": amqp})


async def _consumed_with(settings: Settings) -> dict[str, int]:
    vhost = unquote(urlsplit(settings.amqp.url).path[1:]) or "/"
    stop = asyncio.Event()
    async with app.started(settings, stop):
        listed = await asyncio.to_thread(_prefetch_by_queue, vhost)
        stop.set()
    sign = [topology.SIGN_QUEUE, *topology.shard_queue_names(settings.amqp)]
    return {name: count for name, count in listed.items() if name in sign}


async def test_each_shard_consumer_holds_twice_the_handlers_by_default(settings: Settings) -> None:
    # Given an instance without amqp.sign_shard_prefetch
    handlers = min(settings.amqp.prefetch, max(8, 4 * settings.hsm.workers))

    # When it consumes
    consumed = await _consumed_with(_with_shard_prefetch(settings, 0))

    # Then every shard's consumer holds twice the handlers, hocba.sign amqp.prefetch
    shards = topology.shard_queue_names(settings.amqp)
    assert len(shards) == settings.amqp.sign_shards > 0
    assert consumed == {
        topology.SIGN_QUEUE: settings.amqp.prefetch,
        **{name: 2 * handlers for name in shards},
    }


async def test_the_shard_prefetch_is_the_configured_one(settings: Settings) -> None:
    # Given amqp.sign_shard_prefetch = 5
    # When an instance consumes
    consumed = await _consumed_with(_with_shard_prefetch(settings, 5))

    # Then every shard's consumer holds 5, and hocba.sign still amqp.prefetch
    assert consumed == {
        topology.SIGN_QUEUE: settings.amqp.prefetch,
        **{name: 5 for name in topology.shard_queue_names(settings.amqp)},
    }
