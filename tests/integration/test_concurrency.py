"""Several instances on one queue, and an MQTT broker that goes away: still exactly once,
and no status event lost."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

from daemon import app, pades
from daemon.settings import Settings
from daemon.stages import Stage
from daemon.store import FileStore
from tests.integration.conftest import SchoolSystem
from tests.services import StatusEvents, mqtt_collector

SCHOOL = "31000102"


@contextlib.asynccontextmanager
async def instances(settings: Settings, count: int) -> AsyncIterator[list[app.Running]]:
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for n in range(count):
            one = settings.model_copy(
                update={
                    "instance": f"{settings.instance}-{n}",
                    "amqp": settings.amqp.model_copy(update={"prefetch": 1}),
                }
            )
            running.append(await stack.enter_async_context(app.started(one, stop)))
        yield running
        stop.set()


async def test_concurrent_duplicates_across_instances_sign_each_stage_once(
    settings: Settings, school_system: SchoolSystem, status: StatusEvents
) -> None:
    async with instances(settings, 2) as running:
        # Given records signed by their teachers
        firsts = [await school_system.first_stage(SCHOOL) for _ in range(6)]
        signed = [(await status.wait(sent.request_id))[0] for _, _, sent in firsts]

        # When the principal's request for each is sent twice, under two request ids
        twins = []
        for (info, _, _), event in zip(firsts, signed, strict=True):
            digest = event["document_sha256"]
            twins.append(
                [await school_system.sign(SCHOOL, info, Stage.PRINCIPAL, digest) for _ in range(2)]
            )

        # Then each record is signed by its principal exactly once; the twin is refused
        for pair in twins:
            outcomes = [(await status.wait(sent.request_id))[0] for sent in pair]
            states = sorted(o["state"] for o in outcomes)
            assert states == ["rejected", "signed_by_principal"], outcomes
            refused = next(o for o in outcomes if o["state"] == "rejected")
            assert refused["reason"]["code"] == "stage_out_of_order"
            signed_event = next(o for o in outcomes if o["state"] != "rejected")
            pdf = await FileStore(settings.store.path).get(signed_event["document_sha256"])
            roots = pades.load_certificates(settings.signing.trust_roots)
            reports = await asyncio.to_thread(pades.validate_pdf, pdf, roots)
            assert [r.field_name for r in reports] == ["GVCN", "HieuTruong"]
        async with running[0].db.connection() as conn:
            per_record = await conn.fetch(
                "SELECT count(*) AS n FROM signatures WHERE school_id = $1 "
                "AND record_id = ANY($2::text[]) GROUP BY record_id",
                SCHOOL,
                [info.record_id for info, _, _ in firsts],
            )
        assert [r["n"] for r in per_record] == [2] * len(firsts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, attempts: int = 100) -> None:
    for _ in range(attempts):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on {port}")


@contextlib.contextmanager
def mosquitto(port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        ["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port)
        yield process
    finally:
        process.kill()
        process.wait()


async def test_status_events_wait_out_an_mqtt_outage(
    settings: Settings, school_system: SchoolSystem, status: StatusEvents
) -> None:
    port = _free_port()
    own = settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update={"port": port})})
    prefix = own.mqtt.topic_prefix
    stop = asyncio.Event()
    with mosquitto(port) as broker:
        async with app.started(own, stop) as running:
            # Given the MQTT broker goes away
            broker.kill()
            broker.wait()

            # When a record is signed meanwhile
            info, _, sent = await school_system.first_stage(SCHOOL)
            event = (await status.wait(sent.request_id))[0]

            # Then AMQP has the event, MQTT owes it
            async with running.db.connection() as conn:
                owed = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE event_id = $1::uuid "
                    "AND mqtt_published_at IS NULL",
                    event["event_id"],
                )
            assert owed == 1

            # And once the broker is back the event arrives on MQTT
            with mosquitto(port):
                topic = f"{prefix}/{SCHOOL}/records/{info.record_id}/status"
                async with mqtt_collector(prefix, port=port) as mqtt:
                    running.relay.wake()
                    arrived = await mqtt.wait(topic, "signed_by_teacher", timeout_s=60)
                assert arrived["event_id"] == event["event_id"]
            stop.set()
