"""MQTT 3.1.1 publishing at QoS 1 on an asyncio protocol: what the status relay needs.

The relay publishes one message per signature and waits for each PUBACK before it
marks the row. paho builds per message an `MQTTMessageInfo` with its own
`threading.Condition`, and per PUBACK a `ReasonCode` and `Properties`; here a
PUBLISH is one `bytes` built from a few slices and a PUBACK is two bytes looked up in
a dict. Only what a publisher with a clean session sends and receives is spoken
(OASIS MQTT 3.1.1: CONNECT/CONNACK, PUBLISH/PUBACK at QoS 1, PINGREQ/PINGRESP,
DISCONNECT); anything else from the broker ends the connection.

At most `in_flight` PUBLISHes are unacknowledged at once; the rest wait in order and
each PUBACK sends the next, as paho's `max_inflight_messages` did. A lost connection
fails every batch still owed a PUBACK (`MqttLost`); the relay keeps their rows and
retries on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from dataclasses import dataclass

_CONNECT, _CONNACK, _PUBLISH_QOS1, _PUBACK = 0x10, 0x20, 0x32, 0x40
_PINGREQ, _PINGRESP, _DISCONNECT = b"\xc0\x00", 0xD0, b"\xe0\x00"
_RETAIN = 0x01
_MAX_PACKET_ID = 0xFFFF
_MAX_REMAINING = 268_435_455  # what four bytes of remaining length can say
# CONNACK's return codes (3.1.1 §3.2.2.3).
_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttError(Exception):
    """Raised when the broker cannot take a batch; the relay retries it later."""


class MqttRefused(MqttError):
    """Raised when the broker's CONNACK refuses the connection (its return code)."""


class MqttLost(MqttError):
    """Raised when the connection failed, closed, or stopped answering in time."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 60


def _remaining(n: int) -> bytes:
    """The variable-length 'remaining length' (3.1.1 §2.2.3)."""
    if n > _MAX_REMAINING:
        raise ValueError(f"An MQTT packet of {n} bytes is over the protocol's limit.")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        raise ValueError("An MQTT string is at most 65,535 bytes.")
    return struct.pack("!H", len(raw)) + raw


def connect_packet(endpoint: Endpoint) -> bytes:
    """CONNECT with a clean session, and the user name and password if set."""
    flags = 0x02
    payload = _string(endpoint.client_id)
    if endpoint.username is not None:
        flags |= 0x80
        payload += _string(endpoint.username)
        if endpoint.password is not None:
            flags |= 0x40
            payload += _string(endpoint.password)
    header = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", endpoint.keepalive_s)
    body = header + payload
    return bytes([_CONNECT]) + _remaining(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int, retain: bool) -> bytes:
    """PUBLISH at QoS 1; `topic` already UTF-8."""
    size = 2 + len(topic) + 2 + len(payload)
    return b"".join(
        (
            bytes([_PUBLISH_QOS1 | (_RETAIN if retain else 0)]),
            _remaining(size),
            struct.pack("!H", len(topic)),
            topic,
            struct.pack("!H", packet_id),
            payload,
        )
    )


class _Batch:
    """The PUBACKs one `publish` call waits for, behind one future."""

    __slots__ = ("done", "owed")

    def __init__(self, loop: asyncio.AbstractEventLoop, owed: int) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.owed = owed

    def acked(self) -> None:
        self.owed -= 1
        if self.owed == 0 and not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: MqttError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def _take_packet(buffer: bytearray) -> tuple[int, bytes] | None:
    """The first whole packet (its type byte and body), taken off `buffer`; None if
    the buffer holds only part of one. ValueError for a length of over four bytes."""
    # The broker's packets here are 2 or 4 bytes; a longer one still parses.
    size, at, shift = 0, 1, 0
    while True:
        if at >= len(buffer):
            return None
        digit = buffer[at]
        size |= (digit & 0x7F) << shift
        at += 1
        if not digit & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    end = at + size
    if len(buffer) < end:
        return None
    kind, body = buffer[0], bytes(buffer[at:end])
    del buffer[:end]
    return kind, body


class _Protocol(asyncio.Protocol):
    """Reads the broker's packets as they come; `Publisher` owns what they mean."""

    def __init__(self, owner: Publisher) -> None:
        self._owner = owner
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (packet := _take_packet(self._buffer)) is not None:
                self._owner.received(*packet)
        except ValueError:
            self._owner.lost("a malformed packet length")
            return
        # What the PUBACKs of this read let go out, in one write, a packet cut at the
        # read's end or not.
        self._owner.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.lost("the connection closed" if exc is None else type(exc).__name__)


class Publisher:
    """One connection to the broker, publishing batches at QoS 1."""

    def __init__(self, endpoint: Endpoint, in_flight: int = 20) -> None:
        self._endpoint = endpoint
        self._in_flight = in_flight
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] | None = None
        self._waiting: dict[int, _Batch] = {}  # packet id → its batch, once sent
        self._queued: deque[tuple[int, bytes, _Batch]] = deque()  # not sent yet
        self._in_use: set[int] = set()  # the packet ids of both
        self._next_id = 0
        self._closed: str | None = None  # why the connection is over, once it is
        self._last_sent = 0.0
        self._ping_owed = False
        self._pinger: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # packets for the next write

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._closed is None

    async def connect(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self), self._endpoint.host, self._endpoint.port
                )
                self._transport = transport
                self._send(connect_packet(self._endpoint))
                self.flush()
                code = await self._connack
        except (OSError, TimeoutError) as exc:
            self.close()
            raise MqttLost(f"could not connect: {type(exc).__name__}") from exc
        except BaseException:  # cancelled, or the broker's answer ended it: no socket kept
            self.close()
            raise
        if code != 0:
            self.close()
            raise MqttRefused(f"refused: {_REFUSALS.get(code, f'return code {code}')}")
        self._schedule_ping()

    async def publish(self, messages: list[tuple[bytes, bytes, bool]], timeout_s: float) -> None:
        """Publish (topic, payload, retain) in order; return once every PUBACK came."""
        if not messages:
            return
        if self._closed is not None or self._transport is None:
            raise MqttLost(self._closed or "not connected")
        if len(self._in_use) + len(messages) > _MAX_PACKET_ID:
            raise MqttError("more PUBLISHes owed a PUBACK than MQTT has packet ids")
        ids = [self._packet_id() for _ in messages]
        try:  # every packet built before any is sent: a message too large sends none
            packets = [
                publish_packet(topic, payload, packet_id, retain)
                for (topic, payload, retain), packet_id in zip(messages, ids, strict=True)
            ]
        except (ValueError, struct.error):
            self._in_use.difference_update(ids)
            raise
        batch = _Batch(asyncio.get_running_loop(), len(messages))
        for packet_id, packet in zip(ids, packets, strict=True):
            if len(self._waiting) < self._in_flight:
                self._waiting[packet_id] = batch
                self._send(packet)
            else:
                self._queued.append((packet_id, packet, batch))
        self.flush()
        try:
            async with asyncio.timeout(timeout_s):
                await batch.done
        except TimeoutError:
            self.lost("no PUBACKs in time")
            raise MqttLost("the PUBACKs did not come in time") from None
        except asyncio.CancelledError:
            self._unqueue(batch)
            raise

    def close(self) -> None:
        """Send DISCONNECT if connected and drop the connection; idempotent."""
        transport, self._transport = self._transport, None
        self.lost("closed by us")
        if transport is not None:
            with contextlib.suppress(RuntimeError, OSError):
                if not transport.is_closing():
                    transport.write(_DISCONNECT)
            transport.close()

    def received(self, kind: int, body: bytes) -> None:
        if kind == _PUBACK and len(body) == 2:
            packet_id = int.from_bytes(body, "big")
            batch = self._waiting.pop(packet_id, None)
            if batch is not None:
                self._in_use.discard(packet_id)
                batch.acked()
                self._send_queued()
        elif kind == _PINGRESP:
            self._ping_owed = False
        elif kind == _CONNACK and len(body) == 2 and self._connack and not self._connack.done():
            self._connack.set_result(body[1])
        else:
            self.lost(f"an unexpected packet 0x{kind:02x}")

    def lost(self, why: str) -> None:
        """The connection is over: every batch still owed a PUBACK fails."""
        if self._closed is None:
            self._closed = why
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttLost(self._closed))
        batches = {*self._waiting.values(), *(b for _, _, b in self._queued)}
        self._waiting.clear()
        self._queued.clear()
        self._in_use.clear()
        for batch in batches:
            batch.fail(MqttLost(self._closed))
        if self._transport is not None:
            self._transport.close()

    def _unqueue(self, batch: _Batch) -> None:
        """A cancelled batch's PUBLISHes not sent yet are not sent, and free their ids.

        (A newer pass may publish the same topics meanwhile: a late older retained
        state must not overwrite it.) Those already sent get their PUBACKs as usual.
        """
        kept = deque(entry for entry in self._queued if entry[2] is not batch)
        self._in_use.difference_update(i for i, _, b in self._queued if b is batch)
        self._queued = kept

    def _packet_id(self) -> int:
        # An id stays in use until its PUBACK, however many were sent since (the
        # caller checked that one is free).
        while True:
            self._next_id = self._next_id % _MAX_PACKET_ID + 1
            if self._next_id not in self._in_use:
                self._in_use.add(self._next_id)
                return self._next_id

    def flush(self) -> None:
        """Write the packets sent since the last flush, in one write (one syscall)."""
        if self._out and self._transport is not None and self._closed is None:
            self._transport.write(b"".join(self._out))
            self._last_sent = time.monotonic()
        self._out.clear()

    def _send(self, packet: bytes) -> None:
        self._out.append(packet)

    def _send_queued(self) -> None:
        while self._queued and len(self._waiting) < self._in_flight:
            packet_id, packet, batch = self._queued.popleft()
            self._waiting[packet_id] = batch
            self._send(packet)

    def _schedule_ping(self) -> None:
        if self._endpoint.keepalive_s <= 0:  # 0: no keepalive (3.1.1 §3.1.2.10)
            return
        half = self._endpoint.keepalive_s / 2
        self._pinger = asyncio.get_running_loop().call_later(half, self._ping)

    def _ping(self) -> None:
        # The broker drops a client silent for 1.5 keepalives; a broker that has not
        # answered a PINGREQ within half a keepalive is taken as gone.
        if self._ping_owed:
            self.lost("no PINGRESP in time")
            return
        if time.monotonic() - self._last_sent >= self._endpoint.keepalive_s / 2:
            self._ping_owed = True
            self._send(_PINGREQ)
            self.flush()
        self._schedule_ping()
