"""The sign consumer, with small fakes at its seams: what happens to a delivery."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from consumers.settle import ATTEMPT_HEADER
from consumers.sign_requests import SignRequestConsumer
from daemon import topology
from daemon.errors import (
    DatabaseUnavailable,
    HocbaError,
    HsmUnavailable,
    StageOutOfOrder,
    TransientError,
)
from daemon.messages import Reason, RecordInfo, SignRequest, StatusEvent
from daemon.outcomes import Outcome, Unreadable
from daemon.settings import AmqpSettings
from daemon.stages import Stage, State
from producers.school_system import sign_request
from tests.unit.amqp_fakes import FakeExchange, FakeMessage, FakeQueue

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
    """Decides as told: an outcome, or an error to raise; records what it gave up on."""

    raises: Exception | None = None
    outcome: Outcome | None = None
    refuse_fails: bool = False
    refused: list[str] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    handled: int = 0

    async def handle_many(self, requests: list[SignRequest]) -> list[Outcome | Exception]:
        self.handled += len(requests)
        if self.raises is not None:
            raise self.raises
        assert self.outcome is not None
        return [self.outcome] * len(requests)

    async def give_up(self, error: HocbaError, request: SignRequest | Unreadable) -> Outcome:
        if self.refuse_fails:
            raise DatabaseUnavailable("down")
        self.refused.append(error.code)
        if isinstance(request, Unreadable):
            self.unreadable.append(request)
        return Outcome(_event(State.REJECTED, Reason(code=error.code, message=error.message)))


@pytest.fixture
def exchanges() -> dict[str, FakeExchange]:
    return {"retry": FakeExchange(), "dead": FakeExchange()}


@dataclass(frozen=True)
class Wired:
    consumer: SignRequestConsumer
    queue: FakeQueue


def _consumer(
    handler: FakeHandler, exchanges: dict[str, FakeExchange], settings: AmqpSettings = SETTINGS
) -> Wired:
    queue = FakeQueue()
    topo = topology.Topology(
        requests=None,
        status=None,
        dead=exchanges["dead"],
        retry=exchanges["retry"],  # type: ignore[arg-type]
        sign_queue=queue,  # type: ignore[arg-type]
    )
    return Wired(SignRequestConsumer(topo, handler, settings, "test"), queue)


async def _deliver(wired: Wired, message: FakeMessage) -> None:
    """Through the consumer's public face: started, then the broker delivers."""
    await wired.consumer.start()
    await wired.queue.deliver(message)


async def test_a_signed_request_is_acknowledged_and_nothing_else(exchanges) -> None:
    message = FakeMessage(body=BODY)
    await _deliver(
        _consumer(FakeHandler(outcome=Outcome(_event(State.SIGNED_BY_TEACHER))), exchanges), message
    )
    assert message.settled == ["ack"]
    assert not exchanges["retry"].published and not exchanges["dead"].published


async def test_a_refusal_is_dead_lettered_with_its_reason_then_acknowledged(exchanges) -> None:
    refused = Outcome(_event(State.REJECTED, Reason(code="stage_out_of_order", message="m")))
    message = FakeMessage(body=BODY)
    await _deliver(_consumer(FakeHandler(outcome=refused), exchanges), message)
    ((letter, key),) = exchanges["dead"].published
    assert letter.headers["x-hocba-reason-code"] == "stage_out_of_order"
    assert letter.body == BODY and key == "sign.31000123"
    assert message.settled == ["ack"]


async def test_a_transient_failure_goes_to_a_delay_queue(exchanges) -> None:
    message = FakeMessage(body=BODY)
    await _deliver(_consumer(FakeHandler(raises=HsmUnavailable("x")), exchanges), message)
    ((copy, _),) = exchanges["retry"].published
    assert copy.headers[ATTEMPT_HEADER] == 1
    assert copy.headers[topology.RETRY_HEADER] == "100"
    assert message.settled == ["ack"]


async def test_the_last_attempt_is_refused_and_dead_lettered(exchanges) -> None:
    handler = FakeHandler(raises=HsmUnavailable("x"))
    message = FakeMessage(body=BODY, headers={ATTEMPT_HEADER: SETTINGS.max_attempts - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert handler.refused == ["hsm_unavailable"]
    ((letter, _),) = exchanges["dead"].published
    assert letter.headers["x-hocba-reason-code"] == "hsm_unavailable"
    assert letter.headers[ATTEMPT_HEADER] == SETTINGS.max_attempts


async def test_without_a_stored_refusal_nothing_is_dead_lettered(exchanges) -> None:
    handler = FakeHandler(raises=HsmUnavailable("x"), refuse_fails=True)
    message = FakeMessage(body=BODY, headers={ATTEMPT_HEADER: SETTINGS.max_attempts - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert not exchanges["dead"].published
    assert len(exchanges["retry"].published) == 1


async def test_a_crash_loop_is_refused_before_the_broker_drops_it(exchanges) -> None:
    handler = FakeHandler(outcome=Outcome(_event(State.SIGNED_BY_TEACHER)))
    message = FakeMessage(body=BODY, headers={"x-delivery-count": SETTINGS.delivery_limit - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert handler.refused == ["internal_error"]
    assert exchanges["dead"].published


async def test_an_unexpected_error_is_retried_not_lost(exchanges) -> None:
    message = FakeMessage(body=BODY)
    await _deliver(_consumer(FakeHandler(raises=KeyError("bug")), exchanges), message)
    ((copy, _),) = exchanges["retry"].published
    assert copy.headers[ATTEMPT_HEADER] == 1


async def test_a_copy_the_broker_refuses_is_handed_back_not_acknowledged(exchanges) -> None:
    exchanges["dead"].fail = True
    refused = Outcome(_event(State.REJECTED, Reason(code="not_a_pdf", message="m")))
    message = FakeMessage(body=BODY)
    await _deliver(_consumer(FakeHandler(outcome=refused), exchanges), message)
    assert message.settled == ["nack(requeue=True)"]


def test_errors_say_what_the_caller_must_do() -> None:
    assert isinstance(HsmUnavailable("x"), TransientError)
    assert not isinstance(StageOutOfOrder("x"), TransientError)


async def test_an_undecodable_body_is_refused_once_by_the_pipeline_and_dead_lettered(
    exchanges,
) -> None:
    handler = FakeHandler(outcome=Outcome(_event(State.SIGNED_BY_TEACHER)))
    request_id = uuid.uuid4()
    message = FakeMessage(body=b"not json", message_id=str(request_id))
    await _deliver(_consumer(handler, exchanges), message)
    # The pipeline refuses it from what the envelope says; nothing was signed
    assert handler.refused == ["invalid_message"] and handler.handled == 0
    assert handler.unreadable == [Unreadable("31000123", request_id)]
    ((letter, key),) = exchanges["dead"].published
    assert letter.headers["x-hocba-reason-code"] == "invalid_message"
    assert key == "sign.31000123" and message.settled == ["ack"]


async def test_an_undecodable_body_with_a_foreign_routing_key_names_no_school(exchanges) -> None:
    handler = FakeHandler()
    message = FakeMessage(body=b"{", routing_key="sign.31000123.extra", message_id="not-a-uuid")
    await _deliver(_consumer(handler, exchanges), message)
    assert handler.unreadable == [Unreadable("unknown", None)]


async def test_giving_up_hands_the_pipeline_the_request_already_decoded(exchanges) -> None:
    handler = FakeHandler(raises=DatabaseUnavailable("x"))
    message = FakeMessage(body=BODY, headers={ATTEMPT_HEADER: SETTINGS.max_attempts - 1})
    await _deliver(_consumer(handler, exchanges), message)
    assert handler.refused == ["database_unavailable"] and handler.unreadable == []
    ((letter, _),) = exchanges["dead"].published
    assert letter.headers["x-hocba-instance"] == "test"
    assert message.settled == ["ack"]


async def test_a_give_up_that_cannot_be_stored_waits_in_a_declared_delay_queue(exchanges) -> None:
    # Given a request long past its last attempt, and a database still down
    handler = FakeHandler(raises=HsmUnavailable("x"), refuse_fails=True)
    message = FakeMessage(body=BODY, headers={ATTEMPT_HEADER: SETTINGS.max_attempts + 5})
    # When it is delivered
    await _deliver(_consumer(handler, exchanges), message)
    # Then it waits in a delay queue that exists, and is not dead-lettered
    ((copy, _),) = exchanges["retry"].published
    assert int(copy.headers[topology.RETRY_HEADER]) in topology.delays_ms(SETTINGS)
    assert copy.headers[ATTEMPT_HEADER] == SETTINGS.max_attempts + 6
    assert not exchanges["dead"].published and message.settled == ["ack"]


@dataclass
class PerRequestHandler(FakeHandler):
    """Answers each request of a batch as its request_id says: signed, refused, failed."""

    answers: dict[uuid.UUID, Outcome | Exception] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)

    async def handle_many(self, requests: list[SignRequest]) -> list[Outcome | Exception]:
        self.batches.append(len(requests))
        return [self.answers[r.request_id] for r in requests]


async def test_each_request_of_a_batch_gets_its_own_verdict(exchanges) -> None:
    # Given three requests taken in one batch: one signed, one refused, one failing
    handler = PerRequestHandler()
    messages = []
    answers: list[Outcome | Exception] = [
        Outcome(_event(State.SIGNED_BY_PRINCIPAL)),
        Outcome(_event(State.REJECTED, Reason(code="stage_out_of_order", message="m"))),
        HsmUnavailable("x"),
    ]
    for answer in answers:
        _, body, rid = sign_request("31000123", INFO, Stage.PRINCIPAL, "BGH-0001", "a.b.c")
        handler.answers[uuid.UUID(rid)] = answer
        messages.append(FakeMessage(body=body, message_id=rid))
    wired = _consumer(
        handler, exchanges, AmqpSettings(**{**SETTINGS.model_dump(), "batch_size": 3})
    )
    await wired.consumer.start()
    # When the broker delivers them together
    await asyncio.gather(*(wired.queue.deliver(m) for m in messages))
    # Then they were decided in one batch, and each settled as its own outcome says
    assert handler.batches == [3]
    ((letter, _),) = exchanges["dead"].published
    assert letter.message_id == messages[1].message_id
    ((copy, _),) = exchanges["retry"].published
    assert copy.message_id == messages[2].message_id
    assert [m.settled for m in messages] == [["ack"], ["ack"], ["ack"]]
