"""hocba.sign_request.v2 at intake: record_data decoded, or refused saying exactly where."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import InvalidMessage
from daemon.messages import SignRequestV2, decode_sign_request
from daemon.record.model import RecordData, overall_result
from daemon.record.xml import canonical_xml, read_xml, record_sha256

EXAMPLE = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "record_data.json"
RECORD = {
    "record_id": "2025-2026-5A-07",
    "student_id": "3100012300007",
    "academic_year": "2025-2026",
    "grade": 5,
    "class_name": "5A",
    "submission_round": 1,
}


def _body() -> dict[str, Any]:
    return {
        "type": "hocba.sign_request.v2",
        "request_id": "7d4a1f0e-3b8e-4a57-9a55-3f9f8a0c2b11",
        "school_id": "31000123",
        "record": dict(RECORD),
        "stage": "homeroom_teacher",
        "signer_id": "GV-0042",
        "record_data": json.loads(EXAMPLE.read_text()),
        "consent": "x.y.z",
        "requested_at": "2026-05-20T08:00:00+07:00",
    }


def _refusal(body: dict[str, Any]) -> str:
    with pytest.raises(InvalidMessage) as caught:
        decode_sign_request(json.dumps(body).encode(), "sign.31000123")
    return caught.value.message


def test_a_v2_request_with_record_data_decodes() -> None:
    request = decode_sign_request(json.dumps(_body()).encode(), "sign.31000123")
    assert isinstance(request, SignRequestV2)
    assert request.record_data is not None and request.document is None
    assert request.record_data.student.full_name == "Nguyễn Thị Thu Hà"


def _set(path: str, value: object):
    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DROP:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DROP = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("record_data.subjects.2.score", 11),
            "record_data.subjects[2].score: a test score is from 1 to 10",
        ),
        (
            _set("record_data.subjects.3.score", 8),
            "record_data.subjects[3].score: dao_duc has no end-of-year test in grade 5",
        ),
        (
            _set("record_data.subjects.0.score", None),
            "record_data.subjects[0].score: tieng_viet has an end-of-year test in grade 5",
        ),
        (
            _set("record_data.subjects.1.subject", "tieng_viet"),
            "record_data.subjects[1].subject: tieng_viet is listed twice",
        ),
        (
            _set("record_data.subjects.4.subject", "tu_nhien_xa_hoi"),
            "record_data.subjects[4].subject: tu_nhien_xa_hoi is not taught in grade 5",
        ),
        (_set("record_data.subjects.1", _DROP), "record_data.subjects: grade 5 also needs toan"),
        (_set("record_data.subjects.0.level", "A"), "record_data.subjects[0].level"),
        (_set("record_data.qualities.nhan_ai", "Tốt"), "record_data.qualities.nhan_ai"),
        (
            _set("record_data.subjects.2.score", 8),
            "record_data.overall_result: the results give HTT (Hoàn thành tốt)",
        ),
        (
            _set("record_data.student.student_id", "3100012300008"),
            "record_data.student.student_id: differs from record.student_id",
        ),
        (_set("record_data.grade", 4), "record_data.grade: differs from record.grade"),
        (_set("record_data.class_name", "5B"), "record_data.class_name: differs from record"),
        (_set("record_data.academic_year", "2024-2025"), "record_data.academic_year: differs"),
        (
            _set("record_data.school.school_id", "31000999"),
            "record_data.school.school_id: differs from school_id",
        ),
        (_set("record_data.teacher_comment", "bell \x07"), "record_data.teacher_comment"),
        (_set("record_data.extra", 1), "record_data.extra"),
        (
            _set("document", {"sha256": "ab" * 32, "content_b64": "eA=="}),
            "needs one of document and record_data",
        ),
        (_set("stage", "principal"), "drop record_data"),
    ],
)
def test_a_broken_record_is_refused_naming_the_field(change, message: str) -> None:
    body = copy.deepcopy(_body())
    change(body)
    assert message in _refusal(body)


def test_v1_keeps_refusing_record_data() -> None:
    body = _body()
    body["type"] = "hocba.sign_request.v1"
    assert "record_data: Extra inputs are not permitted" in _refusal(body)


def test_a_correction_is_declared_in_the_model() -> None:
    body = _body()
    body["corrects"] = {
        "record_id": "2025-2026-5A-06",
        "reason": "Sai điểm Toán",
        "authorised_by": "BGH-0001",
    }
    request = decode_sign_request(json.dumps(body).encode(), "sign.31000123")
    assert isinstance(request, SignRequestV2) and request.corrects is not None
    assert request.corrects.record_id == "2025-2026-5A-06"


def test_the_overall_result_follows_thong_tu_27() -> None:
    data = RecordData.model_validate_json(EXAMPLE.read_bytes())
    assert overall_result(data) == "HTXS"
    subjects = [
        r.model_copy(update={"level": "H"}) if i == 3 else r for i, r in enumerate(data.subjects)
    ]
    assert overall_result(data.model_copy(update={"subjects": subjects})) == "HT"
    subjects[0] = subjects[0].model_copy(update={"level": "C"})
    assert overall_result(data.model_copy(update={"subjects": subjects})) == "CHT"


def test_the_record_xml_round_trips_and_its_digest_is_of_the_canonical_bytes() -> None:
    data = RecordData.model_validate_json(EXAMPLE.read_bytes())
    xml = canonical_xml("2025-2026-5A-07", data)
    assert read_xml(xml) == ("2025-2026-5A-07", data)
    assert b"Nguy\xe1\xbb\x85n" in xml  # UTF-8, not character references
    assert record_sha256("2025-2026-5A-07", data) == hashlib.sha256(xml).hexdigest()
    assert b"\n" not in xml and not xml.startswith(b"<?xml")


@pytest.mark.parametrize(
    ("xml", "says"),
    [
        (b"<hocba_record", "not well-formed"),
        (b'<!DOCTYPE r [<!ENTITY e "x">]><hocba_record xmlns="urn:vn:hocba:record:1"/>', "DOCTYPE"),
        (b'<hocba_record xmlns="urn:vn:hocba:record:1" version="1"/>', "hocba-record.xsd"),
    ],
)
def test_untrusted_record_xml_is_refused_saying_why(xml: bytes, says: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        read_xml(xml)
    assert says in caught.value.message


def test_xml_that_passes_the_xsd_but_breaks_a_rule_is_refused() -> None:
    data = RecordData.model_validate_json(EXAMPLE.read_bytes())
    xml = canonical_xml("r-1", data).replace(b"<overall_result>HTXS", b"<overall_result>HT")
    with pytest.raises(InvalidMessage) as caught:
        read_xml(xml)
    assert "overall_result" in caught.value.message
