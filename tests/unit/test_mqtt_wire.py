"""The MQTT 3.1.1 packets the status publisher writes and the replies it reads."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from producers import mqtt_wire
from producers.mqtt_wire import Endpoint, Publisher, _Protocol


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        # The boundaries of 3.1.1 §2.2.3's table.
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_is_encoded_as_the_standard_says(n: int, encoded: bytes) -> None:
    assert mqtt_wire._remaining(n) == encoded


def test_a_packet_over_the_protocols_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="over the protocol's limit"):
        mqtt_wire._remaining(268_435_456)


def test_connect_carries_a_clean_session_the_keepalive_and_the_credentials() -> None:
    packet = mqtt_wire.connect_packet(
        Endpoint(
            "h", 1, client_id="hocba-1", username="district", password="s3cret", keepalive_s=60
        )
    )
    body = (
        b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)
        + bytes([0x80 | 0x40 | 0x02])  # user name, password, clean session
        + b"\x00\x3c"  # keepalive 60 s
        + b"\x00\x07hocba-1"
        + b"\x00\x08district"
        + b"\x00\x06s3cret"
    )
    assert packet == b"\x10" + bytes([len(body)]) + body


def test_connect_without_credentials_sets_neither_flag() -> None:
    packet = mqtt_wire.connect_packet(Endpoint("h", 1, client_id="c", keepalive_s=30))
    assert packet[9] == 0x02
    assert packet.endswith(b"\x00\x1e\x00\x01c")


def test_publish_is_qos_1_with_its_packet_id_and_retain_as_asked() -> None:
    topic, payload = b"hocba/31000123/records/R1/status", '{"state":"đã ký"}'.encode()
    retained = mqtt_wire.publish_packet(topic, payload, packet_id=513, retain=True)
    plain = mqtt_wire.publish_packet(topic, payload, packet_id=513, retain=False)
    assert retained[0] == 0x33 and plain[0] == 0x32
    size = 2 + len(topic) + 2 + len(payload)
    assert (
        retained[1:]
        == bytes([size]) + len(topic).to_bytes(2, "big") + topic + b"\x02\x01" + payload
    )


class _Recorder(Publisher):
    def __init__(self) -> None:
        super().__init__(Endpoint("h", 1, client_id="c"))
        self.packets: list[tuple[int, bytes]] = []
        self.why: list[str] = []

    def received(self, kind: int, body: bytes) -> None:
        self.packets.append((kind, body))

    def lost(self, why: str) -> None:
        self.why.append(why)


def test_packets_split_across_reads_and_joined_in_one_are_each_read_once() -> None:
    owner = _Recorder()
    protocol = _Protocol(owner)
    stream = b"\x20\x02\x00\x00" + b"\x40\x02\x00\x01" + b"\x40\x02\x01\x00" + b"\xd0\x00"
    for cut in (stream[:1], stream[1:5], stream[5:6], stream[6:]):
        protocol.data_received(cut)
    assert owner.packets == [
        (0x20, b"\x00\x00"),
        (0x40, b"\x00\x01"),
        (0x40, b"\x01\x00"),
        (0xD0, b""),
    ]
    assert owner.why == []


def test_a_length_of_more_than_four_bytes_ends_the_connection() -> None:
    owner = _Recorder()
    _Protocol(owner).data_received(b"\x40\xff\xff\xff\xff\x01")
    assert owner.why == ["a malformed packet length"]
    assert owner.packets == []


async def test_a_packet_a_publisher_never_expects_fails_what_it_waits_for() -> None:
    # Given a "broker" on a local socket that accepts the connection, then answers the
    # first PUBLISH with a PUBLISH of its own (nothing was subscribed)
    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")
        await reader.read(1024)  # PUBLISH
        writer.write(b"\x30\x04\x00\x01t{")
        await writer.drain()
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(Endpoint("127.0.0.1", port, client_id="c"))
    try:
        await publisher.connect(timeout_s=5)

        # When a batch is published
        # Then it fails with the reason, and the publisher is done with
        with pytest.raises(mqtt_wire.MqttLost, match="unexpected packet 0x30"):
            await publisher.publish([(b"t", b"{}", False)], timeout_s=5)
        assert not publisher.connected
    finally:
        publisher.close()
        server.close()
        await server.wait_closed()


async def test_a_connack_refusal_is_told_by_its_return_code() -> None:
    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"\x20\x02\x00\x05")  # not authorised
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(Endpoint("127.0.0.1", port, client_id="c"))
    try:
        with pytest.raises(mqtt_wire.MqttRefused, match="not authorised"):
            await publisher.connect(timeout_s=5)
        assert not publisher.connected
    finally:
        server.close()
        await server.wait_closed()


async def test_packet_ids_in_use_are_never_given_twice_and_wrap_after_65535() -> None:
    publisher = Publisher(Endpoint("h", 1, client_id="c"))
    publisher._next_id = 65_534
    publisher._in_use.add(1)  # still owed its PUBACK
    assert [publisher._packet_id() for _ in range(3)] == [65_535, 2, 3]


class _Wire(asyncio.Transport):
    """A transport that keeps what is written, one entry a write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _connected(in_flight: int = 20, keepalive_s: int = 60) -> tuple[Publisher, _Wire, _Protocol]:
    publisher = Publisher(Endpoint("h", 1, client_id="c", keepalive_s=keepalive_s), in_flight)
    wire = _Wire()
    publisher._transport = wire
    return publisher, wire, _Protocol(publisher)


def _ids(writes: list[bytes]) -> list[int]:
    """The packet ids of the PUBLISHes written (topic b"t", payload b"{}")."""
    packets = b"".join(writes)
    return [int.from_bytes(packets[at + 5 : at + 7], "big") for at in range(0, len(packets), 9)]


def _puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


async def test_at_most_the_window_is_unacknowledged_and_each_puback_sends_the_next() -> None:
    # Given a window of 3 and a batch of 7
    publisher, wire, protocol = _connected(in_flight=3)
    task = asyncio.ensure_future(publisher.publish([(b"t", b"{}", False)] * 7, timeout_s=5))
    await asyncio.sleep(0)
    # Then 3 go out in one write
    assert len(wire.writes) == 1 and _ids(wire.writes) == [1, 2, 3]
    # When two PUBACKs come in one read, then the next two go out in one write
    protocol.data_received(_puback(2) + _puback(1))
    assert _ids(wire.writes[1:]) == [4, 5] and len(wire.writes) == 2
    # And a PUBACK cut at the read's end still lets the one it completes out
    protocol.data_received(_puback(3) + _puback(4)[:3])
    assert _ids(wire.writes[2:]) == [6]
    protocol.data_received(_puback(4)[3:])
    assert _ids(wire.writes[3:]) == [7]
    assert not task.done()
    protocol.data_received(_puback(5) + _puback(6) + _puback(7))
    await task
    assert publisher._in_use == set() and publisher._waiting == {}


async def test_a_cancelled_batch_sends_nothing_more_and_frees_its_ids() -> None:
    publisher, wire, protocol = _connected(in_flight=2)
    first = asyncio.ensure_future(publisher.publish([(b"t", b"{}", True)] * 4, timeout_s=5))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert publisher._queued == deque() and publisher._in_use == {1, 2}
    # A newer batch goes out behind the two sent; the cancelled one's last two never do
    second = asyncio.ensure_future(publisher.publish([(b"t", b"{}", True)], timeout_s=5))
    await asyncio.sleep(0)
    protocol.data_received(_puback(1) + _puback(2))
    await asyncio.sleep(0)
    protocol.data_received(_puback(5))
    await second
    assert _ids(wire.writes) == [1, 2, 5]  # 3 and 4, the cancelled batch's, never sent


async def test_no_pingresp_in_half_a_keepalive_loses_the_connection() -> None:
    publisher, wire, _ = _connected(keepalive_s=1)
    publisher._schedule_ping()
    owed = asyncio.ensure_future(publisher.publish([(b"t", b"{}", False)], timeout_s=30))
    await asyncio.sleep(1.2)  # a ping at 0.5 s (nothing sent since 0.0 s), none answered
    assert b"\xc0\x00" in wire.writes
    with pytest.raises(mqtt_wire.MqttLost, match="no PINGRESP in time"):
        await owed
    assert not publisher.connected and wire.closed


async def test_a_keepalive_of_0_sends_no_pings() -> None:
    publisher, wire, _ = _connected(keepalive_s=0)
    publisher._schedule_ping()
    await asyncio.sleep(0.05)
    assert publisher._pinger is None and wire.writes == [] and publisher.connected


async def test_a_late_puback_times_the_batch_out_and_fails_the_others() -> None:
    publisher, _, _ = _connected()
    other = asyncio.ensure_future(publisher.publish([(b"t", b"{}", False)], timeout_s=30))
    with pytest.raises(mqtt_wire.MqttLost, match="did not come in time"):
        await publisher.publish([(b"t", b"{}", False)], timeout_s=0.05)
    with pytest.raises(mqtt_wire.MqttLost, match="no PUBACKs in time"):
        await other
    with pytest.raises(mqtt_wire.MqttLost, match="no PUBACKs in time"):
        await publisher.publish([(b"t", b"{}", False)], timeout_s=1)


async def test_a_message_mqtt_cannot_carry_sends_none_of_its_batch() -> None:
    publisher, wire, _ = _connected()
    with pytest.raises(ValueError, match="over the protocol's limit"):
        await publisher.publish(
            [(b"t", b"{}", False), (b"t", b"x" * 268_435_456, False)], timeout_s=1
        )
    assert wire.writes == [] and publisher._in_use == set()


async def test_more_messages_owed_than_packet_ids_are_refused_not_looped_on() -> None:
    publisher, wire, _ = _connected()
    publisher._in_use.update(range(1, 65_535))
    with pytest.raises(mqtt_wire.MqttError, match="packet ids"):
        await publisher.publish([(b"t", b"{}", False)] * 2, timeout_s=1)
    assert wire.writes == []


async def test_a_connect_cancelled_keeps_no_socket() -> None:
    # Given a "broker" that takes the connection and never answers the CONNECT
    connected, ended = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        connected.set()
        await reader.read()  # until the client closes
        ended.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(Endpoint("127.0.0.1", port, client_id="c"))
    try:
        # When the connect is cancelled while it waits for the CONNACK
        connecting = asyncio.ensure_future(publisher.connect(timeout_s=30))
        await asyncio.wait_for(connected.wait(), 5)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        # Then the publisher holds no connection, and the broker sees it closed
        assert publisher._transport is None and not publisher.connected
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
