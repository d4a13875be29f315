"""What the pipeline answers for a request, and what it knows of one it cannot read.

The consumer acts on an `Outcome` (a `rejected` one is dead-lettered); an `Unreadable`
names what a delivery's envelope (and body) say of a request that could not be decoded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from uuid import UUID

from daemon.messages import StatusEvent
from daemon.stages import State

# Names the rejected events of unreadable deliveries (uuid5 of the delivery).
_UNREADABLE_EVENTS = uuid.UUID("5b0f3c1e-6a8d-4c55-9d0e-7f1a2b3c4d5e")


@dataclass(frozen=True)
class Outcome:
    """What happened to a request; `rejected` ones are dead-lettered by the consumer."""

    event: StatusEvent

    @property
    def rejected(self) -> bool:
        return self.event.state is State.REJECTED


@dataclass(frozen=True)
class Unreadable:
    """A request whose body could not be decoded: what its envelope (and body) say of it.

    `record_id` is the record the body names, when its school is the routing key's; the
    record may not exist, and its `rejected` event then changes nothing.
    """

    school_id: str
    request_id: UUID | None
    record_id: str | None = None
    # The delivery's identity (routing key, message id, body digest): a redelivery of the
    # same bytes after a crash is refused under the same event, not a second one.
    delivery: str | None = field(default=None, compare=False)

    @property
    def event_id(self) -> UUID | None:
        return uuid.uuid5(_UNREADABLE_EVENTS, self.delivery) if self.delivery else None
