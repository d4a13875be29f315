"""The outbox relay: status events from PostgreSQL to AMQP (confirmed) and MQTT (QoS 1).

One instance at a time relays (it holds an advisory lock on its own connection), so
events leave in the order they were stored and a retained MQTT status is never
overwritten by an older one. Commits wake it through LISTEN/NOTIFY; a slow sweep
catches what a crashed leader left behind. A broker that is down only delays events:
rows stay pending per transport until that transport has taken them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from daemon import outbox
from daemon.database import Database, translated
from daemon.errors import BrokerUnavailable, DatabaseUnavailable
from daemon.metrics import OUTBOX_BACKLOG, STATUS_PUBLISH_DELAY, STATUS_PUBLISHED
from daemon.records import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x68_6F_63_62_62  # any constant shared by all instances
BATCH = 200
# The pass a stopping leader makes at most this long; what is left waits for the next.
_LAST_PASS_S = 5.0


@dataclass(frozen=True)
class Pending:
    """An outbox row: the event as published, and whether it repeats an earlier one."""

    event: dict[str, Any]
    repeat: bool


class StatusPublisher(Protocol):
    """One transport's publisher; `name` says which outbox column it marks."""

    name: outbox.Transport

    async def publish(self, events: list[Pending]) -> None:
        """Publish every event, in order, or raise BrokerUnavailable."""
        ...


class StatusRelay:
    def __init__(
        self,
        db: Database,
        transports: list[StatusPublisher],
        sweep_s: float = 5.0,
        gather_s: float = 0.0,
    ) -> None:
        self._db = db
        self._transports = transports
        self._sweep_s = sweep_s
        # After a pass that published, the next waits this long (status.gather_ms):
        # under load the commits meanwhile make one pass, not one each.
        self._gather_s = gather_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set, taking and retaking leadership as connections come and go."""
        while not stop.is_set():
            try:
                await self._lead(stop)
            except DatabaseUnavailable as exc:
                log.warning("Outbox relay lost the database (%s); retrying.", exc.message)
            except Exception:
                # The relay supervises itself: a bug in one pass must not stop every
                # later status event. The rows stay pending and the next pass retries.
                log.exception("Outbox relay pass failed; retrying.")
            await _wait(stop, self._sweep_s)

    async def _lead(self, stop: asyncio.Event) -> None:
        async with self._db.session() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK):
                return
            try:
                await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
                log.info("This instance relays status events.")
                while not stop.is_set():
                    self._wake.clear()
                    async with translated():
                        published = await self.drain(conn)
                    if published and self._gather_s:
                        await _wait(stop, self._gather_s)
                    await _wait_any(stop, self._wake, self._sweep_s)
                # Stopping: what was committed since the last pass (while it gathered,
                # say) leaves now, not at the next leader's sweep, if the brokers answer.
                try:
                    async with asyncio.timeout(_LAST_PASS_S), translated():
                        await self.drain(conn)
                except TimeoutError:
                    log.warning("The last pass took over %.0f s; the rest waits.", _LAST_PASS_S)
            finally:
                with contextlib.suppress(Exception):
                    await conn.remove_listener(OUTBOX_CHANNEL, self._on_notify)
                    await conn.execute("SELECT pg_advisory_unlock($1)", _LEADER_LOCK)

    async def drain(self, conn: asyncpg.Connection) -> int:
        """Publish everything pending, each transport in stored order, all at once.

        One query reads what the transports still lack and one marks what they took,
        so under load a pass relays many events in two round trips. A transport whose
        broker is down drops out of the pass; the others go on without it. Returns
        how many rows some transport took.
        """
        published = 0
        healthy = list(self._transports)
        while healthy:
            rows = await conn.fetch(outbox.pending_sql(t.name for t in healthy), BATCH)
            if not rows:
                break
            # Each row's event is parsed once, whichever transports still lack it.
            parsed = {row["id"]: Pending(json.loads(row["payload"]), row["repeat"]) for row in rows}
            taken = await asyncio.gather(*(self._publish(t, rows, parsed) for t in healthy))
            marks = {t.name: ids for t, ids in zip(healthy, taken, strict=True) if ids}
            if marks:
                await conn.execute(outbox.mark_sql(marks), *marks.values())
                published += len(set().union(*marks.values()))
            down = [t for t, ids in zip(healthy, taken, strict=True) if ids is None]
            healthy = [t for t in healthy if t not in down]
            if len(rows) < BATCH and not down:
                break
        for transport in self._transports:
            if transport in healthy:
                OUTBOX_BACKLOG.labels(transport.name).set(0)
                continue
            backlog = await conn.fetchval(outbox.backlog_sql(transport.name))
            OUTBOX_BACKLOG.labels(transport.name).set(backlog)
        return published

    async def _publish(
        self, transport: StatusPublisher, rows: list[asyncpg.Record], parsed: dict[int, Pending]
    ) -> list[int] | None:
        """Publish the rows this transport lacks: the ids it took, None if it is down."""
        column = outbox.column(transport.name)
        mine = [row for row in rows if row[column] is None]
        if not mine:
            return []
        events = [parsed[row["id"]] for row in mine]
        try:
            await transport.publish(events)
        except BrokerUnavailable as exc:
            log.warning("Status to %s delayed: %s", transport.name, exc.message)
            return None
        published_at = datetime.now(UTC)
        # Each metric's child looked up once a pass, not once an event.
        for state, count in Counter(pending.event["state"] for pending in events).items():
            STATUS_PUBLISHED.labels(transport.name, state).inc(count)
        delay = STATUS_PUBLISH_DELAY.labels(transport.name)
        for row in mine:
            delay.observe(max((published_at - row["created_at"]).total_seconds(), 0.0))
        return [row["id"] for row in mine]

    def _on_notify(self, *_: object) -> None:
        self._wake.set()


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout_s: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
