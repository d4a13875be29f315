"""The MQTT 3.1.1 packets the status publisher writes and the replies it reads."""

from __future__ import annotations

import asyncio

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
