"""The AMQP status message as AmqpStatus frames it: what aio-pika's `Message` framed."""

from __future__ import annotations

import types
import uuid

import aio_pika
import aiormq
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
        *_split_as_aiormq_does(body, max_body),
    ]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


def _split_as_aiormq_does(body: bytes, max_content_size: int) -> list[ContentBody]:
    """aiormq's own `Channel._split_body`, run on a stand-in for its channel."""
    channel = types.SimpleNamespace(max_content_size=max_content_size)
    return aiormq.Channel._split_body(channel, body)  # type: ignore[arg-type]


class _Exchange(aio_pika.Exchange):
    def __init__(self) -> None:  # only its name and channel are read
        self.name = "hocba.status"
        self.channel = None  # type: ignore[assignment]


@pytest.mark.parametrize("kind", ["hocba.record_status.v1", "hocba.record_status.v2"])
@pytest.mark.parametrize("body_size", [0, 1, 4087, 4088, 4089, 20_000])
# A frame_max of 4096, less the frame's own 8 bytes; and of 0 (no limit): -8.
@pytest.mark.parametrize("max_body", [4088, -8])
def test_the_frames_are_byte_for_byte_those_aiormq_wrote_for_aio_pika(
    kind: str, body_size: int, max_body: int
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
        max_body_frame=max_body,
        mandatory=True,
    )
    assert ours == _reference(event, body, channel=7, max_body=max_body)


def test_a_key_over_255_bytes_is_refused_as_the_protocol_does() -> None:
    publish = amqp_wire.Publish("x", "k" * 256, b"{}", "application/json", "id", "t")
    with pytest.raises(ValueError, match="at most 255 bytes"):
        amqp_wire.frames(publish, 1, 4088, mandatory=True)
