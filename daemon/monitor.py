"""Gauges that need a look at the database, the broker or the HSM, kept fresh in the background.

prometheus-client collectors run synchronously inside the scrape, so nothing that needs
I/O may be measured there. `Monitor.run` refreshes these gauges every `interval_s`;
scrapes read the last values. Every instance reports the same district-wide numbers
(records, queues, certificates), so dashboards and alerts take `max` over instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from aio_pika.abc import AbstractRobustConnection

from daemon import amqp, metrics, outbox, topology
from daemon.clock import VIETNAM, Clock, vietnam_now
from daemon.database import Database
from daemon.errors import BrokerUnavailable, HocbaError
from daemon.foresight import FORESIGHT_SQL, STUCK_AFTER_S, Foresight, LabelledGauge, progress
from daemon.settings import AmqpSettings
from daemon.stages import State

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
LabelValues = tuple[str, ...]

EXPIRY_WINDOW_DAYS = 30
_YEAR = re.compile(r"^(\d{4})-(\d{4})$")
# Record states a record can be in (a refusal never changes a record's state).
RECORD_STATES = tuple(s.value for s in State if s is not State.REJECTED)

CERTIFICATES_SQL = """
SELECT school_id,
       count(*) FILTER (WHERE cert_not_after < now() + make_interval(days => $1)) AS expiring,
       min(cert_not_after) AS soonest
FROM signers WHERE active GROUP BY school_id
"""


class QueueStats(Protocol):
    async def depths(self) -> Mapping[str, tuple[int, int]]:
        """(ready messages, consumers) per queue name; raise a HocbaError if unknown."""
        ...


def queue_names(settings: AmqpSettings) -> list[str]:
    """The sign queue and its shards, the package queue, their dead-letter and delay queues."""
    dead = [topology.DEAD_QUEUE, topology.PACKAGE_QUEUE, topology.PACKAGE_DEAD_QUEUE]
    shards = topology.shard_queue_names(settings)
    return [topology.SIGN_QUEUE, *dead, *shards, *topology.retry_queue_names(settings)]


class AmqpQueues:
    """Queue depths from passive declares on a short-lived channel of its own: a missing
    queue closes the channel it was asked on, and must not close the consumer's."""

    def __init__(self, connection: AbstractRobustConnection, names: Sequence[str]) -> None:
        self._connection = connection
        self._names = names

    async def depths(self) -> dict[str, tuple[int, int]]:
        if not self._connection.connected.is_set():
            raise BrokerUnavailable("not connected")
        result: dict[str, tuple[int, int]] = {}
        with amqp.translated("reading queue depths"):
            async with self._connection.channel() as channel:
                underlay = await channel.get_underlay_channel()
                for name in self._names:
                    declared = await underlay.queue_declare(name, passive=True)
                    result[name] = (declared.message_count or 0, declared.consumer_count or 0)
        return result


def deadline(academic_year: str, submission_round: int, day_month: str) -> datetime | None:
    """The end of the deadline day ("MM-DD") of a round, in Vietnam's time zone."""
    match = _YEAR.match(academic_year)
    if match is None:
        return None
    month, day = (int(part) for part in day_month.split("-"))
    end_year = int(match.group(2))
    return datetime(end_year, month, day, 23, 59, 59, tzinfo=VIETNAM)


@dataclass(frozen=True)
class RecordCounts:
    records: dict[LabelValues, float]
    issued: dict[LabelValues, float]
    deadlines: dict[LabelValues, float]


def record_counts(rows: Iterable[Mapping[str, Any]], deadlines: Mapping[int, str]) -> RecordCounts:
    """Gauge values from the GROUP BY rows: every state of a (school, year, round) shown,
    zeros included, so a panel's line drops to 0 instead of vanishing. A roster's row
    (state None) shows its round at zero before the first record, so a school that has
    not started is on the dashboards."""
    records: dict[LabelValues, float] = {}
    issued: dict[LabelValues, float] = {}
    years: set[str] = set()
    for row in rows:
        key = (row["school_id"], row["academic_year"], str(row["submission_round"]))
        years.add(row["academic_year"])
        for state in RECORD_STATES:
            records.setdefault((*key, state), 0.0)
        issued.setdefault(key, 0.0)
        if row["state"] is None:
            continue
        records[(*key, row["state"])] = float(row["records"])
        issued[key] += float(row["issued"])
    dates: dict[LabelValues, float] = {}
    for year in years:
        for round_, day_month in deadlines.items():
            due = deadline(year, int(round_), day_month)
            if due is not None:
                dates[(year, str(round_))] = due.timestamp()
    return RecordCounts(records, issued, dates)


class Monitor:
    """Refreshes the background gauges; each part fails alone and keeps its last values."""

    def __init__(
        self,
        db: Database,
        queues: QueueStats,
        checks: Mapping[str, Check],
        deadlines: Mapping[int, str],
        *,
        interval_s: float = 15.0,
        check_timeout_s: float = 10.0,
        clock: Clock = vietnam_now,
    ) -> None:
        self._db = db
        self._queues = queues
        self._checks = checks
        self._deadlines = deadlines
        self._interval_s = interval_s
        self._check_timeout_s = check_timeout_s
        # The pipeline's and the packager's clock: deadline math runs at their time.
        self._clock = clock
        self._foresight = Foresight()
        self._records = LabelledGauge(metrics.RECORDS)
        self._issued = LabelledGauge(metrics.RECORDS_ISSUED)
        self._deadline_gauge = LabelledGauge(metrics.DEADLINE)
        self._expiring = LabelledGauge(metrics.CERTS_EXPIRING)
        self._soonest = LabelledGauge(metrics.CERT_SOONEST_EXPIRY)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    async def refresh(self) -> None:
        await asyncio.gather(self._database(), self._broker(), self._dependencies())
        metrics.MONITOR_REFRESH.set(time.time())

    async def _database(self) -> None:
        now = self._clock()
        try:
            async with self._db.connection() as conn:
                rows = await conn.fetch(FORESIGHT_SQL, now - timedelta(seconds=STUCK_AFTER_S))
                certificates = await conn.fetch(CERTIFICATES_SQL, EXPIRY_WINDOW_DAYS)
                pending = await conn.fetchrow(outbox.BACKLOGS_SQL)
        except HocbaError as exc:
            log.warning("Record and outbox gauges not refreshed: %s", exc.message)
            return
        counts = record_counts(rows, self._deadlines)
        self._records.replace(counts.records)
        self._issued.replace(counts.issued)
        self._deadline_gauge.replace(counts.deadlines)
        self._foresight.update(progress(rows), now.timestamp())
        self._expiring.replace({(r["school_id"],): float(r["expiring"]) for r in certificates})
        self._soonest.replace({(r["school_id"],): r["soonest"].timestamp() for r in certificates})
        if pending is not None:
            for transport, (backlog, age_s) in outbox.backlogs(pending).items():
                metrics.OUTBOX_BACKLOG.labels(transport).set(backlog)
                metrics.OUTBOX_OLDEST_AGE.labels(transport).set(age_s)

    async def _broker(self) -> None:
        try:
            depths = await asyncio.wait_for(self._queues.depths(), self._check_timeout_s)
        except (HocbaError, TimeoutError) as exc:
            log.info("Queue gauges not refreshed: %s", getattr(exc, "message", "timeout"))
            return
        for queue, (ready, consumers) in depths.items():
            metrics.QUEUE_MESSAGES.labels(queue).set(ready)
            metrics.QUEUE_CONSUMERS.labels(queue).set(consumers)

    async def _dependencies(self) -> None:
        names: Sequence[str] = list(self._checks)
        results = await asyncio.gather(*(self._passes(self._checks[n]) for n in names))
        for name, up in zip(names, results, strict=True):
            metrics.DEPENDENCY_UP.labels(name).set(1 if up else 0)

    async def _passes(self, check: Check) -> bool:
        try:
            await asyncio.wait_for(check(), self._check_timeout_s)
        except (HocbaError, TimeoutError):
            return False
        return True
