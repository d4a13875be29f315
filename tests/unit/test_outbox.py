"""The outbox's transport columns: named once, and nothing else reaches SQL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon import outbox
from daemon.outbox import Transport
from producers.transports import AmqpStatus, MqttStatus

MIGRATIONS = Path(__file__).parents[2] / "daemon" / "migrations"


def test_every_transport_has_its_column_in_the_schema() -> None:
    schema = "\n".join(p.read_text("utf-8") for p in sorted(MIGRATIONS.glob("*.sql")))
    for transport in Transport:
        assert re.search(rf"\b{transport.column}\s+timestamptz", schema), transport


def test_the_publishers_are_named_by_the_enum() -> None:
    assert AmqpStatus.name is Transport.AMQP
    assert MqttStatus.name is Transport.MQTT


@pytest.mark.parametrize("name", ["sms", "amqp_published_at", "amqp; DROP TABLE outbox --", ""])
def test_a_name_outside_the_enum_never_becomes_sql(name: str) -> None:
    for build in (outbox.pending_sql, outbox.mark_sql):
        with pytest.raises(ValueError):
            build([Transport.MQTT, name])
    with pytest.raises(ValueError):
        outbox.backlog_sql(name)


def test_pending_rows_are_those_the_given_transports_lack() -> None:
    sql = outbox.pending_sql([Transport.MQTT])
    where = sql.split("WHERE", 1)[1]
    assert "mqtt_published_at IS NULL" in where and "amqp_published_at" not in where
    # Every column is read back, so the relay knows what each transport still lacks
    assert "amqp_published_at, mqtt_published_at FROM outbox" in sql


def test_marks_number_their_parameters_in_the_order_given() -> None:
    sql = outbox.mark_sql([Transport.MQTT, Transport.AMQP])
    assert "mqtt_published_at = CASE WHEN id = ANY($1::bigint[])" in sql
    assert "amqp_published_at = CASE WHEN id = ANY($2::bigint[])" in sql
    assert sql.endswith("WHERE id = ANY($1::bigint[]) OR id = ANY($2::bigint[])")


def test_backlogs_read_one_figure_pair_per_transport() -> None:
    row = {"amqp_backlog": 3, "amqp_age_s": 1.5, "mqtt_backlog": 0, "mqtt_age_s": 0}
    assert outbox.backlogs(row) == {Transport.AMQP: (3, 1.5), Transport.MQTT: (0, 0.0)}
    for transport in Transport:
        assert f"AS {transport}_backlog" in outbox.BACKLOGS_SQL
        assert f"AS {transport}_age_s" in outbox.BACKLOGS_SQL
