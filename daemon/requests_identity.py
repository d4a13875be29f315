"""What identifies a sign request, and the version of its record it signs.

`fingerprint` tells a retried request from another one under the same request_id;
`version_digest` is the sha256 the request's consent must name.
"""

from __future__ import annotations

import hashlib
import json

from daemon import records
from daemon.messages import SignRequest, SignRequestV2
from daemon.record.xml import record_sha256


def corrects_of(request: SignRequest) -> str | None:
    """The record a v2 request says it corrects (read at the teacher's stage only)."""
    if isinstance(request, SignRequestV2) and request.corrects is not None:
        return request.corrects.record_id
    return None


def version_digest(request: SignRequest, record: records.Record | None) -> str:
    """The sha256 of the exact version this request signs (and its consent must name)."""
    if request.document is not None:
        return request.document.sha256
    if isinstance(request, SignRequestV2) and request.record_data is not None:
        # The school system renders nothing: it names the data, as canonical XML.
        return record_sha256(request.record.record_id, request.record_data)
    assert record is not None  # check_order refuses later stages of unknown records
    return record.current_sha256


def fingerprint(request: SignRequest) -> str:
    """What makes two requests the same request: not when it was sent, nor its consent.

    A school system that retries with a re-serialised body (a new `requested_at`, a
    re-minted consent) gets the status already produced, not `request_id_reused`.
    """
    document = request.document.sha256 if request.document else None
    if isinstance(request, SignRequestV2) and request.record_data is not None:
        document = record_sha256(request.record.record_id, request.record_data)
    same = [
        request.school_id,
        request.record.model_dump(),
        request.stage.value,
        request.signer_id,
        document,
    ]
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()
