"""The rules a request must pass before any key is used: who may sign what, and when."""

from __future__ import annotations

from daemon.errors import (
    AlreadyIssued,
    DuplicateRecord,
    InvalidMessage,
    StageOutOfOrder,
    Unauthorized,
    UnknownSigner,
)
from daemon.messages import SignRequest
from daemon.records import Lookup, Record, Signer
from daemon.stages import Stage, next_stage


def authorised_signer(signer: Signer | None, request: SignRequest) -> Signer:
    """The registered signer, if it may sign this stage for this school."""
    if signer is None or signer.school_id != request.school_id:
        raise UnknownSigner(f"Signer {request.signer_id} is not registered for this school.")
    if not signer.active:
        raise Unauthorized(f"Signer {request.signer_id} is deactivated.")
    if signer.stage is not request.stage:
        raise Unauthorized(f"Signer {request.signer_id} signs {signer.stage}, not {request.stage}.")
    return signer


def check_order(record: Record | None, request: SignRequest) -> None:
    """Refuse a stage that is not the record's next one, or any change once issued."""
    if record is None:
        if request.stage is not Stage.HOMEROOM_TEACHER:
            raise StageOutOfOrder(
                f"Record has no signature yet; {Stage.HOMEROOM_TEACHER} must sign first."
            )
        return
    expected = next_stage(record.signatures)
    if expected is None:
        raise AlreadyIssued("Record is issued and can no longer change.")
    if record.info != request.record:
        raise InvalidMessage("Record details differ from the record already held.")
    if request.stage is not expected:
        done = request.stage.position <= record.signatures
        why = "was already signed" if done else "comes later"
        raise StageOutOfOrder(f"Stage {request.stage} {why}; {expected} is next.")


def check_enrolment(found: Lookup, request: SignRequest, corrects: str | None = None) -> None:
    """The roster's teacher signs its class, its principals the principal stage; and a
    student has one live record per year and round.

    Needs the lookup made with the request's record details. `corrects` is the hook for
    v2 corrections: the record a correction names may be the student's live record.
    """
    roster, info = found.roster, request.record
    round_ = f"{info.academic_year} round {info.submission_round}"
    if roster is not None and request.stage is Stage.HOMEROOM_TEACHER:
        if roster.homeroom_teacher is None:
            raise Unauthorized(
                f"Class {info.class_name} is not in the school's roster of {round_}."
            )
        if roster.homeroom_teacher != request.signer_id:
            raise Unauthorized(
                f"The roster of {round_} names {roster.homeroom_teacher} as homeroom teacher "
                f"of class {info.class_name}, not {request.signer_id}."
            )
    if roster is not None and roster.principals and request.stage is Stage.PRINCIPAL:
        if request.signer_id not in roster.principals:
            raise Unauthorized(
                f"The roster of {round_} does not name {request.signer_id} as a principal."
            )
    live = found.live_record_id
    if found.record is None and live not in (None, info.record_id, corrects):
        raise DuplicateRecord(
            f"The student already has record {live} for {round_}; a second is refused "
            "unless it is a correction."
        )


def check_correction(request: SignRequest, corrects: str, corrected: Record | None) -> None:
    """A correction names an issued record of this school, of the same student and round.

    Refused as `invalid_message`: the request contradicts what the registry holds.
    Record ids are per school, so another school's record is not found here.
    """
    info, school = request.record, request.school_id
    if corrected is None:
        raise InvalidMessage(f"corrects: school {school} holds no record {corrects} to correct.")
    if corrected.state == "superseded":
        raise InvalidMessage(f"corrects: record {corrects} was already superseded.")
    if next_stage(corrected.signatures) is not None:
        raise InvalidMessage(f"corrects: record {corrects} is not issued; finish or fix it.")
    if corrected.info.student_id != info.student_id:
        raise InvalidMessage(f"corrects: record {corrects} is another student's.")
    same_round = (corrected.info.academic_year, corrected.info.submission_round) == (
        info.academic_year,
        info.submission_round,
    )
    if not same_round:
        raise InvalidMessage(f"corrects: record {corrects} is of another year or round.")
