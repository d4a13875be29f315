"""The Compose stack's RabbitMQ has the plugins the declared topology needs."""

from __future__ import annotations

import json

import yaml

from daemon import topology
from tests.ops.tools import ROOT

PLUGINS = ROOT / "config" / "rabbitmq" / "enabled_plugins"


def test_the_stack_enables_the_consistent_hash_exchange_its_definitions_use() -> None:
    # Given the definitions declare the sign shards' consistent-hash exchange
    definitions = json.loads((ROOT / "config" / "rabbitmq" / "definitions.json").read_text())
    types = {e["type"] for e in definitions["exchanges"]}
    assert topology.CONSISTENT_HASH in types

    # Then the plugin file mounted into the broker enables its plugin (and keeps the
    # image's own management and Prometheus plugins)
    enabled = PLUGINS.read_text("utf-8").strip()
    assert enabled.startswith("[") and enabled.endswith("].")
    plugins = {p.strip() for p in enabled[1:-2].split(",")}
    assert plugins >= {topology.HASH_PLUGIN, "rabbitmq_management", "rabbitmq_prometheus"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    volumes = compose["services"]["rabbitmq"]["volumes"]
    assert "./config/rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro" in volumes
