"""Which PostgreSQL, RabbitMQ and MQTT broker the demo and the tests use.

`HOCBA_SERVICES` chooses:

* `auto` (the default): the configured (the machine's) services when all three answer
  and accept the configured credentials, else private instances started under
  `.dev/services/` and stopped when done;
* `system`: the configured services only; a problem is the preflight's one sentence;
* `private`: always the private instances.

The private trio is `daemon.dev.instances`; its addresses reach the code as the usual
`HOCBA_<SECTION>__<KEY>` overrides (`Endpoints.overrides`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit, urlunsplit

from daemon import preflight
from daemon.dev.env import CONFIG_NAME
from daemon.dev.instances import Mosquitto, Postgres, RabbitMQ
from daemon.errors import ConfigError
from daemon.settings import Settings, load_settings

log = logging.getLogger(__name__)

MODE_ENV = "HOCBA_SERVICES"
Mode = Literal["auto", "system", "private"]
MODES: tuple[Mode, ...] = ("auto", "system", "private")


def mode(environ: Mapping[str, str] = os.environ) -> Mode:
    value = environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{MODE_ENV}={value} is not one of {', '.join(MODES)}.")
    return cast(Mode, value)


@dataclass(frozen=True)
class Endpoints:
    """Where the three services are, and how to drive the RabbitMQ node with rabbitmqctl."""

    admin_dsn: str
    amqp_url: str
    mqtt_host: str
    mqtt_port: int
    rabbitmq_node: str | None = None  # None: the machine's own node
    rabbitmq_env: tuple[tuple[str, str], ...] = ()
    private: bool = False

    @classmethod
    def configured(cls, settings: Settings) -> Endpoints:
        dsn = urlunsplit(urlsplit(settings.database.dsn)._replace(path="/postgres"))
        return cls(dsn, settings.amqp.url, settings.mqtt.host, settings.mqtt.port)

    def dsn(self, database: str) -> str:
        return urlunsplit(urlsplit(self.admin_dsn)._replace(path=f"/{database}"))

    def overrides(self, database: str) -> dict[str, str]:
        """The `HOCBA_*` variables that point a configuration at these services."""
        return {
            "HOCBA_DATABASE__DSN": self.dsn(database),
            # A configuration that migrates as the schema owner names it apart.
            "HOCBA_DATABASE__MIGRATE_DSN": self.dsn(database),
            "HOCBA_AMQP__URL": self.amqp_url,
            "HOCBA_MQTT__HOST": self.mqtt_host,
            "HOCBA_MQTT__PORT": str(self.mqtt_port),
        }


def dev_settings(base: Path) -> Settings:
    """The settings `dev init` and the demo work with: `base`'s config once it exists."""
    config = base / CONFIG_NAME
    return load_settings(config) if config.is_file() else load_settings()


class PrivateServices:
    """The private trio under one folder; `start` returns where they listen."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base = base.resolve()  # the servers run in folders of their own
        # One node name per folder, so two checkouts' nodes never meet in epmd.
        tag = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]
        self.postgres = Postgres(base)
        self.rabbitmq = RabbitMQ(base, f"hocba-{tag}@localhost")
        self.mosquitto = Mosquitto(base)

    def start(self) -> Endpoints:
        started: list[Postgres | RabbitMQ | Mosquitto] = [self.postgres]
        try:
            self.postgres.init()
            self.postgres.start()
            for server in (self.rabbitmq, self.mosquitto):
                started.append(server)  # a half-started one is stopped too
                server.start()
        except BaseException as exc:
            for running in reversed(started):
                running.stop()
            if isinstance(exc, (OSError, subprocess.SubprocessError, TimeoutError, RuntimeError)):
                raise ConfigError(
                    f"The private {type(started[-1]).__name__} under {started[-1].dir} did not "
                    f"start ({type(exc).__name__}): read its log there, or use the machine's "
                    "services (HOCBA_SERVICES=system)."
                ) from exc
            raise
        log.info("Private services started under %s.", self.base)
        return Endpoints(
            admin_dsn=self.postgres.dsn,
            amqp_url=self.rabbitmq.url,
            mqtt_host="127.0.0.1",
            mqtt_port=self.mosquitto.port,
            rabbitmq_node=self.rabbitmq.node,
            rabbitmq_env=tuple(
                (k, v)
                for k, v in self.rabbitmq.env.items()
                if k in ("HOME", "ERL_EPMD_PORT", "RABBITMQ_NODENAME")
            ),
            private=True,
        )

    def stop(self) -> None:
        self.mosquitto.stop()
        self.rabbitmq.stop()
        self.postgres.stop()
        log.info("Private services under %s stopped.", self.base)


async def needs_private(settings: Settings, chosen: Mode) -> bool:
    """Whether to start the private trio; `system` raises the configured services' problem."""
    if chosen == "private":
        return True
    problems = await preflight.problems_of(settings, database_may_be_missing=True)
    if not problems:
        return False
    if chosen == "system":
        raise problems[0]
    for problem in problems:
        log.info("Using private services: %s", problem.message)
    return True


@contextlib.asynccontextmanager
async def chosen_services(
    settings: Settings, base: Path, chosen: Mode | None = None, *, keep: bool = True
) -> AsyncIterator[Endpoints]:
    """The services to use: the configured ones, or private ones under `base` until exit.

    `keep=False` removes the private folder afterwards (the tests'); the demo keeps its
    cluster and node, so a second run starts in seconds.
    """
    if not await needs_private(settings, chosen or mode()):
        yield Endpoints.configured(settings)
        return
    private = PrivateServices(base)
    endpoints = await asyncio.to_thread(private.start)
    try:
        yield endpoints
    finally:
        await asyncio.to_thread(private.stop)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """`variables` in os.environ for the duration (the HOCBA_* overrides of a command)."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
