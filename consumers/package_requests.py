"""Inbound package requests (`hocba.package_request.v1` on `package.<school_id>`).

A request is acknowledged once its package is built and stored (the submission then
runs in the background and survives restarts through the database), or when there
was nothing to package. It is settled by the same policy as a sign request
(consumers/settle.py): a transient failure waits in a delay queue of
`hocba.package.retry`, never in this handler, and after the last attempt, or at once
for a refusal, the message goes to `hocba.package.dead` with the reason in headers.
A cancelled handler settles nothing.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage

from consumers.queue import QueueConsumer
from consumers.settle import Done, Refused, Settler, Transient, Verdict
from daemon.errors import HocbaError, InternalError, TransientError
from daemon.messages import decode_package_request
from daemon.packaging.packages import Package
from daemon.settings import AmqpSettings
from daemon.topology import PACKAGE_QUEUE, Topology

log = logging.getLogger(__name__)


class Packaging(Protocol):
    """What the consumer needs of the package runner."""

    async def package(
        self, school_id: str, year: str, round_: int, *, submit: bool
    ) -> Package | None: ...


class PackageRequestConsumer(QueueConsumer):
    def __init__(
        self, topo: Topology, runner: Packaging, settings: AmqpSettings, instance: str
    ) -> None:
        assert topo.package_queue is not None and topo.package_retry is not None
        settler = Settler("package request", topo.package_retry, topo.dead, settings, instance)
        super().__init__(PACKAGE_QUEUE, topo.package_queue, settler)
        self._runner = runner

    async def verdict(self, message: AbstractIncomingMessage) -> Verdict:
        if self._settler.crash_looping(message):
            return Refused.because(InternalError("The request was redelivered too often."))
        try:
            request = decode_package_request(message.body, message.routing_key or "")
            package = await self._runner.package(
                request.school_id,
                request.academic_year,
                request.submission_round,
                submit=request.submit,
            )
        except TransientError as exc:
            return Transient(exc)
        except HocbaError as exc:
            log.warning("Package request %s refused: %s.", message.message_id, exc.code)
            return Refused.because(exc)
        except Exception as exc:
            # A bug must not lose the request nor loop forever: retry, then dead-letter.
            log.exception("Unexpected error on package request %s.", message.message_id)
            return Transient(InternalError(f"Unexpected {type(exc).__name__} while packaging."))
        log.info(
            "Package request %s for school %s: %s.",
            request.request_id,
            request.school_id,
            f"package {package.package_id}" if package else "nothing to package",
        )
        return Done()
