"""The AMQP status message as AmqpStatus frames it: what aio-pika's `Message` framed."""

from __future__ import annotations

import uuid

import aio_pika
from pamqp.header import ContentHeader

from producers.transports import AmqpStatus


def test_the_content_header_is_byte_for_byte_the_one_aio_pika_built() -> None:
    for kind in ("hocba.record_status.v1", "hocba.record_status.v2"):
        event = {"event_id": str(uuid.uuid4()), "type": kind}
        reference = aio_pika.Message(
            body=b"{}",
            content_type="application/json",
            message_id=event["event_id"],
            type=event["type"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        ours = AmqpStatus.properties(event)

        assert ContentHeader(0, 300, ours).marshal() == (
            ContentHeader(0, 300, reference.properties).marshal()
        )
        assert (ours.message_id, ours.message_type, ours.delivery_mode) == (
            event["event_id"],
            kind,
            2,
        )
