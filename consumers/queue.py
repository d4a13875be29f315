"""A consumer of one queue whose deliveries are settled by the one policy (consumers/settle.py).

Subclasses say only what a delivery comes to (`verdict`); starting, stopping and
settling are the same for every queue. A cancelled handler settles nothing.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from consumers.settle import Settler, Verdict
from daemon import amqp
from daemon.errors import BrokerUnavailable

log = logging.getLogger(__name__)


class QueueConsumer(ABC):
    def __init__(self, name: str, queue: AbstractQueue, settler: Settler) -> None:
        self._name = name
        self._queue = queue
        self._settler = settler
        self._tag: str | None = None

    async def start(self) -> None:
        with amqp.translated("consuming"):
            self._tag = await self._queue.consume(self._on_message)
        log.info("Consuming %s.", self._name)

    async def stop(self) -> None:
        if self._tag is None:
            return
        try:
            with amqp.translated("cancelling"):
                await self._queue.cancel(self._tag)
        except BrokerUnavailable:
            log.warning("Could not cancel the consumer of %s cleanly.", self._name)
        self._tag = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await self._settler.settle(message, await self.verdict(message))

    @abstractmethod
    async def verdict(self, message: AbstractIncomingMessage) -> Verdict:
        """What the delivery comes to: done, refused, transient or postponed."""
