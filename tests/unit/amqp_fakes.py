"""Small fakes of what the consumers touch in aio-pika: a delivery, an exchange, a queue."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiormq.exceptions import AMQPError, ChannelInvalidStateError


@dataclass
class FakeMessage:
    """A delivery; `settled` says how it ended, `journal` what happened in which order."""

    body: bytes = b"{}"
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = "sign.31000123"
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    content_type: str = "application/json"
    correlation_id: str | None = None
    timestamp: datetime | None = None
    settled: list[str] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)
    channel_closed: bool = False

    async def ack(self) -> None:
        if self.channel_closed:
            raise ChannelInvalidStateError("closed")
        self.settled.append("ack")
        self.journal.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        if self.channel_closed:
            raise ChannelInvalidStateError("closed")
        self.settled.append(f"nack(requeue={requeue})")
        self.journal.append("nack")


@dataclass
class FakeExchange:
    """Confirms every publish, or refuses them (`fail`), or never confirms (`hang`)."""

    name: str = "exchange"
    published: list[tuple[Any, str]] = field(default_factory=list)
    fail: bool = False
    hang: bool = False
    journal: list[str] | None = None

    async def publish(self, message: Any, routing_key: str, mandatory: bool = False) -> None:
        assert mandatory, "a copy must be mandatory, or an unroutable one is lost silently"
        if self.fail:
            raise AMQPError("unroutable")
        if self.hang:
            await asyncio.Event().wait()
        self.published.append((message, routing_key))
        if self.journal is not None:
            self.journal.append(f"publish:{self.name}")


@dataclass
class FakeQueue:
    """Hands each delivery to the callback the consumer registered, as the broker would."""

    callback: Any = None
    name: str = "hocba.sign"

    async def consume(self, callback: Any) -> str:
        self.callback = callback
        return "ctag"

    async def cancel(self, tag: str) -> None:
        self.callback = None

    async def deliver(self, message: FakeMessage) -> None:
        await self.callback(message)
