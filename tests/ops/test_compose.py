"""The Compose stack: every file it mounts exists, and RabbitMQ's definitions declare
exactly what the daemon declares, so the daemon's own declarations never conflict."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from daemon.settings import AmqpSettings
from tests.ops.tools import ROOT
from tests.ops.topology_recorder import declared

COMPOSE = ROOT / "docker-compose.yml"
DEFINITIONS = ROOT / "config" / "rabbitmq" / "definitions.json"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text("utf-8"))


def test_the_stack_has_every_service() -> None:
    services = _compose()["services"]
    assert set(services) >= {
        "rabbitmq",
        "postgres",
        "mosquitto",
        "init",
        "signer",
        "ministry",
        "prometheus",
        "grafana",
        "demo",
    }
    assert services["signer"]["deploy"]["replicas"] == 2
    assert services["demo"]["restart"] == "no"
    assert "mock-ministry" in services["ministry"]["command"]


def test_every_mounted_file_and_secret_exists() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()
    for secret in compose["secrets"].values():
        assert (ROOT / secret["file"]).is_file()


def test_the_image_runs_as_a_user() -> None:
    lines = (ROOT / "Dockerfile").read_text("utf-8").splitlines()
    users = [line for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("USER root", "USER 0"))


def _key(item: dict[str, Any], *fields: str) -> tuple[str, ...]:
    return tuple(json.dumps(item.get(f), sort_keys=True) for f in fields)


async def test_definitions_match_the_topology_the_daemon_declares() -> None:
    # Given what an instance with the default settings declares
    topology = await declared(AmqpSettings())
    definitions = json.loads(DEFINITIONS.read_text("utf-8"))

    # Then the definitions hold exactly that
    def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {item["name"]: item for item in items}

    assert by_name(definitions["exchanges"]) == by_name(topology.exchanges)
    assert by_name(definitions["queues"]) == by_name(topology.queues)
    fields = ("source", "destination", "routing_key", "arguments")
    assert sorted(_key(b, *fields) for b in definitions["bindings"]) == sorted(
        _key(b, *fields) for b in topology.bindings
    )


def test_each_school_may_publish_and_read_only_its_own_routing_keys() -> None:
    definitions = json.loads(DEFINITIONS.read_text("utf-8"))
    schools = [u["name"] for u in definitions["users"] if u["name"].startswith("school-")]
    assert schools
    topic = definitions["topic_permissions"]
    for user in schools:
        school = user.removeprefix("school-")
        rules = {t["exchange"]: t for t in topic if t["user"] == user}
        publish = re.compile(rules["hocba.requests"]["write"])
        assert publish.search(f"sign.{school}")
        assert not publish.search("sign.99999999")
        assert not publish.search(f"sign.{school}.x")
        read = re.compile(rules["hocba.status"]["read"])
        assert read.search(f"status.{school}.#")
        assert not read.search("status.#")
        assert not read.search("status.99999999.issued")
        assert rules["hocba.status"]["write"] == "^$"
