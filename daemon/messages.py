"""The wire contracts: sign requests in, status events out; decoded once, at the edge."""

from __future__ import annotations

import binascii
import contextlib
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import pybase64
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, from_json

from daemon.errors import InvalidMessage
from daemon.record.model import Correction, RecordData
from daemon.stages import Stage, State

SchoolId = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z_-]{1,32}$")]
RecordId = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,64}$")]
SignerId = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,64}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecordInfo(_Frozen):
    record_id: RecordId
    student_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    academic_year: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{4}$")]
    grade: int = Field(ge=1, le=12)
    class_name: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    submission_round: Literal[1, 2]


class Document(_Frozen):
    sha256: Sha256Hex
    content_b64: str | None = None
    url: AnyHttpUrl | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Document:
        if (self.content_b64 is None) == (self.url is None):
            raise ValueError("document needs exactly one of content_b64 and url")
        return self

    def inline_bytes(self) -> bytes | None:
        """The inline content, decoded; None when the document is by reference."""
        if self.content_b64 is None:
            return None
        return decode_base64(self.content_b64)


def decode_base64(text: str) -> bytes:
    """Strict base64: the alphabet only, padded, nothing after the padding.

    What `b64decode(validate=True)` accepts. pybase64's SIMD decoder first (130 KB:
    6 µs against 230 µs); it is stricter still (it refuses a quantum padded past its
    end, `AAAA=`), and the same bytes wherever it accepts, so whatever it refuses is
    decided by `binascii`'s own strict decoder, as before (tests/unit/test_messages.py).
    """
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage("document.content_b64 is not valid base64.") from exc


class SignRequest(_Frozen):
    type: Literal["hocba.sign_request.v1"]
    request_id: UUID
    school_id: SchoolId
    record: RecordInfo
    stage: Stage
    signer_id: SignerId
    document: Document | None = None
    consent: Annotated[str, StringConstraints(min_length=1, max_length=16_384)]
    requested_at: datetime

    @model_validator(mode="after")
    def _document_only_first(self) -> SignRequest:
        if self.stage is Stage.HOMEROOM_TEACHER and self.document is None:
            raise ValueError("stage homeroom_teacher needs a document")
        if self.stage is not Stage.HOMEROOM_TEACHER and self.document is not None:
            raise ValueError(f"stage {self.stage} signs the held version; drop document")
        return self


class SignRequestV2(SignRequest):
    """`hocba.sign_request.v2`: as v1, and the teacher may send `record_data` instead.

    The daemon then renders the record (daemon/record/render.py) and signs that PDF;
    the consent's `dig` is the sha256 of the record's canonical XML.
    """

    type: Literal["hocba.sign_request.v2"]  # type: ignore[assignment]
    record_data: RecordData | None = None
    corrects: Correction | None = None

    @model_validator(mode="after")
    def _document_only_first(self) -> SignRequestV2:
        first = self.stage is Stage.HOMEROOM_TEACHER
        given = (self.document is not None) + (self.record_data is not None)
        if first and given != 1:
            raise ValueError("stage homeroom_teacher needs one of document and record_data")
        if not first and given:
            drop = "document" if self.document is not None else "record_data"
            raise ValueError(f"stage {self.stage} signs the held version; drop {drop}")
        if self.record_data is not None:
            _check_same_record(self.record_data, self.record, self.school_id)
        return self


def _check_same_record(data: RecordData, record: RecordInfo, school_id: str) -> None:
    pairs = [
        ("student.student_id", data.student.student_id, "student_id", record.student_id),
        ("academic_year", data.academic_year, "academic_year", record.academic_year),
        ("grade", data.grade, "grade", record.grade),
        ("class_name", data.class_name, "class_name", record.class_name),
    ]
    for at, value, field, expected in pairs:
        if value != expected:
            raise PydanticCustomError(
                "record_mismatch", f"differs from record.{field}", {"at": f"record_data.{at}"}
            )
    if data.school.school_id != school_id:
        raise PydanticCustomError(
            "record_mismatch", "differs from school_id", {"at": "record_data.school.school_id"}
        )


SIGN_REQUEST_TYPES: dict[str, type[SignRequest]] = {
    "hocba.sign_request.v1": SignRequest,
    "hocba.sign_request.v2": SignRequestV2,
}


class Reason(_Frozen):
    code: str
    message: str


class StatusEvent(_Frozen):
    type: Literal["hocba.record_status.v1"] = "hocba.record_status.v1"
    event_id: UUID
    request_id: UUID | None
    school_id: str
    record_id: str | None
    state: State
    stage: Stage | None
    document_sha256: str | None
    signatures: int
    reason: Reason | None
    at: datetime


class StatusEventV2(_Frozen):
    """`hocba.record_status.v2`: as v1, with the `superseded` state and what replaced what.

    Published only where v1 consumers do not listen (producers/transports.py): AMQP key
    `status_v2.<school_id>.<state>`, MQTT `.../records/<record_id>/status/v2`; for now
    only for a record a correction replaced.
    """

    type: Literal["hocba.record_status.v2"] = "hocba.record_status.v2"
    event_id: UUID
    request_id: UUID | None
    school_id: str
    record_id: str | None
    state: State | Literal["superseded"]
    stage: Stage | None
    document_sha256: str | None
    signatures: int
    reason: Reason | None
    at: datetime
    # On the superseded record: the issued correction that replaced it.
    superseded_by: str | None = None
    superseded_by_sha256: str | None = None
    # On a correction: the record it corrects.
    corrects: str | None = None


def loads(body: bytes) -> Any:
    """The JSON value of a message body, as `json.loads` reads it.

    pydantic-core's parser first: a first stage's body is ~200 KB, nearly all of it
    the PDF's base64, which it reads ~8x faster (16 against 129 µs). What it accepts
    `json.loads` accepts with the same value (tests/unit/test_messages_json.py); what
    it refuses (a byte-order mark, UTF-16, a lone surrogate, nesting past 200, an
    integer past 4,300 digits, or plain bad JSON) is read by `json.loads`, which
    decides, and words any refusal, as it always did.
    """
    try:
        return from_json(body, cache_strings="keys")
    except ValueError:
        return json.loads(body)


def decode_sign_request(body: bytes, routing_key: str) -> SignRequest:
    """Decode and check a sign request; the routing key's school must be the body's."""
    try:
        raw: Any = loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"Body is not JSON: {exc.msg}.", body) from exc
    except UnicodeDecodeError as exc:
        raise InvalidMessage("Body is not UTF-8 JSON.", body) from exc
    except (ValueError, RecursionError) as exc:
        # Hostile JSON that parses only in theory: an integer beyond Python's digit
        # limit (ValueError), or arrays nested past the recursion limit.
        raise InvalidMessage(f"Body is not acceptable JSON: {type(exc).__name__}.", body) from exc
    try:
        kind = raw.get("type") if isinstance(raw, dict) else None
        model = SIGN_REQUEST_TYPES.get(kind, SignRequest) if isinstance(kind, str) else SignRequest
        request = model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidMessage(_summarise(exc), body) from exc
    if routing_key != f"sign.{request.school_id}":
        raise InvalidMessage(
            f"Routing key {routing_key!r} does not match school_id {request.school_id}.",
            body,
        )
    return request


_SAFE_SCHOOL = re.compile(r"[0-9A-Za-z_-]{1,32}")
_SAFE_RECORD = re.compile(r"[0-9A-Za-z._-]{1,64}")


def claimed_ids(body: bytes, routing_key: str) -> tuple[UUID | None, str | None]:
    """The `request_id` and `record.record_id` an undecodable sign request claims.

    So that its `rejected` event tells the school system which request failed. Only
    ids safe in an MQTT topic or a routing key are repeated (no `+`, `#` nor `/`), and
    the record id only when the body's `school_id` is the routing key's school.
    """
    try:
        raw: Any = loads(body)  # as `decode_sign_request` read it
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or hostile JSON
        return None, None
    if not isinstance(raw, dict):
        return None, None
    request_id = None
    claimed = raw.get("request_id")
    if isinstance(claimed, str) and len(claimed) <= 45:
        with contextlib.suppress(ValueError):
            request_id = UUID(claimed)
    school, record = raw.get("school_id"), raw.get("record")
    record_id = record.get("record_id") if isinstance(record, dict) else None
    consistent = (
        isinstance(school, str)
        and _SAFE_SCHOOL.fullmatch(school) is not None
        and routing_key == f"sign.{school}"
    )
    if not (consistent and isinstance(record_id, str) and _SAFE_RECORD.fullmatch(record_id)):
        record_id = None
    return request_id, record_id


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = _path([*err["loc"], *(err.get("ctx") or {}).get("at", "").split(".")])
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    tail = f" (+{more} more)" if more > 0 else ""
    return "Invalid sign request: " + "; ".join(parts) + tail + "."


def _path(loc: list[Any]) -> str:
    """`record_data.subjects[2].score`: list indexes in brackets, as integrators write them."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "":
            out += f".{part}" if out else str(part)
    return out or "body"


class PackageRequest(_Frozen):
    """`hocba.package_request.v1`: package (and by default submit) a school's round."""

    type: Literal["hocba.package_request.v1"]
    request_id: UUID
    school_id: SchoolId
    academic_year: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{4}$")]
    submission_round: Literal[1, 2]
    submit: bool = True
    requested_at: datetime


def decode_package_request(body: bytes, routing_key: str) -> PackageRequest:
    """Decode a package request; the routing key must be `package.<its school_id>`."""
    try:
        request = PackageRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(
            _summarise(exc).replace("sign request", "package request"), body
        ) from exc
    if routing_key != f"package.{request.school_id}":
        raise InvalidMessage(
            f"Routing key {routing_key!r} does not match school_id {request.school_id}.", body
        )
    return request


ClassName = Annotated[str, StringConstraints(min_length=1, max_length=32)]
AcademicYear = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{4}$")]


class RosterClass(_Frozen):
    class_name: ClassName
    grade: int = Field(ge=1, le=12)
    homeroom_teacher: SignerId
    students: int = Field(ge=0, le=1000)


class Roster(_Frozen):
    """`hocba.roster.v1`: what a school must sign in a round, and who teaches each class."""

    type: Literal["hocba.roster.v1"]
    school_id: SchoolId
    academic_year: AcademicYear
    submission_round: Literal[1, 2]
    classes: list[RosterClass] = Field(min_length=1, max_length=2000)
    principals: list[SignerId] = Field(default_factory=list, max_length=20)
    sent_at: datetime

    @model_validator(mode="after")
    def _classes_once(self) -> Roster:
        names = [c.class_name for c in self.classes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"classes named more than once: {', '.join(twice)}")
        return self

    @property
    def expected_records(self) -> int:
        return sum(c.students for c in self.classes)


def decode_roster(body: bytes, routing_key: str) -> Roster:
    """Decode a roster; the routing key must be `roster.<its school_id>`."""
    try:
        roster = Roster.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(_summarise(exc).replace("sign request", "roster"), body) from exc
    if routing_key != f"roster.{roster.school_id}":
        raise InvalidMessage(
            f"Routing key {routing_key!r} does not match school_id {roster.school_id}.", body
        )
    return roster
