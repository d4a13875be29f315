"""Where status events go: RabbitMQ `hocba.status` and the MQTT broker.

Each publish is the hot path of every signature (one event per transport), so both
publishers go one level below their client library's per-message API: AMQP straight
to aiormq's `basic_publish` (no aio-pika `Message`), MQTT straight to paho's
`publish` with one future for a batch's PUBACKs (no aiomqtt task, event and timeout
per message). The guarantees are those of DESIGN.md's status contract: confirmed and
persistent on AMQP, QoS 1 and acknowledged on MQTT, before the relay marks a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import aiomqtt
import aiormq
import paho.mqtt.client as paho
from aio_pika.abc import AbstractExchange
from aiormq import spec
from aiormq.exceptions import ChannelInvalidStateError
from paho.mqtt.reasoncodes import ReasonCode

from daemon import amqp
from daemon.errors import BrokerUnavailable
from daemon.outbox import Transport
from daemon.settings import MqttSettings
from producers.status import Pending

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0
# How long each window of MQTT_IN_FLIGHT publishes may take to be acknowledged, as
# aiomqtt's timeout (10 s) did per message in windows of 10.
MQTT_ACK_TIMEOUT_S = 10.0
# QoS 1 publishes on the wire at once (paho queues the rest in order, sending one per
# PUBACK): enough to hide the round trip, few enough that a package's hundreds of
# events do not flood a slow broker.
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
                # wait=False: the frames queue without a drain each (the lock aiormq
                # holds across one would serialise the batch); the confirmations are
                # what the batch waits for, all of them.
                await asyncio.gather(
                    *(
                        underlay.basic_publish(
                            _body(p.event).encode(),
                            exchange=self._exchange,
                            routing_key=self.routing_key(p.event),
                            properties=self.properties(p.event),
                            mandatory=True,  # as Exchange.publish's default
                            wait=False,
                        )
                        for p in events
                    )
                )

    @staticmethod
    def routing_key(event: dict[str, Any]) -> str:
        return f"{'status_v2' if _v2(event) else 'status'}.{event['school_id']}.{event['state']}"

    @staticmethod
    def properties(event: dict[str, Any]) -> spec.Basic.Properties:
        """The properties aio-pika's `Message` gave the event, byte for byte on the wire."""
        return spec.Basic.Properties(
            content_type=_JSON,
            delivery_mode=_PERSISTENT,
            headers={},
            message_id=event["event_id"],
            message_type=event["type"],
            priority=0,
        )


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
        self._paho: paho.Client | None = None
        self._acks: _Acks | None = None

    async def publish(self, events: list[Pending]) -> None:
        try:
            client, acks = await self._connected()
            batch = _Batch()
            try:
                # No await until every event is handed to paho: it reads PUBACKs only
                # in the event loop's reader callback, so none comes before its mid
                # is expected.
                for pending in events:
                    acks.expect(batch, self._publish_one(client, pending))
                windows = -(-len(events) // MQTT_IN_FLIGHT)
                await batch.acknowledged(MQTT_ACK_TIMEOUT_S * windows)
            finally:
                acks.forget(batch)
        except aiomqtt.MqttError as exc:
            await self.close()
            raise BrokerUnavailable(f"MQTT broker unavailable: {type(exc).__name__}.") from exc

    async def close(self) -> None:
        stack, self._stack, self._paho, self._acks = self._stack, None, None, None
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

    def _publish_one(self, client: paho.Client, pending: Pending) -> int:
        """Hand one event to paho (QoS 1): its message id, for the PUBACK."""
        event = pending.event
        topic = self.topic(event)
        current = not topic.endswith("/requests/rejected") and event["state"] != "rejected"
        retain = current and not pending.repeat
        info = client.publish(topic, _body(event), qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        return info.mid

    async def _connected(self) -> tuple[paho.Client, _Acks]:
        if self._paho is not None and self._acks is not None:
            return self._paho, self._acks
        password = self._settings.resolved_password()
        client = aiomqtt.Client(
            hostname=self._settings.host,
            port=self._settings.port,
            username=self._settings.username,
            password=password.get_secret_value() if password else None,
            identifier=f"{self._settings.client_id_prefix}-{uuid.uuid4().hex[:12]}",
            timeout=10,
            max_inflight_messages=MQTT_IN_FLIGHT,
        )
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(client)
        # aiomqtt runs paho on the event loop (connection, reads, writes, keepalive);
        # publishing goes to paho itself, which aiomqtt keeps as `_client`.
        inner: paho.Client = client._client
        self._stack, self._paho, self._acks = stack, inner, _Acks(inner)
        log.info("Connected to the MQTT broker.")
        return inner, self._acks


class _Batch:
    """The PUBACKs one publish call waits for, behind one future."""

    def __init__(self) -> None:
        self.mids: list[int] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.owed = 0

    def acked(self) -> None:
        self.owed -= 1
        if self.owed == 0 and not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    async def acknowledged(self, timeout_s: float) -> None:
        if self.owed == 0:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.done
        except TimeoutError:
            raise aiomqtt.MqttError("PUBACKs did not come in time.") from None


class _Acks:
    """paho's PUBACK and disconnect callbacks, routed to the batches awaiting them.

    Wraps aiomqtt's own callbacks, which still get every other message id and every
    disconnect. paho calls them on the event loop, where aiomqtt reads its socket.
    """

    def __init__(self, client: paho.Client) -> None:
        self._by_mid: dict[int, _Batch] = {}
        # aiomqtt's, with paho's version 2 signatures.
        self._on_publish: Callable[..., None] | None = client.on_publish
        self._on_disconnect: Callable[..., None] | None = client.on_disconnect
        client.on_publish = self._published
        client.on_disconnect = self._disconnected

    def expect(self, batch: _Batch, mid: int) -> None:
        self._by_mid[mid] = batch
        batch.mids.append(mid)
        batch.owed += 1

    def forget(self, batch: _Batch) -> None:
        for mid in batch.mids:
            if self._by_mid.get(mid) is batch:
                del self._by_mid[mid]

    def _published(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        batch = self._by_mid.pop(mid, None)
        if batch is None:
            if self._on_publish is not None:
                self._on_publish(client, userdata, mid, reason, props)
        elif reason.is_failure:
            batch.fail(aiomqtt.MqttCodeError(reason, "Publish refused."))
        else:
            batch.acked()

    def _disconnected(self, client: paho.Client, userdata: Any, *args: Any) -> None:
        if self._on_disconnect is not None:
            self._on_disconnect(client, userdata, *args)
        for batch in set(self._by_mid.values()):
            batch.fail(aiomqtt.MqttError("Disconnected before the PUBACKs."))
        self._by_mid.clear()
