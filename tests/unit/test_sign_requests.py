"""The consumer's ack policy, with small fakes at its seams: what happens to a delivery."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiormq.exceptions import AMQPError

from consumers.sign_requests import ATTEMPT_HEADER, SignRequestConsumer
from daemon import topology
from daemon.errors import (
    DatabaseUnavailable,
    HocbaError,
    HsmUnavailable,
    StageOutOfOrder,
    TransientError,
)
from daemon.messages import Reason, RecordInfo, SignRequest, StatusEvent
from daemon.pipeline import Outcome
from daemon.settings import AmqpSettings
from daemon.stages import Stage, State
from producers.school_system import sign_request

SETTINGS = AmqpSettings(max_attempts=3, retry_base_ms=100, retry_cap_ms=1000, delivery_limit=5)
INFO = RecordInfo(
    record_id="2025-2026-5A-07",
    student_id="3100012300007",
    academic_year="2025-2026",
    grade=5,
    class_name="5A",
    submission_round=1,
)
_, BODY, _ = sign_request("31000123", INFO, Stage.PRINCIPAL, "BGH-0001", "a.b.c")


@dataclass
class FakeMessage:
    body: bytes = BODY
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = "sign.31000123"
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    content_type: str = "application/json"
    correlation_id: str | None = None
    timestamp: datetime | None = None
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack(requeue={requeue})")


@dataclass
class FakeExchange:
    published: list[tuple[Any, str]] = field(default_factory=list)
    fail: bool = False

    async def publish(self, message: Any, routing_key: str, mandatory: bool = False) -> None:
        if self.fail:
            raise AMQPError("unroutable")
        self.published.append((message, routing_key))


def _event(state: State, reason: Reason | None = None) -> StatusEvent:
    return StatusEvent(
        event_id=uuid.uuid4(),
        request_id=None,
        school_id="31000123",
        record_id="r",
        state=state,
        stage=None,
        document_sha256=None,
        signatures=0,
        reason=reason,
        at=datetime.now(UTC),
    )


@dataclass
class FakeHandler:
    """Decides as told: an outcome, or an error to raise; records refusals."""

    raises: Exception | None = None
    outcome: Outcome | None = None
    refuse_fails: bool = False
    refused: list[str] = field(default_factory=list)

    async def handle(self, request: SignRequest) -> Outcome:
        if self.raises is not None:
            raise self.raises
        assert self.outcome is not None
        return self.outcome

    async def refuse(
        self,
        error: HocbaError,
        school_id: str,
        request: SignRequest | None = None,
        *,
        request_id: uuid.UUID | None = None,
        remember: bool = True,
    ) -> Outcome:
        if self.refuse_fails:
            raise DatabaseUnavailable("down")
        self.refused.append(error.code)
        return Outcome(_event(State.REJECTED, Reason(code=error.code, message=error.message)))


@pytest.fixture
def exchanges() -> dict[str, FakeExchange]:
    return {"retry": FakeExchange(), "dead": FakeExchange()}


def _consumer(handler: FakeHandler, exchanges: dict[str, FakeExchange]) -> SignRequestConsumer:
    topo = topology.Topology(
        requests=None,
        status=None,
        dead=exchanges["dead"],
        retry=exchanges["retry"],  # type: ignore[arg-type]
        sign_queue=None,  # type: ignore[arg-type]
    )
    return SignRequestConsumer(topo, handler, SETTINGS, "test")


async def _deliver(consumer: SignRequestConsumer, message: FakeMessage) -> None:
    decision = await consumer._decide(message)  # type: ignore[arg-type]
    await consumer._settle(message, decision)  # type: ignore[arg-type]


async def test_a_signed_request_is_acknowledged_and_nothing_else(exchanges) -> None:
    message = FakeMessage()
    await _deliver(
        _consumer(FakeHandler(outcome=Outcome(_event(State.SIGNED_BY_TEACHER))), exchanges), message
    )
    assert message.settled == ["ack"]
    assert not exchanges["retry"].published and not exchanges["dead"].published


async def test_a_refusal_is_dead_lettered_with_its_reason_then_acknowledged(exchanges) -> None:
    refused = Outcome(_event(State.REJECTED, Reason(code="stage_out_of_order", message="m")))
    message = FakeMessage()
    await _deliver(_consumer(FakeHandler(outcome=refused), exchanges), message)
    ((letter, key),) = exchanges["dead"].published
    assert letter.headers["x-hocba-reason-code"] == "stage_out_of_order"
    assert letter.body == BODY and key == "sign.31000123"
    assert message.settled == ["ack"]


async def test_a_transient_failure_goes_to_a_delay_queue(exchanges) -> None:
    message = FakeMessage()
    await _deliver(_consumer(FakeHandler(raises=HsmUnavailable("x")), exchanges), message)
    ((copy, _),) = exchanges["retry"].published
    assert copy.headers[ATTEMPT_HEADER] == 1
    assert copy.headers[topology.RETRY_HEADER] == "100"
    assert message.settled == ["ack"]


async def test_the_last_attempt_is_refused_and_dead_lettered(exchanges) -> None:
    handler = FakeHandler(raises=HsmUnavailable("x"))
    message = FakeMessage(headers={ATTEMPT_HEADER: SETTINGS.max_attempts - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert handler.refused == ["hsm_unavailable"]
    ((letter, _),) = exchanges["dead"].published
    assert letter.headers["x-hocba-reason-code"] == "hsm_unavailable"
    assert letter.headers[ATTEMPT_HEADER] == SETTINGS.max_attempts


async def test_without_a_stored_refusal_nothing_is_dead_lettered(exchanges) -> None:
    handler = FakeHandler(raises=HsmUnavailable("x"), refuse_fails=True)
    message = FakeMessage(headers={ATTEMPT_HEADER: SETTINGS.max_attempts - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert not exchanges["dead"].published
    assert len(exchanges["retry"].published) == 1


async def test_a_crash_loop_is_refused_before_the_broker_drops_it(exchanges) -> None:
    handler = FakeHandler(outcome=Outcome(_event(State.SIGNED_BY_TEACHER)))
    message = FakeMessage(headers={"x-delivery-count": SETTINGS.delivery_limit - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert handler.refused == ["internal_error"]
    assert exchanges["dead"].published


async def test_an_unexpected_error_is_retried_not_lost(exchanges) -> None:
    message = FakeMessage()
    await _deliver(_consumer(FakeHandler(raises=KeyError("bug")), exchanges), message)
    ((copy, _),) = exchanges["retry"].published
    assert copy.headers[ATTEMPT_HEADER] == 1


async def test_a_copy_the_broker_refuses_is_handed_back_not_acknowledged(exchanges) -> None:
    exchanges["dead"].fail = True
    refused = Outcome(_event(State.REJECTED, Reason(code="not_a_pdf", message="m")))
    message = FakeMessage()
    await _deliver(_consumer(FakeHandler(outcome=refused), exchanges), message)
    assert message.settled == ["nack(requeue=True)"]


def test_errors_say_what_the_caller_must_do() -> None:
    assert isinstance(HsmUnavailable("x"), TransientError)
    assert not isinstance(StageOutOfOrder("x"), TransientError)
