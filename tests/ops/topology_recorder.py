"""A fake AMQP channel that records what `daemon.topology.declare` declares, in the
shape of RabbitMQ's definitions file (exchanges, queues, bindings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon import topology
from daemon.settings import AmqpSettings

VHOST = "/"


@dataclass
class _Exchange:
    name: str
    recorder: Recorder

    async def bind(self, exchange: _Exchange, routing_key: str | None = None, **_: Any) -> None:
        self.recorder.bindings.append(
            {
                "source": exchange.name,
                "vhost": VHOST,
                "destination": self.name,
                "destination_type": "exchange",
                "routing_key": routing_key or "",
                "arguments": {},
            }
        )


@dataclass
class _Queue:
    name: str
    recorder: Recorder

    async def bind(
        self,
        exchange: _Exchange,
        routing_key: str | None = None,
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.recorder.bindings.append(
            {
                "source": exchange.name,
                "vhost": VHOST,
                "destination": self.name,
                "destination_type": "queue",
                "routing_key": routing_key or "",
                "arguments": dict(arguments or {}),
            }
        )

    async def unbind(self, exchange: _Exchange, routing_key: str | None = None, **_: Any) -> None:
        self.recorder.bindings = [
            b
            for b in self.recorder.bindings
            if (b["source"], b["destination"], b["routing_key"])
            != (exchange.name, self.name, routing_key or "")
        ]


@dataclass
class Recorder:
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    bindings: list[dict[str, Any]] = field(default_factory=list)

    async def declare_exchange(
        self, name: str, type: Any, *, durable: bool = False, **_: Any
    ) -> _Exchange:
        self.exchanges.append(
            {
                "name": name,
                "vhost": VHOST,
                "type": str(getattr(type, "value", type)),
                "durable": durable,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        )
        return _Exchange(name, self)

    async def declare_queue(
        self, name: str, *, durable: bool = False, arguments: dict[str, Any] | None = None, **_: Any
    ) -> _Queue:
        self.queues.append(
            {
                "name": name,
                "vhost": VHOST,
                "durable": durable,
                "auto_delete": False,
                "arguments": dict(arguments or {}),
            }
        )
        return _Queue(name, self)


async def declared(settings: AmqpSettings | None = None) -> Recorder:
    """What an instance with these settings (default: the defaults) declares."""
    recorder = Recorder()
    await topology.declare(recorder, settings or AmqpSettings())  # type: ignore[arg-type]
    return recorder
