"""Which requests of a batch are decided together, and which wait for a later round."""

from __future__ import annotations

import random
import uuid

from daemon.messages import SignRequest, decode_sign_request
from daemon.rounds import rounds
from daemon.stages import Stage
from producers.school_system import sample_record, sign_request

T, P = Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL


def _request(school: str, record: int, stage: Stage, *, student: str | None = None,
             request_id: uuid.UUID | None = None) -> SignRequest:  # fmt: skip
    info = sample_record(random.Random(record), school, "7A", record)
    if student is not None:
        info = info.model_copy(update={"student_id": student})
    pdf = b"%PDF-1.7\n" if stage is T else None
    key, body, _ = sign_request(school, info, stage, "GV-0001", "token", pdf, request_id)
    return decode_sign_request(body, key)


def test_independent_requests_go_in_one_round() -> None:
    batch = [_request("31000123", n, P) for n in range(5)]
    assert rounds(batch) == [[0, 1, 2, 3, 4]]


def test_a_second_request_for_a_record_waits_for_the_first() -> None:
    # Given two requests for record 1 and others between them
    batch = [_request("31000123", 1, T), _request("31000123", 2, T), _request("31000123", 1, P)]
    # Then the second for record 1 goes in the next round, after the first
    assert rounds(batch) == [[0, 1], [2]]


def test_the_same_record_number_of_another_school_does_not_wait() -> None:
    batch = [_request("31000123", 1, P), _request("31000456", 1, P)]
    assert rounds(batch) == [[0, 1]]


def test_two_teacher_stages_for_one_student_go_one_after_the_other() -> None:
    batch = [_request("31000123", 1, T, student="HS1"), _request("31000123", 2, T, student="HS1")]
    assert rounds(batch) == [[0], [1]]
    # but later stages of two records of one student do not touch the student
    later = [_request("31000123", 1, P, student="HS1"), _request("31000123", 2, P, student="HS1")]
    assert rounds(later) == [[0, 1]]


def test_a_reused_request_id_waits_and_chains_stay_in_order() -> None:
    same = uuid.uuid4()
    batch = [
        _request("31000123", 1, P, request_id=same),
        _request("31000123", 2, P, request_id=same),
        _request("31000123", 2, T),
        _request("31000123", 3, P),
    ]
    # 1 waits for 0 (same request_id), 2 waits for 1 (same record), 3 waits for nothing
    assert rounds(batch) == [[0, 3], [1], [2]]
