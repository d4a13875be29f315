"""A request that fails validation is told back with the ids it gave, on its record's topic.

The requests are published as a new integrator would: no AMQP message_id, so the ids in
each `rejected` event can only come from the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import aio_pika
import asyncpg

from daemon.app import Running
from daemon.settings import Settings
from daemon.stages import Stage
from producers.school_system import sign_request
from tests.integration.conftest import SchoolSystem
from tests.services import MqttEvents, StatusEvents, dead_letters

SCHOOL = "31000101"
OTHER = "31000102"


async def _publish(
    school_system: SchoolSystem, routing_key: str, body: dict, message_id: str | None = None
) -> bytes:
    raw = json.dumps(body).encode()
    message = aio_pika.Message(raw, content_type="application/json", message_id=message_id)
    await school_system.exchange.publish(message, routing_key=routing_key)
    return raw


def _teacher_body(school_system: SchoolSystem) -> tuple[dict, str]:
    info, pdf = school_system.new_record(SCHOOL)
    token = school_system.env.consent_signer(SCHOOL).mint(
        "GV-0001", Stage.HOMEROOM_TEACHER, [(info.record_id, hashlib.sha256(pdf).hexdigest())]
    )
    _, body, _ = sign_request(SCHOOL, info, Stage.HOMEROOM_TEACHER, "GV-0001", token, pdf)
    return json.loads(body), info.record_id


async def _records(conn: asyncpg.Connection) -> list[tuple]:
    rows = await conn.fetch(
        "SELECT record_id, state, signatures, current_sha256 FROM records ORDER BY record_id"
    )
    return [tuple(r) for r in rows]


async def test_each_invalid_request_is_rejected_with_its_ids_on_its_records_topic(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    mqtt: MqttEvents,
    settings: Settings,
) -> None:
    # Given a record signed by its teacher, and every record's state
    info, pdf, sent = await school_system.first_stage(SCHOOL)
    signed = (await status.wait(sent.request_id))[0]
    assert signed["state"] == "signed_by_teacher", signed["reason"]
    async with daemon.db.connection() as conn:
        before = await _records(conn)

    # When the school system sends three requests that fail validation
    extra, extra_record = _teacher_body(school_system)
    extra["priority"] = "high"
    zero, zero_record = _teacher_body(school_system)
    zero["record"]["grade"] = 0
    token = school_system.env.consent_signer(SCHOOL).mint(
        "BGH-0001", Stage.PRINCIPAL, [(info.record_id, signed["document_sha256"])]
    )
    _, body, _ = sign_request(SCHOOL, info, Stage.PRINCIPAL, "BGH-0001", token)
    later = json.loads(body)
    later["document"] = {
        "sha256": hashlib.sha256(pdf).hexdigest(),
        "content_b64": extra["document"]["content_b64"],
    }
    cases = {
        "an extra field": (extra, extra_record, "priority"),
        "a grade of 0": (zero, zero_record, "record.grade"),
        "a document sent with a later stage": (later, info.record_id, "document"),
    }
    sent_bodies = {}
    for name, (body_dict, _, _) in cases.items():
        sent_bodies[name] = await _publish(school_system, f"sign.{SCHOOL}", body_dict)

    # Then each is rejected with the request's request_id and record_id, on AMQP as today
    prefix = settings.mqtt.topic_prefix
    for name, (body_dict, record_id, where) in cases.items():
        event = await status.wait_for_state(body_dict["request_id"], "rejected")
        assert event["record_id"] == record_id, name
        assert event["school_id"] == SCHOOL, name
        assert event["reason"]["code"] == "invalid_message", name
        assert where in event["reason"]["message"], (name, event["reason"])
        assert status.routing_keys[event["event_id"]] == f"status.{SCHOOL}.rejected", name
        # And on the record's MQTT topic, not retained
        topic = f"{prefix}/{SCHOOL}/records/{record_id}/status"
        on_topic = await mqtt.wait(topic, "rejected")
        assert on_topic["request_id"] == body_dict["request_id"], name
        assert [retain for e, retain in mqtt.by_topic[topic] if e["state"] == "rejected"] == [
            False
        ], name
    # And the rejected events do not pretend: the signed record keeps its state, and the
    # never-created records have no signature and no version
    later_event = await status.wait_for_state(later["request_id"], "rejected")
    assert later_event["signatures"] == 1
    assert later_event["document_sha256"] == signed["document_sha256"]
    extra_event = await status.wait_for_state(extra["request_id"], "rejected")
    assert extra_event["signatures"] == 0 and extra_event["document_sha256"] is None
    async with daemon.db.connection() as conn:
        assert await _records(conn) == before
    # And each is dead-lettered with its reason, as before
    letters = {m.body: m for m in await dead_letters(settings.amqp.url)}
    for name, raw in sent_bodies.items():
        assert letters[raw].headers["x-hocba-reason-code"] == "invalid_message", name
    assert not mqtt.by_topic.get(f"{prefix}/{SCHOOL}/requests/rejected")


async def test_unsafe_or_inconsistent_ids_never_reach_a_topic(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    mqtt: MqttEvents,
    settings: Settings,
) -> None:
    # Given requests whose record id would be a topic injection, or whose school is not
    # the routing key's
    unsafe, _ = _teacher_body(school_system)
    unsafe["record"]["record_id"] = "x/+/#"
    foreign, _ = _teacher_body(school_system)
    not_uuid, not_uuid_record = _teacher_body(school_system)
    not_uuid["request_id"] = "request-1"

    # When they are sent
    await _publish(school_system, f"sign.{SCHOOL}", unsafe)
    await _publish(school_system, f"sign.{OTHER}", foreign)
    envelope_id = str(uuid.uuid4())
    await _publish(school_system, f"sign.{SCHOOL}", not_uuid, envelope_id)

    # Then each is rejected with its request_id but no record id, on the requests topic
    prefix = settings.mqtt.topic_prefix
    event = await status.wait_for_state(unsafe["request_id"], "rejected")
    assert event["record_id"] is None and event["school_id"] == SCHOOL
    event = await status.wait_for_state(foreign["request_id"], "rejected")
    assert event["record_id"] is None and event["school_id"] == OTHER
    assert (await mqtt.wait(f"{prefix}/{SCHOOL}/requests/rejected", "rejected"))[
        "request_id"
    ] == unsafe["request_id"]
    assert (await mqtt.wait(f"{prefix}/{OTHER}/requests/rejected", "rejected"))[
        "request_id"
    ] == foreign["request_id"]
    # And a request_id that is not a UUID is not repeated (the envelope's message_id is
    # used, as before); the record id still is
    topic = f"{prefix}/{SCHOOL}/records/{not_uuid_record}/status"
    event = await mqtt.wait(topic, "rejected")
    assert event["request_id"] == envelope_id
    assert all("+" not in t and "#" not in t for t in mqtt.by_topic)


async def test_the_same_unreadable_bytes_delivered_again_are_refused_under_one_event(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents, settings: Settings
) -> None:
    # Given an invalid request (an extra field), delivered twice with the same bytes, as
    # the broker redelivers a message whose acknowledgement a crash lost
    body, _ = _teacher_body(school_system)
    body["priority"] = "urgent"
    message_id = str(uuid.uuid4())
    await _publish(school_system, f"sign.{SCHOOL}", body, message_id)
    await status.wait_for_state(body["request_id"], "rejected")
    await _publish(school_system, f"sign.{SCHOOL}", body, message_id)
    # (each delivery is dead-lettered; the second one's letter says it was handled)
    ours: list[str] = []
    async with asyncio.timeout(60):
        while len(ours) < 2:
            taken = await dead_letters(settings.amqp.url)
            ours += [m.message_id for m in taken if m.message_id == message_id]
            if len(ours) < 2:
                await asyncio.sleep(0.2)

    # Then one rejected event was stored for it, not two
    conn = await asyncpg.connect(settings.database.dsn)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE payload->>'request_id' = $1", body["request_id"]
        )
    finally:
        await conn.close()
    assert stored == 1
