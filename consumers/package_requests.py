"""Inbound package requests (`hocba.package_request.v1` on `package.<school_id>`).

A request is acknowledged once its package is built and stored (the submission then
runs in the background and survives restarts through the database), or when there
was nothing to package. Package requests are rare (one per school and round), so a
transient failure is retried here, in the handler, with capped backoff; after the
last attempt, and at once for a refusal, the message goes to `hocba.package.dead`
with the reason in headers. A cancelled handler settles nothing.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from daemon import topology
from daemon.backoff import retry_delay_ms
from daemon.errors import HocbaError, InvalidMessage, PermanentError, TransientError
from daemon.messages import PackageRequest, decode_package_request
from daemon.metrics import DEAD_LETTERS
from daemon.packaging.runner import PackageRunner
from daemon.settings import AmqpSettings
from daemon.topology import PACKAGE_QUEUE, Topology

log = logging.getLogger(__name__)


class PackageRequestConsumer:
    def __init__(self, topo: Topology, runner: PackageRunner, settings: AmqpSettings) -> None:
        assert topo.package_queue is not None
        self._queue = topo.package_queue
        self._dead = topo.dead
        self._runner = runner
        self._settings = settings
        self._tag: str | None = None

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message)
        log.info("Consuming %s.", PACKAGE_QUEUE)

    async def stop(self) -> None:
        if self._tag is None:
            return
        try:
            await self._queue.cancel(self._tag)
        except topology.CHANNEL_ERRORS:
            log.warning("Could not cancel the package consumer cleanly.")
        self._tag = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            request = decode_package_request(message.body, message.routing_key or "")
            await self._handle(request)
        except HocbaError as exc:
            await self._settle(message, exc)
            return
        await self._settle(message, None)

    async def _handle(self, request: PackageRequest) -> None:
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                package = await self._runner.package(
                    request.school_id,
                    request.academic_year,
                    request.submission_round,
                    submit=request.submit,
                )
            except TransientError as exc:
                if attempt == self._settings.max_attempts:
                    raise
                delay_ms = retry_delay_ms(
                    attempt, self._settings.retry_base_ms, self._settings.retry_cap_ms
                )
                log.info("Package request %s: %s; retrying.", request.request_id, exc.code)
                await asyncio.sleep(delay_ms / 1000)
                continue
            log.info(
                "Package request %s for school %s: %s.",
                request.request_id,
                request.school_id,
                f"package {package.package_id}" if package else "nothing to package",
            )
            return

    async def _settle(self, message: AbstractIncomingMessage, error: HocbaError | None) -> None:
        """The one place a package request is acknowledged."""
        try:
            if error is not None:
                await self._dead_letter(message, error)
            await message.ack()
        except topology.BROKER_ERRORS as exc:
            log.warning(
                "Could not settle package request %s (%s); it will be redelivered.",
                message.message_id,
                type(exc).__name__,
            )

    async def _dead_letter(self, message: AbstractIncomingMessage, error: HocbaError) -> None:
        kind = "refused" if isinstance(error, PermanentError | InvalidMessage) else "gave up"
        log.warning("Package request %s %s: %s.", message.message_id, kind, error.code)
        copy = aio_pika.Message(
            body=message.body,
            headers={
                **(message.headers or {}),
                "x-hocba-reason-code": error.code,
                "x-hocba-reason-message": error.message,
            },
            content_type=message.content_type,
            message_id=message.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._dead.publish(copy, routing_key=message.routing_key or "", mandatory=True)
        DEAD_LETTERS.labels(error.code).inc()
