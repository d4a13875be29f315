"""Inbound sign requests: decode at the edge, hand to the pipeline, settle in one place.

Every delivery ends in exactly one of three ways, and only after its result is durable:
acknowledged (outcome stored), sent to a delay queue (transient failure), or
dead-lettered with its reason in headers (refused, or out of retries). A cancelled
handler settles nothing: the broker redelivers the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from daemon import topology
from daemon.backoff import retry_delay_ms
from daemon.errors import (
    HocbaError,
    InternalError,
    InvalidMessage,
    TransientError,
)
from daemon.messages import SignRequest, decode_sign_request
from daemon.metrics import CONSUMING, DEAD_LETTERS, IN_FLIGHT, RETRIES
from daemon.pipeline import Outcome
from daemon.settings import AmqpSettings
from daemon.topology import Topology

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-hocba-attempt"
PUBLISH_TIMEOUT_S = 30.0
# Later stages' requests are a few KB: decoding one inline costs less than a thread hop.
INLINE_DECODE_BYTES = 16 * 1024
# get_underlay_channel raises RuntimeError too, on a channel not (re)opened yet.
_NO_CHANNEL: tuple[type[Exception], ...] = (*topology.CHANNEL_ERRORS, RuntimeError)
_SAFE_SCHOOL = re.compile(r"^sign\.([0-9A-Za-z_-]{1,32})$")


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Retry:
    attempt: int
    delay_ms: int
    error: TransientError


@dataclass(frozen=True)
class DeadLetter:
    code: str
    message: str
    attempts: int


Decision = Ack | Retry | DeadLetter


class Handler(Protocol):
    """What the consumer needs of the pipeline."""

    async def handle(self, request: SignRequest) -> Outcome: ...

    async def refuse(
        self,
        error: HocbaError,
        school_id: str,
        request: SignRequest | None = None,
        *,
        request_id: uuid.UUID | None = None,
        remember: bool = True,
    ) -> Outcome: ...


class SignRequestConsumer:
    def __init__(
        self,
        topo: Topology,
        pipeline: Handler,
        settings: AmqpSettings,
        instance: str,
        concurrency: int = 16,
    ) -> None:
        self._topo = topo
        self._pipeline = pipeline
        self._settings = settings
        self._instance = instance
        # Deliveries beyond this wait with only their AMQP body in memory: the HSM
        # workers set the pace, and more requests decoded, fetched and waiting for a
        # worker would only hold more PDFs.
        self._working = asyncio.Semaphore(concurrency)
        self._tag: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def consuming(self) -> bool:
        """True while the broker delivers to this instance's own consumer.

        The broker may cancel a consumer (queue leader moved, channel restored
        without it); the AMQP library then forgets the tag, and so does this check.
        """
        if self._tag is None or self._topo.sign_queue.channel.is_closed:
            return False
        try:
            underlay = await self._topo.sign_queue.channel.get_underlay_channel()
        except _NO_CHANNEL:
            return False
        consumers: dict[str, Any] = getattr(underlay, "consumers", {})
        return self._tag in consumers

    async def start(self) -> None:
        self._tag = await self._topo.sign_queue.consume(self._on_message)
        CONSUMING.set(1)
        log.info("Consuming %s.", topology.SIGN_QUEUE)

    async def repair(self) -> None:
        """Consume again after the broker cancelled this instance's consumer."""
        if self._tag is not None:
            try:
                await self._topo.sign_queue.cancel(self._tag)
            except topology.CHANNEL_ERRORS:
                pass
        self._tag = None
        await self.start()

    async def stop(self, timeout_s: float) -> None:
        """Stop taking messages; let in-flight ones finish within `timeout_s`."""
        if self._tag is not None:
            try:
                await self._topo.sign_queue.cancel(self._tag)
            except topology.CHANNEL_ERRORS:
                log.warning("Could not cancel the consumer cleanly; the broker will requeue.")
            self._tag = None
        CONSUMING.set(0)
        if self._handlers:
            log.info("Waiting for %d in-flight requests.", len(self._handlers))
            _, pending = await asyncio.wait(self._handlers, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        IN_FLIGHT.inc()
        try:
            async with self._working:
                decision = await self._decide(message)
                await self._settle(message, decision)
        finally:
            IN_FLIGHT.dec()
            self._handlers.discard(task)

    async def _decide(self, message: AbstractIncomingMessage) -> Decision:
        attempt = _attempt(message) + 1
        if _deliveries(message) >= self._settings.delivery_limit - 1:
            # The broker would drop it to the dead-letter exchange without a reason:
            # refuse it here, with one, while we still can.
            error = InternalError("The request was redelivered too often (crash loop?).")
            return await self._give_up(message, error, attempt)
        try:
            outcome = await self._outcome(message)
        except TransientError as exc:
            return await self._retry_or_give_up(message, exc, attempt)
        except Exception as exc:
            # A bug must not lose the message nor loop forever: retry, then dead-letter.
            log.exception("Unexpected error on message %s.", message.message_id)
            error = InternalError(f"Unexpected {type(exc).__name__} while handling the request.")
            return await self._retry_or_give_up(message, error, attempt)
        if outcome.rejected:
            assert outcome.event.reason is not None
            reason = outcome.event.reason
            return DeadLetter(reason.code, reason.message, attempt)
        return Ack()

    async def _outcome(self, message: AbstractIncomingMessage) -> Outcome:
        try:
            request = await self._decoded(message)
        except InvalidMessage as exc:
            return await self._pipeline.refuse(
                exc, _school_of(message.routing_key), request_id=_uuid(message.message_id)
            )
        return await self._pipeline.handle(request)

    async def _decoded(self, message: AbstractIncomingMessage) -> SignRequest:
        if len(message.body) > self._settings.max_message_bytes:
            raise InvalidMessage(
                f"Message is larger than {self._settings.max_message_bytes} bytes.", message.body
            )
        if len(message.body) <= INLINE_DECODE_BYTES:
            return decode_sign_request(message.body, message.routing_key or "")
        # First stages carry whole PDFs: parse those off the event loop.
        return await asyncio.to_thread(decode_sign_request, message.body, message.routing_key or "")

    async def _retry_or_give_up(
        self, message: AbstractIncomingMessage, error: TransientError, attempt: int
    ) -> Decision:
        if attempt < self._settings.max_attempts:
            return Retry(attempt, self._delay_ms(attempt), error)
        return await self._give_up(message, error, attempt)

    async def _give_up(
        self, message: AbstractIncomingMessage, error: TransientError, attempt: int
    ) -> Decision:
        """Dead-letter with the last error, once its `rejected` status is durable."""
        log.warning(
            "Giving up on message %s after %d attempts: %s.",
            message.message_id,
            attempt,
            error.code,
        )
        try:
            request: SignRequest | None = await self._decoded(message)
        except InvalidMessage:
            request = None
        try:
            await self._pipeline.refuse(
                error,
                _school_of(message.routing_key),
                request,
                request_id=_uuid(message.message_id),
                remember=False,
            )
        except TransientError as exc:
            # No status could be stored (the database is down): keep the message and
            # try again later rather than dead-letter it silently.
            return Retry(attempt, self._delay_ms(attempt), exc)
        return DeadLetter(error.code, error.message, attempt)

    def _delay_ms(self, attempt: int) -> int:
        return retry_delay_ms(attempt, self._settings.retry_base_ms, self._settings.retry_cap_ms)

    async def _settle(self, message: AbstractIncomingMessage, decision: Decision) -> None:
        """The one place a delivery is acknowledged, after its copy or outcome is durable."""
        try:
            if isinstance(decision, Retry):
                await self._republish(
                    message,
                    self._topo.retry,
                    {
                        ATTEMPT_HEADER: decision.attempt,
                        topology.RETRY_HEADER: str(decision.delay_ms),
                    },
                )
                RETRIES.labels(decision.error.code).inc()
                log.info(
                    "Retrying message %s in %d ms (attempt %d): %s.",
                    message.message_id,
                    decision.delay_ms,
                    decision.attempt,
                    decision.error.code,
                )
            elif isinstance(decision, DeadLetter):
                await self._republish(
                    message,
                    self._topo.dead,
                    {
                        ATTEMPT_HEADER: decision.attempts,
                        "x-hocba-reason-code": decision.code,
                        "x-hocba-reason-message": decision.message,
                        "x-hocba-instance": self._instance,
                    },
                )
                DEAD_LETTERS.labels(decision.code).inc()
            await message.ack()
        except topology.SEND_ERRORS as exc:
            # Not acknowledged: hand it back (the broker redelivers it, and idempotency
            # makes that safe) rather than hold a prefetch slot until the channel dies.
            log.warning(
                "Could not settle message %s (%s); it goes back to the queue.",
                message.message_id,
                type(exc).__name__,
            )
            with contextlib.suppress(*topology.BROKER_ERRORS):
                await message.nack(requeue=True)

    async def _republish(
        self,
        message: AbstractIncomingMessage,
        exchange: aio_pika.abc.AbstractExchange,
        headers: dict[str, Any],
    ) -> None:
        copy = aio_pika.Message(
            body=message.body,
            headers={**(message.headers or {}), **headers},
            content_type=message.content_type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await exchange.publish(copy, routing_key=message.routing_key or "", mandatory=True)


def _deliveries(message: AbstractIncomingMessage) -> int:
    """How often the quorum queue delivered this message before (x-delivery-count)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return value if isinstance(value, int) else 0


def _attempt(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def _school_of(routing_key: str | None) -> str:
    match = _SAFE_SCHOOL.match(routing_key or "")
    return match.group(1) if match else "unknown"


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
