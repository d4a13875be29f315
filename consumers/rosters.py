"""Inbound rosters (`hocba.roster.v1` on `roster.<school_id>`, queue `hocba.roster`).

A roster is acknowledged once it is stored (or recognised as older than, or the same
as, the one held). It is settled by the same policy as every request
(consumers/settle.py): a transient failure waits in a delay queue of
`hocba.roster.retry`; a refusal (not a roster, another school's routing key, an
unregistered school, a teacher or principal the registry does not know as such) goes
at once to `hocba.roster.dead` with the reason in headers, after its audit entry.
A cancelled handler settles nothing.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage

from consumers.queue import QueueConsumer
from consumers.settle import Done, Postponed, Refused, Settler, Transient, Verdict
from daemon.errors import HocbaError, InternalError, TransientError
from daemon.messages import Roster, decode_roster
from daemon.registry.rosters import RosterOutcome
from daemon.settings import AmqpSettings
from daemon.topology import ROSTER_QUEUE, Topology

log = logging.getLogger(__name__)

_SAFE_SCHOOL = re.compile(r"^roster\.([0-9A-Za-z_-]{1,32})$")


class Rosters(Protocol):
    """What the consumer needs of the roster store (daemon/registry/rosters.py)."""

    async def receive(self, roster: Roster, message_id: str | None) -> RosterOutcome: ...

    async def note_refusal(
        self, school_id: str | None, message_id: str | None, error: HocbaError
    ) -> None: ...


class RosterConsumer(QueueConsumer):
    def __init__(
        self, topo: Topology, rosters: Rosters, settings: AmqpSettings, instance: str
    ) -> None:
        assert topo.roster_queue is not None and topo.roster_retry is not None
        settler = Settler("roster", topo.roster_retry, topo.dead, settings, instance)
        super().__init__(ROSTER_QUEUE, topo.roster_queue, settler)
        self._rosters = rosters

    async def verdict(self, message: AbstractIncomingMessage) -> Verdict:
        if self._settler.crash_looping(message):
            return await self._refuse(
                message, InternalError("The roster was redelivered too often.")
            )
        try:
            roster = decode_roster(message.body, message.routing_key or "")
            outcome = await self._rosters.receive(roster, message.message_id)
        except TransientError as exc:
            if self._settler.last_attempt(message):
                return await self._refuse(message, exc)
            return Transient(exc)
        except HocbaError as exc:
            return await self._refuse(message, exc)
        except Exception as exc:
            # A bug must not lose the roster nor loop forever: retry, then dead-letter.
            log.exception("Unexpected error on roster %s.", message.message_id)
            return Transient(InternalError(f"Unexpected {type(exc).__name__} with a roster."))
        log.info(
            "Roster %s of school %s for %s round %s: %s.",
            message.message_id,
            roster.school_id,
            roster.academic_year,
            roster.submission_round,
            outcome,
        )
        return Done()

    async def _refuse(self, message: AbstractIncomingMessage, error: HocbaError) -> Verdict:
        """Refused for good, once the refusal is in the audit trail."""
        match = _SAFE_SCHOOL.match(message.routing_key or "")
        school_id = match.group(1) if match else None
        try:
            await self._rosters.note_refusal(school_id, message.message_id, error)
        except TransientError as exc:
            # Not written down yet (the database is down): try again later rather
            # than dead-letter it without a trace.
            return Postponed(exc)
        log.warning("Roster %s refused: %s.", message.message_id, error.code)
        return Refused.because(error)
