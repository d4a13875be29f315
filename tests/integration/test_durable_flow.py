"""The daemon at B-LTA, end to end: a dev environment whose PKI runs OCSP, CRLs and a TSA."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import aio_pika
import pytest

from daemon import app, topology
from daemon.dev import env as devenv
from daemon.dev import pki_services
from daemon.pdf.pades import read_pdf
from daemon.pdf.validation import load_certificates, validate_pdf_async
from daemon.settings import Settings
from daemon.stages import Stage
from tests import services
from tests.integration.conftest import SchoolSystem
from tests.pki_services_fixtures import free_port

pytestmark = pytest.mark.integration
SCHOOL = "31000101"


@pytest.fixture(scope="module")
async def lta_env(
    tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> AsyncIterator[devenv.DevEnv]:
    """`dev init` with the PKI services (so B-LTA), in its own database and vhost."""
    vhost, database = f"hocba-test-{run_id}-lta", f"hocba_test_{run_id}_lta"
    amqp_url = await asyncio.to_thread(services.create_vhost, vhost)
    env = await devenv.init(
        tmp_path_factory.mktemp("lta"),
        1,
        dsn=services.dsn(database),
        amqp_url=amqp_url,
        services_port=free_port(),
    )
    async with pki_services.running(env.base / "pki"):
        yield env
    await services.drop_database(database)
    await asyncio.to_thread(services.delete_vhost, vhost)


@pytest.fixture
async def lta_daemon(
    lta_env: devenv.DevEnv, run_id: str
) -> AsyncIterator[tuple[Settings, SchoolSystem, services.StatusEvents]]:
    base = lta_env.settings
    settings = base.model_copy(
        update={
            "instance": f"hocba-test-{run_id}-lta",
            "amqp": base.amqp.model_copy(update={"retry_base_ms": 100, "retry_cap_ms": 400}),
            "mqtt": base.mqtt.model_copy(update={"topic_prefix": f"hocba-test-{run_id}-lta"}),
            "http": base.http.model_copy(update={"port": 0}),
            "packaging": base.packaging.model_copy(update={"schedule_interval_s": None}),
        }
    )
    assert settings.signing.level == "B-LTA"
    stop = asyncio.Event()
    async with (
        services.status_collector(settings.amqp.url) as status,
        app.started(settings, stop),
        await aio_pika.connect(settings.amqp.url) as connection,
    ):
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        yield settings, SchoolSystem(lta_env, exchange), status
        stop.set()


async def test_daemon_issues_b_lta_records_and_refuses_a_revoked_signer(
    lta_env: devenv.DevEnv, lta_daemon
) -> None:
    settings, school_system, status = lta_daemon
    roots = load_certificates(settings.signing.trust_roots)

    # Given a record through its three stages
    info, _, sent = await school_system.first_stage(SCHOOL)
    event = (await status.wait(sent.request_id))[0]
    for stage in (Stage.PRINCIPAL, Stage.SCHOOL_SEAL):
        sent = await school_system.sign(SCHOOL, info, stage, event["document_sha256"])
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "issued"

    # Then the issued version is B-LTA: three timestamped signatures, a DSS, a document
    # timestamp, and the daemon's report sees them intact and covering the file
    pdf = await _stored(settings, event["document_sha256"])
    reader = read_pdf(pdf)
    assert "/DSS" in reader.root
    assert len(reader.embedded_timestamp_signatures) == 1
    reports = await validate_pdf_async(pdf, roots, expected=3)
    assert all(r.intact and r.valid and r.trusted for r in reports)
    assert reports[-1].coverage == "ENTIRE_FILE"

    # When the CA revokes the other teacher's certificate, and that teacher signs a record
    used = lta_env.signer_for(SCHOOL, "homeroom_teacher")
    teacher, serial = next(
        (s.signer_id, s.cert_serial)
        for s in lta_env.signers
        if s.school_id == SCHOOL and s.stage is Stage.HOMEROOM_TEACHER and s.signer_id != used
    )
    assert pki_services.revoke(lta_env.base / "pki", serial)
    new_info, new_pdf = school_system.new_record(SCHOOL)
    refused = await school_system.sign(
        SCHOOL,
        new_info,
        Stage.HOMEROOM_TEACHER,
        hashlib.sha256(new_pdf).hexdigest(),
        pdf=new_pdf,
        signer=teacher,
    )

    # Then it is rejected as certificate_revoked, nothing is signed, and the dead letter
    # carries the reason
    rejected = await status.wait_for_state(refused.request_id, "rejected")
    assert rejected["reason"]["code"] == "certificate_revoked"
    assert rejected["signatures"] == 0
    letters = {m.message_id: m for m in await services.dead_letters(settings.amqp.url)}
    assert letters[refused.request_id].headers["x-hocba-reason-code"] == "certificate_revoked"


async def _stored(settings: Settings, sha256: str) -> bytes:
    from daemon import blobs

    async with contextlib.AsyncExitStack() as stack:
        store = await blobs.open_store(settings.store, stack)
        return await store.get(sha256)
