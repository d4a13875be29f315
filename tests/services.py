"""The services a test run uses, and per-run isolation on them: a database, a RabbitMQ
vhost, an MQTT prefix.

Which services: `HOCBA_SERVICES` (see `daemon.dev.services`). By default the machine's
own when they answer and accept the configured credentials (CI here), else a private
PostgreSQL, RabbitMQ and Mosquitto started for the run under `.dev/services/test-<pid>`
and removed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiomqtt
import asyncpg

from daemon.dev import services as dev_services
from daemon.dev.instances import RABBITMQ_LIB, port_open
from daemon.messages import StatusEvent
from daemon.settings import load_settings
from daemon.stages import Stage, State

ROOT = Path(__file__).resolve().parents[1]
# Until `choose()` has run: the machine's services, as configured by default.
endpoints = dev_services.Endpoints(
    admin_dsn="postgresql://postgres@127.0.0.1:5432/postgres",
    amqp_url="amqp://guest:guest@127.0.0.1:5672/",
    mqtt_host="127.0.0.1",
    mqtt_port=1883,
)
_private: dev_services.PrivateServices | None = None


def choose() -> dev_services.Endpoints:
    """Pick this run's services (starting private ones if needed); `release()` after."""
    global _private, endpoints
    settings = load_settings()
    if asyncio.run(dev_services.needs_private(settings, dev_services.mode())):
        _private = dev_services.PrivateServices(ROOT / ".dev" / "services" / f"test-{os.getpid()}")
        try:
            endpoints = _private.start()
        except BaseException:
            release()
            raise
        # Subprocesses and settings loaded by tests meet the same broker.
        os.environ["HOCBA_MQTT__HOST"] = endpoints.mqtt_host
        os.environ["HOCBA_MQTT__PORT"] = str(endpoints.mqtt_port)
    else:
        endpoints = dev_services.Endpoints.configured(settings)
    return endpoints


def release() -> None:
    """Stop and remove the run's private services, if it started any."""
    global _private
    if _private is not None:
        _private.stop()
        shutil.rmtree(_private.base, ignore_errors=True)
        _private = None


def missing() -> list[str]:
    """The services nothing answers for at the chosen addresses."""
    pg, amqp = urlsplit(endpoints.admin_dsn), urlsplit(endpoints.amqp_url)
    ports = (
        ("PostgreSQL", pg.hostname or "127.0.0.1", pg.port or 5432),
        ("RabbitMQ", amqp.hostname or "127.0.0.1", amqp.port or 5672),
        ("Mosquitto", endpoints.mqtt_host, endpoints.mqtt_port),
    )
    return [name for name, host, port in ports if not port_open(port, host)]


def dsn(database: str) -> str:
    return endpoints.dsn(database)


def amqp_url(vhost: str = "", user: str | None = None, password: str | None = None) -> str:
    """The chosen broker's URL for `vhost`, as `user` (default: the configured one)."""
    parts = urlsplit(endpoints.amqp_url)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{user}:{password}@{host}" if password is not None else f"{user}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{vhost}"))


def rabbitmqctl(*args: str) -> None:
    """rabbitmqctl against the chosen node: the machine's, or the run's private one."""
    if endpoints.rabbitmq_node is None:
        command = ["rabbitmqctl", "-q", *args]
        env = None
    else:
        command = [str(RABBITMQ_LIB / "rabbitmqctl"), "-q", "-n", endpoints.rabbitmq_node, *args]
        env = {**os.environ, **dict(endpoints.rabbitmq_env)}
    subprocess.run(command, check=True, capture_output=True, timeout=120, env=env)


def create_vhost(name: str) -> str:
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return amqp_url(name)


def delete_vhost(name: str) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        rabbitmqctl("delete_vhost", name)


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(endpoints.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A database of the test's own (empty: not migrated), its DSN and a connection to
    it as the admin; dropped afterwards. For what must not share the run's database."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(endpoints.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn(name))
    try:
        yield dsn(name), conn
    finally:
        await conn.close()
        await drop_database(name)


def same_role_on(role_dsn: str, database_dsn: str) -> str:
    """`role_dsn`'s role (the daemon's, say) on the database `database_dsn` names: a
    scratch database's tests run with the privileges the daemon has, not the admin's."""
    return urlunsplit(urlsplit(role_dsn)._replace(path=urlsplit(database_dsn).path))


def teacher_signed(school: str, record_id: str) -> StatusEvent:
    """A `signed_by_teacher` status event, as the outbox holds one, for relay tests."""
    return StatusEvent(
        event_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        school_id=school,
        record_id=record_id,
        state=State.SIGNED_BY_TEACHER,
        stage=Stage.HOMEROOM_TEACHER,
        document_sha256="0" * 64,
        signatures=1,
        reason=None,
        at=datetime.now(UTC),
    )


async def drop_role(name: str) -> None:
    conn = await asyncpg.connect(endpoints.admin_dsn)
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await conn.close()


class StatusEvents:
    """Every status event on `hocba.status` since the collector started, by request_id."""

    def __init__(self) -> None:
        self.by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.routing_keys: dict[str, str] = {}
        self._arrived = asyncio.Condition()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            async with self._arrived:
                self.by_request[str(event["request_id"])].append(event)
                self.routing_keys[event["event_id"]] = message.routing_key or ""
                self._arrived.notify_all()

    async def wait_until(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 60
    ) -> list[dict[str, Any]]:
        """Every event without a request_id (package events), once `predicate` holds on them."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.by_request["None"]))
            return list(self.by_request["None"])

    async def wait_for_state(
        self, request_id: str, state: str, timeout_s: float = 60
    ) -> dict[str, Any]:
        """The first event of this request in `state` (a request_id may have earlier ones)."""

        def found() -> bool:
            return any(e["state"] == state for e in self.by_request[request_id])

        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(found)
            return next(e for e in self.by_request[request_id] if e["state"] == state)

    async def wait(self, request_id: str, count: int = 1, timeout_s: float = 60) -> list[dict]:
        """The first `count` events of this request, waiting for them to arrive."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.by_request[request_id]) >= count)
            return list(self.by_request[request_id])


@contextlib.asynccontextmanager
async def status_collector(amqp_url: str) -> AsyncIterator[StatusEvents]:
    events = StatusEvents()
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "hocba.status", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, routing_key="status.#")
        await queue.consume(events.on_message)
        yield events


class MqttEvents:
    """Every MQTT message under a prefix, by topic, with its retain flag."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[tuple[dict[str, Any], bool]]] = defaultdict(list)
        self._arrived = asyncio.Condition()

    async def wait(self, topic: str, state: str, timeout_s: float = 60) -> dict[str, Any]:
        def found() -> bool:
            return any(event["state"] == state for event, _ in self.by_topic[topic])

        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(found)
        return next(e for e, _ in self.by_topic[topic] if e["state"] == state)

    async def add(self, topic: str, payload: bytes, retain: bool) -> None:
        async with self._arrived:
            self.by_topic[topic].append((json.loads(payload), retain))
            self._arrived.notify_all()


@contextlib.asynccontextmanager
async def mqtt_collector(prefix: str, port: int | None = None) -> AsyncIterator[MqttEvents]:
    events = MqttEvents()
    async with aiomqtt.Client(endpoints.mqtt_host, port or endpoints.mqtt_port) as client:
        await client.subscribe(f"{prefix}/#", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                await events.add(str(message.topic), payload, message.retain)

        task = asyncio.create_task(listen())
        try:
            yield events
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def dead_letters(
    amqp_url: str, queue: str = "hocba.sign.dead"
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message now in the dead-letter queue (acknowledging them)."""
    taken = []
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(queue)
        while (message := await dlq.get(fail=False)) is not None:
            await message.ack()
            taken.append(message)
    return taken
