"""Where status events go: RabbitMQ `hocba.status` and the MQTT broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from typing import Any

import aio_pika
import aiomqtt
from aio_pika.abc import AbstractExchange

from daemon import amqp
from daemon.errors import BrokerUnavailable
from daemon.outbox import Transport
from daemon.settings import MqttSettings
from producers.status import Pending

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0
# aiomqtt warns above 10 pending publishes; stay within that.
MQTT_IN_FLIGHT = 10
# The ids the daemon accepts (daemon/messages.py): none is `+`, `#` or holds a `/`.
_TOPIC_LEVEL = re.compile(r"[0-9A-Za-z._-]{1,64}")


def _v2(event: dict[str, Any]) -> bool:
    return event.get("type") == "hocba.record_status.v2"


class AmqpStatus:
    """Publishes to `hocba.status` with key `status.<school_id>.<state>`, confirmed.

    A `hocba.record_status.v2` event (its `superseded` state unknown to v1) goes with
    key `status_v2.<school_id>.<state>`, which no v1 binding (`status.#`,
    `status.<school_id>.*`) matches.
    """

    name = Transport.AMQP

    def __init__(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange

    async def publish(self, events: list[Pending]) -> None:
        # A broker under a memory or disk alarm blocks publishers: give up in time so
        # the relay can retry (and MQTT is not held up behind it).
        with amqp.translated("confirming status events"):
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await asyncio.gather(*(self._publish_one(p.event) for p in events))

    async def _publish_one(self, event: dict[str, Any]) -> None:
        message = aio_pika.Message(
            body=json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode(),
            content_type="application/json",
            message_id=event["event_id"],
            type=event["type"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        key = f"{'status_v2' if _v2(event) else 'status'}.{event['school_id']}.{event['state']}"
        await self._exchange.publish(message, routing_key=key)


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
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: aiomqtt.Client | None = None

    async def publish(self, events: list[Pending]) -> None:
        try:
            client = await self._connected()
            # A handful in flight at a time: enough to hide the round trip, few enough
            # that a package's hundreds of events do not pile up in the client.
            for start in range(0, len(events), MQTT_IN_FLIGHT):
                chunk = events[start : start + MQTT_IN_FLIGHT]
                await asyncio.gather(*(self._publish_one(client, p) for p in chunk))
        except aiomqtt.MqttError as exc:
            await self.close()
            raise BrokerUnavailable(f"MQTT broker unavailable: {type(exc).__name__}.") from exc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await stack.aclose()

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

    async def _publish_one(self, client: aiomqtt.Client, pending: Pending) -> None:
        event = pending.event
        payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        topic = self.topic(event)
        current = not topic.endswith("/requests/rejected") and event["state"] != "rejected"
        retain = current and not pending.repeat
        await client.publish(topic, payload, qos=1, retain=retain)

    async def _connected(self) -> aiomqtt.Client:
        if self._client is not None:
            return self._client
        password = self._settings.resolved_password()
        client = aiomqtt.Client(
            hostname=self._settings.host,
            port=self._settings.port,
            username=self._settings.username,
            password=password.get_secret_value() if password else None,
            identifier=f"{self._settings.client_id_prefix}-{uuid.uuid4().hex[:12]}",
            timeout=10,
        )
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(client)
        self._stack, self._client = stack, client
        log.info("Connected to the MQTT broker.")
        return client
