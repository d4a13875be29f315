"""Preflight: can PostgreSQL, RabbitMQ and the MQTT broker be used as configured?

Each probe first opens a plain TCP connection (so "not running" and "does not answer"
never depend on a client library's wording), then logs in as the daemon would and
reads the server's version. What a user can fix becomes one `ServiceUnusable`
sentence naming the service, its address and the fix; the CLI prints it and exits 2.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiomqtt
import aiormq
import asyncpg
from aiormq.exceptions import (
    AMQPConnectionError,
    AuthenticationError,
    ConnectionNotAllowed,
    InvalidFrameError,
    ProbableAuthenticationError,
)
from yarl import URL

from daemon.errors import ServiceUnusable
from daemon.settings import AmqpSettings, DatabaseSettings, MqttSettings, Settings

POSTGRES = "PostgreSQL"
RABBITMQ = "RabbitMQ"
MQTT = "The MQTT broker"
# Oldest servers the code runs on: DROP DATABASE … WITH (FORCE) and gen_random_uuid()
# need PostgreSQL 13; the quorum queues' at-least-once dead-lettering RabbitMQ 3.10.
MIN_VERSIONS = {POSTGRES: (13,), RABBITMQ: (3, 10)}
_START = {
    POSTGRES: "sudo systemctl start postgresql",
    RABBITMQ: "sudo systemctl start rabbitmq-server",
    MQTT: "sudo systemctl start mosquitto",
}
_SETTING = {POSTGRES: "database.dsn", RABBITMQ: "amqp.url", MQTT: "mqtt.host and mqtt.port"}


@dataclass(frozen=True)
class Endpoint:
    service: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def unusable(self, problem: str, fix: str) -> ServiceUnusable:
        return ServiceUnusable(self.service, self.address, problem, fix)


def parse_version(text: str) -> tuple[int, ...]:
    """The leading dotted number of a server's version string: "15.20 (Debian …)" → (15, 20)."""
    found = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    if found is None:
        raise ValueError(f"no version number in {text!r}")
    return tuple(int(part) for part in found.group(1).split("."))


def require_version(endpoint: Endpoint, text: str) -> None:
    """Raise ServiceUnusable if `text` names a version older than the code needs."""
    minimum = MIN_VERSIONS[endpoint.service]
    try:
        found = parse_version(text)
    except ValueError:
        return  # a server that does not say: let it try
    if found < minimum:
        wanted = ".".join(map(str, minimum))
        raise endpoint.unusable(
            f"runs version {'.'.join(map(str, found))}, older than the {wanted} hocba-signer needs",
            f"upgrade it, or point {_SETTING[endpoint.service]} at a newer server",
        )


async def reach(endpoint: Endpoint, timeout_s: float) -> None:
    """Open and close a TCP connection; ServiceUnusable if nothing listens or answers."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except TimeoutError as exc:
        raise endpoint.unusable(
            f"does not answer within {timeout_s:g} s",
            f"check the address in {_SETTING[endpoint.service]} and the network",
        ) from exc
    except OSError as exc:
        raise endpoint.unusable(
            "is not running (nothing accepts connections there)",
            f"start it ({_START[endpoint.service]}), or fix {_SETTING[endpoint.service]}; "
            "`make demo` and `make test` start their own when HOCBA_SERVICES=auto",
        ) from exc
    writer.close()
    await writer.wait_closed()


def postgres_endpoint(dsn: str) -> Endpoint | None:
    """The TCP address of a DSN; None for a Unix socket (asyncpg reports those itself)."""
    parts = urlsplit(dsn)
    if parts.hostname is None or parts.hostname.startswith("/") or "host=" in parts.query:
        return None
    return Endpoint(POSTGRES, parts.hostname, parts.port or 5432)


async def check_postgres(
    settings: DatabaseSettings, timeout_s: float = 3.0, *, database_may_be_missing: bool = False
) -> None:
    """Connect as the daemon does; `database_may_be_missing` when the caller creates it."""
    endpoint = postgres_endpoint(settings.dsn) or Endpoint(POSTGRES, "the local socket", 5432)
    if endpoint.host != "the local socket":
        await reach(endpoint, timeout_s)
    parts = urlsplit(settings.dsn)
    user, database = parts.username or "postgres", parts.path.lstrip("/") or "postgres"
    try:
        version = await _postgres_version(settings, settings.dsn, timeout_s)
    except asyncpg.InvalidCatalogNameError as exc:
        if not database_may_be_missing:
            raise endpoint.unusable(
                f"has no database {database}",
                f"create it (createdb -h {endpoint.host} -U {user} {database}) or run "
                "`hocba-signer dev init`",
            ) from exc
        admin = urlunsplit(parts._replace(path="/postgres"))
        version = await _postgres_version(settings, admin, timeout_s)
    require_version(endpoint, version)


async def _postgres_version(settings: DatabaseSettings, dsn: str, timeout_s: float) -> str:
    endpoint = postgres_endpoint(dsn) or Endpoint(POSTGRES, "the local socket", 5432)
    user = urlsplit(dsn).username or "postgres"
    password = settings.resolved_password()
    try:
        conn = await asyncpg.connect(
            dsn, password=password.get_secret_value() if password else None, timeout=timeout_s
        )
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        # Debian's pg_hba.conf asks 127.0.0.1 for a password (scram-sha-256).
        raise endpoint.unusable(
            f"refuses user {user} ({type(exc).__name__})",
            "give the password in database.password_file (or the db-password credential), "
            "or let the user in by pg_hba.conf; `make demo` and `make test` start their own "
            "when HOCBA_SERVICES=auto",
        ) from exc
    except (OSError, TimeoutError) as exc:
        raise endpoint.unusable(
            f"cannot be reached ({type(exc).__name__})",
            f"start it ({_START[POSTGRES]}), or fix {_SETTING[POSTGRES]}",
        ) from exc
    except asyncpg.InvalidCatalogNameError:
        raise
    except asyncpg.PostgresError as exc:
        raise endpoint.unusable(
            f"refuses the connection ({type(exc).__name__})",
            "read the server's log; retry once it has finished starting",
        ) from exc
    try:
        return str(conn.get_settings().server_version)
    finally:
        await conn.close()


async def check_rabbitmq(settings: AmqpSettings, timeout_s: float = 3.0) -> None:
    url = URL(settings.url)
    endpoint = Endpoint(RABBITMQ, url.host or "localhost", url.port or 5672)
    await reach(endpoint, timeout_s)
    password = settings.resolved_password()
    if password is not None:
        url = url.with_password(password.get_secret_value())
    vhost = url.path[1:] or "/"
    try:
        async with asyncio.timeout(timeout_s):
            connection = await aiormq.connect(url)
    except (AuthenticationError, ProbableAuthenticationError) as exc:
        raise endpoint.unusable(
            f"refuses user {url.user or 'guest'} ({type(exc).__name__})",
            "give the password in amqp.password_file (or the amqp-password credential), or "
            "create the user (rabbitmqctl add_user)",
        ) from exc
    except (ConnectionNotAllowed, InvalidFrameError) as exc:
        # The broker closes at Connection.Open, the vhost step, when the vhost is unknown.
        raise endpoint.unusable(
            f"does not let user {url.user or 'guest'} into virtual host {vhost}",
            f"create it and grant it (rabbitmqctl add_vhost {vhost}; rabbitmqctl "
            f"set_permissions -p {vhost} {url.user or 'guest'} '.*' '.*' '.*')",
        ) from exc
    except (AMQPConnectionError, OSError, TimeoutError) as exc:
        raise endpoint.unusable(
            f"did not complete the AMQP handshake ({type(exc).__name__})",
            "check that it is RabbitMQ listening there, and read its log",
        ) from exc
    try:
        version = connection.server_properties.get("version", b"")
        require_version(endpoint, version.decode() if isinstance(version, bytes) else str(version))
    finally:
        await connection.close()


async def check_mqtt(settings: MqttSettings, timeout_s: float = 3.0) -> None:
    endpoint = Endpoint(MQTT, settings.host, settings.port)
    await reach(endpoint, timeout_s)
    password = settings.resolved_password()
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=password.get_secret_value() if password else None,
        identifier=f"{settings.client_id_prefix}-preflight",
        timeout=timeout_s,
    )
    try:
        async with client:
            pass
    except aiomqtt.MqttCodeError as exc:
        raise endpoint.unusable(
            f"refuses the connection ({exc.rc})",
            "set mqtt.username and mqtt.password_file (or the mqtt-password credential) to "
            "an account it knows",
        ) from exc
    except aiomqtt.MqttError as exc:
        raise endpoint.unusable(
            "did not complete the MQTT handshake",
            "check that it is an MQTT broker listening there, and read its log",
        ) from exc


async def problems_of(
    settings: Settings,
    *,
    rabbitmq: bool = True,
    mqtt: bool = True,
    database_may_be_missing: bool = False,
    timeout_s: float = 3.0,
) -> list[ServiceUnusable]:
    """Every service's problem, in the order PostgreSQL, RabbitMQ, MQTT; [] if all serve."""
    probes: list[Awaitable[None]] = [
        check_postgres(
            settings.database, timeout_s, database_may_be_missing=database_may_be_missing
        )
    ]
    if rabbitmq:
        probes.append(check_rabbitmq(settings.amqp, timeout_s))
    if mqtt:
        probes.append(check_mqtt(settings.mqtt, timeout_s))
    results = await asyncio.gather(*probes, return_exceptions=True)
    found = []
    for result in results:
        if isinstance(result, ServiceUnusable):
            found.append(result)
        elif isinstance(result, BaseException):
            raise result
    return found
