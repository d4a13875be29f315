"""The package consumer: one attempt per delivery, settled by the shared policy."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumers.package_requests import PackageRequestConsumer
from consumers.settle import ATTEMPT_HEADER
from daemon import monitor, topology
from daemon.errors import DatabaseUnavailable, PackageInvalid
from daemon.settings import AmqpSettings
from tests.ops import topology_recorder
from tests.unit.amqp_fakes import FakeExchange, FakeMessage, FakeQueue

# A long first delay: a consumer that waited in the handler would hold the test up.
SETTINGS = AmqpSettings(max_attempts=3, retry_base_ms=60_000, retry_cap_ms=60_000)
SCHOOL = "31000123"


def _body(**change: Any) -> bytes:
    body = {
        "type": "hocba.package_request.v1",
        "request_id": str(uuid.uuid4()),
        "school_id": SCHOOL,
        "academic_year": "2025-2026",
        "submission_round": 1,
        "submit": False,
        "requested_at": "2026-06-23T08:00:00+07:00",
    }
    return json.dumps({**body, **change}).encode()


@dataclass
class FakePackage:
    package_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class FakeRunner:
    """Fails as told, one failure per call, then builds a package."""

    failures: list[Exception] = field(default_factory=list)
    calls: list[tuple[str, str, int, bool]] = field(default_factory=list)

    async def package(self, school_id: str, year: str, round_: int, *, submit: bool) -> Any:
        self.calls.append((school_id, year, round_, submit))
        if self.failures:
            raise self.failures.pop(0)
        return FakePackage()


@dataclass
class Wired:
    queue: FakeQueue
    retry: FakeExchange
    dead: FakeExchange
    runner: FakeRunner

    async def deliver(self, message: FakeMessage) -> None:
        consumer = PackageRequestConsumer(
            topology.Topology(
                requests=None,  # type: ignore[arg-type]
                status=None,  # type: ignore[arg-type]
                dead=self.dead,  # type: ignore[arg-type]
                retry=FakeExchange("sign-retry", fail=True),  # type: ignore[arg-type]
                sign_queue=None,  # type: ignore[arg-type]
                package_queue=self.queue,  # type: ignore[arg-type]
                package_retry=self.retry,  # type: ignore[arg-type]
            ),
            self.runner,
            SETTINGS,
            "test",
        )
        await consumer.start()
        # Bounded: the old handler slept retry_base_ms (60 s here) holding the delivery.
        async with asyncio.timeout(5):
            await self.queue.deliver(message)
        await consumer.stop()


@pytest.fixture
def wired() -> Wired:
    return Wired(FakeQueue(), FakeExchange("package-retry"), FakeExchange("dead"), FakeRunner())


def _message(body: bytes | None = None, **headers: Any) -> FakeMessage:
    return FakeMessage(body=body or _body(), routing_key=f"package.{SCHOOL}", headers=headers)


async def test_a_built_package_is_acknowledged(wired: Wired) -> None:
    message = _message()
    await wired.deliver(message)
    assert wired.runner.calls == [(SCHOOL, "2025-2026", 1, False)]
    assert message.settled == ["ack"]
    assert not wired.retry.published and not wired.dead.published


async def test_a_transient_failure_goes_to_the_package_delay_queue_at_once(wired: Wired) -> None:
    # Given a database that is down for the first attempt
    wired.runner.failures = [DatabaseUnavailable("down")]
    message = _message()
    # When the request is delivered
    await wired.deliver(message)
    # Then it was tried once, copied to the package delay exchange and acknowledged:
    # the delivery is not held while it waits
    assert len(wired.runner.calls) == 1
    ((copy, key),) = wired.retry.published
    assert key == f"package.{SCHOOL}" and copy.body == message.body
    assert copy.headers[topology.RETRY_HEADER] == "60000"
    assert copy.headers[ATTEMPT_HEADER] == 1
    assert message.settled == ["ack"] and not wired.dead.published


async def test_a_retried_copy_that_comes_back_is_tried_again(wired: Wired) -> None:
    wired.runner.failures = [DatabaseUnavailable("down")]
    first = _message()
    await wired.deliver(first)
    ((copy, _),) = wired.retry.published
    # The delay queue hands the copy back to hocba.package with its headers
    again = _message(first.body, **copy.headers)
    await wired.deliver(again)
    assert len(wired.runner.calls) == 2 and again.settled == ["ack"]
    assert len(wired.retry.published) == 1 and not wired.dead.published


async def test_after_the_last_attempt_it_is_dead_lettered_with_the_last_error(
    wired: Wired,
) -> None:
    wired.runner.failures = [DatabaseUnavailable("down")]
    message = _message(**{ATTEMPT_HEADER: SETTINGS.max_attempts - 1})
    await wired.deliver(message)
    ((letter, key),) = wired.dead.published
    assert key == f"package.{SCHOOL}"
    assert letter.headers["x-hocba-reason-code"] == "database_unavailable"
    assert letter.headers[ATTEMPT_HEADER] == SETTINGS.max_attempts
    assert message.settled == ["ack"] and not wired.retry.published


async def test_a_refusal_is_dead_lettered_at_once(wired: Wired) -> None:
    wired.runner.failures = [PackageInvalid("records/x.pdf: digest differs")]
    message = _message()
    await wired.deliver(message)
    ((letter, _),) = wired.dead.published
    assert letter.headers["x-hocba-reason-code"] == "package_invalid"
    assert letter.headers["x-hocba-reason-message"] == "records/x.pdf: digest differs"
    assert len(wired.runner.calls) == 1 and message.settled == ["ack"]


async def test_a_request_for_another_school_is_refused_without_packaging(wired: Wired) -> None:
    message = _message(_body(school_id="31000999"))
    await wired.deliver(message)
    ((letter, _),) = wired.dead.published
    assert letter.headers["x-hocba-reason-code"] == "invalid_message"
    assert wired.runner.calls == [] and message.settled == ["ack"]


async def test_an_unexpected_error_is_retried_as_internal_not_raised(wired: Wired) -> None:
    wired.runner.failures = [KeyError("bug")]
    message = _message()
    await wired.deliver(message)
    ((copy, _),) = wired.retry.published
    assert copy.headers[ATTEMPT_HEADER] == 1 and message.settled == ["ack"]


async def test_a_crash_loop_is_refused_before_the_broker_drops_it(wired: Wired) -> None:
    message = _message(**{"x-delivery-count": SETTINGS.delivery_limit - 1})
    await wired.deliver(message)
    ((letter, _),) = wired.dead.published
    assert letter.headers["x-hocba-reason-code"] == "internal_error"
    assert wired.runner.calls == []


async def test_a_copy_the_broker_refuses_hands_the_request_back(wired: Wired) -> None:
    wired.runner.failures = [DatabaseUnavailable("down")]
    wired.retry.fail = True
    message = _message()
    await wired.deliver(message)
    assert message.settled == ["nack(requeue=True)"]


async def test_a_package_copy_in_a_delay_queue_returns_to_the_package_queue_only() -> None:
    # Given what an instance declares
    declared = await topology_recorder.declared(SETTINGS)
    queues = {q["name"]: q["arguments"] for q in declared.queues}
    bindings = declared.bindings
    delays = topology.delays_ms(SETTINGS)
    for delay in delays:
        name = f"hocba.package.retry.{delay}"
        # Then a copy with hocba-retry-ms=N sent to hocba.package.retry waits N ms there
        assert queues[name]["x-message-ttl"] == delay
        assert {
            "source": "hocba.package.retry",
            "destination": name,
            "arguments": {"x-match": "all", topology.RETRY_HEADER: str(delay)},
        }.items() <= next(b for b in bindings if b["destination"] == name).items()
        # and then goes back through hocba.package.return, bound to hocba.package alone
        assert queues[name]["x-dead-letter-exchange"] == "hocba.package.return"
    returns = [b["destination"] for b in bindings if b["source"] == "hocba.package.return"]
    assert returns == ["hocba.package"]
    # No package copy can reach a sign delay queue: those listen on hocba.retry only
    sign_delays = {b["source"] for b in bindings if b["destination"].startswith("hocba.sign.retry")}
    assert sign_delays == {"hocba.retry"}
    # And the operators see the package delay queues' depths
    watched = monitor.queue_names(SETTINGS)
    assert {f"hocba.package.retry.{delay}" for delay in delays} <= set(watched)
