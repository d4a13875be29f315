"""The rules a request must pass before any key is used: who may sign what, and when."""

from __future__ import annotations

from daemon.errors import (
    AlreadyIssued,
    InvalidMessage,
    StageOutOfOrder,
    Unauthorized,
    UnknownSigner,
)
from daemon.messages import SignRequest
from daemon.records import Record, Signer
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
