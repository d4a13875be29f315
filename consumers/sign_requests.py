"""Inbound sign requests: decode at the edge, hand to the pipeline, settle in one place.

Every delivery ends in exactly one of three ways, and only after its result is durable:
acknowledged (outcome stored), sent to a delay queue (transient failure), or
dead-lettered with its reason in headers (refused, or out of retries). A cancelled
handler settles nothing: the broker redelivers the message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPError

from daemon import topology
from daemon.backoff import retry_delay_ms
from daemon.errors import (
    InternalError,
    InvalidMessage,
    TransientError,
)
from daemon.messages import decode_sign_request
from daemon.metrics import CONSUMING, DEAD_LETTERS, IN_FLIGHT, RETRIES
from daemon.pipeline import Outcome, Pipeline, body_digest
from daemon.settings import AmqpSettings
from daemon.topology import Topology

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-hocba-attempt"
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


class SignRequestConsumer:
    def __init__(
        self, topo: Topology, pipeline: Pipeline, settings: AmqpSettings, instance: str
    ) -> None:
        self._topo = topo
        self._pipeline = pipeline
        self._settings = settings
        self._instance = instance
        self._tag: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def consuming(self) -> bool:
        channel = self._topo.sign_queue.channel
        return self._tag is not None and not channel.is_closed

    async def start(self) -> None:
        self._tag = await self._topo.sign_queue.consume(self._on_message)
        CONSUMING.set(1)
        log.info("Consuming %s.", topology.SIGN_QUEUE)

    async def repair(self) -> None:
        """Consume again when the broker says the queue has no consumer left."""
        if self._tag is not None:
            try:
                await self._topo.sign_queue.cancel(self._tag)
            except (AMQPError, aio_pika.exceptions.ChannelInvalidStateError):
                pass
        self._tag = None
        await self.start()

    async def stop(self, timeout_s: float) -> None:
        """Stop taking messages; let in-flight ones finish within `timeout_s`."""
        if self._tag is not None:
            try:
                await self._topo.sign_queue.cancel(self._tag)
            except (AMQPError, aio_pika.exceptions.ChannelInvalidStateError):
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
            decision = await self._decide(message)
            await self._settle(message, decision)
        finally:
            IN_FLIGHT.dec()
            self._handlers.discard(task)

    async def _decide(self, message: AbstractIncomingMessage) -> Decision:
        attempt = _attempt(message) + 1
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
        body = message.body
        school_id = _school_of(message.routing_key)
        try:
            if len(body) > self._settings.max_message_bytes:
                raise InvalidMessage(
                    f"Message is larger than {self._settings.max_message_bytes} bytes.", body
                )
            request = decode_sign_request(body, message.routing_key or "")
        except InvalidMessage as exc:
            return await self._pipeline.refuse(
                exc,
                school_id,
                request_id=_uuid(message.message_id),
                body_sha256=body_digest(body),
            )
        return await self._pipeline.handle(request, body_digest(body))

    async def _retry_or_give_up(
        self, message: AbstractIncomingMessage, error: TransientError, attempt: int
    ) -> Decision:
        if attempt < self._settings.max_attempts:
            delay = retry_delay_ms(
                attempt, self._settings.retry_base_ms, self._settings.retry_cap_ms
            )
            return Retry(attempt, delay, error)
        log.warning(
            "Giving up on message %s after %d attempts: %s.",
            message.message_id,
            attempt,
            error.code,
        )
        try:
            await self._pipeline.refuse(
                error,
                _school_of(message.routing_key),
                request_id=_uuid(message.message_id),
                body_sha256=body_digest(message.body),
                remember=False,
            )
        except TransientError:
            log.error(
                "Could not store the refusal of message %s; dead-lettering it anyway.",
                message.message_id,
            )
        return DeadLetter(error.code, error.message, attempt)

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
        except (AMQPError, aio_pika.exceptions.ChannelInvalidStateError, ConnectionError) as exc:
            # Not acknowledged: the broker redelivers, and idempotency makes that safe.
            log.warning(
                "Could not settle message %s (%s); the broker will redeliver it.",
                message.message_id,
                type(exc).__name__,
            )

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
        await exchange.publish(copy, routing_key=message.routing_key or "", mandatory=True)


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
