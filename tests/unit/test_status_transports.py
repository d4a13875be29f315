"""The AMQP status message as AmqpStatus frames it: what aio-pika's `Message` framed."""

from __future__ import annotations

import uuid

import aio_pika
import pamqp.frame
import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from producers import amqp_wire
from producers.transports import AmqpStatus


def _reference(event: dict[str, str], body: bytes, channel: int, max_body: int) -> bytes:
    """What aiormq's `basic_publish` wrote for aio-pika's Exchange.publish of the event."""
    message = aio_pika.Message(
        body=body,
        content_type="application/json",
        message_id=event["event_id"],
        type=event["type"],
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    frames = [
        Basic.Publish(
            exchange="hocba.status", routing_key=AmqpStatus.routing_key(event), mandatory=True
        ),
        ContentHeader(0, len(body), message.properties),
        *(ContentBody(body[at : at + max_body]) for at in range(0, len(body), max_body)),
    ]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


class _Exchange(aio_pika.Exchange):
    def __init__(self) -> None:  # only its name and channel are read
        self.name = "hocba.status"
        self.channel = None  # type: ignore[assignment]


@pytest.mark.parametrize("kind", ["hocba.record_status.v1", "hocba.record_status.v2"])
@pytest.mark.parametrize("body_size", [0, 1, 4088, 4089, 20_000])
def test_the_frames_are_byte_for_byte_those_aiormq_wrote_for_aio_pika(
    kind: str, body_size: int
) -> None:
    event = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "school_id": "31000123",
        "state": "signed_by_teacher",
    }
    body = ("Đã ký " * 4000).encode()[:body_size]
    message = AmqpStatus(_Exchange()).message(event)
    ours = amqp_wire.frames(
        amqp_wire.Publish(**{**message.__dict__, "body": body}),
        channel=7,
        max_body_frame=4088,  # a frame_max of 4096, less the frame's own 8 bytes
        mandatory=True,
    )
    assert ours == _reference(event, body, channel=7, max_body=4088)


def test_a_key_over_255_bytes_is_refused_as_the_protocol_does() -> None:
    publish = amqp_wire.Publish("x", "k" * 256, b"{}", "application/json", "id", "t")
    with pytest.raises(ValueError, match="at most 255 bytes"):
        amqp_wire.frames(publish, 1, 4088, mandatory=True)
