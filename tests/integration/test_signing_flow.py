"""The three stages end to end, through the real broker, database, MQTT and SoftHSM."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp

from daemon.app import Running
from daemon.blobs import FsStore
from daemon.pdf import validation
from daemon.settings import Settings
from daemon.stages import ORDER, Stage
from daemon.verification import report as verify
from tests.integration.conftest import SchoolSystem
from tests.services import MqttEvents, StatusEvents

SCHOOL = "31000101"


async def test_three_stages_issue_a_record_that_validates(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    mqtt: MqttEvents,
    settings: Settings,
) -> None:
    # Given a new record and its homeroom teacher's document
    info, pdf, sent = await school_system.first_stage(SCHOOL)
    digests = [hashlib.sha256(pdf).hexdigest()]

    # When the school system takes it through every stage, each after the previous status
    event = (await status.wait(sent.request_id))[0]
    for stage in ORDER[1:]:
        assert event["state"] != "rejected", event["reason"]
        digests.append(event["document_sha256"])
        sent = await school_system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]

    # Then the record is issued, with three valid signatures in the legal order
    assert event["state"] == "issued"
    assert event["signatures"] == 3
    assert status.routing_keys[event["event_id"]] == f"status.{SCHOOL}.issued"
    issued = await FsStore(settings.store.path).get(event["document_sha256"])
    report = await asyncio.to_thread(verify.report, issued, settings.signing.trust_roots)
    assert report["valid"] and report["issued"], report
    assert [s["field"] for s in report["signatures"]] == ["GVCN", "HieuTruong", "DauTruong"]
    # And every earlier version is kept, with the signature's before and after digests
    async with daemon.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT stage, digest_before, digest_after FROM signatures "
            "WHERE school_id = $1 AND record_id = $2 ORDER BY signed_at",
            SCHOOL,
            info.record_id,
        )
        versions = await conn.fetchval(
            "SELECT count(*) FROM record_versions WHERE school_id = $1 AND record_id = $2",
            SCHOOL,
            info.record_id,
        )
    assert [r["stage"] for r in rows] == [s.value for s in ORDER]
    assert [r["digest_before"] for r in rows] == digests
    assert versions == 4
    for digest in digests:
        assert hashlib.sha256(await FsStore(settings.store.path).get(digest)).hexdigest() == digest
    # And the MQTT status of the record is retained as issued
    topic = f"{settings.mqtt.topic_prefix}/{SCHOOL}/records/{info.record_id}/status"
    mqtt_event = await mqtt.wait(topic, "issued")
    assert mqtt_event["event_id"] == event["event_id"]


async def test_a_change_after_the_seal_is_detected(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents, settings: Settings
) -> None:
    # Given an issued record
    info, _, sent = await school_system.first_stage(SCHOOL)
    event = (await status.wait(sent.request_id))[0]
    for stage in ORDER[1:]:
        sent = await school_system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]
    issued = await FsStore(settings.store.path).get(event["document_sha256"])

    # When someone appends an incremental update that changes the document
    tampered = await asyncio.to_thread(_append_annotation, issued)

    # Then the seal reports a modification beyond what it permits
    roots = validation.load_certificates(settings.signing.trust_roots)
    reports = await asyncio.to_thread(validation.validate_pdf, tampered, roots)
    assert reports[-1].field_name == "DauTruong"
    assert not reports[-1].bottom_line

    # And bytes appended without a revision make `verify` call the record invalid
    padded = issued + b"\n% appended after the seal\n"
    report = await asyncio.to_thread(verify.report, padded, settings.signing.trust_roots)
    assert not report["valid"] and not report["last_signature_covers_whole_file"], report
    assert "bytes after its last signature" in verify.render(report, as_json=False)


async def test_status_events_carry_the_contract_fields(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    _, pdf, sent = await school_system.first_stage(SCHOOL)
    event = (await status.wait(sent.request_id))[0]
    assert set(event) == {
        "type",
        "event_id",
        "request_id",
        "school_id",
        "record_id",
        "state",
        "stage",
        "document_sha256",
        "signatures",
        "reason",
        "at",
    }
    assert event["type"] == "hocba.record_status.v1"
    assert event["stage"] == Stage.HOMEROOM_TEACHER.value
    assert event["state"] == "signed_by_teacher"
    assert event["at"].endswith("+07:00")
    assert event["document_sha256"] != hashlib.sha256(pdf).hexdigest()


async def test_http_surface_reports_ready_and_metrics(daemon: Running) -> None:
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{daemon.http_port}"
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            body = json.loads(await response.text())
            assert response.status == 200, body
            assert body["checks"] == {
                "broker": "ok",
                "consuming": "ok",
                "database": "ok",
                "hsm": "ok",
            }
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
    for name in (
        "hocba_requests_total",
        "hocba_sign_duration_seconds_bucket",
        "hocba_hsm_duration_seconds_bucket",
        "hocba_in_flight_requests",
        "hocba_outbox_backlog_events",
    ):
        assert name in text


def _append_annotation(pdf: bytes) -> bytes:
    from io import BytesIO

    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    writer = IncrementalPdfFileWriter(BytesIO(pdf))
    page = writer.root["/Pages"]["/Kids"][0]
    annot = writer.add_object(
        generic.DictionaryObject(
            {
                generic.NameObject("/Type"): generic.NameObject("/Annot"),
                generic.NameObject("/Subtype"): generic.NameObject("/Text"),
                generic.NameObject("/Rect"): generic.ArrayObject(
                    [generic.NumberObject(n) for n in (10, 10, 50, 50)]
                ),
                generic.NameObject("/Contents"): generic.TextStringObject("Đã sửa điểm"),
            }
        )
    )
    page_obj = page.get_object()
    page_obj[generic.NameObject("/Annots")] = generic.ArrayObject([annot])
    writer.update_container(page_obj)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()
