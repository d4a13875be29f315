"""What an undecodable sign request says of itself, and where its `rejected` event goes."""

from __future__ import annotations

import json
import uuid

from daemon.messages import claimed_ids
from daemon.settings import MqttSettings
from producers.transports import MqttStatus

RID = str(uuid.uuid4())


def _body(**fields: object) -> bytes:
    body: dict[str, object] = {
        "request_id": RID,
        "school_id": "31000123",
        "record": {"record_id": "2025-2026-5A-07", "grade": 0},
    }
    body.update(fields)
    return json.dumps(body).encode()


def test_a_json_body_gives_its_request_and_record_ids() -> None:
    assert claimed_ids(_body(), "sign.31000123") == (uuid.UUID(RID), "2025-2026-5A-07")


def test_ids_unsafe_in_a_topic_or_of_another_school_are_not_repeated() -> None:
    for record_id in ("a/b", "+", "#", "x\n", "", "é", "r" * 65, 7):
        body = _body(record={"record_id": record_id})
        assert claimed_ids(body, "sign.31000123") == (uuid.UUID(RID), None), record_id
    assert claimed_ids(_body(), "sign.31000999") == (uuid.UUID(RID), None)
    assert claimed_ids(_body(school_id="31000123/#"), "sign.31000123/#") == (uuid.UUID(RID), None)


def test_a_body_that_is_not_a_json_object_claims_nothing() -> None:
    for body in (b"not json", b"\xff\xfe", b"[1, 2]", b"[" * 100_000, b"1" * 5000):
        assert claimed_ids(body, "sign.31000123") == (None, None)
    assert claimed_ids(_body(request_id="request-1"), "sign.31000123")[0] is None
    assert claimed_ids(_body(request_id=12), "sign.31000123")[0] is None


def test_a_rejected_event_goes_to_its_records_topic_and_never_to_an_injected_one() -> None:
    mqtt = MqttStatus(MqttSettings(topic_prefix="hocba"))
    event = {"school_id": "31000123", "record_id": "r-1", "state": "rejected"}
    assert mqtt.topic(event) == "hocba/31000123/records/r-1/status"
    assert mqtt.topic(event | {"record_id": None}) == "hocba/31000123/requests/rejected"
    assert mqtt.topic(event | {"record_id": "x/+/#"}) == "hocba/31000123/requests/rejected"
    assert mqtt.topic(event | {"school_id": "#"}) == "hocba/unknown/records/r-1/status"


def test_a_v2_event_goes_where_no_v1_subscriber_listens() -> None:
    mqtt = MqttStatus(MqttSettings(topic_prefix="hocba"))
    event = {"school_id": "31000123", "record_id": "r-1", "state": "superseded"}
    v2 = event | {"type": "hocba.record_status.v2"}
    assert mqtt.topic(v2) == "hocba/31000123/records/r-1/status/v2"
    assert mqtt.topic(event | {"type": "hocba.record_status.v1"}) == (
        "hocba/31000123/records/r-1/status"
    )
