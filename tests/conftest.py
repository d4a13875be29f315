"""Shared fixtures. Integration tests use the real services; in CI they must run."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest

from daemon import app
from daemon.dev import env as devenv
from daemon.errors import HocbaError
from daemon.settings import Settings
from tests import services
from tests.hsm_fixtures import *  # noqa: F403


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests and choose their services (private ones if the machine's
    cannot serve); skip them only on a laptop where neither works, never in CI."""
    if not any("integration" in item.path.parts for item in items):
        return
    try:
        services.choose()
        missing = services.missing()
    except HocbaError as exc:
        if os.environ.get("CI"):
            raise
        missing = [exc.message]
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
            if missing and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=f"not running: {', '.join(missing)}"))


def pytest_unconfigure(config: pytest.Config) -> None:
    services.release()


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
async def dev_env(
    tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> AsyncIterator[devenv.DevEnv]:
    """A dev environment of three schools in its own database and RabbitMQ vhost.

    Migrated as the server's admin; the daemon connects as a login role of its own in
    hocba_daemon, so a privilege the code needs but lacks fails the tests."""
    vhost = f"hocba-test-{run_id}"
    database = f"hocba_test_{run_id}"
    amqp_url = await asyncio.to_thread(services.create_vhost, vhost)
    env = await devenv.init(
        tmp_path_factory.mktemp("dev"),
        3,
        dsn=services.dsn(database),
        amqp_url=amqp_url,
        daemon_role=f"hocba_test_{run_id}",
    )
    yield env
    await services.drop_database(database)
    await services.drop_role(f"hocba_test_{run_id}")
    await asyncio.to_thread(services.delete_vhost, vhost)


@pytest.fixture(scope="session")
def settings(dev_env: devenv.DevEnv, run_id: str) -> Settings:
    """Test settings: fast retries, an HTTP port of the OS's choosing, a private MQTT prefix."""
    base = dev_env.settings
    return base.model_copy(
        update={
            "instance": f"hocba-test-{run_id}",
            "shutdown_timeout_s": 10.0,
            "amqp": base.amqp.model_copy(
                update={"retry_base_ms": 100, "retry_cap_ms": 400, "max_attempts": 4}
            ),
            "mqtt": base.mqtt.model_copy(update={"topic_prefix": f"hocba-test-{run_id}"}),
            "http": base.http.model_copy(update={"port": 0}),
            # The tests' own document server runs on loopback over plain http.
            "signing": base.signing.model_copy(
                update={"fetch_allowed_hosts": ["127.0.0.1"], "fetch_allow_http": True}
            ),
            # Packaging runs by command in tests; tests/integration/test_packages.py drives it.
            "packaging": base.packaging.model_copy(update={"schedule_interval_s": None}),
            # The audit trail is anchored and verified by command; test_audit_trail.py does.
            "audit": base.audit.model_copy(update={"anchor_every_s": None, "verify_every_s": None}),
        }
    )


@pytest.fixture
async def daemon(settings: Settings) -> AsyncIterator[app.Running]:
    """The daemon, started in this event loop, stopped (gracefully) after the test."""
    stop = asyncio.Event()
    async with app.started(settings, stop) as running:
        yield running
        stop.set()


@pytest.fixture
async def status(settings: Settings) -> AsyncIterator[services.StatusEvents]:
    async with services.status_collector(settings.amqp.url) as events:
        yield events


@pytest.fixture
async def mqtt(settings: Settings) -> AsyncIterator[services.MqttEvents]:
    async with services.mqtt_collector(settings.mqtt.topic_prefix) as events:
        yield events
