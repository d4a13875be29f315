"""Crashes, broker restarts and transient failures: nothing lost, nothing signed twice."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import aio_pika
import aiohttp
from aiohttp import web

from consumers.sign_requests import SignRequestConsumer
from daemon import app, topology
from daemon.blobs import FsStore
from daemon.dev import env as devenv
from daemon.documents import DocumentSource
from daemon.messages import SignRequest
from daemon.outcomes import Outcome
from daemon.pdf import validation
from daemon.pipeline import Pipeline
from daemon.settings import Settings
from daemon.stages import Stage
from tests.integration.conftest import SchoolSystem
from tests.services import StatusEvents, dead_letters, rabbitmqctl, status_collector

SCHOOL = "31000103"


class CrashAfterStoring(Pipeline):
    """Stores the outcome, then the process 'dies' before the message is acknowledged."""

    crashed: asyncio.Event
    connection: aio_pika.abc.AbstractConnection

    async def handle_many(self, requests: Sequence[SignRequest]) -> list[Outcome | Exception]:
        await super().handle_many(requests)
        # Closing the connection cancels this very handler, as a crash would end it.
        self.crashed.set()
        await self.connection.close()
        raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def crashing_instance(settings: Settings) -> AsyncIterator[asyncio.Event]:
    async with contextlib.AsyncExitStack() as stack:
        db, pool = await app.open_core(stack, settings)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        connection = await aio_pika.connect(settings.amqp.url)
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        topo = await topology.declare(channel, settings.amqp)
        pipeline = CrashAfterStoring(
            db, pool, FsStore(settings.store.path), DocumentSource(http, settings.signing)
        )
        crashed = asyncio.Event()
        object.__setattr__(pipeline, "crashed", crashed)
        object.__setattr__(pipeline, "connection", connection)
        consumer = SignRequestConsumer(topo, pipeline, settings.amqp, "crashing")
        await consumer.start()
        yield crashed


async def test_a_crash_between_signing_and_acknowledging_signs_once(
    settings: Settings, school_system: SchoolSystem, status: StatusEvents
) -> None:
    # Given an instance that dies after storing a signature but before acknowledging
    async with crashing_instance(settings) as crashed:
        info, _, sent = await school_system.first_stage(SCHOOL)
        await asyncio.wait_for(crashed.wait(), 60)

    # When a healthy instance takes the redelivered message
    stop = asyncio.Event()
    async with app.started(settings, stop) as running:
        events = await status.wait(sent.request_id, count=2)
        async with running.db.connection() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM signatures WHERE school_id = $1 AND record_id = $2",
                SCHOOL,
                info.record_id,
            )
        stop.set()

    # Then the request has one outcome, repeated, and the PDF one teacher signature
    assert {e["event_id"] for e in events} == {events[0]["event_id"]}
    assert count == 1
    pdf = await FsStore(settings.store.path).get(events[0]["document_sha256"])
    roots = validation.load_certificates(settings.signing.trust_roots)
    reports = await asyncio.to_thread(validation.validate_pdf, pdf, roots)
    assert [r.field_name for r in reports] == ["GVCN"]


async def _readiness(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
        return r.status, json.loads(await r.text())


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 90) -> None:
    """Ask an outside observer (the HTTP endpoint) until it agrees; nothing to wait on."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.5)


async def test_consuming_resumes_after_a_broker_restart(
    daemon: app.Running, settings: Settings, dev_env: devenv.DevEnv
) -> None:
    # Given a ready daemon
    assert (await _readiness(daemon.http_port))[0] == 200

    # When RabbitMQ stops, readiness reports the broker and the consumer down
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:

        async def not_ready() -> bool:
            code, body = await _readiness(daemon.http_port)
            return code == 503 and body["checks"]["broker"] != "ok"

        await _until(not_ready)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")

    # Then once it is back the daemon is ready again and signs what is published
    async def ready() -> bool:
        return (await _readiness(daemon.http_port))[0] == 200

    await _until(ready)
    async with status_and_school(dev_env, settings) as (status, school_system):
        _, _, sent = await school_system.first_stage(SCHOOL)
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "signed_by_teacher"


@contextlib.asynccontextmanager
async def status_and_school(
    env: devenv.DevEnv, settings: Settings
) -> AsyncIterator[tuple[StatusEvents, SchoolSystem]]:
    """Fresh connections: the fixtures' ones died with the broker."""
    async with status_collector(settings.amqp.url) as status:
        connection = await aio_pika.connect(settings.amqp.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topology.REQUESTS)
            yield status, SchoolSystem(env, exchange)


class FlakyDocuments:
    """A document server answering 503 `failures` times, then the document."""

    def __init__(self, pdf: bytes, failures: int, status: int = 503) -> None:
        self.pdf, self.failures, self.status, self.calls = pdf, failures, status, 0

    async def handler(self, _: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.failures:
            return web.Response(status=self.status)
        return web.Response(body=self.pdf, content_type="application/pdf")


@contextlib.asynccontextmanager
async def document_server(docs: FlakyDocuments) -> AsyncIterator[str]:
    web_app = web.Application()
    web_app.router.add_get("/doc.pdf", docs.handler)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/doc.pdf"
    finally:
        await runner.cleanup()


async def _by_reference(school_system: SchoolSystem, url: str, pdf: bytes):
    from producers.school_system import sign_request

    info, _ = school_system.new_record(SCHOOL)
    digest = hashlib.sha256(pdf).hexdigest()
    token = school_system.env.consent_signer(SCHOOL).mint(
        "GV-0001", Stage.HOMEROOM_TEACHER, [(info.record_id, digest)]
    )
    key, body, rid = sign_request(SCHOOL, info, Stage.HOMEROOM_TEACHER, "GV-0001", token, pdf)
    data = json.loads(body)
    data["document"] = {"sha256": digest, "url": url}
    return await school_system.publish(key, json.dumps(data).encode(), rid)


async def test_a_document_fetched_after_transient_failures_is_signed(
    daemon: app.Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    _, pdf = school_system.new_record(SCHOOL)
    docs = FlakyDocuments(pdf, failures=2)
    async with document_server(docs) as url:
        sent = await _by_reference(school_system, url, pdf)
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "signed_by_teacher"
    assert docs.calls == 3


async def test_a_document_that_stays_unavailable_is_dead_lettered_after_the_retries(
    daemon: app.Running, school_system: SchoolSystem, status: StatusEvents, settings: Settings
) -> None:
    _, pdf = school_system.new_record(SCHOOL)
    docs = FlakyDocuments(pdf, failures=100)
    async with document_server(docs) as url:
        sent = await _by_reference(school_system, url, pdf)
        event = (await status.wait(sent.request_id))[0]
    assert event["state"] == "rejected"
    assert event["reason"]["code"] == "document_unavailable"
    assert docs.calls == settings.amqp.max_attempts
    letters = {m.message_id: m for m in await dead_letters(settings.amqp.url)}
    assert letters[sent.request_id].headers["x-hocba-reason-code"] == "document_unavailable"
    assert letters[sent.request_id].headers["x-hocba-attempt"] == settings.amqp.max_attempts


async def test_a_missing_document_is_refused_at_once(
    daemon: app.Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    _, pdf = school_system.new_record(SCHOOL)
    docs = FlakyDocuments(pdf, failures=100, status=404)
    async with document_server(docs) as url:
        sent = await _by_reference(school_system, url, pdf)
        event = (await status.wait(sent.request_id))[0]
    assert event["reason"]["code"] == "document_unavailable"
    assert docs.calls == 1


async def test_a_document_from_a_host_not_allowed_is_never_fetched(
    daemon: app.Running, school_system: SchoolSystem, status: StatusEvents
) -> None:
    _, pdf = school_system.new_record(SCHOOL)
    docs = FlakyDocuments(pdf, failures=0)
    async with document_server(docs) as url:
        # localhost names the same server, but it is not an allowed host
        sent = await _by_reference(school_system, url.replace("127.0.0.1", "localhost"), pdf)
        event = (await status.wait(sent.request_id))[0]
    assert event["reason"]["code"] == "document_unavailable"
    assert docs.calls == 0
