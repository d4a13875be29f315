"""A service a user can fix gives one sentence and exit 2: not running, refusing the
credentials (a PostgreSQL asking for a password, as Debian's pg_hba.conf does on
127.0.0.1; a RabbitMQ user with the wrong password; an MQTT broker refusing anonymous
clients). The commands run as a user runs them, in a subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from daemon import preflight
from daemon.dev.instances import Mosquitto, Postgres, free_port
from daemon.errors import ServiceUnusable
from daemon.settings import AmqpSettings, DatabaseSettings, MqttSettings
from tests import services

ROOT = Path(__file__).resolve().parents[2]
HOCBA = ROOT / ".venv" / "bin" / "hocba-signer"


def hocba(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOCBA), *args],
        env={**os.environ, "HOCBA_SERVICES": "system", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    # Others may enter it: as root, the private servers run as their system users.
    path = Path(tempfile.mkdtemp(prefix="hocba-preflight-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="module")
def password_cluster(folder: Path) -> Iterator[Postgres]:
    """A private cluster as Debian sets one up: trust on its socket, scram on 127.0.0.1,
    with a role `hocba_pw` whose password is `right`."""
    cluster = Postgres(folder)
    cluster.init()
    (cluster.dir / "data" / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    cluster.start()

    async def create_role() -> None:
        conn = await asyncpg.connect(host=str(cluster.dir), port=cluster.port, user="postgres")
        await conn.execute("CREATE ROLE hocba_pw LOGIN PASSWORD 'right'")
        await conn.close()

    asyncio.run(create_role())
    yield cluster
    cluster.stop()


def test_every_command_names_a_postgresql_that_is_not_running(tmp_path: Path) -> None:
    port = free_port()
    env = {"HOCBA_DATABASE__DSN": f"postgresql://postgres@127.0.0.1:{port}/hocba"}
    for command in (["migrate"], ["run"], ["dev", "init", "--dir", "dev"], ["demo"]):
        done = hocba(*command, env=env, cwd=tmp_path)

        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.splitlines() == [
            f"hocba-signer: PostgreSQL at 127.0.0.1:{port} is not running (nothing accepts "
            "connections there): start it (sudo systemctl start postgresql), or fix "
            "database.dsn; `make demo` and `make test` start their own when "
            "HOCBA_SERVICES=auto."
        ], command


def test_a_postgresql_asking_a_password_that_is_not_given(
    password_cluster: Postgres, tmp_path: Path
) -> None:
    env = {"HOCBA_DATABASE__DSN": password_cluster.dsn}
    for command in (["migrate"], ["dev", "init", "--dir", "dev"]):
        done = hocba(*command, env=env, cwd=tmp_path)

        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith(
            f"hocba-signer: PostgreSQL at 127.0.0.1:{password_cluster.port} refuses user "
            "postgres (InvalidPasswordError): give the password in database.password_file"
        )
        assert "Traceback" not in done.stderr


async def test_a_wrong_password_is_refused_and_the_right_one_serves(
    password_cluster: Postgres,
) -> None:
    dsn = f"postgresql://hocba_pw@127.0.0.1:{password_cluster.port}/postgres"

    with pytest.raises(ServiceUnusable, match="refuses user hocba_pw"):
        await preflight.check_postgres(DatabaseSettings(dsn=dsn, password="wrong"))

    await preflight.check_postgres(DatabaseSettings(dsn=dsn, password="right"))


async def test_a_missing_database_is_named_unless_the_command_creates_it(
    password_cluster: Postgres,
) -> None:
    dsn = f"postgresql://hocba_pw@127.0.0.1:{password_cluster.port}/nothing_here"
    settings = DatabaseSettings(dsn=dsn, password="right")

    with pytest.raises(ServiceUnusable, match="has no database nothing_here: create it"):
        await preflight.check_postgres(settings)

    await preflight.check_postgres(settings, database_may_be_missing=True)


def test_a_rabbitmq_refusing_the_password(tmp_path: Path) -> None:
    url = services.amqp_url("", "guest", "not-the-password")
    port = url.rsplit(":", 1)[1].split("/")[0]

    env = {"HOCBA_AMQP__URL": url, "HOCBA_DATABASE__DSN": services.dsn("postgres")}

    done = hocba("run", env=env, cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"hocba-signer: RabbitMQ at 127.0.0.1:{port} refuses user guest "
        "(ProbableAuthenticationError): give the password in amqp.password_file (or the "
        "amqp-password credential), or create the user (rabbitmqctl add_user)."
    ]


async def test_a_rabbitmq_without_the_virtual_host() -> None:
    with pytest.raises(ServiceUnusable, match="into virtual host no-such-vhost: create it"):
        await preflight.check_rabbitmq(AmqpSettings(url=services.amqp_url("no-such-vhost")))


async def test_an_mqtt_broker_refusing_anonymous_clients(folder: Path) -> None:
    broker = Mosquitto(folder)
    (broker.dir / "mosquitto.conf").write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\n"
    )
    await asyncio.to_thread(broker.start)
    try:
        with pytest.raises(ServiceUnusable) as refused:
            await preflight.check_mqtt(MqttSettings(port=broker.port))
    finally:
        await asyncio.to_thread(broker.stop)
    assert refused.value.message.startswith(
        f"The MQTT broker at 127.0.0.1:{broker.port} refuses the connection"
    )
    assert "mqtt.username and mqtt.password_file" in refused.value.message


async def test_the_chosen_services_pass_the_preflight() -> None:
    settings = DatabaseSettings(dsn=services.dsn("postgres"))
    await preflight.check_postgres(settings)
    await preflight.check_rabbitmq(AmqpSettings(url=services.amqp_url()))
    await preflight.check_mqtt(
        MqttSettings(host=services.endpoints.mqtt_host, port=services.endpoints.mqtt_port)
    )


def test_a_typo_in_hocba_services_is_one_sentence(tmp_path: Path) -> None:
    done = hocba("demo", env={"HOCBA_SERVICES": "sytem"}, cwd=tmp_path)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "hocba-signer: HOCBA_SERVICES=sytem is not one of auto, system, private."
    ]


def test_the_command_line_is_the_one_under_test() -> None:
    # The subprocesses above run this checkout's entry point, not another install.
    assert HOCBA.exists(), sys.executable
