"""Several instances on one queue, and an MQTT broker that goes away: still exactly once,
and no status event lost."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika

from daemon import app, records, topology
from daemon.blobs import FsStore
from daemon.database import Database
from daemon.pdf import validation
from daemon.settings import Settings
from daemon.stages import Stage
from producers import status as status_relay
from producers.transports import AmqpStatus, MqttStatus
from tests.integration.conftest import SchoolSystem
from tests.services import StatusEvents, mqtt_collector, teacher_signed

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
            pdf = await FsStore(settings.store.path).get(signed_event["document_sha256"])
            roots = validation.load_certificates(settings.signing.trust_roots)
            reports = await asyncio.to_thread(validation.validate_pdf, pdf, roots)
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


async def test_an_mqtt_outage_holds_back_no_amqp_event_even_past_a_batch(
    settings: Settings,
) -> None:
    # Given more events waiting than the relay reads in one batch, and MQTT gone
    school = "relay-" + uuid.uuid4().hex[:8]
    count = status_relay.BATCH + 50
    dead_mqtt = settings.mqtt.model_copy(update={"port": _free_port()})
    db = Database(settings.database)
    await db.open()
    try:
        async with db.transaction() as conn:
            for n in range(count):
                await records.enqueue(conn, teacher_signed(school, f"R{n:04d}"))
        connection = await aio_pika.connect(settings.amqp.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            # Declared here too: run alone, no earlier test has declared it.
            exchange = await channel.declare_exchange(
                topology.STATUS, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue("", exclusive=True)
            await queue.bind(exchange, routing_key=f"status.{school}.#")
            mqtt = MqttStatus(dead_mqtt)
            relay = status_relay.StatusRelay(db, [AmqpStatus(exchange), mqtt])

            # When the relay drains
            async with db.connection() as conn:
                await relay.drain(conn)
            await mqtt.close()

            # Then every event went to AMQP, and MQTT still owes every one
            received = 0
            while await queue.get(fail=False, no_ack=True) is not None:
                received += 1
            assert received == count
        async with db.connection() as conn:
            owed = await conn.fetch(
                "SELECT amqp_published_at IS NULL AS amqp, mqtt_published_at IS NULL AS mqtt "
                "FROM outbox WHERE school_id = $1",
                school,
            )
            await conn.execute("DELETE FROM outbox WHERE school_id = $1", school)
        assert len(owed) == count
        assert all(row["mqtt"] and not row["amqp"] for row in owed)
    finally:
        await db.close()
