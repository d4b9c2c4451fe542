"""Tests of the embedded MQTT 5 broker with real clients over loopback.

Each test starts its own broker on 127.0.0.1 with a free port. aiomqtt covers
the common paths. Tests that check the reason codes of CONNACK, PUBACK, SUBACK
or DISCONNECT use paho-mqtt directly. Raw sockets send the bytes that no client
library would produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.bus import _mqtt_connection
from appliance.bus._embedded_broker import EmbeddedBroker
from provisioning.acl import Access, AccessPolicy, AclRule

TIMEOUT_S = 5.0

# MQTT 5 packets that the raw socket tests expect, byte for byte.
CONNACK_SUCCESS_PREFIX = b"\x20"
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT_NORMAL = b"\xe0\x00"


def disconnect_packet(reason: int) -> bytes:
    """Return the DISCONNECT the broker sends: the reason and no properties."""
    return bytes((0xE0, 2, reason, 0))


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        value, digit = divmod(value, 128)
        encoded.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def packet(first: int, body: bytes) -> bytes:
    """Frame ``body`` with a fixed header."""
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    client_id: bytes = b"raw",
    *,
    keep_alive_s: int = 60,
    level: int = 5,
    properties: bytes = b"",
    will: tuple[bytes, bytes] | None = None,
) -> bytes:
    """Build a CONNECT with clean start and an optional QoS 0 will."""
    flags = 0x02 | (0x04 if will else 0)
    body = _string(b"MQTT") + bytes((level, flags)) + keep_alive_s.to_bytes(2, "big")
    if level == 5:
        body += _varint(len(properties)) + properties
    body += _string(client_id)
    if will is not None:
        body += b"\x00" + _string(will[0]) + _string(will[1])
    return packet(0x10, body)


def publish_packet(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 1,
    props: bytes = b"",
) -> bytes:
    """Build a PUBLISH from a client."""
    body = _string(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += _varint(len(props)) + props + payload
    return packet(0x30 | (qos << 1), body)


def subscribe_packet(topic_filter: bytes, options: int, packet_id: int = 1) -> bytes:
    """Build a SUBSCRIBE for one topic filter."""
    body = packet_id.to_bytes(2, "big") + b"\x00" + _string(topic_filter)
    return packet(0x82, body + bytes((options,)))


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """Read one whole packet, fixed header included."""
    async with asyncio.timeout(TIMEOUT_S):
        header = await reader.readexactly(1)
        remaining = shift = 0
        while True:
            digit = (await reader.readexactly(1))[0]
            header += bytes((digit,))
            remaining |= (digit & 0x7F) << shift
            shift += 7
            if digit < 0x80:
                return header + await reader.readexactly(remaining)


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Read until the broker closes the connection, failing after TIMEOUT_S."""
    async with asyncio.timeout(TIMEOUT_S):
        return await reader.read()


@contextlib.asynccontextmanager
async def raw_client(
    broker: EmbeddedBroker, connect: bytes | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open a TCP connection. With ``connect``, send it and expect CONNACK 0x00."""
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        if connect is not None:
            writer.write(connect)
            connack = await read_packet(reader)
            assert connack[:1] == CONNACK_SUCCESS_PREFIX
            assert connack[3] == 0x00, f"CONNACK reason 0x{connack[3]:02X}"
        yield reader, writer
    finally:
        writer.close()


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker("127.0.0.1", 0) as running:
        yield running


def v5_client(broker: EmbeddedBroker, **kwargs: Any) -> aiomqtt.Client:
    """Return an aiomqtt MQTT 5 client for ``broker``."""
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
        **kwargs,
    )


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    """Return the next message ``client`` receives, failing after TIMEOUT_S."""
    async with asyncio.timeout(TIMEOUT_S):
        return await anext(client.messages)


class PahoClient:
    """A paho-mqtt MQTT 5 client on its own thread that records what arrives."""

    def __init__(self, port: int, client_id: str = "", **credentials: str) -> None:
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if credentials:
            self.client.username_pw_set(
                credentials["username"], credentials["password"]
            )
        self.connacks: queue.Queue[int] = queue.Queue()
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda c, u, f, reason, p: self.connacks.put(
            reason.value
        )
        self.client.on_publish = lambda c, u, mid, reason, p: self.acks.put(
            (mid, reason.value)
        )
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self.subacks.put(
            [reason.value for reason in reasons]
        )
        self.client.on_disconnect = lambda c, u, f, reason, p: self.disconnects.put(
            reason.value
        )
        self.client.on_message = lambda c, u, message: self.messages.put(message)

    async def connect(self) -> int:
        """Connect, start the network thread and return the CONNACK reason code."""
        self.client.connect("127.0.0.1", self.port, keepalive=60)
        self.client.loop_start()
        return await self.wait(self.connacks)

    @staticmethod
    async def wait(events: queue.Queue[Any]) -> Any:
        """Return the next item of ``events``, raising queue.Empty after TIMEOUT_S."""
        return await asyncio.to_thread(events.get, True, TIMEOUT_S)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


async def test_connect_password_accepted() -> None:
    passwords = {"kiosk": "correct horse"}
    async with (
        EmbeddedBroker(passwords=passwords) as broker,
        v5_client(broker, username="kiosk", password="correct horse") as client,
    ):
        await client.subscribe("kiosk/echo")
        await client.publish("kiosk/echo", b"ping")
        message = await next_message(client)
        assert message.payload == b"ping"
        assert broker.stats.connections == 1


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"username": "kiosk", "password": "wrong"}, id="wrong-password"),
        pytest.param({"username": "stranger", "password": "x"}, id="unknown-user"),
        pytest.param({}, id="anonymous"),
    ],
)
async def test_connect_bad_credentials_rejected(credentials: dict[str, str]) -> None:
    async with EmbeddedBroker(passwords={"kiosk": "correct horse"}) as broker:
        client = PahoClient(broker.port, **credentials)
        try:
            reason = await client.connect()
        finally:
            client.close()
        assert reason == 0x86
        assert broker.stats.rejected_connections == 1
        assert broker.stats.connections == 0


async def test_connect_assigns_client_id(broker: EmbeddedBroker) -> None:
    async with raw_client(broker) as (reader, writer):
        writer.write(connect_packet(b""))
        connack = await read_packet(reader)
    assert connack[3] == 0x00
    assert b"\x12\x00\x19nightbox-" in connack  # Assigned Client Identifier
    assert b"\x29\x00" in connack  # Subscription Identifiers Available = 0
    assert b"\x2a\x00" in connack  # Shared Subscription Available = 0


async def test_subscribe_wildcards_match(broker: EmbeddedBroker) -> None:
    async with v5_client(broker) as subscriber, v5_client(broker) as publisher:
        await subscriber.subscribe("venue/+/door")
        await subscriber.subscribe("kiosk/#")
        for topic in ("venue/a/door", "venue/a/b/door", "kiosk", "kiosk/1/x", "other"):
            await publisher.publish(topic, topic.encode())
        await publisher.publish("venue/b/door", b"last")
        received = [(await next_message(subscriber)).payload for _ in range(4)]
    assert received == [b"venue/a/door", b"kiosk", b"kiosk/1/x", b"last"]


async def test_publish_qos1_acknowledged_and_delivered(broker: EmbeddedBroker) -> None:
    publisher = PahoClient(broker.port, "qos1-publisher")
    try:
        async with v5_client(broker) as subscriber:
            assert await publisher.connect() == 0
            info = publisher.client.publish("orders/1", b"nobody listens", qos=1)
            assert await publisher.wait(publisher.acks) == (info.mid, 0x10)
            await subscriber.subscribe("orders/#", qos=1)
            info = publisher.client.publish("orders/2", b"paid", qos=1)
            assert await publisher.wait(publisher.acks) == (info.mid, 0x00)
            message = await next_message(subscriber)
    finally:
        publisher.close()
    assert message.payload == b"paid"
    assert message.qos == 1


async def test_publish_qos2_delivered_at_qos1(broker: EmbeddedBroker) -> None:
    publisher = PahoClient(broker.port, "qos2-publisher")
    try:
        assert await publisher.connect() == 0
        publisher.client.subscribe("exact/once", qos=2)
        assert await publisher.wait(publisher.subacks) == [1]  # granted QoS 1
        info = publisher.client.publish("exact/once", b"once", qos=2)
        assert await publisher.wait(publisher.acks) == (info.mid, 0x00)  # PUBCOMP
        message = await publisher.wait(publisher.messages)
    finally:
        publisher.close()
    assert message.payload == b"once"
    assert message.qos == 1


async def test_qos2_resend_delivered_once(broker: EmbeddedBroker) -> None:
    pubrel_5 = packet(0x62, b"\x00\x05")
    async with (
        v5_client(broker) as subscriber,
        raw_client(broker, connect_packet()) as (reader, writer),
    ):
        await subscriber.subscribe("twice/#", qos=1)
        publish = publish_packet(b"twice/x", b"one", qos=2, packet_id=5)
        writer.write(publish)
        first_pubrec = await read_packet(reader)
        writer.write(b"\x3c" + publish[1:])  # the same PUBLISH with DUP set
        second_pubrec = await read_packet(reader)
        writer.write(pubrel_5)
        pubcomp = await read_packet(reader)
        writer.write(pubrel_5)
        unknown_pubcomp = await read_packet(reader)
        await subscriber.publish("twice/sentinel", b"next")
        received = [(await next_message(subscriber)).payload for _ in range(2)]
    assert first_pubrec == b"\x50\x02\x00\x05"
    assert second_pubrec == b"\x50\x02\x00\x05"
    assert pubcomp == b"\x70\x02\x00\x05"
    assert unknown_pubcomp == b"\x70\x04\x00\x05\x92\x00"
    assert received == [b"one", b"next"]


async def test_unsubscribe_stops_delivery(broker: EmbeddedBroker) -> None:
    async with (
        v5_client(broker) as publisher,
        raw_client(broker, connect_packet()) as (reader, writer),
    ):
        writer.write(subscribe_packet(b"news/#", 0x00))
        await read_packet(reader)
        body = b"\x00\x09\x00" + b"\x00\x06news/#" + b"\x00\x07never/x"
        writer.write(packet(0xA2, body))
        unsuback = await read_packet(reader)
        # The broker routes a QoS 1 message before it sends the PUBACK.
        await publisher.publish("news/today", b"unseen", qos=1)
        writer.write(PINGREQ)
        after = await read_packet(reader)
    assert unsuback == b"\xb0\x05\x00\x09\x00\x00\x11"
    assert after == PINGRESP


async def test_qos1_window_waits_for_puback(broker: EmbeddedBroker) -> None:
    receive_maximum_1 = connect_packet(properties=b"\x21\x00\x01")
    async with (
        raw_client(broker, receive_maximum_1) as (reader, writer),
        v5_client(broker) as publisher,
    ):
        writer.write(subscribe_packet(b"flow/#", 0x01))
        assert (await read_packet(reader))[0] == 0x90  # SUBACK
        await publisher.publish("flow/1", b"one", qos=1)
        await publisher.publish("flow/2", b"two", qos=1)
        first = await read_packet(reader)
        writer.write(PINGREQ)
        assert await read_packet(reader) == PINGRESP  # flow/2 is held back
        writer.write(packet(0x40, first[10:12]))  # PUBACK for flow/1's packet id
        second = await read_packet(reader)
    assert first.endswith(b"one")
    assert second.endswith(b"two")
    assert second[0] == 0x32  # PUBLISH QoS 1


async def test_slow_client_dropped_with_quota_exceeded(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mqtt_connection, "_OUTBOX_LIMIT", 5)
    receive_maximum_1 = connect_packet(properties=b"\x21\x00\x01")
    async with (
        raw_client(broker, receive_maximum_1) as (reader, writer),
        v5_client(broker) as publisher,
    ):
        writer.write(subscribe_packet(b"flood", 0x01))
        await read_packet(reader)
        for index in range(7):  # 1 in flight, 5 queued, the 7th overflows
            await publisher.publish("flood", str(index).encode(), qos=1)
        first = await read_packet(reader)
        rest = await read_to_end(reader)
    assert first.endswith(b"0")
    assert rest == disconnect_packet(0x97)


async def test_retained_set_replace_clear(broker: EmbeddedBroker) -> None:
    async with v5_client(broker) as publisher:
        await publisher.publish("menu/today", b"soup", qos=1, retain=True)
        await publisher.publish("menu/today", b"pasta", qos=1, retain=True)
        async with v5_client(broker) as first:
            await first.subscribe("menu/#")
            replaced = await next_message(first)
        await publisher.publish("menu/today", b"", qos=1, retain=True)
        async with v5_client(broker) as second:
            await second.subscribe("menu/#")
            await publisher.publish("menu/sentinel", b"live")
            after_clear = await next_message(second)
    assert replaced.payload == b"pasta"
    assert replaced.retain
    assert after_clear.payload == b"live"
    assert not after_clear.retain


async def test_retain_handling_and_no_local(broker: EmbeddedBroker) -> None:
    async with v5_client(broker) as client, v5_client(broker) as other:
        await client.publish("state/lamp", b"on", qos=1, retain=True)
        never_retained = SubscribeOptions(qos=1, noLocal=True, retainHandling=2)
        await client.subscribe("state/#", options=never_retained)
        await client.publish("state/lamp", b"own", qos=1)
        await other.publish("state/lamp", b"other", qos=1, retain=True)
        message = await next_message(client)
    assert message.payload == b"other"
    assert not message.retain  # Retain As Published was not requested


async def test_request_response_properties_forwarded(broker: EmbeddedBroker) -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "replies/kiosk-1"
    properties.CorrelationData = b"\x00\x01request-7"
    properties.UserProperty = [("b", "2"), ("a", "1"), ("b", "3")]
    properties.ContentType = "application/json"
    properties.PayloadFormatIndicator = 1
    properties.MessageExpiryInterval = 60
    async with v5_client(broker) as responder, v5_client(broker) as requester:
        await responder.subscribe("requests/#")
        await requester.publish("requests/price", b"{}", properties=properties)
        received = (await next_message(responder)).properties
    assert received is not None
    assert received.ResponseTopic == "replies/kiosk-1"
    assert received.CorrelationData == b"\x00\x01request-7"
    assert received.UserProperty == [("b", "2"), ("a", "1"), ("b", "3")]
    assert received.ContentType == "application/json"
    assert received.PayloadFormatIndicator == 1
    assert 59 <= received.MessageExpiryInterval <= 60
    assert not hasattr(received, "TopicAlias")


async def test_topic_alias_resolved(broker: EmbeddedBroker) -> None:
    async with (
        v5_client(broker) as subscriber,
        raw_client(broker, connect_packet()) as (reader, writer),
    ):
        await subscriber.subscribe("alias/#")
        alias_3 = b"\x23\x00\x03"
        writer.write(publish_packet(b"alias/long/topic", b"first", props=alias_3))
        writer.write(publish_packet(b"", b"second", props=alias_3))
        first = await next_message(subscriber)
        second = await next_message(subscriber)
        writer.write(publish_packet(b"", b"third", props=b"\x23\x00\x0b"))  # alias 11
        closing = await read_to_end(reader)
    assert first.topic.value == "alias/long/topic"
    assert second.topic.value == "alias/long/topic"
    assert second.payload == b"second"
    assert closing == disconnect_packet(0x94)


async def test_will_published_on_dropped_socket(broker: EmbeddedBroker) -> None:
    async with v5_client(broker) as watcher:
        await watcher.subscribe("status/#")
        will = (b"status/reader-1", b"offline")
        async with raw_client(broker, connect_packet(b"reader-1", will=will)) as (
            _,
            writer,
        ):
            writer.transport.abort()
        message = await next_message(watcher)
    assert message.topic.value == "status/reader-1"
    assert message.payload == b"offline"


async def test_will_skipped_on_clean_disconnect(broker: EmbeddedBroker) -> None:
    async with v5_client(broker) as watcher:
        await watcher.subscribe("status/#")
        will = (b"status/reader-2", b"offline")
        async with raw_client(broker, connect_packet(b"reader-2", will=will)) as (
            reader,
            writer,
        ):
            writer.write(DISCONNECT_NORMAL)
            assert await read_to_end(reader) == b""
        async with v5_client(broker) as publisher:
            await publisher.publish("status/sentinel", b"still here")
        message = await next_message(watcher)
    assert message.payload == b"still here"


POLICY = AccessPolicy(
    {
        "monitor": [AclRule(Access.READ, "#")],
        "kiosk": [AclRule(Access.READWRITE, "events/#")],
    }
)


async def test_acl_denied_publish_not_delivered() -> None:
    async with EmbeddedBroker(policy=POLICY) as broker:
        kiosk = PahoClient(broker.port, "kiosk-1", username="kiosk", password="")
        try:
            async with v5_client(broker, username="monitor") as monitor:
                await monitor.subscribe("#")
                assert await kiosk.connect() == 0
                denied = kiosk.client.publish("admin/reset", b"now", qos=1)
                assert await kiosk.wait(kiosk.acks) == (denied.mid, 0x87)
                allowed = kiosk.client.publish("events/door", b"open", qos=1)
                assert await kiosk.wait(kiosk.acks) == (allowed.mid, 0x00)
                message = await next_message(monitor)
        finally:
            kiosk.close()
        assert message.topic.value == "events/door"
        assert broker.stats.denied_publishes == 1


async def test_acl_denied_subscription_gets_0x87() -> None:
    async with EmbeddedBroker(policy=POLICY) as broker:
        kiosk = PahoClient(broker.port, "kiosk-2", username="kiosk", password="")
        try:
            assert await kiosk.connect() == 0
            kiosk.client.subscribe([("admin/#", 1), ("events/+", 2)])
            reasons = await kiosk.wait(kiosk.subacks)
        finally:
            kiosk.close()
        assert reasons == [0x87, 0x01]
        assert broker.stats.denied_subscriptions == 1


async def test_subscribe_invalid_filter_gets_0x8f(broker: EmbeddedBroker) -> None:
    async with raw_client(broker, connect_packet()) as (reader, writer):
        writer.write(subscribe_packet(b"bad/#/x", 0x01, packet_id=7))
        suback = await read_packet(reader)
    assert suback == b"\x90\x04\x00\x07\x00\x8f"


async def test_session_takeover_disconnects_first(broker: EmbeddedBroker) -> None:
    first = PahoClient(broker.port, "till-1")
    second = PahoClient(broker.port, "till-1")
    try:
        assert await first.connect() == 0
        first.client.reconnect_delay_set(60, 60)  # stay down after the takeover
        assert await second.connect() == 0
        reason = await first.wait(first.disconnects)
        second.client.subscribe("till/#", qos=1)
        assert await second.wait(second.subacks) == [1]
    finally:
        first.close()
        second.close()
    assert reason == 0x8E
    assert broker.stats.connections == 2


CONNACK_MALFORMED = b"\x20\x03\x00\x81\x00"


@pytest.mark.parametrize(
    ("first_bytes", "reply", "malformed", "rejected"),
    [
        pytest.param(b"\xff\xff\xff\xff\xff", b"", 1, 0, id="garbage"),
        pytest.param(b"\x10\xff\xff\xff\x7f", b"", 1, 0, id="oversize-connect"),
        pytest.param(PINGREQ, b"", 1, 0, id="pingreq-before-connect"),
        pytest.param(b"\x10\x04\x00\x04MQ", CONNACK_MALFORMED, 1, 1, id="truncated"),
        pytest.param(
            connect_packet(b"\xc3\x28"), CONNACK_MALFORMED, 1, 1, id="bad-utf8"
        ),
        pytest.param(
            connect_packet(level=4), b"\x20\x02\x00\x01", 0, 1, id="mqtt-3.1.1"
        ),
        pytest.param(
            connect_packet(level=6), b"\x20\x03\x00\x84\x00", 0, 1, id="level-6"
        ),
    ],
)
async def test_bad_connect_closes_only_that_client(
    broker: EmbeddedBroker,
    first_bytes: bytes,
    reply: bytes,
    malformed: int,
    rejected: int,
) -> None:
    async with v5_client(broker) as bystander:
        await bystander.subscribe("still/working")
        async with raw_client(broker) as (reader, writer):
            writer.write(first_bytes)
            received = await read_to_end(reader)
        await bystander.publish("still/working", b"yes")
        message = await next_message(bystander)
    assert received == reply
    assert message.payload == b"yes"
    assert broker.stats.malformed_packets == malformed
    assert broker.stats.rejected_connections == rejected


@pytest.mark.parametrize(
    ("bad_packet", "reason"),
    [
        pytest.param(b"\x30\xff\xff\xff\x7f", 0x95, id="oversize-remaining-length"),
        pytest.param(b"\x30\xff\xff\xff\xff\x01", 0x81, id="remaining-length-5-bytes"),
        pytest.param(publish_packet(b"\xff\xfe", b"x"), 0x81, id="bad-utf8-topic"),
        pytest.param(
            publish_packet(b"a", b"x", props=b"\x7f\x00"), 0x81, id="bad-prop"
        ),
        pytest.param(publish_packet(b"a/#", b"x"), 0x90, id="wildcard-topic"),
        pytest.param(b"\x00\x00", 0x82, id="packet-type-0"),
        pytest.param(b"\x82\x03\x00\x01\x00", 0x82, id="subscribe-without-filter"),
        pytest.param(connect_packet(), 0x82, id="second-connect"),
    ],
)
async def test_malformed_packet_disconnects_client(
    broker: EmbeddedBroker, bad_packet: bytes, reason: int
) -> None:
    async with raw_client(broker, connect_packet(b"sender")) as (reader, writer):
        writer.write(bad_packet)
        received = await read_to_end(reader)
    async with v5_client(broker) as bystander:
        await bystander.subscribe("still/working")
        await bystander.publish("still/working", b"yes")
        message = await next_message(bystander)
    assert received == disconnect_packet(reason)
    assert broker.stats.malformed_packets == 1
    assert message.payload == b"yes"


async def test_keep_alive_timeout_closes_client(broker: EmbeddedBroker) -> None:
    async with raw_client(broker, connect_packet(keep_alive_s=1)) as (reader, _):
        started = time.monotonic()
        received = await read_to_end(reader)
        elapsed_s = time.monotonic() - started
    assert received == disconnect_packet(0x8D)
    assert 1.4 <= elapsed_s <= 3.0


async def test_connect_timeout_closes_silent_socket(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mqtt_connection, "_CONNECT_TIMEOUT_S", 0.2)
    async with raw_client(broker) as (reader, _):
        received = await read_to_end(reader)
    assert received == b""
    assert broker.stats.rejected_connections == 1


async def test_stop_with_clients_is_prompt() -> None:
    broker = EmbeddedBroker()
    await broker.start()
    async with (
        raw_client(broker, connect_packet(b"idle")) as (reader, writer),
        v5_client(broker) as client,
    ):
        writer.write(b"\x30\x10\x00")  # the start of a PUBLISH, never finished
        await client.subscribe("any/#")
        started = time.monotonic()
        async with asyncio.timeout(TIMEOUT_S):
            await broker.stop()
        elapsed_s = time.monotonic() - started
        received = await read_to_end(reader)
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(TIMEOUT_S):
                await anext(client.messages)
    assert elapsed_s < 1.0
    assert received == b""  # stop() sends no DISCONNECT


async def test_burst_qos1_arrives_in_order(broker: EmbeddedBroker) -> None:
    count = 2000
    async with v5_client(broker) as subscriber, v5_client(broker) as publisher:
        await subscriber.subscribe("burst", qos=1)
        for index in range(count):
            await publisher.publish("burst", str(index).encode(), qos=1)
        received = [int((await next_message(subscriber)).payload) for _ in range(count)]
    assert received == list(range(count))
    assert broker.stats.messages_out == count
