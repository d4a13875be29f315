"""Corrections end to end: a v2 record that `corrects` an issued one, through the three
stages, supersedes it, tells the school system in v2, and goes to the ministry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import aio_pika

from daemon.app import Running
from daemon.blobs import FsStore
from daemon.messages import RecordInfo
from daemon.packaging.packages import PackageState
from daemon.record.xml import record_sha256
from daemon.settings import Settings
from daemon.stages import ORDER, Stage
from daemon.verification import lookup
from daemon.verification import report as verify
from producers.school_system import sample_record_data, sign_request_v2
from tests.integration.conftest import Published, SchoolSystem
from tests.integration.package_fixtures import *  # noqa: F403
from tests.integration.package_fixtures import Ministry, Packaging, fresh_year, issue
from tests.services import MqttEvents, StatusEvents, mqtt_collector

SCHOOL = "31000102"
OTHER = "31000101"


@contextlib.asynccontextmanager
async def _v2_status(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue bound as a v2 consumer binds: `status_v2.#` on `hocba.status`."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "hocba.status", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, routing_key="status_v2.#")
        yield queue


async def _next(queue: aio_pika.abc.AbstractQueue) -> tuple[str, dict[str, Any]]:
    async with asyncio.timeout(60), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                return message.routing_key or "", json.loads(message.body)
    raise AssertionError("the queue closed")


async def _correct(
    school_system: SchoolSystem, info: RecordInfo, corrects: str, record_id: str | None = None
) -> tuple[RecordInfo, Published]:
    """The teacher's v2 request of a correction of `corrects`, as record data."""
    fixed = info.model_copy(update={"record_id": record_id or f"{info.record_id}-c1"})
    data = sample_record_data(school_system.rng, fixed, SCHOOL)
    teacher = school_system.env.signer_for(SCHOOL, Stage.HOMEROOM_TEACHER.value)
    token = school_system.env.consent_signer(SCHOOL).mint(
        teacher, Stage.HOMEROOM_TEACHER, [(fixed.record_id, record_sha256(fixed.record_id, data))]
    )
    key, body, rid = sign_request_v2(SCHOOL, fixed, teacher, token, data)
    message = json.loads(body)
    message["corrects"] = {
        "record_id": corrects,
        "reason": "Điểm kiểm tra môn Toán ghi nhầm.",
        "authorised_by": "BGH-0001",
    }
    return fixed, await school_system.publish(key, json.dumps(message).encode(), rid)


async def _state(daemon: Running, record_id: str) -> str:
    async with daemon.db.connection() as conn:
        return await conn.fetchval(
            "SELECT state FROM records WHERE school_id = $1 AND record_id = $2", SCHOOL, record_id
        )


async def test_a_correction_supersedes_the_record_and_goes_to_the_ministry(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    mqtt: MqttEvents,
    settings: Settings,
    ministry,
    packaging,
) -> None:
    # Given an issued record the ministry accepted
    year = fresh_year()
    (info,) = await issue(school_system, status, SCHOOL, year, 1)
    sim: Ministry = await ministry()
    pkg: Packaging = packaging(sim)
    first = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert first is not None
    assert (await pkg.submitter.follow(first)).state is PackageState.ACCEPTED
    async with daemon.db.connection() as conn:
        old_sha = await conn.fetchval(
            "SELECT current_sha256 FROM records WHERE school_id = $1 AND record_id = $2",
            SCHOOL,
            info.record_id,
        )

    async with _v2_status(settings.amqp.url) as v2_queue:
        # When the school system sends a correction of it, the same student's record
        fixed, sent = await _correct(school_system, info, info.record_id)
        event = (await status.wait(sent.request_id))[0]
        # Then it coexists with the record it corrects, which stays as it was
        assert event["state"] == "signed_by_teacher", event["reason"]
        assert await _state(daemon, info.record_id) == "accepted_by_ministry"
        # And once the principal signs and the school seals it
        for stage in ORDER[1:]:
            sent = await school_system.sign(SCHOOL, fixed, stage, event["document_sha256"])
            event = (await status.wait(sent.request_id))[0]
            assert event["state"] != "rejected", event["reason"]
        assert event["state"] == "issued"
        new_sha = event["document_sha256"]

        # Then the school system is told in v2 that the corrected record is superseded
        key, told = await _next(v2_queue)
    assert key == f"status_v2.{SCHOOL}.superseded"
    assert told["type"] == "hocba.record_status.v2"
    assert told["record_id"] == info.record_id and told["state"] == "superseded"
    assert told["superseded_by"] == fixed.record_id
    assert told["superseded_by_sha256"] == new_sha
    assert told["document_sha256"] == old_sha
    topic = f"{settings.mqtt.topic_prefix}/{SCHOOL}/records/{info.record_id}/status/v2"
    assert (await mqtt.wait(topic, "superseded"))["event_id"] == told["event_id"]
    # retained there: a school system subscribing later is told too
    async with mqtt_collector(settings.mqtt.topic_prefix) as later:
        assert (await later.wait(topic, "superseded"))["event_id"] == told["event_id"]
        assert [retain for _, retain in later.by_topic[topic]] == [True]
    # And no v1 consumer saw a state it does not know
    v1_states = {e["state"] for events in status.by_request.values() for e in events}
    assert "superseded" not in v1_states
    v1_topic = f"{settings.mqtt.topic_prefix}/{SCHOOL}/records/{info.record_id}/status"
    assert all(e["type"] == "hocba.record_status.v1" for e, _ in mqtt.by_topic[v1_topic])

    # And both records are stored and verifiable; the registry says what replaced what
    assert await _state(daemon, info.record_id) == "superseded"
    store = FsStore(settings.store.path)
    for sha in (old_sha, new_sha):
        pdf = await store.get(sha)
        report = await asyncio.to_thread(verify.report, pdf, settings.signing.trust_roots)
        assert report["valid"] and report["issued"], report
    old = (await lookup.registered(daemon.db, old_sha)).summary()
    assert old == {
        "state": "superseded",
        "school_id": SCHOOL,
        "record_id": info.record_id,
        "replaced_by": fixed.record_id,
        "replaced_by_sha256": new_sha,
    }
    assert (await lookup.registered(daemon.db, new_sha)).state == "issued"
    async with daemon.db.connection() as conn:
        live = await conn.fetchval(
            "SELECT record_id FROM live_records WHERE school_id = $1 AND student_id = $2",
            SCHOOL,
            info.student_id,
        )
    assert live == fixed.record_id

    # And the next package carries the correction, and only it; the ministry accepts it
    second = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert second is not None and second.sequence == 2
    with zipfile.ZipFile(pkg.file(second)) as archive:
        pdfs = sorted(n for n in archive.namelist() if n.endswith(".pdf"))
    assert pdfs == [f"records/{fixed.record_id}.pdf"]
    assert (await pkg.submitter.follow(second)).state is PackageState.ACCEPTED
    assert await pkg.runner.package(SCHOOL, year, 1, submit=False) in (None, second)


async def test_a_correction_of_what_cannot_be_corrected_is_refused(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given a record only the teacher signed, an issued record of another student, and
    # an issued record of another school
    unfinished, _, sent = await school_system.first_stage(SCHOOL)
    assert (await status.wait(sent.request_id))[0]["state"] == "signed_by_teacher"
    year = fresh_year()
    (someone_else,) = await issue(school_system, status, SCHOOL, year, 1)
    (elsewhere,) = await issue(school_system, status, OTHER, year, 1)

    # When the school system sends a correction of each
    cases = {
        "not issued": (unfinished, unfinished.record_id, "is not issued"),
        "another student": (
            someone_else.model_copy(update={"student_id": "31000102-other"}),
            someone_else.record_id,
            "another student's",
        ),
        "another school": (
            elsewhere.model_copy(update={"student_id": f"{elsewhere.student_id}-x"}),
            elsewhere.record_id,
            f"holds no record {elsewhere.record_id}",
        ),
    }
    for name, (info, corrects, says) in cases.items():
        _, sent = await _correct(school_system, info, corrects)
        event = await status.wait_for_state(sent.request_id, "rejected")

        # Then each is refused as invalid, saying why, and nothing is signed
        assert event["reason"]["code"] == "invalid_message", name
        assert says in event["reason"]["message"], (name, event["reason"])
        assert event["signatures"] == 0, name
    assert await _state(daemon, unfinished.record_id) == "signed_by_teacher"
    assert await _state(daemon, someone_else.record_id) == "issued"
