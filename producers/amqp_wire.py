"""A batch of confirmed AMQP publishes, framed by hand, on an aiormq channel.

The relay publishes one status event per signature. aiormq's `basic_publish` builds
per message a pamqp `Basic.Publish`, a `ContentHeader` and its `Properties`, marshals
them through pamqp's generic encoder, takes the channel's lock and a timeout in a task
of its own (one task each under `asyncio.gather`), and hands the writer one frame set
per message. Here a batch is framed directly (AMQP 0-9-1 §4.2.3: method frame, content
header, body frames), registered with the channel's publisher confirmations as
`basic_publish` registers one, and queued to the writer as one payload, under the
lock once. The status message's properties are always the same six, so its header is
framed for exactly those (`tests/unit/test_status_transports.py` checks each frame
byte for byte against pamqp's).

This reaches into aiormq's channel (its `delivery_tag`, `confirmations`,
`message_id_delivery_tag` and `write_queue`, as `basic_publish` itself uses them):
pyproject.toml bounds aiormq's version, and the tests publish through a real broker.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass

import aiormq
from aiormq.abc import ChannelFrame

_METHOD, _HEADER, _BODY, _FRAME_END = 1, 2, 3, b"\xce"
_BASIC_PUBLISH = struct.pack("!HHH", 60, 40, 0)  # class, method, reserved ticket
_MANDATORY = 0x01
# Basic's property flags (§4.2.6.1, "basic" class): bit 15 first.
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _PRIORITY = 1 << 15, 1 << 13, 1 << 12, 1 << 11
_MESSAGE_ID, _TYPE = 1 << 7, 1 << 5
_FLAGS = struct.pack(
    "!H", _CONTENT_TYPE | _HEADERS | _DELIVERY_MODE | _PRIORITY | _MESSAGE_ID | _TYPE
)
_EMPTY_TABLE = b"\x00\x00\x00\x00"


@dataclass(frozen=True)
class Publish:
    """One persistent message: its exchange, key, body and the properties that vary."""

    exchange: str
    routing_key: str
    body: bytes
    content_type: str
    message_id: str
    message_type: str
    delivery_mode: int = 2
    priority: int = 0


def _short(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"An AMQP short string is at most 255 bytes, not {len(raw)}.")
    return bytes([len(raw)]) + raw


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack("!BHI", kind, channel, len(payload)) + payload + _FRAME_END


def frames(publish: Publish, channel: int, max_body_frame: int, mandatory: bool) -> bytes:
    """The method frame, content header and body frames of one Basic.Publish."""
    method = b"".join(
        (
            _BASIC_PUBLISH,
            _short(publish.exchange),
            _short(publish.routing_key),
            bytes([_MANDATORY if mandatory else 0]),
        )
    )
    header = b"".join(
        (
            struct.pack("!HHQ", 60, 0, len(publish.body)),
            _FLAGS,
            _short(publish.content_type),
            _EMPTY_TABLE,
            bytes([publish.delivery_mode, publish.priority]),
            _short(publish.message_id),
            _short(publish.message_type),
        )
    )
    body = publish.body
    # A frame_max of 0 (no limit) leaves aiormq a negative `max_content_size`: it
    # then sends the body in one frame, and so does this.
    step = max_body_frame if max_body_frame > 0 else max(len(body), 1)
    parts = [_frame(_METHOD, channel, method), _frame(_HEADER, channel, header)]
    parts += (_frame(_BODY, channel, body[at : at + step]) for at in range(0, len(body), step))
    return b"".join(parts)


async def publish_confirmed(
    channel: aiormq.Channel, publishes: list[Publish], mandatory: bool = True
) -> None:
    """Publish the batch in order; return once the broker confirmed every message.

    Raises what aiormq's confirmations carry (a nack as `DeliveryError`, a closed
    channel as its close reason), as `basic_publish` would; the caller translates.
    """
    if not channel.publisher_confirms:
        raise ValueError("Status events need a channel with publisher confirms.")
    if not publishes:
        return
    confirmations = await _queued(channel, publishes, mandatory)
    try:
        await asyncio.wait(confirmations)
    except BaseException:
        # Timed out or cancelled: nobody waits for the rest (aiormq ignores a reply to
        # a cancelled confirmation, and its done callback forgets the message id).
        for confirmation in confirmations:
            confirmation.cancel()
        raise
    for confirmation in confirmations:
        if confirmation.cancelled():
            raise aiormq.exceptions.ChannelInvalidStateError("The confirmation was cancelled.")
        error = confirmation.exception()
        if error is not None:
            raise error


async def _queued(
    channel: aiormq.Channel, publishes: list[Publish], mandatory: bool
) -> list[asyncio.Future[object]]:
    """The batch's frames queued to aiormq's writer in one payload, each message's
    confirmation registered as `basic_publish` registers one."""
    confirmations: list[asyncio.Future[object]] = []
    async with channel.lock:
        first = channel.delivery_tag
        payload: list[bytes] = []
        try:
            for publish in publishes:
                payload.append(frames(publish, channel.number, channel.max_content_size, mandatory))
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                # A Basic.Return finds its confirmation by message id (mandatory).
                channel.message_id_delivery_tag[publish.message_id] = tag
                confirmation.add_done_callback(_forgetting(channel, publish.message_id, tag))
                confirmations.append(confirmation)
            await channel.write_queue.put(
                ChannelFrame(payload=b"".join(payload), should_close=False)
            )
        except BaseException:
            # Nothing reached the writer: the delivery tags are free again.
            for tag in range(first + 1, channel.delivery_tag + 1):
                channel.confirmations.pop(tag, None)
            for confirmation in confirmations:
                confirmation.cancel()
            channel.delivery_tag = first
            raise
    return confirmations


def _forgetting(
    channel: aiormq.Channel, message_id: str, tag: int
) -> Callable[[asyncio.Future[object]], None]:
    def forget(_: asyncio.Future[object]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    return forget
