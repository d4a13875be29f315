"""Inbound sign requests: decode at the edge, hand to the pipeline, settle in one place.

The handler turns each delivery into a verdict (consumers/settle.py), and the settle
policy ends it, only after its result is durable: acknowledged (outcome stored), sent
to a delay queue (transient failure), or dead-lettered with its reason in headers
(refused, or out of retries once its `rejected` status is stored). Refusing, and the
idempotency bookkeeping that goes with it, is the pipeline's: this module only says
when to give up. A cancelled handler settles nothing: the broker redelivers the message.

It consumes hocba.sign and every shard hocba.sign.shard.<i> (daemon/topology.py): the
shards carry the requests, hocba.sign drains what an older instance left there. All
deliveries wait for a handler in one FIFO line, so a bursting school has at most its
shard's prefetch waiting ahead of another school's request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from typing import Any, Protocol

from aio_pika.abc import AbstractIncomingMessage

from consumers.acks import Acks
from consumers.batches import Batcher
from consumers.settle import Done, Postponed, Refused, Settler, Transient, Verdict
from daemon import amqp, topology
from daemon.errors import (
    BrokerUnavailable,
    HocbaError,
    InternalError,
    InvalidMessage,
    TransientError,
)
from daemon.messages import SignRequest, claimed_ids, decode_sign_request
from daemon.metrics import CONSUMING, IN_FLIGHT
from daemon.offload import Offload
from daemon.outcomes import Outcome, Unreadable
from daemon.settings import AmqpSettings
from daemon.topology import Topology

log = logging.getLogger(__name__)

# Later stages' requests are a few KB: decoding one inline costs less than a thread hop.
INLINE_DECODE_BYTES = 16 * 1024
_SAFE_SCHOOL = re.compile(r"^sign\.([0-9A-Za-z_-]{1,32})$")


class Handler(Protocol):
    """What the consumer needs of the pipeline."""

    async def handle_many(self, requests: list[SignRequest]) -> list[Outcome | Exception]:
        """Each request's outcome, or the error it failed with, in order."""
        ...

    async def give_up(self, error: HocbaError, request: SignRequest | Unreadable) -> Outcome: ...


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
        self._acks = Acks()
        self._settler = Settler(
            "sign request", topo.retry, topo.dead, settings, instance, acks=self._acks
        )
        # Deliveries beyond this wait with only their AMQP body in memory: the HSM
        # workers set the pace, and more requests decoded, fetched and waiting for a
        # worker would only hold more PDFs. Room for two batches: one is signed while
        # the one before it is stored and acknowledged.
        batch = settings.batch_size
        self._working = asyncio.Semaphore(max(concurrency, 2 * batch) if batch > 1 else concurrency)
        # A short batch fills on while two run (one signed, one stored): consumers/batches.py.
        self._batches = Batcher(batch, settings.batch_linger_ms / 1000, self._settle_batch, busy=2)
        self._queues = (topo.sign_queue, *topo.sign_shards)
        self._tags: dict[str, str] = {}  # queue name -> this instance's consumer tag
        self._handlers: set[asyncio.Task[Any]] = set()
        self._offload = Offload()  # a batch's large decodes in one thread hop

    async def consuming(self) -> bool:
        """True while the broker delivers to this instance's consumer of every sign queue.

        The broker may cancel a consumer (queue leader moved, channel restored
        without it); the AMQP library then forgets the tag, and so does this check.
        """
        if len(self._tags) != len(self._queues):
            return False
        for queue in self._queues:
            if queue.channel.is_closed:
                return False
            try:
                with amqp.translated("looking up the consumer"):
                    underlay = await queue.channel.get_underlay_channel()
            except BrokerUnavailable:
                return False
            consumers: dict[str, Any] = getattr(underlay, "consumers", {})
            if self._tags.get(queue.name) not in consumers:
                return False
        return True

    async def start(self) -> None:
        with amqp.translated("consuming"):
            for queue in self._queues:
                self._tags[queue.name] = await queue.consume(self._on_message)
        CONSUMING.set(1)
        log.info("Consuming %s and %d shards.", topology.SIGN_QUEUE, len(self._queues) - 1)

    async def repair(self) -> None:
        """Consume again after the broker cancelled one of this instance's consumers."""
        await self._cancel()
        await self.start()

    async def stop(self, timeout_s: float) -> None:
        """Stop taking messages; let in-flight ones finish within `timeout_s`."""
        if not await self._cancel():
            log.warning("Could not cancel the consumers cleanly; the broker will requeue.")
        CONSUMING.set(0)
        if self._handlers:
            log.info("Waiting for %d in-flight requests.", len(self._handlers))
            running = {*self._handlers, *self._batches.running}
            _, pending = await asyncio.wait(running, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _cancel(self) -> bool:
        """Cancel every consumer this instance has; False if the broker could not be told."""
        clean = True
        for queue in self._queues:
            tag = self._tags.pop(queue.name, None)
            if tag is None:
                continue
            try:
                with amqp.translated("cancelling"):
                    await queue.cancel(tag)
            except BrokerUnavailable:
                clean = False
        return clean

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._acks.received(message)  # before any await: tags are seen in their order
        IN_FLIGHT.inc()
        try:
            async with self._working:
                await self._batches.submit(message)
        finally:
            IN_FLIGHT.dec()
            self._handlers.discard(task)

    async def _settle_batch(self, messages: list[AbstractIncomingMessage]) -> None:
        """Decide a batch together (one pipeline call), then settle it together."""
        read = await asyncio.gather(*(self._read(m) for m in messages))
        requests = [r for r in read if isinstance(r, SignRequest)]
        try:
            results = await self._pipeline.handle_many(requests) if requests else []
        except Exception as exc:  # e.g. the database is down: every request failed with it
            results = [exc] * len(requests)
        outcomes = iter(results)
        verdicts = [
            r if not isinstance(r, SignRequest) else await self._verdict(m, r, next(outcomes))
            for m, r in zip(messages, read, strict=True)
        ]
        await self._settler.settle_many(list(zip(messages, verdicts, strict=True)))

    async def _read(self, message: AbstractIncomingMessage) -> SignRequest | Verdict:
        """The decoded request, or the verdict of one that cannot (or must not) be handled."""
        try:
            request = await self._decoded(message)
        except InvalidMessage as exc:
            return await self._give_up(await self._unreadable(message), exc)
        except Exception as exc:
            return await self._unexpected(message, await self._unreadable(message), exc)
        if self._settler.crash_looping(message):
            error = InternalError("The request was redelivered too often (crash loop?).")
            return await self._give_up(request, error)
        return request

    async def _verdict(
        self, message: AbstractIncomingMessage, request: SignRequest, result: Outcome | Exception
    ) -> Verdict:
        if isinstance(result, Outcome):
            return _verdict_of(result)
        if isinstance(result, TransientError):
            return await self._failed(message, request, result)
        return await self._unexpected(message, request, result)

    async def _decoded(self, message: AbstractIncomingMessage) -> SignRequest:
        if len(message.body) > self._settings.max_message_bytes:
            raise InvalidMessage(
                f"Message is larger than {self._settings.max_message_bytes} bytes.", message.body
            )
        if len(message.body) <= INLINE_DECODE_BYTES:
            return decode_sign_request(message.body, message.routing_key or "")
        # First stages carry whole PDFs: parse those off the event loop, the batch's
        # together (`_settle_batch` reads them in one gather).
        return await self._offload(decode_sign_request, message.body, message.routing_key or "")

    async def _unreadable(self, message: AbstractIncomingMessage) -> Unreadable:
        """What the envelope, and the body where it is JSON, say of an undecodable request."""
        body, key = message.body, message.routing_key or ""
        if len(body) > self._settings.max_message_bytes:
            request_id, record_id = None, None
        elif len(body) <= INLINE_DECODE_BYTES:
            request_id, record_id = claimed_ids(body, key)
        else:
            request_id, record_id = await self._offload(claimed_ids, body, key)
        delivery = hashlib.sha256(
            b"\0".join((key.encode(), (message.message_id or "").encode(), body))
        ).hexdigest()
        return Unreadable(
            _school_of(message.routing_key),
            request_id or _uuid(message.message_id),
            record_id,
            delivery,
        )

    async def _unexpected(
        self, message: AbstractIncomingMessage, request: SignRequest | Unreadable, exc: Exception
    ) -> Verdict:
        # A bug must not lose the message nor loop forever: retry, then dead-letter.
        log.error("Unexpected error on message %s.", message.message_id, exc_info=exc)
        error = InternalError(f"Unexpected {type(exc).__name__} while handling the request.")
        return await self._failed(message, request, error)

    async def _failed(
        self,
        message: AbstractIncomingMessage,
        request: SignRequest | Unreadable,
        error: TransientError,
    ) -> Verdict:
        if self._settler.last_attempt(message):
            return await self._give_up(request, error)
        return Transient(error)

    async def _give_up(self, request: SignRequest | Unreadable, error: HocbaError) -> Verdict:
        """Refused, once the pipeline has stored its `rejected` status."""
        try:
            return _verdict_of(await self._pipeline.give_up(error, request))
        except TransientError as exc:
            # No status could be stored (the database is down): keep the message and
            # try again later rather than dead-letter it silently.
            return Postponed(exc)
        except Exception as exc:
            log.exception("Unexpected error refusing request %s.", request.request_id)
            return Postponed(InternalError(f"Unexpected {type(exc).__name__} while refusing."))


def _verdict_of(outcome: Outcome) -> Verdict:
    if outcome.rejected:
        assert outcome.event.reason is not None
        return Refused(outcome.event.reason.code, outcome.event.reason.message)
    return Done()


def _school_of(routing_key: str | None) -> str:
    match = _SAFE_SCHOOL.match(routing_key or "")
    return match.group(1) if match else "unknown"


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
