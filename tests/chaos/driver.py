"""A school system that survives the faults, and the recorders of both status streams.

The driver publishes each record's first stage, then the next stage when the status
event of the last request arrives; a request with no answer for a while is published
again, unchanged (the daemon answers a known request_id with its stored status).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiomqtt

from daemon import topology
from daemon.dev import env as devenv
from daemon.messages import RecordInfo
from daemon.stages import ORDER, Stage
from producers.school_system import sample_pdf, sample_record, sign_request

STATUS_QUEUE = "chaos.status.recorder"
_NEXT = {"signed_by_teacher": Stage.PRINCIPAL, "signed_by_principal": Stage.SCHOOL_SEAL}


@dataclass
class Request:
    request_id: str
    routing_key: str
    body: bytes
    sent_at: float = 0.0
    sends: int = 0


@dataclass
class Tracked:
    school: str
    info: RecordInfo
    current: Request
    final: str | None = None  # issued, or the reason code of a refusal
    requests: list[str] = field(default_factory=list)


@dataclass
class Bad:
    name: str
    request: Request
    outcome: str | None = None


class Driver:
    def __init__(self, env: devenv.DevEnv, amqp_url: str, seed: str) -> None:
        self.env = env
        self.amqp_url = amqp_url
        self.rng = random.Random(seed)
        self.tag = seed
        self.records: dict[tuple[str, str], Tracked] = {}
        self.bad: dict[str, Bad] = {}
        self.amqp_events: dict[str, dict[str, Any]] = {}
        self.amqp_deliveries = 0
        self.resends = 0
        self.publish_failures = 0
        self.package_requests: list[str] = []
        # (when, seconds from the last publish of a request to its status event)
        self.latencies: list[tuple[float, float]] = []
        self._by_request: dict[str, tuple[str, str]] = {}
        self.status_reconnects = 0
        self._connecting = asyncio.Lock()
        self._status_task: asyncio.Task[None]
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._count = 0

    async def __aenter__(self) -> Driver:
        self._status_task = asyncio.create_task(self._follow_status())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._status_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._status_task
        await self._disconnect()

    async def _exchange_now(self) -> aio_pika.abc.AbstractExchange:
        """A confirming channel's exchange, connecting again after a broker restart.

        Plain connections and our own loop, not aio-pika's robust ones: the recorder must
        not depend on the same reconnection logic as the system it checks."""
        async with self._connecting:
            if self._exchange is None:
                self._connection = await aio_pika.connect(self.amqp_url, timeout=5)
                channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await channel.declare_exchange(
                    topology.REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True
                )
            return self._exchange

    async def _disconnect(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _follow_status(self) -> None:
        while True:
            try:
                async with await aio_pika.connect(self.amqp_url, timeout=5) as connection:
                    channel = await connection.channel()
                    status = await channel.declare_exchange(
                        topology.STATUS, aio_pika.ExchangeType.TOPIC, durable=True
                    )
                    queue = await channel.declare_queue(
                        STATUS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
                    )
                    await queue.bind(status, "status.#")
                    async with queue.iterator() as messages:
                        async for message in messages:
                            await self._on_status(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away: follow again once it is back
                self.status_reconnects += 1
                await asyncio.sleep(1)

    # --- publishing ------------------------------------------------------------

    async def start_record(self, school: str) -> None:
        self._count += 1
        info = sample_record(self.rng, school, self.tag, self._count)
        pdf = sample_pdf(info, f"Trường Tiểu học {school}", pages=1)
        request = self._request(school, info, ORDER[0], hashlib.sha256(pdf).hexdigest(), pdf)
        tracked = Tracked(school, info, request)
        self.records[(school, info.record_id)] = tracked
        await self._send(tracked, request)

    def _request(
        self, school: str, info: RecordInfo, stage: Stage, digest: str, pdf: bytes | None = None
    ) -> Request:
        signer = self.env.signer_for(school, stage.value)
        token = self.env.consent_signer(school).mint(
            signer, stage, [(info.record_id, digest)], ttl_s=6 * 3600
        )
        key, body, rid = sign_request(school, info, stage, signer, token, pdf)
        return Request(rid, key, body)

    async def _send(self, tracked: Tracked, request: Request) -> None:
        tracked.current = request
        tracked.requests.append(request.request_id)
        self._by_request[request.request_id] = (tracked.school, tracked.info.record_id)
        await self._publish(request)

    async def send_bad(self, name: str, routing_key: str, body: bytes) -> None:
        try:
            rid = str(uuid.UUID(json.loads(body)["request_id"]))
        except (ValueError, KeyError, TypeError):
            rid = str(uuid.uuid4())  # undecodable: the message_id is all it has
        request = Request(rid, routing_key, body)
        self.bad[request.request_id] = Bad(name, request)
        await self._publish(request)

    async def _publish(self, request: Request) -> None:
        """Publish until the broker confirms it, however long the broker is away."""
        request.sends += 1
        request.sent_at = time.monotonic()
        message = aio_pika.Message(
            request.body,
            content_type="application/json",
            message_id=request.request_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        while True:
            try:
                exchange = await self._exchange_now()
                await asyncio.wait_for(
                    exchange.publish(message, routing_key=request.routing_key), 10
                )
                return
            except Exception:  # the broker is away: any failure means try again
                self.publish_failures += 1
                await self._disconnect()
                await asyncio.sleep(1)

    async def request_package(self, school: str, year: str, round_: int) -> str:
        """Ask for the round's package of a school (`hocba.package_request.v1`), to submit."""
        rid = str(uuid.uuid4())
        body = {
            "type": "hocba.package_request.v1",
            "request_id": rid,
            "school_id": school,
            "academic_year": year,
            "submission_round": round_,
            "submit": True,
            "requested_at": datetime.now(UTC).isoformat(),
        }
        await self._publish(Request(rid, f"package.{school}", json.dumps(body).encode()))
        self.package_requests.append(rid)
        return rid

    async def resend_stale(self, older_than_s: float) -> None:
        now = time.monotonic()
        for tracked in list(self.records.values()):
            request = tracked.current
            if tracked.final is None and now - request.sent_at > older_than_s:
                self.resends += 1
                await self._publish(request)

    # --- status ----------------------------------------------------------------

    async def _on_status(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        self.amqp_deliveries += 1
        self.amqp_events.setdefault(event["event_id"], event)
        rid = str(event.get("request_id"))
        with contextlib.suppress(Exception):
            await message.ack()
        if rid in self.bad:
            reason = event.get("reason") or {}
            self.bad[rid].outcome = reason.get("code", event["state"])
            return
        key = self._by_request.get(rid)
        tracked = self.records.get(key) if key else None
        if tracked is None or tracked.current.request_id != rid or tracked.final:
            return
        now = time.monotonic()
        self.latencies.append((now, now - tracked.current.sent_at))
        state = event["state"]
        if state in _NEXT:
            stage = _NEXT[state]
            request = self._request(tracked.school, tracked.info, stage, event["document_sha256"])
            await self._send(tracked, request)
        elif state == "issued":
            tracked.final = "issued"
        else:
            tracked.final = (event.get("reason") or {}).get("code", state)

    def pending(self) -> int:
        records = sum(1 for t in self.records.values() if t.final is None)
        return records + sum(1 for b in self.bad.values() if b.outcome is None)

    def finals(self) -> Counter[str]:
        return Counter(t.final or "pending" for t in self.records.values())


class MqttRecorder:
    """Every status message under the prefix, across broker restarts (persistent session)."""

    def __init__(self, port: int, prefix: str = "hocba") -> None:
        self.port = port
        self.prefix = prefix
        self.events: dict[str, dict[str, Any]] = {}
        self.retained: dict[str, dict[str, Any]] = {}
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttRecorder:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="chaos-recorder", clean_session=False
                ) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        event = json.loads(payload)
                        self.events.setdefault(event["event_id"], event)
                        if message.retain:
                            self.retained[str(message.topic)] = event
            except aiomqtt.MqttError:
                self.reconnects += 1
                await asyncio.sleep(1)
