"""Secrets never show: not in logs, errors, repr, metrics or /readyz; and logs carry no
personal data (no student ids), scanned over a whole run with refusals in it."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
from pydantic import SecretStr

from daemon import app
from daemon.dev import env as devenv
from daemon.settings import Settings
from daemon.stages import Stage
from tests import services
from tests.integration.conftest import SchoolSystem

SCHOOLS = ("31000101", "31000102")


class Captured(logging.Handler):
    """Every log line, formatted as it would be written, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Captured]:
    """At the production level (INFO) for libraries, DEBUG for our own code."""
    handler = Captured()
    root = logging.getLogger()
    ours = [logging.getLogger(name) for name in ("daemon", "consumers", "producers")]
    previous = [root.level, *(log.level for log in ours)]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for log in ours:
        log.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for log, level in zip([root, *ours], previous, strict=True):
        log.setLevel(level)


@pytest.fixture
def amqp_user(dev_env: devenv.DevEnv, run_id: str) -> Iterator[tuple[str, str]]:
    """A broker user of the test vhost whose password only the settings know."""
    user, password = f"hocba-secrets-{run_id}", f"amqp-{secrets.token_hex(12)}"
    vhost = dev_env.settings.amqp.url.rsplit("/", 1)[1]
    services.rabbitmqctl("add_user", user, password)
    services.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    yield user, password
    services.rabbitmqctl("delete_user", user)


def _secret_settings(settings: Settings, user: str, amqp_password: str, db_password: str):
    vhost = settings.amqp.url.rsplit("/", 1)[1]
    return settings.model_copy(
        update={
            "amqp": settings.amqp.model_copy(
                update={
                    "url": services.amqp_url(vhost, user),
                    "password": SecretStr(amqp_password),
                }
            ),
            # The test server trusts local connections, so any password is accepted.
            "database": settings.database.model_copy(update={"password": SecretStr(db_password)}),
            "mqtt": settings.mqtt.model_copy(
                update={"password": SecretStr(f"mqtt-{secrets.token_hex(12)}")}
            ),
        }
    )


async def test_no_secret_and_no_student_id_leaves_the_daemon(
    dev_env: devenv.DevEnv,
    settings: Settings,
    school_system: SchoolSystem,
    status: services.StatusEvents,
    amqp_user: tuple[str, str],
    captured: Captured,
) -> None:
    # Given a daemon whose PIN, database, broker and MQTT passwords are secrets
    db_password = f"db-{secrets.token_hex(12)}"
    config = _secret_settings(settings, amqp_user[0], amqp_user[1], db_password)
    pin = config.hsm.resolved_pin().get_secret_value()
    consent_keys = [dev_env.consent_signer(s).private_key for s in SCHOOLS]
    # (MQTT anonymous in the test broker: the daemon's MQTT password is checked in repr only)
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"password": None})})
    secret_texts = {
        "hsm pin": pin,
        "db password": db_password,
        "amqp password": amqp_user[1],
        **{f"consent key {n}": key.hex() for n, key in enumerate(consent_keys)},
        **{f"consent key {n} (b64)": _b64(key) for n, key in enumerate(consent_keys)},
    }

    # When records go through all stages, and some requests are refused
    students: list[str] = []
    stop = asyncio.Event()
    async with app.started(config, stop) as running:
        for school in SCHOOLS:
            info, _, sent = await school_system.first_stage(school)
            students.append(info.student_id)
            event = (await status.wait(sent.request_id))[0]
            for stage in (Stage.PRINCIPAL, Stage.SCHOOL_SEAL):
                sent = await school_system.sign(school, info, stage, event["document_sha256"])
                event = (await status.wait(sent.request_id))[0]
            assert event["state"] == "issued"
            refused = [
                await school_system.sign(school, info, Stage.SCHOOL_SEAL, event["document_sha256"]),
                await school_system.sign(
                    school, info.model_copy(update={"grade": 1}), Stage.SCHOOL_SEAL, "0" * 64
                ),
            ]
            other, _ = school_system.new_record(school)
            students.append(other.student_id)
            body = json.loads(sent.body)
            body["record"] = {**other.model_dump(), "student_name": "Nguyễn Văn An"}
            # Its own request_id (the rejected event carries the body's, when it has one).
            body["request_id"] = str(uuid.uuid4())
            refused.append(
                await school_system.publish(
                    sent.routing_key, json.dumps(body).encode(), body["request_id"]
                )
            )
            for bad in refused:
                await status.wait_for_state(bad.request_id, "rejected")
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{running.http_port}"
            readyz = await (await http.get(f"{base}/readyz")).text()
            metrics = await (await http.get(f"{base}/metrics")).text()
        stop.set()
    letters = await services.dead_letters(settings.amqp.url)

    # Then no secret appears anywhere an operator or a school system can read
    events = json.dumps(status.by_request)
    headers = json.dumps([dict(m.headers) for m in letters], default=str)
    surfaces = {
        "logs": "\n".join(captured.lines),
        "readyz": readyz,
        "metrics": metrics,
        "status events": events,
        "dead-letter headers": headers,
        "settings repr": repr(config) + str(config) + repr(settings),
        "settings json": config.model_dump_json(),
    }
    assert captured.lines, "no log captured"
    for surface, text in surfaces.items():
        for name, secret in secret_texts.items():
            assert secret not in text, f"{name} in {surface}"
    assert "**********" in repr(config)
    # And no student id (personal data) is in the logs, metrics or /readyz
    for surface in ("logs", "metrics", "readyz"):
        for student in students:
            assert student not in surfaces[surface], f"student id in {surface}"
        assert "Nguyễn" not in surfaces[surface]


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()
