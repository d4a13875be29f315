"""How a delivery ends, one policy for every consumer.

A handler turns a delivery into a verdict; `Settler.settle` is the one place the
delivery is then acknowledged, and only once the copy it implies is confirmed:

    Done          ack
    Refused       copy to hocba.dead with the reason in headers, then ack
    Transient     copy to the work queue's delay queue (capped exponential backoff),
                  then ack; after `amqp.max_attempts`, dead-letter it as Refused
    Postponed     to the delay queue whatever the attempt (its refusal could not be
                  stored yet, so it must not be dead-lettered silently)

A batch (`settle_many`) publishes its copies together, then acknowledges together:
one `multiple` ack for a run of a channel's deliveries where that is safe.

Nothing sleeps while it holds a delivery: a message that must wait waits in a delay
queue, and the prefetch slot is free for the next. A copy the broker refuses or does
not confirm in time hands the delivery back (nack, requeue) instead of acknowledging
it; redelivery is safe because every handler is idempotent. A cancelled handler
settles nothing, and the broker redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractMessage

from consumers.acks import Acks
from daemon import amqp, topology
from daemon.errors import BrokerUnavailable, HocbaError, TransientError
from daemon.metrics import DEAD_LETTERS, RETRIES
from daemon.settings import AmqpSettings

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-hocba-attempt"
REASON_CODE_HEADER = "x-hocba-reason-code"
REASON_MESSAGE_HEADER = "x-hocba-reason-message"
INSTANCE_HEADER = "x-hocba-instance"
# The quorum queue counts its own redeliveries (crashes, nacks) in this header.
DELIVERY_COUNT_HEADER = "x-delivery-count"
PUBLISH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Done:
    """The outcome is stored: acknowledge."""


@dataclass(frozen=True)
class Refused:
    """Refused for good (its `rejected` status stored where there is one): dead-letter."""

    code: str
    message: str

    @classmethod
    def because(cls, error: HocbaError) -> Refused:
        return cls(error.code, error.message)


@dataclass(frozen=True)
class Transient:
    """Failed in a way a later attempt may fix: retry, or dead-letter after the last."""

    error: TransientError


@dataclass(frozen=True)
class Postponed:
    """Must be tried again later, even past the last attempt."""

    error: TransientError


Verdict = Done | Refused | Transient | Postponed


class Delivery(Protocol):
    """What the policy reads of an incoming message, and how it settles one."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime | None: ...

    async def ack(self) -> None: ...
    async def nack(self, *, requeue: bool = True) -> None: ...


class Exchange(Protocol):
    async def publish(
        self, message: AbstractMessage, routing_key: str, *, mandatory: bool = True
    ) -> Any: ...


@dataclass(frozen=True)
class Settler:
    """The settle policy of one work queue: its delay exchange, and hocba.dead."""

    what: str  # "sign request", "package request": for log lines
    retry: Exchange
    dead: Exchange
    settings: AmqpSettings
    instance: str
    publish_timeout_s: float = PUBLISH_TIMEOUT_S
    # Where the consumer tracks its deliveries' tags, to acknowledge runs of them at once.
    acks: Acks | None = None

    def attempt(self, delivery: Delivery) -> int:
        """Which attempt this delivery is (1-based), as counted by our own retries."""
        value = (delivery.headers or {}).get(ATTEMPT_HEADER, 0)
        return value + 1 if isinstance(value, int) and value >= 0 else 1

    def last_attempt(self, delivery: Delivery) -> bool:
        """True if a transient failure now must end the delivery rather than retry it."""
        return self.attempt(delivery) >= self.settings.max_attempts

    def crash_looping(self, delivery: Delivery) -> bool:
        """True once the queue has redelivered it so often that it would drop it next.

        The broker would dead-letter it without a reason: refuse it, with one, first.
        """
        value = (delivery.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
        count = value if isinstance(value, int) else 0
        return count >= self.settings.delivery_limit - 1

    async def settle(self, delivery: Delivery, verdict: Verdict) -> None:
        """The one place a delivery is acknowledged, after its copy (if any) is confirmed."""
        await self.settle_many([(delivery, verdict)])

    async def settle_many(self, settled: Sequence[tuple[Delivery, Verdict]]) -> None:
        """Each delivery's copy first (all at once), then the acknowledgements together.

        With `acks`, contiguous deliveries of a channel go in one frame (consumers/acks.py).
        """
        forwarded = await asyncio.gather(*(self._forwarded(d, v) for d, v in settled))
        ready = [d for (d, _), ok in zip(settled, forwarded, strict=True) if ok]
        if not ready:
            return
        try:
            with amqp.translated("settling"):
                if self.acks is None:
                    for delivery in ready:
                        await delivery.ack()
                else:
                    await self.acks.ack(ready)
        except BrokerUnavailable as exc:
            for delivery in ready:
                await self._hand_back(delivery, exc)

    async def _forwarded(self, delivery: Delivery, verdict: Verdict) -> bool:
        """True once the copy the verdict implies (if any) is confirmed; else handed back."""
        try:
            with amqp.translated("settling"):
                await self._forward(delivery, verdict)
        except BrokerUnavailable as exc:
            await self._hand_back(delivery, exc)
            return False
        return True

    async def _hand_back(self, delivery: Delivery, exc: BrokerUnavailable) -> None:
        # Not acknowledged: hand it back (the broker redelivers it) rather than hold a
        # prefetch slot until the channel dies.
        log.warning(
            "Could not settle %s %s; it goes back to the queue. %s",
            self.what,
            delivery.message_id,
            exc.message,
        )
        if self.acks is not None:
            self.acks.settled(delivery)
        with contextlib.suppress(BrokerUnavailable), amqp.translated("handing back"):
            await delivery.nack(requeue=True)

    async def _forward(self, delivery: Delivery, verdict: Verdict) -> None:
        attempt = self.attempt(delivery)
        match verdict:
            case Done():
                return
            case Refused(code, message):
                await self._dead_letter(delivery, attempt, code, message)
            case Transient(error) if self.last_attempt(delivery):
                log.warning(
                    "Giving up on %s %s after %d attempts: %s.",
                    self.what,
                    delivery.message_id,
                    attempt,
                    error.code,
                )
                await self._dead_letter(delivery, attempt, error.code, error.message)
            case Transient(error) | Postponed(error):
                await self._retry(delivery, attempt, error)

    async def _retry(self, delivery: Delivery, attempt: int, error: TransientError) -> None:
        delay_ms = topology.delay_ms(attempt, self.settings)
        headers = {ATTEMPT_HEADER: attempt, topology.RETRY_HEADER: str(delay_ms)}
        await self._copy(delivery, self.retry, headers)
        RETRIES.labels(error.code).inc()
        log.info(
            "Retrying %s %s in %d ms (attempt %d): %s.",
            self.what,
            delivery.message_id,
            delay_ms,
            attempt,
            error.code,
        )

    async def _dead_letter(self, delivery: Delivery, attempt: int, code: str, message: str) -> None:
        headers = {
            ATTEMPT_HEADER: attempt,
            REASON_CODE_HEADER: code,
            REASON_MESSAGE_HEADER: message,
            INSTANCE_HEADER: self.instance,
        }
        await self._copy(delivery, self.dead, headers)
        DEAD_LETTERS.labels(code).inc()
        log.info("Dead-lettered %s %s: %s.", self.what, delivery.message_id, code)

    async def _copy(self, delivery: Delivery, exchange: Exchange, headers: dict[str, Any]) -> None:
        """Publish a copy of the delivery, confirmed (and routed: mandatory) in time."""
        copy = aio_pika.Message(
            body=delivery.body,
            headers={**(delivery.headers or {}), **headers},
            content_type=delivery.content_type,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
            timestamp=delivery.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        async with asyncio.timeout(self.publish_timeout_s):
            await exchange.publish(copy, routing_key=delivery.routing_key or "", mandatory=True)
