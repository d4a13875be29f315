"""A batch's requests in rounds: which of them may be decided and signed together.

Requests that touch the same request_id, record or (at the teacher's stage) student
must each be decided on what the one before stored, so they go in later rounds; the
rest of a batch is looked up, signed and stored at once (daemon/pipeline.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.messages import SignRequest
from daemon.stages import Stage


def rounds(requests: Sequence[SignRequest]) -> list[list[int]]:
    """The requests' indices in rounds: none shares a request_id, record or (at the
    teacher's stage) student with one of its round, and each comes after those before."""
    found: list[list[int]] = []
    last: dict[tuple[object, ...], int] = {}
    for n, request in enumerate(requests):
        at = max((last[k] + 1 for k in _touches(request) if k in last), default=0)
        if at == len(found):
            found.append([])
        found[at].append(n)
        for k in _touches(request):
            last[k] = at
    return found


def _touches(request: SignRequest) -> list[tuple[object, ...]]:
    """What a request reads and writes that another one of its batch might too."""
    info = request.record
    keys: list[tuple[object, ...]] = [
        ("request", request.request_id),
        ("record", request.school_id, info.record_id),
    ]
    if request.stage is Stage.HOMEROOM_TEACHER:
        student = (info.academic_year, info.submission_round, info.student_id)
        keys.append(("student", request.school_id, *student))
    return keys
