"""RabbitMQ's failures, translated into ours at this one boundary.

As `database.translated()` does for asyncpg: every call into aio-pika or aiormq that
can fail because the broker, the channel or the socket went away runs inside
`translated()`, and everything above it sees only `BrokerUnavailable` (raised `from`
the original, so the cause stays in tracebacks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from daemon.errors import BrokerUnavailable

# AMQPError: the broker closed the channel or connection, refused or returned a
# publish. ChannelInvalidStateError: a channel not (re)opened yet (a RuntimeError, not
# an AMQPError). OSError: the socket failed, and TimeoutError (an OSError) is a
# confirmation that never came.
_FAILURES: tuple[type[Exception], ...] = (AMQPError, ChannelInvalidStateError, OSError)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn aio-pika, aiormq and socket failures of `what` into BrokerUnavailable."""
    try:
        yield
    except _FAILURES as exc:
        raise BrokerUnavailable(f"RabbitMQ: {what} failed ({type(exc).__name__}).") from exc
