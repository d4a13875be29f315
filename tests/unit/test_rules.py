import uuid
from datetime import UTC, datetime

import pytest

from daemon import rules
from daemon.consent import ConsentKey
from daemon.errors import (
    AlreadyIssued,
    InvalidMessage,
    StageOutOfOrder,
    Unauthorized,
    UnknownSigner,
)
from daemon.messages import RecordInfo, SignRequest
from daemon.records import Record, School, Signer
from daemon.stages import Stage

INFO = RecordInfo(
    record_id="2025-2026-5A-07",
    student_id="3100012300007",
    academic_year="2025-2026",
    grade=5,
    class_name="5A",
    submission_round=1,
)
_ = School("31000123", ConsentKey("HS256", b"k"))


def _request(stage: Stage, school: str = "31000123", info: RecordInfo = INFO) -> SignRequest:
    document = (
        {"sha256": "ab" * 32, "content_b64": "eA=="} if stage is Stage.HOMEROOM_TEACHER else None
    )
    return SignRequest.model_validate(
        {
            "type": "hocba.sign_request.v1",
            "request_id": uuid.uuid4(),
            "school_id": school,
            "record": info.model_dump(),
            "stage": stage,
            "signer_id": "X",
            "document": document,
            "consent": "a.b.c",
            "requested_at": datetime.now(UTC),
        }
    )


def _record(signatures: int, info: RecordInfo = INFO) -> Record:
    return Record(info, "whatever", signatures, "cd" * 32)


def _signer(stage: Stage, school: str = "31000123", active: bool = True) -> Signer:
    return Signer(school, "X", stage, "tok", f"{school}/X", active)


@pytest.mark.parametrize(
    ("signatures", "stage"),
    [
        (None, Stage.HOMEROOM_TEACHER),
        (1, Stage.PRINCIPAL),
        (2, Stage.SCHOOL_SEAL),
    ],
)
def test_each_stage_follows_its_predecessor(signatures: int | None, stage: Stage) -> None:
    rules.check_order(None if signatures is None else _record(signatures), _request(stage))


@pytest.mark.parametrize(
    ("signatures", "stage"),
    [
        (None, Stage.PRINCIPAL),
        (None, Stage.SCHOOL_SEAL),
        (1, Stage.HOMEROOM_TEACHER),
        (1, Stage.SCHOOL_SEAL),
        (2, Stage.PRINCIPAL),
    ],
)
def test_any_other_order_is_refused(signatures: int | None, stage: Stage) -> None:
    with pytest.raises(StageOutOfOrder):
        rules.check_order(None if signatures is None else _record(signatures), _request(stage))


@pytest.mark.parametrize("stage", list(Stage))
def test_an_issued_record_refuses_every_stage(stage: Stage) -> None:
    with pytest.raises(AlreadyIssued):
        rules.check_order(_record(3), _request(stage))


def test_record_details_must_match_the_record_held() -> None:
    other = INFO.model_copy(update={"student_id": "3100012399999"})
    with pytest.raises(InvalidMessage):
        rules.check_order(_record(1, other), _request(Stage.PRINCIPAL))


def test_a_signer_signs_only_its_own_stage_of_its_own_school() -> None:
    request = _request(Stage.PRINCIPAL)
    assert rules.authorised_signer(_signer(Stage.PRINCIPAL), request).stage is Stage.PRINCIPAL
    with pytest.raises(Unauthorized):
        rules.authorised_signer(_signer(Stage.SCHOOL_SEAL), request)
    with pytest.raises(Unauthorized):
        rules.authorised_signer(_signer(Stage.PRINCIPAL, active=False), request)
    with pytest.raises(UnknownSigner):
        rules.authorised_signer(_signer(Stage.PRINCIPAL, school="31000999"), request)
    with pytest.raises(UnknownSigner):
        rules.authorised_signer(None, request)
