"""A school's RabbitMQ user may publish sign requests for its own school only.

The recipe (also in the README): per school a user with no configure and no read
rights, write on `hocba.requests` only, and a topic permission that allows the
routing key `sign.<its school_id>` and nothing else. The broker itself then refuses
(ACCESS_REFUSED) a request published under another school's routing key.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from daemon import topology
from tests import services

SCHOOL, OTHER = "31000101", "31000102"


def school_user(vhost: str, school_id: str, password: str) -> str:
    user = f"school-{school_id}"
    services.rabbitmqctl("add_user", user, password)
    services.rabbitmqctl("set_permissions", "-p", vhost, user, "^$", r"^hocba\.requests$", "^$")
    services.rabbitmqctl(
        "set_topic_permissions", "-p", vhost, user, topology.REQUESTS,
        rf"^sign\.{school_id}$", "^$",
    )  # fmt: skip
    return user


@pytest.fixture(scope="module")
def vhost(run_id: str) -> Iterator[str]:
    name = f"hocba-perm-{run_id}"
    services.create_vhost(name)
    yield name
    services.delete_vhost(name)


@pytest.fixture(scope="module")
def school_url(vhost: str, run_id: str) -> Iterator[str]:
    # Hex: a URL-safe token starts with '-' one time in 64, which rabbitmqctl reads as
    # an option (exit 64, the fixture fails).
    password = secrets.token_hex(16)
    user = school_user(vhost, SCHOOL, password)
    yield services.amqp_url(vhost, user, password)
    services.rabbitmqctl("delete_user", user)


@pytest.fixture
async def sign_queue(vhost: str) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """As the operator (guest): the requests exchange and a queue of everything sent."""
    async with await aio_pika.connect(services.amqp_url(vhost)) as conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            topology.REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(topology.STATUS, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("sign-all", durable=False)
        await queue.bind(exchange, "sign.#")
        await queue.purge()
        yield queue
        await queue.delete(if_unused=False, if_empty=False)


async def _publish(url: str, exchange: str, routing_key: str) -> None:
    async with await aio_pika.connect(url) as conn:
        channel = await conn.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)
        # A refusal closes the channel; make sure it reached us before leaving.
        await asyncio.sleep(0)
        await channel.get_exchange(exchange, ensure=False)


async def test_a_school_publishes_under_its_own_routing_key(
    school_url: str, sign_queue: aio_pika.abc.AbstractQueue
) -> None:
    # When the school publishes a request for itself
    await _publish(school_url, topology.REQUESTS, f"sign.{SCHOOL}")

    # Then the broker routes it
    message = await sign_queue.get(timeout=5)
    assert message.routing_key == f"sign.{SCHOOL}"


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [
        (topology.REQUESTS, f"sign.{OTHER}"),
        (topology.REQUESTS, "sign.#"),
        (topology.REQUESTS, f"sign.{SCHOOL}.x"),
        (topology.STATUS, f"status.{SCHOOL}.issued"),
    ],
    ids=["another-school", "wildcard", "suffix", "status-exchange"],
)
async def test_the_broker_refuses_anything_else(
    school_url: str, sign_queue: aio_pika.abc.AbstractQueue, exchange: str, routing_key: str
) -> None:
    # When the school publishes under another school's key (or to another exchange)
    with pytest.raises(ChannelAccessRefused) as refused:
        await _publish(school_url, exchange, routing_key)

    # Then the broker refuses with ACCESS_REFUSED, and nothing was routed
    assert "ACCESS_REFUSED" in str(refused.value)
    assert await sign_queue.get(fail=False) is None


async def test_a_school_user_cannot_read_the_queues(
    school_url: str, sign_queue: aio_pika.abc.AbstractQueue
) -> None:
    async with await aio_pika.connect(school_url) as conn:
        channel = await conn.channel()
        with pytest.raises(ChannelAccessRefused):
            queue = await channel.get_queue(sign_queue.name, ensure=False)
            await queue.get(fail=False)
