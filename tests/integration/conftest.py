"""Fixtures of the integration tests: a school system that publishes as integrators do."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import aio_pika
import pytest

from daemon import topology
from daemon.dev import env as devenv
from daemon.messages import RecordInfo
from daemon.settings import Settings
from daemon.stages import Stage
from producers.school_system import sample_pdf, sample_record, sign_request


@dataclass
class Published:
    request_id: str
    routing_key: str
    body: bytes


class SchoolSystem:
    """Publishes sign requests with consents minted by each school's own key."""

    def __init__(self, env: devenv.DevEnv, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.env = env
        self.exchange = exchange
        self.rng = random.Random(secrets.token_hex(4))
        self.tag = secrets.token_hex(3)
        self.count = 0

    def new_record(self, school: str) -> tuple[RecordInfo, bytes]:
        self.count += 1
        info = sample_record(self.rng, school, self.tag, self.count)
        return info, sample_pdf(info, f"Trường Tiểu học {school}")

    async def sign(
        self,
        school: str,
        info: RecordInfo,
        stage: Stage,
        digest: str,
        *,
        pdf: bytes | None = None,
        signer: str | None = None,
        consent: str | None = None,
        request_id: UUID | None = None,
        routing_key: str | None = None,
    ) -> Published:
        signer = signer or self.env.signer_for(school, stage.value)
        token = consent or self.env.consent_signer(school).mint(
            signer, stage, [(info.record_id, digest)]
        )
        key, body, rid = sign_request(school, info, stage, signer, token, pdf, request_id)
        return await self.publish(routing_key or key, body, rid)

    async def first_stage(self, school: str) -> tuple[RecordInfo, bytes, Published]:
        info, pdf = self.new_record(school)
        digest = hashlib.sha256(pdf).hexdigest()
        sent = await self.sign(school, info, Stage.HOMEROOM_TEACHER, digest, pdf=pdf)
        return info, pdf, sent

    async def publish(self, routing_key: str, body: bytes, message_id: str) -> Published:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.exchange.publish(message, routing_key=routing_key)
        return Published(message_id, routing_key, body)


@pytest.fixture
async def school_system(dev_env: devenv.DevEnv, settings: Settings) -> AsyncIterator[SchoolSystem]:
    async with await aio_pika.connect(settings.amqp.url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.REQUESTS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        yield SchoolSystem(dev_env, exchange)
