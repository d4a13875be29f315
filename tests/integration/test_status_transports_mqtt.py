"""MqttStatus on real Mosquitto brokers: a batch is published only once every PUBACK came.

MqttStatus hands a batch to paho at once and waits for its PUBACKs behind one future;
what subscribers see must not change, and a batch the broker does not acknowledge in
full must fail, so the relay keeps its rows for MQTT and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from daemon import migrate, records
from daemon.database import Database
from daemon.errors import BrokerUnavailable
from daemon.messages import Reason, StatusEvent, StatusEventV2
from daemon.settings import MqttSettings, Settings
from daemon.stages import Stage, State
from producers import mqtt_wire, transports
from producers.status import Pending, StatusRelay
from producers.transports import MqttStatus
from tests import services
from tests.services import mqtt_collector


def _model(
    school: str, record_id: str | None, state: State, v2: bool = False, reason: str | None = None
) -> StatusEvent | StatusEventV2:
    model = StatusEventV2 if v2 else StatusEvent
    return model(
        event_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        school_id=school,
        record_id=record_id,
        state=state,
        stage=Stage.HOMEROOM_TEACHER,
        document_sha256="cd" * 32,
        signatures=1,
        reason=Reason(code="hash_mismatch", message=reason) if reason else None,
        at=datetime.now(UTC),
    )


def _pending(model: StatusEvent | StatusEventV2, repeat: bool = False) -> Pending:
    return Pending(json.loads(model.model_dump_json()), repeat)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def mosquitto(tmp_path: Path, *options: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A private broker with these config lines (anonymous unless they say), killed after."""
    port = _free_port()
    config = tmp_path / f"mosquitto-{port}.conf"
    anonymous = (
        [] if any(o.startswith("allow_anonymous") for o in options) else ["allow_anonymous true"]
    )
    config.write_text("\n".join([f"listener {port} 127.0.0.1", *anonymous, *options]))
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while not _listening(port):
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.05)
        yield broker, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.pid, signal.SIGCONT)
        broker.kill()
        broker.wait()


async def _retained(prefix: str, port: int | None = None) -> dict[str, bytes]:
    """What the broker retains under `prefix`: a new subscriber's first messages."""
    found: dict[str, bytes] = {}
    marker = f"{prefix}/zz-end/{uuid.uuid4().hex}"
    async with aiomqtt.Client(
        services.endpoints.mqtt_host, port or services.endpoints.mqtt_port
    ) as c:
        await c.subscribe(f"{prefix}/#", qos=1)
        # Mosquitto sends the retained messages on subscribing, before anything later.
        await c.publish(marker, b"", qos=1)
        async with asyncio.timeout(10):
            async for message in c.messages:
                if str(message.topic) == marker:
                    break
                assert message.retain
                assert isinstance(message.payload, bytes)
                found[str(message.topic)] = message.payload
        for topic in found:
            await c.publish(topic, b"", qos=1, retain=True)
    return found


async def test_a_batch_reaches_subscribers_on_its_topics_retained_as_before(
    settings: Settings,
) -> None:
    # Given a subscriber, and a batch longer than the in-flight window
    prefix = f"{settings.mqtt.topic_prefix}-{uuid.uuid4().hex[:6]}"
    mqtt = MqttStatus(settings.mqtt.model_copy(update={"topic_prefix": prefix}))
    school = "31000123"
    signed = [
        _pending(_model(school, f"R{n:03d}", State.SIGNED_BY_TEACHER))
        for n in range(2 * transports.MQTT_IN_FLIGHT + 5)
    ]
    repeat = _pending(_model(school, "R-repeat", State.SIGNED_BY_TEACHER), repeat=True)
    refused = _pending(_model(school, "R000", State.REJECTED, reason="Tài liệu đã đổi"))
    undecodable = _pending(_model(school, None, State.REJECTED, reason="not JSON"))
    superseded = _pending(_model(school, "R001", State.SIGNED_BY_PRINCIPAL, v2=True))
    batch = [*signed, repeat, refused, undecodable, superseded]
    try:
        async with mqtt_collector(prefix) as live:
            # When the batch is published
            await mqtt.publish(batch)

            # Then the subscriber has every event on its topic, the payload unchanged
            for p in batch:
                topic = mqtt.topic(p.event)
                arrived = await live.wait(topic, p.event["state"])
                assert arrived == p.event
            assert mqtt.topic(undecodable.event) == f"{prefix}/{school}/requests/rejected"
            assert mqtt.topic(superseded.event).endswith("/records/R001/status/v2")
    finally:
        await mqtt.close()

    # And the broker retains each record's state, never a refusal or a repeat
    retained = await _retained(prefix)
    body = transports._body
    expected = {mqtt.topic(p.event): body(p.event).encode() for p in [*signed, superseded]}
    assert retained == expected


async def test_a_batch_with_a_publish_the_broker_drops_is_owed_to_mqtt(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a broker that drops a client sending a packet over 4 kB, and an outbox of the
    # test's own (the relay drains every school's events, a batch at a time)
    with mosquitto(tmp_path, "max_packet_size 4096") as (_, port):
        async with services.scratch_database("hocba_mqtt_owed") as (dsn, admin):
            await migrate.migrate(admin)
            own = settings.mqtt.model_copy(update={"port": port})
            mqtt = MqttStatus(own)
            school = "mqtt-" + uuid.uuid4().hex[:8]
            db = Database(settings.database.model_copy(update={"dsn": dsn}))
            await db.open()
            try:
                # And a batch in the outbox whose third event is too large for it
                async with db.transaction() as conn:
                    for n in range(6):
                        reason = "x" * 5000 if n == 2 else None
                        state = State.REJECTED if reason else State.SIGNED_BY_TEACHER
                        await records.enqueue(conn, _model(school, f"R{n}", state, reason=reason))

                # When the relay drains to MQTT
                async with mqtt_collector(own.topic_prefix, port=port) as live:
                    async with db.connection() as conn:
                        await StatusRelay(db, [mqtt]).drain(conn)
                    # (the events before it did reach the broker)
                    await live.wait(
                        f"{own.topic_prefix}/{school}/records/R1/status", "signed_by_teacher"
                    )

                # Then MQTT still owes every event of the batch
                owed = await admin.fetchval(
                    "SELECT count(*) FROM outbox WHERE mqtt_published_at IS NULL"
                )
                assert owed == 6
            finally:
                await mqtt.close()
                await db.close()


async def test_a_batch_whose_pubacks_do_not_come_fails_in_time_and_the_next_goes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transports, "MQTT_ACK_TIMEOUT_S", 0.5)
    with mosquitto(tmp_path) as (broker, port):
        mqtt = MqttStatus(MqttSettings(port=port, topic_prefix="stalled"))
        try:
            # Given a connected publisher
            await mqtt.publish([_pending(_model("s1", "R1", State.SIGNED_BY_TEACHER))])

            # When the broker stops answering during a batch
            os.kill(broker.pid, signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="MQTT broker unavailable"):
                await mqtt.publish([_pending(_model("s1", "R2", State.SIGNED_BY_TEACHER))])

            # Then the batch failed in about the window's timeout, not aiomqtt's 10 s per message
            assert time.monotonic() - started < 10
            # And once the broker answers again, the retried batch is published
            os.kill(broker.pid, signal.SIGCONT)
            await mqtt.publish([_pending(_model("s1", "R2", State.SIGNED_BY_TEACHER))])
            assert set(await _retained("stalled", port)) == {
                "stalled/s1/records/R1/status",
                "stalled/s1/records/R2/status",
            }
        finally:
            await mqtt.close()


async def test_a_broker_refusing_the_credentials_says_so_and_the_right_ones_publish(
    tmp_path: Path,
) -> None:
    # Given a broker with one user
    passwords = tmp_path / "passwords"
    made = await asyncio.create_subprocess_exec(
        "mosquitto_passwd", "-b", "-c", str(passwords), "district", "đúng-mật-khẩu"
    )
    assert await made.wait() == 0
    # (started as root, Mosquitto reads the password file as `user`, by default
    # "mosquitto", who cannot enter pytest's private temporary directory)
    as_root = "user root"
    with mosquitto(tmp_path, "allow_anonymous false", f"password_file {passwords}", as_root) as (
        _,
        port,
    ):
        wrong = MqttStatus(
            MqttSettings(
                port=port, username="district", password=SecretStr("sai"), topic_prefix="auth"
            )
        )
        right = MqttStatus(
            MqttSettings(
                port=port,
                username="district",
                password=SecretStr("đúng-mật-khẩu"),
                topic_prefix="auth",
            )
        )
        event = _pending(_model("s1", "R1", State.SIGNED_BY_TEACHER))
        try:
            # When each publishes, Then the wrong password fails with the refusal Mosquitto gives
            with pytest.raises(BrokerUnavailable, match="refused: not authorised"):
                await wrong.publish([event])
            # And the right one publishes
            await right.publish([event])
        finally:
            await wrong.close()
            await right.close()


async def test_an_idle_connection_stays_up_on_its_pings() -> None:
    # Given a publisher whose keepalive is 1 s (Mosquitto drops a client silent for 1.5 s)
    publisher = mqtt_wire.Publisher(
        mqtt_wire.Endpoint(
            services.endpoints.mqtt_host,
            services.endpoints.mqtt_port,
            client_id=f"keepalive-{uuid.uuid4().hex[:8]}",
            keepalive_s=1,
        )
    )
    prefix = f"ka-{uuid.uuid4().hex[:6]}"
    await publisher.connect(timeout_s=5)
    try:
        # When it has nothing to publish for 3.5 s
        await asyncio.sleep(3.5)

        # Then the same connection still publishes
        assert publisher.connected
        async with mqtt_collector(prefix) as live:
            await publisher.publish([(f"{prefix}/x".encode(), b'{"state":"issued"}', False)], 5)
            assert await live.wait(f"{prefix}/x", "issued") == {"state": "issued"}
    finally:
        publisher.close()


async def test_a_broker_restarted_fails_one_batch_and_the_next_goes_out_on_a_new_connection(
    tmp_path: Path,
) -> None:
    with mosquitto(tmp_path) as (_, port):
        mqtt = MqttStatus(MqttSettings(port=port, topic_prefix="restarted"))
        await mqtt.publish([_pending(_model("s1", "R1", State.SIGNED_BY_TEACHER))])
    # Given the broker gone (killed), When a batch is published, Then it fails as unavailable
    try:
        with pytest.raises(BrokerUnavailable, match="MQTT broker unavailable"):
            await mqtt.publish([_pending(_model("s1", "R2", State.SIGNED_BY_TEACHER))])
        # And with a broker on that port again, the retried batch goes out
        config = tmp_path / "again.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        again = await asyncio.create_subprocess_exec(
            "mosquitto", "-c", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 5
            while not _listening(port):
                assert time.monotonic() < deadline, "mosquitto did not listen"
                await asyncio.sleep(0.05)
            await mqtt.publish([_pending(_model("s1", "R2", State.SIGNED_BY_TEACHER))])
            assert set(await _retained("restarted", port)) == {"restarted/s1/records/R2/status"}
        finally:
            again.kill()
            await again.wait()
    finally:
        await mqtt.close()
