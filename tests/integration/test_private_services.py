"""The embedded default: when the configured services cannot serve, the demo and the
tests start a private PostgreSQL, RabbitMQ and Mosquitto, use them, and stop them.

CI here has the machine's services running (so the suite uses those); this test starts
the private trio anyway, talks to each as the daemon does, and checks that nothing of
it is left listening."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiomqtt
import asyncpg
import pytest

from daemon.dev import services
from daemon.dev.instances import free_port, port_open
from daemon.errors import ServiceUnusable
from daemon.settings import DatabaseSettings, Settings


@pytest.fixture
def folder() -> Iterator[Path]:
    # Others may enter it: as root, the private servers run as their system users.
    path = Path(tempfile.mkdtemp(prefix="hocba-private-"))
    path.chmod(0o755)
    yield path / "services"
    shutil.rmtree(path, ignore_errors=True)


def unusable_settings() -> Settings:
    """A configuration whose PostgreSQL is not running."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/hocba"
    return Settings(database=DatabaseSettings(dsn=dsn))


async def test_auto_starts_the_private_trio_and_stops_it(folder: Path) -> None:
    # Given a configuration whose PostgreSQL does not answer
    settings = unusable_settings()

    # When the services are chosen in auto mode
    async with services.chosen_services(settings, folder, "auto", keep=False) as endpoints:
        # Then private ones serve, each on its own port
        assert endpoints.private
        conn = await asyncpg.connect(endpoints.dsn("postgres"))
        try:
            version = await conn.fetchval("SHOW server_version")
            await conn.execute("CREATE DATABASE hocba_private_check")
        finally:
            await conn.close()
        assert int(version.split(".")[0]) >= 13

        async with await aio_pika.connect(endpoints.amqp_url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("private-check", durable=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"ping"), routing_key=queue.name
            )
            message = await queue.get(timeout=10)
            assert message.body == b"ping"
            await message.ack()

        async with aiomqtt.Client(endpoints.mqtt_host, endpoints.mqtt_port) as client:
            await client.subscribe("hocba-private/#", qos=1)
            await client.publish("hocba-private/check", b"pong", qos=1)
            async with asyncio.timeout(10):
                received = await anext(aiter(client.messages))
            assert received.payload == b"pong"

        ports = [
            int(endpoints.admin_dsn.split(":")[2].split("/")[0]),
            int(endpoints.amqp_url.split(":")[3].split("/")[0]),
            endpoints.mqtt_port,
        ]
        assert all(port_open(port) for port in ports)

    # And afterwards nothing listens there and the folder is gone
    assert not any(port_open(port) for port in ports)
    assert not folder.exists()


async def test_system_mode_gives_the_configured_services_problem(folder: Path) -> None:
    with pytest.raises(ServiceUnusable, match=r"PostgreSQL at 127\.0\.0\.1:[0-9]+ is not running"):
        async with services.chosen_services(unusable_settings(), folder, "system"):
            pass
    assert not folder.exists()
