"""The settle policy both consumers share: how a delivery ends, for each verdict."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from consumers.settle import (
    ATTEMPT_HEADER,
    Done,
    Postponed,
    Refused,
    Settler,
    Transient,
)
from daemon import amqp, topology
from daemon.backoff import retry_delay_ms
from daemon.errors import BrokerUnavailable, DatabaseUnavailable, HsmUnavailable, NotAPdf
from daemon.settings import AmqpSettings
from tests.unit.amqp_fakes import FakeExchange, FakeMessage

SETTINGS = AmqpSettings(max_attempts=4, retry_base_ms=100, retry_cap_ms=300, delivery_limit=5)


@pytest.fixture
def message() -> FakeMessage:
    return FakeMessage(body=b'{"x": 1}', routing_key="package.31000123", correlation_id="c-1")


def _settler(
    message: FakeMessage, timeout_s: float = 5.0
) -> tuple[Settler, FakeExchange, FakeExchange]:
    retry = FakeExchange("retry", journal=message.journal)
    dead = FakeExchange("dead", journal=message.journal)
    settler = Settler("package request", retry, dead, SETTINGS, "i-1", publish_timeout_s=timeout_s)
    return settler, retry, dead


async def test_done_is_acknowledged_and_copied_nowhere(message: FakeMessage) -> None:
    settler, retry, dead = _settler(message)
    await settler.settle(message, Done())
    assert message.journal == ["ack"]
    assert not retry.published and not dead.published


async def test_a_refusal_is_dead_lettered_with_its_reason_before_the_ack(
    message: FakeMessage,
) -> None:
    settler, _, dead = _settler(message)
    await settler.settle(message, Refused.because(NotAPdf("The document is encrypted.")))
    assert message.journal == ["publish:dead", "ack"]
    ((letter, key),) = dead.published
    assert key == "package.31000123"
    assert letter.body == message.body and letter.message_id == message.message_id
    assert letter.correlation_id == "c-1"
    assert letter.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert letter.headers["x-hocba-reason-code"] == "not_a_pdf"
    assert letter.headers["x-hocba-reason-message"] == "The document is encrypted."
    assert letter.headers[ATTEMPT_HEADER] == 1
    assert letter.headers["x-hocba-instance"] == "i-1"


async def test_each_transient_failure_waits_longer_in_a_declared_delay_queue(
    message: FakeMessage,
) -> None:
    settler, retry, dead = _settler(message)
    for before in range(SETTINGS.max_attempts - 1):
        message.headers = {ATTEMPT_HEADER: before}
        await settler.settle(message, Transient(HsmUnavailable("x")))
    waits = [int(copy.headers[topology.RETRY_HEADER]) for copy, _ in retry.published]
    assert waits == [100, 200, 300]
    assert waits == [retry_delay_ms(a, 100, 300) for a in (1, 2, 3)]
    assert set(waits) <= set(topology.delays_ms(SETTINGS))
    assert [copy.headers[ATTEMPT_HEADER] for copy, _ in retry.published] == [1, 2, 3]
    assert not dead.published and message.settled == ["ack"] * 3


async def test_after_the_last_attempt_a_transient_failure_is_dead_lettered(
    message: FakeMessage,
) -> None:
    settler, retry, dead = _settler(message)
    message.headers = {ATTEMPT_HEADER: SETTINGS.max_attempts - 1}
    assert settler.last_attempt(message)
    await settler.settle(message, Transient(DatabaseUnavailable("down")))
    ((letter, _),) = dead.published
    assert letter.headers["x-hocba-reason-code"] == "database_unavailable"
    assert letter.headers[ATTEMPT_HEADER] == SETTINGS.max_attempts
    assert not retry.published and message.journal == ["publish:dead", "ack"]


async def test_postponed_waits_again_even_after_the_last_attempt(message: FakeMessage) -> None:
    settler, retry, dead = _settler(message)
    message.headers = {ATTEMPT_HEADER: 50}
    await settler.settle(message, Postponed(DatabaseUnavailable("down")))
    ((copy, _),) = retry.published
    assert int(copy.headers[topology.RETRY_HEADER]) == max(topology.delays_ms(SETTINGS))
    assert not dead.published and message.settled == ["ack"]


async def test_a_copy_the_broker_refuses_hands_the_delivery_back(message: FakeMessage) -> None:
    settler, retry, _ = _settler(message)
    retry.fail = True
    await settler.settle(message, Transient(HsmUnavailable("x")))
    assert message.settled == ["nack(requeue=True)"]


async def test_a_copy_never_confirmed_hands_the_delivery_back_in_time(
    message: FakeMessage,
) -> None:
    # Given a broker that takes the copy but never confirms it (a memory alarm)
    settler, _, dead = _settler(message, timeout_s=0.05)
    dead.hang = True
    # When the refusal is settled
    async with asyncio.timeout(5):
        await settler.settle(message, Refused("not_a_pdf", "m"))
    # Then the delivery goes back to the queue instead of being acknowledged
    assert message.settled == ["nack(requeue=True)"]


async def test_a_channel_gone_before_the_ack_loses_nothing_and_raises_nothing(
    message: FakeMessage,
) -> None:
    settler, _, _ = _settler(message)
    message.channel_closed = True
    await settler.settle(message, Done())
    assert message.settled == []  # the broker redelivers it on another channel


def test_a_crash_loop_shows_before_the_broker_would_drop_the_message() -> None:
    settler, _, _ = _settler(FakeMessage())
    assert not settler.crash_looping(FakeMessage(headers={"x-delivery-count": 3}))
    assert settler.crash_looping(FakeMessage(headers={"x-delivery-count": 4}))
    assert not settler.crash_looping(FakeMessage(headers={"x-delivery-count": "4"}))


def test_an_attempt_header_that_is_not_a_count_starts_over() -> None:
    settler, _, _ = _settler(FakeMessage())
    assert settler.attempt(FakeMessage(headers={ATTEMPT_HEADER: "7"})) == 1
    assert settler.attempt(FakeMessage(headers={ATTEMPT_HEADER: -3})) == 1
    assert settler.attempt(FakeMessage(headers={ATTEMPT_HEADER: 2})) == 3


@pytest.mark.parametrize(
    "failure",
    [
        AMQPError("closed"),
        ChannelInvalidStateError("not open"),
        ConnectionResetError("reset"),
        TimeoutError(),
    ],
)
def test_broker_failures_become_broker_unavailable_with_their_cause(failure: Exception) -> None:
    with pytest.raises(BrokerUnavailable) as raised, amqp.translated("publishing"):
        raise failure
    assert raised.value.__cause__ is failure
    assert raised.value.code == "broker_unavailable"
    assert type(failure).__name__ in raised.value.message


def test_a_bug_is_not_mistaken_for_the_broker() -> None:
    with pytest.raises(KeyError), amqp.translated("publishing"):
        raise KeyError("bug")
