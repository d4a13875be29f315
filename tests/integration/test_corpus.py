"""The bad-input corpus, end to end: every case is refused with its reason code, gets a
`rejected` status on AMQP and MQTT, lands in the dead-letter queue with that reason,
and changes no record. `pytest -v` lists every case with its code in the test id.

Builds on test_refusals.py: that test walks the common refusals one by one; this one
sends the whole corpus (`tests/corpus/`) plus the replay and certificate cases at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon import app, consent, topology
from daemon.dev import env as devenv
from daemon.messages import RecordInfo
from daemon.settings import Settings
from daemon.stages import Stage
from producers.school_system import sign_request
from tests import services
from tests.corpus import cases
from tests.corpus.generate import plain_pdf
from tests.integration import extras
from tests.integration.conftest import Published, SchoolSystem

SCHOOL, OTHER = extras.SCHOOL, extras.OTHER
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_DOCUMENT_BYTES = 256 * 1024

Scenario = Callable[["World"], Awaitable[Published]]


@dataclass
class World:
    """What the replay scenarios build on: a record signed by its teacher, one issued."""

    school_system: SchoolSystem
    teacher_signed: RecordInfo
    teacher_signed_pdf: bytes
    teacher_signed_digest: str
    teacher_request: Published
    issued: RecordInfo
    issued_pdf: bytes
    issued_digest: str

    @property
    def env(self) -> devenv.DevEnv:
        return self.school_system.env

    def mint(self, signer: str, stage: Stage, recs: list[tuple[str, str]], school: str = SCHOOL):
        return self.env.consent_signer(school).mint(signer, stage, recs)

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims = {
            "iss": SCHOOL,
            "sub": "BGH-0001",
            "stg": "principal",
            "rec": self.teacher_signed.record_id,
            "dig": self.teacher_signed_digest,
            "exp": int(time.time()) + 600,
        }
        claims.update(changes)
        return claims

    def own_key(self, claims: dict[str, Any], alg: consent.Alg | None = None) -> str:
        signer = self.env.consent_signer(SCHOOL)
        return consent.mint(claims, alg or signer.alg, signer.private_key)

    async def principal(self, token: str, **kwargs: Any) -> Published:
        info = kwargs.pop("info", self.teacher_signed)
        return await self.school_system.sign(
            SCHOOL, info, Stage.PRINCIPAL, self.teacher_signed_digest, consent=token, **kwargs
        )

    async def fresh_teacher(self, signer: str) -> Published:
        info, pdf = self.school_system.new_record(SCHOOL)
        digest = hashlib.sha256(pdf).hexdigest()
        token = self.mint(signer, Stage.HOMEROOM_TEACHER, [(info.record_id, digest)])
        return await self.school_system.sign(
            SCHOOL, info, Stage.HOMEROOM_TEACHER, digest, pdf=pdf, signer=signer, consent=token
        )


def _forged(w: World) -> str:
    token = w.mint(
        "BGH-0001", Stage.PRINCIPAL, [(w.teacher_signed.record_id, w.teacher_signed_digest)]
    )
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"


def _alg_none(w: World) -> str:
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(w.claims()).encode()).rstrip(b"=").decode()
    return f"{head}.{payload}."


def _hs256_with_public_key(w: World) -> str:
    """Algorithm confusion: HMAC keyed with the school's *public* Ed25519 key."""
    private = Ed25519PrivateKey.from_private_bytes(w.env.consent_signer(SCHOOL).private_key)
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return consent.mint(w.claims(), "HS256", public)


async def _reuse_request_id(w: World) -> Published:
    body = json.loads(w.teacher_request.body)
    body["signer_id"] = "GV-0002"
    rid = w.teacher_request.request_id
    return await w.school_system.publish(
        w.teacher_request.routing_key, json.dumps(body).encode(), rid
    )


async def _principal_first(w: World) -> Published:
    info, pdf = w.school_system.new_record(SCHOOL)
    return await w.school_system.sign(
        SCHOOL, info, Stage.PRINCIPAL, hashlib.sha256(pdf).hexdigest()
    )


def _record_id(info: RecordInfo) -> str:
    return info.record_id


T, P, S = Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL, Stage.SCHOOL_SEAL
SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "consent_forged_signature": ("unauthorized", lambda w: w.principal(_forged(w))),
    "consent_alg_none": ("unauthorized", lambda w: w.principal(_alg_none(w))),
    "consent_hs256_keyed_with_public_key": (
        "unauthorized",
        lambda w: w.principal(_hs256_with_public_key(w)),
    ),
    "consent_expired": (
        "consent_expired",
        lambda w: w.principal(w.own_key(w.claims(exp=int(time.time()) - 3600))),
    ),
    "consent_without_exp": (
        "unauthorized",
        lambda w: w.principal(w.own_key({k: v for k, v in w.claims().items() if k != "exp"})),
    ),
    "consent_for_another_record": (
        "unauthorized",
        lambda w: w.principal(w.own_key(w.claims(rec=w.issued.record_id))),
    ),
    "consent_for_another_stage": (
        "unauthorized",
        lambda w: w.principal(w.own_key(w.claims(stg="school_seal"))),
    ),
    "consent_for_another_digest": (
        "unauthorized",
        lambda w: w.principal(w.own_key(w.claims(dig=w.issued_digest))),
    ),
    "consent_for_another_signer": (
        "unauthorized",
        lambda w: w.principal(w.own_key(w.claims(sub="GV-0001"))),
    ),
    "consent_minted_by_another_school": (
        "unauthorized",
        lambda w: w.principal(
            w.mint(
                "BGH-0001",
                P,
                [(w.teacher_signed.record_id, w.teacher_signed_digest)],
                school=OTHER,
            )
        ),
    ),
    "consent_iss_another_school": (
        "unauthorized",
        lambda w: w.principal(w.own_key(w.claims(iss=OTHER))),
    ),
    "batch_consent_without_this_record": (
        "unauthorized",
        lambda w: w.principal(
            w.mint("BGH-0001", P, [(w.issued.record_id, w.teacher_signed_digest), ("x", "y")])
        ),
    ),
    "batch_consent_by_another_school": (
        "unauthorized",
        lambda w: w.principal(
            w.mint(
                "BGH-0001",
                P,
                [(w.teacher_signed.record_id, w.teacher_signed_digest), ("x", "y")],
                school=OTHER,
            )
        ),
    ),
    "request_id_replayed_with_other_content": ("request_id_reused", _reuse_request_id),
    "out_of_order_principal_first": ("stage_out_of_order", _principal_first),
    "out_of_order_seal_before_principal": (
        "stage_out_of_order",
        lambda w: w.school_system.sign(SCHOOL, w.teacher_signed, S, w.teacher_signed_digest),
    ),
    "out_of_order_teacher_again": (
        "stage_out_of_order",
        lambda w: w.school_system.sign(
            SCHOOL,
            w.teacher_signed,
            T,
            hashlib.sha256(w.teacher_signed_pdf).hexdigest(),
            pdf=w.teacher_signed_pdf,
        ),
    ),
    "issued_seal_again": (
        "already_issued",
        lambda w: w.school_system.sign(SCHOOL, w.issued, S, w.issued_digest),
    ),
    "issued_principal_again": (
        "already_issued",
        lambda w: w.school_system.sign(SCHOOL, w.issued, P, w.issued_digest),
    ),
    "issued_teacher_again": (
        "already_issued",
        lambda w: w.school_system.sign(
            SCHOOL, w.issued, T, hashlib.sha256(w.issued_pdf).hexdigest(), pdf=w.issued_pdf
        ),
    ),
    "record_details_differ": (
        "invalid_message",
        lambda w: w.principal(
            w.mint("BGH-0001", P, [(w.teacher_signed.record_id, w.teacher_signed_digest)]),
            info=w.teacher_signed.model_copy(update={"class_name": "9Z"}),
        ),
    ),
    "signer_unknown": (
        "unknown_signer",
        lambda w: w.principal(
            w.mint("BGH-9999", P, [(w.teacher_signed.record_id, w.teacher_signed_digest)]),
            signer="BGH-9999",
        ),
    ),
    "signer_of_another_school": ("unknown_signer", lambda w: w.fresh_teacher(extras.ONLY_AT_OTHER)),
    "signer_for_another_stage": (
        "unauthorized",
        lambda w: w.principal(
            w.mint("SEAL", P, [(w.teacher_signed.record_id, w.teacher_signed_digest)]),
            signer="SEAL",
        ),
    ),
    "signer_deactivated": ("unauthorized", lambda w: w.fresh_teacher(extras.RETIRED)),
    "certificate_expired": ("certificate_invalid", lambda w: w.fresh_teacher(extras.EXPIRED)),
    "certificate_not_yet_valid": (
        "certificate_invalid",
        lambda w: w.fresh_teacher(extras.NOT_YET_VALID),
    ),
}

RAW = {c.name: c for c in cases.raw_bodies(MAX_MESSAGE_BYTES)}
CHANGES = {c.name: c for c in cases.changes()}
PDFS = {c.name: c for c in cases.bad_pdfs(MAX_DOCUMENT_BYTES)}
CASES: dict[str, str] = {
    **{f"body/{n}": c.code for n, c in RAW.items()},
    **{f"message/{n}": c.code for n, c in CHANGES.items()},
    **{f"pdf/{n}": c.code for n, c in PDFS.items()},
    **{f"replay/{n}": code for n, (code, _) in SCENARIOS.items()},
}


@dataclass
class Result:
    sent: Published
    event: dict[str, Any]
    record_id: str | None
    letter: aio_pika.abc.AbstractIncomingMessage | None = None
    mqtt: list[tuple[str, bool]] = field(default_factory=list)


@dataclass
class CorpusRun:
    results: dict[str, Result]
    before: list[tuple]
    after: list[tuple]
    fresh_records: list[str]


async def _not_found(_: web.Request) -> web.Response:
    return web.Response(status=404)


async def _document_server() -> tuple[web.AppRunner, str]:
    application = web.Application()
    application.router.add_get("/{tail:.*}", _not_found)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _snapshot(conn) -> list[tuple]:
    rows = await conn.fetch(
        "SELECT school_id, record_id, state, signatures, current_sha256 FROM records "
        "ORDER BY school_id, record_id"
    )
    return [tuple(r) for r in rows]


async def _through_stages(system: SchoolSystem, status: services.StatusEvents, stages: int):
    info, pdf, sent = await system.first_stage(SCHOOL)
    event = (await status.wait(sent.request_id))[0]
    first = sent
    for stage in (P, S)[: stages - 1]:
        sent = await system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == ("signed_by_teacher", "signed_by_principal", "issued")[stages - 1]
    return info, pdf, event["document_sha256"], first


async def _send_change(system: SchoolSystem, change: cases.Change, http: str) -> Published:
    info = system.new_record(SCHOOL)[0]
    pdf = plain_pdf(f"corpus {info.record_id}")
    digest = change.consent_digest or hashlib.sha256(pdf).hexdigest()
    token = system.env.consent_signer(SCHOOL).mint(
        "GV-0001", Stage.HOMEROOM_TEACHER, [(info.record_id, digest)]
    )
    key, body, rid = sign_request(SCHOOL, info, T, "GV-0001", token, pdf)
    values = {"school": SCHOOL, "other": OTHER, "http": http}
    changed = change.apply(json.loads(body), values)
    routing_key = (change.routing_key or key).replace("{school}", SCHOOL).replace("{other}", OTHER)
    return await system.publish(routing_key, json.dumps(changed).encode(), rid)


async def _send_pdf(system: SchoolSystem, bad: cases.BadPdf) -> Published:
    info = system.new_record(SCHOOL)[0]
    return await system.sign(SCHOOL, info, T, hashlib.sha256(bad.pdf).hexdigest(), pdf=bad.pdf)


async def _mqtt_event(events: services.MqttEvents, event_id: str) -> list[tuple[str, bool]]:
    def found() -> list[tuple[str, bool]]:
        return [
            (topic, retain)
            for topic, items in events.by_topic.items()
            for event, retain in items
            if event["event_id"] == event_id
        ]

    async with asyncio.timeout(60), events._arrived:
        await events._arrived.wait_for(lambda: bool(found()))
    return found()


@pytest.fixture(scope="module")
async def corpus_run(dev_env: devenv.DevEnv, settings: Settings) -> AsyncIterator[CorpusRun]:
    await extras.provision_extras(dev_env)
    limited = settings.model_copy(
        update={
            "amqp": settings.amqp.model_copy(update={"max_message_bytes": MAX_MESSAGE_BYTES}),
            "signing": settings.signing.model_copy(
                update={
                    "max_document_bytes": MAX_DOCUMENT_BYTES,
                    "fetch_allowed_hosts": ["127.0.0.1"],
                    "fetch_allow_http": True,
                }
            ),
        }
    )
    runner, http = await _document_server()
    stop = asyncio.Event()
    try:
        async with (
            app.started(limited, stop) as running,
            services.status_collector(settings.amqp.url) as status,
            services.mqtt_collector(settings.mqtt.topic_prefix) as mqtt,
            await aio_pika.connect(settings.amqp.url) as connection,
        ):
            channel = await connection.channel()
            exchange = await channel.get_exchange(topology.REQUESTS)
            system = SchoolSystem(dev_env, exchange)
            # Given a record signed by its teacher and an issued one
            t_info, t_pdf, t_digest, t_sent = await _through_stages(system, status, 1)
            i_info, i_pdf, i_digest, _ = await _through_stages(system, status, 3)
            world = World(system, t_info, t_pdf, t_digest, t_sent, i_info, i_pdf, i_digest)
            async with running.db.connection() as conn:
                before = await _snapshot(conn)

            # When every case of the corpus is sent
            sent: dict[str, Published] = {}
            for name, raw in RAW.items():
                rid = str(uuid.uuid4())
                sent[f"body/{name}"] = await system.publish(f"sign.{SCHOOL}", raw.body, rid)
            for name, change in CHANGES.items():
                sent[f"message/{name}"] = await _send_change(system, change, http)
            for name, bad in PDFS.items():
                sent[f"pdf/{name}"] = await _send_pdf(system, bad)
            for name, (_, scenario) in SCENARIOS.items():
                sent[f"replay/{name}"] = await scenario(world)

            results: dict[str, Result] = {}
            for name, published in sent.items():
                # Every case is refused; a replayed request_id also carries the
                # original's event, so wait for the refusal itself.
                event = await status.wait_for_state(published.request_id, "rejected", timeout_s=120)
                body_record = _record_of(published.body)
                results[name] = Result(published, event, body_record)
            for result in results.values():
                if result.event["state"] == "rejected":
                    result.mqtt = await _mqtt_event(mqtt, result.event["event_id"])
            letters = await services.dead_letters(settings.amqp.url)
            by_body = {(m.message_id, hashlib.sha256(m.body).hexdigest()): m for m in letters}
            for result in results.values():
                key = (result.sent.request_id, hashlib.sha256(result.sent.body).hexdigest())
                result.letter = by_body.get(key)
            async with running.db.connection() as conn:
                after = await _snapshot(conn)
            stop.set()
    finally:
        await runner.cleanup()
    fresh = [
        r.record_id for name, r in results.items() if r.record_id and not name.startswith("replay/")
    ]
    yield CorpusRun(results, before, after, fresh)


def _record_of(body: bytes) -> str | None:
    try:
        record = json.loads(body).get("record")
        return record.get("record_id") if isinstance(record, dict) else None
    except (ValueError, AttributeError, RecursionError):
        return None


@pytest.mark.parametrize(
    ("case", "code"), list(CASES.items()), ids=[f"{n}->{c}" for n, c in CASES.items()]
)
async def test_each_case_is_refused_with_its_reason(
    corpus_run: CorpusRun, case: str, code: str
) -> None:
    result = corpus_run.results[case]
    # Then a `rejected` status with the reason code and a message, on AMQP
    assert result.event["state"] == "rejected", result.event
    assert result.event["reason"]["code"] == code, result.event["reason"]
    assert result.event["reason"]["message"]
    # and on MQTT, never retained (it must not hide the record's state)
    assert result.mqtt and not any(retain for _, retain in result.mqtt), result.mqtt
    # And the message is in the dead-letter queue with that reason
    assert result.letter is not None, "not dead-lettered"
    assert result.letter.headers["x-hocba-reason-code"] == code
    assert result.letter.headers["x-hocba-reason-message"]


async def test_no_case_changed_any_record(corpus_run: CorpusRun) -> None:
    # No record that existed changed, and no bad request created one
    assert corpus_run.after == corpus_run.before
    created = {row[1] for row in corpus_run.after}
    assert not created & set(corpus_run.fresh_records)
