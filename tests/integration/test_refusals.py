"""Bad requests: each gets a `rejected` status with its reason, lands in the dead-letter
queue with that reason, and leaves every other record untouched."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import asyncpg

from daemon import consent
from daemon.app import Running
from daemon.settings import Settings
from daemon.stages import Stage
from tests.integration.conftest import Published, SchoolSystem
from tests.services import StatusEvents, dead_letters

SCHOOL = "31000101"
OTHER = "31000102"


async def _rejected(status: StatusEvents, sent: Published) -> dict:
    # A reused request_id already has the original's event: wait for the refusal itself.
    return await status.wait_for_state(sent.request_id, "rejected")


async def _snapshot(conn: asyncpg.Connection) -> list[tuple]:
    rows = await conn.fetch(
        "SELECT school_id, record_id, state, signatures, current_sha256 FROM records "
        "ORDER BY school_id, record_id"
    )
    return [tuple(r) for r in rows]


async def test_each_bad_request_is_refused_with_its_reason_and_dead_lettered(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents, settings: Settings
) -> None:
    # Given a record signed by its teacher, and the state of every record
    info, pdf, sent = await school_system.first_stage(SCHOOL)
    signed = (await status.wait(sent.request_id))[0]
    assert signed["state"] == "signed_by_teacher"
    current = signed["document_sha256"]
    async with daemon.db.connection() as conn:
        before = await _snapshot(conn)
    other_info, other_pdf = school_system.new_record(SCHOOL)
    other_digest = hashlib.sha256(other_pdf).hexdigest()
    seal_signer = school_system.env.signer_for(SCHOOL, "school_seal")
    foreign = school_system.env.consent_signer(OTHER)
    mint = school_system.env.consent_signer(SCHOOL).mint
    expired_claims = {
        "iss": SCHOOL,
        "sub": "BGH-0001",
        "stg": "principal",
        "rec": info.record_id,
        "dig": current,
        "exp": int(time.time()) - 3600,
    }
    expired = consent.mint(
        expired_claims,
        school_system.env.consent_signer(SCHOOL).alg,
        school_system.env.consent_signer(SCHOOL).private_key,
    )

    # When the school system sends every kind of bad request
    cases: dict[str, tuple[Published, str]] = {}

    async def case(name: str, code: str, sent: Published) -> None:
        cases[name] = (sent, code)

    principal = Stage.PRINCIPAL
    await case(
        "seal before principal",
        "stage_out_of_order",
        await school_system.sign(SCHOOL, info, Stage.SCHOOL_SEAL, current),
    )
    await case(
        "teacher stage again",
        "stage_out_of_order",
        await school_system.sign(
            SCHOOL, info, Stage.HOMEROOM_TEACHER, hashlib.sha256(pdf).hexdigest(), pdf=pdf
        ),
    )
    await case(
        "principal for a record never started",
        "stage_out_of_order",
        await school_system.sign(SCHOOL, other_info, principal, other_digest),
    )
    await case(
        "consent minted by another school's key",
        "unauthorized",
        await school_system.sign(
            SCHOOL,
            info,
            principal,
            current,
            consent=foreign.mint("BGH-0001", principal, [(info.record_id, current)]),
        ),
    )
    await case(
        "consent expired",
        "consent_expired",
        await school_system.sign(SCHOOL, info, principal, current, consent=expired),
    )
    await case(
        "consent for another digest",
        "unauthorized",
        await school_system.sign(
            SCHOOL,
            info,
            principal,
            current,
            consent=mint("BGH-0001", principal, [(info.record_id, "0" * 64)]),
        ),
    )
    await case(
        "consent for another record",
        "unauthorized",
        await school_system.sign(
            SCHOOL,
            info,
            principal,
            current,
            consent=mint("BGH-0001", principal, [(other_info.record_id, current)]),
        ),
    )
    await case(
        "consent for another stage",
        "unauthorized",
        await school_system.sign(
            SCHOOL,
            info,
            principal,
            current,
            consent=mint("BGH-0001", Stage.SCHOOL_SEAL, [(info.record_id, current)]),
        ),
    )
    await case(
        "batch consent without this record",
        "unauthorized",
        await school_system.sign(
            SCHOOL,
            info,
            principal,
            current,
            consent=mint("BGH-0001", principal, [(other_info.record_id, current), ("x", current)]),
        ),
    )
    await case(
        "signer registered for another stage",
        "unauthorized",
        await school_system.sign(SCHOOL, info, principal, current, signer=seal_signer),
    )
    await case(
        "signer unknown to this school",
        "unknown_signer",
        await school_system.sign(SCHOOL, info, principal, current, signer="GV-9999"),
    )
    await case(
        "school not registered",
        "unknown_school",
        await school_system.sign(
            "39999999",
            other_info,
            Stage.HOMEROOM_TEACHER,
            other_digest,
            pdf=other_pdf,
            signer="GV-0001",
            consent="a.b.c",
        ),
    )
    await case(
        "routing key of another school",
        "invalid_message",
        await school_system.sign(
            SCHOOL,
            other_info,
            Stage.HOMEROOM_TEACHER,
            other_digest,
            pdf=other_pdf,
            routing_key=f"sign.{OTHER}",
        ),
    )
    not_pdf = b"GIF89a this is not a pdf"
    await case(
        "not a PDF",
        "not_a_pdf",
        await school_system.sign(
            SCHOOL,
            other_info,
            Stage.HOMEROOM_TEACHER,
            hashlib.sha256(not_pdf).hexdigest(),
            pdf=not_pdf,
        ),
    )
    _, body, rid = _with_wrong_hash(school_system, other_info, other_pdf)
    await case(
        "hash mismatch", "hash_mismatch", await school_system.publish(f"sign.{SCHOOL}", body, rid)
    )
    rid = str(uuid.uuid4())
    await case(
        "malformed JSON",
        "invalid_message",
        await school_system.publish(f"sign.{SCHOOL}", b'{"type": "hocba.sign_req', rid),
    )
    reused = json.loads(sent.body)
    reused["signer_id"] = "GV-0002"
    await case(
        "request_id reused for another request",
        "request_id_reused",
        await school_system.publish(sent.routing_key, json.dumps(reused).encode(), sent.request_id),
    )

    # Then each is refused with its reason code and a human-readable message
    for name, (sent_case, code) in cases.items():
        event = await _rejected(status, sent_case)
        assert event["reason"]["code"] == code, (name, event["reason"])
        assert len(event["reason"]["message"]) > 10, name
    # And each lands in the dead-letter queue with its reason in the headers
    letters = {m.message_id: m for m in await dead_letters(settings.amqp.url)}
    for name, (sent_case, code) in cases.items():
        letter = letters[sent_case.request_id]
        assert letter.headers["x-hocba-reason-code"] == code, name
        assert letter.body == sent_case.body, name
    # And no other record changed
    async with daemon.db.connection() as conn:
        assert await _snapshot(conn) == before


async def test_an_issued_record_never_changes(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given an issued record
    info, _, sent = await school_system.first_stage(SCHOOL)
    event = (await status.wait(sent.request_id))[0]
    for stage in (Stage.PRINCIPAL, Stage.SCHOOL_SEAL):
        sent = await school_system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "issued"

    # When the seal (or any stage) is requested again
    again = await school_system.sign(SCHOOL, info, Stage.SCHOOL_SEAL, event["document_sha256"])

    # Then it is refused as already issued, and the record keeps its three signatures
    refused = await _rejected(status, again)
    assert refused["reason"]["code"] == "already_issued"
    assert refused["signatures"] == 3
    async with daemon.db.connection() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM signatures WHERE school_id = $1 AND record_id = $2",
            SCHOOL,
            info.record_id,
        )
    assert count == 3


async def test_a_repeated_request_is_answered_not_signed_again(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given a request that was signed
    _, _, sent = await school_system.first_stage(SCHOOL)
    first = (await status.wait(sent.request_id))[0]

    # When the very same message arrives twice more
    for _ in range(2):
        await school_system.publish(sent.routing_key, sent.body, sent.request_id)

    # Then the same status is repeated, and the record has one signature
    events = await status.wait(sent.request_id, count=3)
    assert {e["event_id"] for e in events} == {first["event_id"]}
    async with daemon.db.connection() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM signatures WHERE request_id = $1", uuid.UUID(sent.request_id)
        )
    assert count == 1


def _with_wrong_hash(school_system: SchoolSystem, info, pdf: bytes) -> tuple[str, bytes, str]:
    from producers.school_system import sign_request

    digest = hashlib.sha256(b"another document").hexdigest()
    token = school_system.env.consent_signer(SCHOOL).mint(
        "GV-0001", Stage.HOMEROOM_TEACHER, [(info.record_id, digest)]
    )
    key, body, rid = sign_request(SCHOOL, info, Stage.HOMEROOM_TEACHER, "GV-0001", token, pdf)
    data = json.loads(body)
    data["document"]["sha256"] = digest
    data["document"]["content_b64"] = base64.b64encode(pdf).decode()
    return key, json.dumps(data).encode(), rid
