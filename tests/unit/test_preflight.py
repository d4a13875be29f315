"""What the preflight says about versions and addresses, without a server."""

from __future__ import annotations

import pytest

from daemon import preflight
from daemon.dev import services
from daemon.errors import ConfigError, ServiceUnusable

PG = preflight.Endpoint(preflight.POSTGRES, "db.example", 5432)
RABBIT = preflight.Endpoint(preflight.RABBITMQ, "mq.example", 5672)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("15.20 (Debian 15.20-0+deb12u1)", (15, 20)),
        ("16.4", (16, 4)),
        ("3.10.8", (3, 10, 8)),
        ("v3.13.7", (3, 13, 7)),
        ("12beta2", (12,)),
    ],
)
def test_versions_are_read_from_what_servers_report(text: str, version: tuple[int, ...]) -> None:
    assert preflight.parse_version(text) == version


def test_a_postgresql_older_than_13_is_refused_with_its_version_and_the_fix() -> None:
    with pytest.raises(ServiceUnusable) as refused:
        preflight.require_version(PG, "12.17 (Ubuntu 12.17-1)")
    assert refused.value.message == (
        "PostgreSQL at db.example:5432 runs version 12.17, older than the 13 hocba-signer "
        "needs: upgrade it, or point database.dsn at a newer server."
    )
    assert isinstance(refused.value, ConfigError)


def test_a_rabbitmq_older_than_3_10_is_refused() -> None:
    with pytest.raises(
        ServiceUnusable, match=r"RabbitMQ at mq\.example:5672 runs version 3\.9\.29"
    ):
        preflight.require_version(RABBIT, "3.9.29")


@pytest.mark.parametrize("text", ["13.0", "17.2", "18devel"])
def test_supported_postgresql_versions_pass(text: str) -> None:
    preflight.require_version(PG, text)


def test_a_server_that_does_not_say_its_version_is_let_through() -> None:
    preflight.require_version(RABBIT, "")


def test_a_unix_socket_dsn_has_no_tcp_address() -> None:
    assert preflight.postgres_endpoint("postgresql:///hocba?host=/run/postgresql") is None
    assert preflight.postgres_endpoint("postgresql://u@db:6543/x") == preflight.Endpoint(
        preflight.POSTGRES, "db", 6543
    )


def test_services_mode_defaults_to_auto_and_refuses_a_typo() -> None:
    assert services.mode({}) == "auto"
    assert services.mode({"HOCBA_SERVICES": "Private"}) == "private"
    with pytest.raises(ConfigError, match="HOCBA_SERVICES=sytem is not one of auto, system"):
        services.mode({"HOCBA_SERVICES": "sytem"})


def test_private_endpoints_become_the_usual_overrides() -> None:
    endpoints = services.Endpoints(
        "postgresql://postgres@127.0.0.1:40001/postgres",
        "amqp://guest:guest@127.0.0.1:40002/",
        "127.0.0.1",
        40003,
        private=True,
    )
    assert endpoints.overrides("hocba") == {
        "HOCBA_DATABASE__DSN": "postgresql://postgres@127.0.0.1:40001/hocba",
        "HOCBA_DATABASE__MIGRATE_DSN": "postgresql://postgres@127.0.0.1:40001/hocba",
        "HOCBA_AMQP__URL": "amqp://guest:guest@127.0.0.1:40002/",
        "HOCBA_MQTT__HOST": "127.0.0.1",
        "HOCBA_MQTT__PORT": "40003",
    }
