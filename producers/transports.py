"""Where status events go: RabbitMQ `hocba.status` and the MQTT broker.

Each publish is the hot path of every signature (one event per transport), so both
publishers go below a client library's per-message API: AMQP framed by hand on
aiormq's channel, a batch at once (`producers/amqp_wire.py`; no aio-pika `Message`, no
pamqp marshalling or task per message), MQTT by our own QoS 1 publisher
(`producers/mqtt_wire.py`) with one future for a batch's PUBACKs (no aiomqtt task,
event and timeout per message, no paho message info and reason code). The guarantees
are those of DESIGN.md's status contract: confirmed and persistent on AMQP, QoS 1 and
acknowledged on MQTT, before the relay marks a row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange
from aiormq.exceptions import ChannelInvalidStateError

from daemon import amqp
from daemon.errors import BrokerUnavailable
from daemon.outbox import Transport
from daemon.settings import MqttSettings
from producers import amqp_wire, mqtt_wire
from producers.status import Pending

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0
# How long each window of MQTT_IN_FLIGHT publishes may take to be acknowledged, as
# aiomqtt's timeout (10 s) did per message in windows of 10.
MQTT_ACK_TIMEOUT_S = 10.0
MQTT_CONNECT_TIMEOUT_S = 10.0
# QoS 1 publishes on the wire at once (the rest wait in order, one sent per PUBACK):
# enough to hide the round trip, few enough that a package's hundreds of events do not
# flood a slow broker.
MQTT_IN_FLIGHT = 20
# aio-pika's `Message(..., delivery_mode=PERSISTENT)` as it reaches the wire: an empty
# headers table and priority 0 included (tests/unit/test_status_transports.py).
_PERSISTENT = 2
_JSON = "application/json"
# The ids the daemon accepts (daemon/messages.py): none is `+`, `#` or holds a `/`.
_TOPIC_LEVEL = re.compile(r"[0-9A-Za-z._-]{1,64}")


def _v2(event: dict[str, Any]) -> bool:
    return event.get("type") == "hocba.record_status.v2"


def _body(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class AmqpStatus:
    """Publishes to `hocba.status` with key `status.<school_id>.<state>`, confirmed.

    A `hocba.record_status.v2` event (its `superseded` state unknown to v1) goes with
    key `status_v2.<school_id>.<state>`, which no v1 binding (`status.#`,
    `status.<school_id>.*`) matches.
    """

    name = Transport.AMQP

    def __init__(self, exchange: AbstractExchange) -> None:
        # aio-pika's exchanges know their channel (a robust one's outlives reconnects);
        # the abstract exchange does not say so.
        if not isinstance(exchange, aio_pika.Exchange):
            raise TypeError(f"Not an aio-pika exchange: {exchange!r}.")
        self._channel = exchange.channel
        self._exchange = exchange.name

    async def publish(self, events: list[Pending]) -> None:
        # A broker under a memory or disk alarm blocks publishers: give up in time so
        # the relay can retry (and MQTT is not held up behind it).
        with amqp.translated("confirming status events"):
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                # As aio-pika's Exchange.publish: a closed channel raises at once; a
                # robust one's current aiormq channel is looked up once per batch.
                if self._channel.is_closed:
                    raise ChannelInvalidStateError(f"{self._channel!r} closed")
                underlay = await self._channel.get_underlay_channel()
                if not isinstance(underlay, aiormq.Channel):
                    raise TypeError(f"Not an aiormq channel: {underlay!r}.")
                await amqp_wire.publish_confirmed(
                    underlay, [self.message(p.event) for p in events], mandatory=True
                )

    def message(self, event: dict[str, Any]) -> amqp_wire.Publish:
        """The event as aio-pika's `Message` carried it, byte for byte on the wire."""
        return amqp_wire.Publish(
            exchange=self._exchange,
            routing_key=self.routing_key(event),
            body=_body(event).encode(),
            content_type=_JSON,
            message_id=event["event_id"],
            message_type=event["type"],
            delivery_mode=_PERSISTENT,
            priority=0,
        )

    @staticmethod
    def routing_key(event: dict[str, Any]) -> str:
        return f"{'status_v2' if _v2(event) else 'status'}.{event['school_id']}.{event['state']}"


class MqttStatus:
    """Publishes to `<prefix>/<school_id>/records/<record_id>/status`, QoS 1.

    The retained message is the record's current state; a refusal or a repeated answer
    is published without retain so it never hides that state. Events with no record
    (undecodable requests) go to `<prefix>/<school_id>/requests/rejected`. A v2 event
    goes to `.../records/<record_id>/status/v2`, retained there, out of the sight of a
    v1 subscriber to `.../records/+/status`.
    """

    name = Transport.MQTT

    def __init__(self, settings: MqttSettings) -> None:
        self._settings = settings
        self._client: mqtt_wire.Publisher | None = None

    async def publish(self, events: list[Pending]) -> None:
        try:
            client = await self._connected()
            windows = -(-len(events) // MQTT_IN_FLIGHT)
            await client.publish([self._message(p) for p in events], MQTT_ACK_TIMEOUT_S * windows)
        except mqtt_wire.MqttError as exc:
            await self.close()
            raise BrokerUnavailable(f"MQTT broker unavailable: {exc}.") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def topic(self, event: dict[str, Any]) -> str:
        # Ids come from requests: one that is not a plain topic level (`+`, `#`, `/`)
        # never reaches a topic, whatever let it into an event.
        prefix, school = self._settings.topic_prefix, event["school_id"]
        if not _TOPIC_LEVEL.fullmatch(school):
            school = "unknown"
        record_id = event.get("record_id")
        if record_id and _TOPIC_LEVEL.fullmatch(record_id):
            tail = "/v2" if _v2(event) else ""
            return f"{prefix}/{school}/records/{record_id}/status{tail}"
        return f"{prefix}/{school}/requests/rejected"

    def _message(self, pending: Pending) -> tuple[bytes, bytes, bool]:
        """(topic, payload, retain) of one event."""
        event = pending.event
        topic = self.topic(event)
        current = not topic.endswith("/requests/rejected") and event["state"] != "rejected"
        return topic.encode(), _body(event).encode(), current and not pending.repeat

    async def _connected(self) -> mqtt_wire.Publisher:
        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        password = self._settings.resolved_password()
        client = mqtt_wire.Publisher(
            mqtt_wire.Endpoint(
                host=self._settings.host,
                port=self._settings.port,
                client_id=f"{self._settings.client_id_prefix}-{uuid.uuid4().hex[:12]}",
                username=self._settings.username,
                password=password.get_secret_value() if password else None,
            ),
            in_flight=MQTT_IN_FLIGHT,
        )
        await client.connect(MQTT_CONNECT_TIMEOUT_S)
        self._client = client
        log.info("Connected to the MQTT broker.")
        return client
