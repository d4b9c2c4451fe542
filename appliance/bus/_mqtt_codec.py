"""MQTT 5.0 packet decoding for the embedded broker.

Only the server side is covered: decoders for the packets a client sends. The
encoders for the packets a server sends, the packet types and the reason codes
are in :mod:`appliance.bus._mqtt_encode`. Section numbers refer to the OASIS
MQTT Version 5.0 standard of 7 March 2019.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import IntEnum

from appliance.bus._mqtt_encode import (
    _PROPERTY_TYPES,
    Properties,
    PropertyValue,
    ReasonCode,
    encode_connack,
    encode_properties,
)

# The property identifiers that this module or the broker names (2.2.2.2).
PropertyId = IntEnum(
    "PropertyId",
    {
        "MESSAGE_EXPIRY_INTERVAL": 0x02, "RESPONSE_TOPIC": 0x08,
        "SUBSCRIPTION_IDENTIFIER": 0x0B, "SESSION_EXPIRY_INTERVAL": 0x11,
        "ASSIGNED_CLIENT_IDENTIFIER": 0x12, "AUTHENTICATION_METHOD": 0x15,
        "WILL_DELAY_INTERVAL": 0x18, "RECEIVE_MAXIMUM": 0x21,
        "TOPIC_ALIAS_MAXIMUM": 0x22, "TOPIC_ALIAS": 0x23,
        "MAXIMUM_PACKET_SIZE": 0x27, "SUBSCRIPTION_IDENTIFIER_AVAILABLE": 0x29,
        "SHARED_SUBSCRIPTION_AVAILABLE": 0x2A,
    },
)  # fmt: skip


# Properties a client may put in each packet. Any other identifier makes the
# packet malformed, and only these two may repeat (2.2.2.2).
_CONNECT_PROPERTIES = frozenset({0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27})
_WILL_PROPERTIES = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26})
_PUBLISH_PROPERTIES = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26})
_ACK_PROPERTIES = frozenset({0x1F, 0x26})
_SUBSCRIBE_PROPERTIES = frozenset({0x0B, 0x26})
_UNSUBSCRIBE_PROPERTIES = frozenset({0x26})
_DISCONNECT_PROPERTIES = frozenset({0x11, 0x1C, 0x1F, 0x26})
_REPEATABLE_PROPERTIES = frozenset({0x0B, 0x26})

# Fixed header flags of PUBREL, SUBSCRIBE and UNSUBSCRIBE. All other packets
# except PUBLISH have the four flag bits 0 (2.1.3).
_REQUIRED_FLAGS = {6: 0b0010, 8: 0b0010, 10: 0b0010}

# A CONNACK in the MQTT 3.1.1 layout with return code 0x01 "unacceptable
# protocol version" (MQTT 3.1.1 section 3.2.2.3). MQTT 3.1 and 3.1.1 clients
# can parse it, unlike an MQTT 5 CONNACK with reason code 0x84.
_CONNACK_V311_UNACCEPTABLE_VERSION = b"\x20\x02\x00\x01"


class PacketError(ValueError):
    """A packet that breaks MQTT 5, with the reason code for CONNACK or DISCONNECT."""

    def __init__(self, reason_code: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class UnsupportedProtocolError(PacketError):
    """A CONNECT of another protocol, with the CONNACK to send in ``reply`` or None."""

    def __init__(self, message: str, reply: bytes | None) -> None:
        super().__init__(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, message)
        self.reply = reply


def malformed(message: str) -> PacketError:
    """Return a PacketError with reason 0x81 Malformed Packet."""
    return PacketError(ReasonCode.MALFORMED_PACKET, message)


def protocol_error(message: str) -> PacketError:
    """Return a PacketError with reason 0x82 Protocol Error."""
    return PacketError(ReasonCode.PROTOCOL_ERROR, message)


@dataclass(slots=True, eq=False)
class Publish:
    """An application message from a PUBLISH or from the will of a CONNECT.

    ``properties`` are the ones a server forwards (3.3.2.3), so they exclude
    the Topic Alias and the Will Delay Interval.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    packet_id: int | None = None
    topic_alias: int | None = None
    publisher: str = ""  # client id of the sender, for No Local
    expires_at: float | None = None  # time.monotonic() when the message expires
    _encoded: bytes | None = field(default=None, repr=False)

    def encoded_properties(self) -> bytes | None:
        """Encode the properties to forward, or return None once expired."""
        if self.expires_at is None:
            if self._encoded is None:
                self._encoded = encode_properties(self.properties)
            return self._encoded
        remaining_s = math.ceil(self.expires_at - time.monotonic())
        if remaining_s <= 0:
            return None
        # 3.3.2.3.3: forward the interval minus the time spent in the broker.
        expiry = PropertyId.MESSAGE_EXPIRY_INTERVAL
        forwarded = [(k, remaining_s if k == expiry else v) for k, v in self.properties]
        return encode_properties(forwarded)

    def apply_properties(self, properties: Properties) -> None:
        """Store the properties to forward, extract the Topic Alias, start expiry."""
        for key, value in properties:
            if key == PropertyId.TOPIC_ALIAS and isinstance(value, int):
                self.topic_alias = value
            elif key == PropertyId.SUBSCRIPTION_IDENTIFIER:
                # 3.3.4: only a server sends Subscription Identifiers.
                raise protocol_error(
                    "Subscription Identifier in a PUBLISH from a client"
                )
            elif key != PropertyId.WILL_DELAY_INTERVAL:
                if key == PropertyId.RESPONSE_TOPIC:
                    validate_topic_name(str(value))  # 3.3.2.3.5
                if key == PropertyId.MESSAGE_EXPIRY_INTERVAL and isinstance(value, int):
                    self.expires_at = time.monotonic() + value
                self.properties.append((key, value))


@dataclass(slots=True)
class Connect:
    """A decoded MQTT 5 CONNECT packet (3.1) and the limits it sets."""

    clean_start: bool
    keep_alive_s: int
    properties: Properties
    client_id: str
    will: Publish | None = None
    username: str | None = None
    password: bytes | None = None
    receive_maximum: int = 65535  # 3.1.2.11.3
    max_packet_size: int | None = None  # 3.1.2.11.4


@dataclass(slots=True)
class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE with its Subscription Options (3.8.3.1)."""

    topic_filter: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int


def property_value(properties: Properties, property_id: int) -> PropertyValue | None:
    """Return the first value of ``property_id`` in ``properties``, or None."""
    return next((value for key, value in properties if key == property_id), None)


class _Reader:
    """A cursor over a packet body. Reading past the end raises PacketError."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def at_end(self) -> bool:
        return self._position >= len(self._data)

    def take(self, size: int) -> bytes:
        end = self._position + size
        if end > len(self._data):
            raise malformed("packet ends inside a field")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._position)

    def integer(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        # 1.5.5: at most four bytes of seven value bits each.
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise malformed("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.integer(2))

    def string(self) -> str:
        # 1.5.4: ill-formed UTF-8 and U+0000 make the packet malformed.
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as err:
            raise malformed(f"invalid UTF-8 string: {err}") from err
        if "\x00" in text:
            raise malformed("string contains U+0000")
        return text

    def properties(self, allowed: frozenset[int]) -> Properties:
        end = self.varint() + self._position
        found: Properties = []
        while self._position < end:
            key = self.varint()
            if key not in allowed:
                raise malformed(f"property 0x{key:02X} is not valid in this packet")
            if key not in _REPEATABLE_PROPERTIES and any(k == key for k, _ in found):
                raise protocol_error(f"property 0x{key:02X} appears twice")
            found.append((key, self._property_value(_PROPERTY_TYPES[key])))
        if self._position != end:
            raise malformed("properties overrun the property length")
        return found

    def _property_value(self, kind: int | str) -> PropertyValue:
        if isinstance(kind, int):
            return self.integer(kind)
        if kind == "v":
            return self.varint()
        if kind == "s":
            return self.string()
        if kind == "b":
            return self.binary()
        return (self.string(), self.string())


def split_packet(
    buffer: bytearray, start: int, max_packet_size: int
) -> tuple[int, int] | None:
    """Return where the body of the packet at ``start`` begins and ends.

    Returns None while the packet is incomplete. Raises PacketError for a
    Remaining Length over four bytes (1.5.5) or a packet larger than
    ``max_packet_size`` (3.1.2.11.4, reason 0x95) as soon as the fixed header
    shows it, before the body arrives.
    """
    remaining = 0
    index = start + 1
    for shift in (0, 7, 14, 21):
        if index >= len(buffer):
            return None
        byte = buffer[index]
        index += 1
        remaining |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
    else:
        raise malformed("remaining length longer than 4 bytes")
    end = index + remaining
    if end - start > max_packet_size:
        raise PacketError(
            ReasonCode.PACKET_TOO_LARGE,
            f"packet of {end - start} bytes exceeds the maximum of {max_packet_size}",
        )
    return (index, end) if end <= len(buffer) else None


def check_fixed_header(first: int, body: bytes = b"", *, empty: bool = False) -> None:
    """Raise PacketError unless the flags of a non-PUBLISH packet are valid (2.1.3).

    With ``empty`` the body must be empty too, as for PINGREQ (3.12).
    """
    if first & 0x0F != _REQUIRED_FLAGS.get(first >> 4, 0):
        raise malformed(f"invalid fixed header flags in 0x{first:02X}")
    if empty and body:
        raise malformed(f"packet 0x{first:02X} must have no body")


def decode_connect(first: int, body: bytes) -> Connect:
    """Decode a CONNECT (3.1), raising UnsupportedProtocolError unless it is MQTT 5."""
    check_fixed_header(first)
    reader = _Reader(body)
    protocol_name = reader.string()
    level = reader.take(1)[0]
    if protocol_name not in ("MQTT", "MQIsdp"):
        # 3.1.2.1: another protocol, so close without a reply.
        raise UnsupportedProtocolError(f"unknown protocol {protocol_name!r}", None)
    if protocol_name == "MQIsdp" or level in (3, 4):
        raise UnsupportedProtocolError(
            f"MQTT 3.1 or 3.1.1 (protocol level {level}) is not supported",
            _CONNACK_V311_UNACCEPTABLE_VERSION,
        )
    if level != 5:
        # 3.1.2.2: reply CONNACK 0x84, then close.
        reply = encode_connack(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
        raise UnsupportedProtocolError(f"unknown protocol level {level}", reply)

    flags = reader.take(1)[0]
    will_qos = (flags >> 3) & 0x03
    if flags & 0x01:
        raise malformed("reserved CONNECT flag is set")
    if will_qos == 3 or (not flags & 0x04 and flags & 0x38):
        # 3.1.2.6 and 3.1.2.7: will QoS and will retain need the will flag.
        raise malformed(f"invalid will flags in 0x{flags:02X}")
    connect = Connect(
        clean_start=bool(flags & 0x02),
        keep_alive_s=reader.integer(2),
        properties=reader.properties(_CONNECT_PROPERTIES),
        client_id=reader.string(),
    )
    for key, value in connect.properties:
        if value == 0 and key in (
            PropertyId.RECEIVE_MAXIMUM,
            PropertyId.MAXIMUM_PACKET_SIZE,
        ):
            raise protocol_error(f"property 0x{key:02X} is 0")  # 3.1.2.11.3, 3.1.2.11.4
        if key == PropertyId.RECEIVE_MAXIMUM and isinstance(value, int):
            connect.receive_maximum = value
        elif key == PropertyId.MAXIMUM_PACKET_SIZE and isinstance(value, int):
            connect.max_packet_size = value
    if flags & 0x04:
        properties = reader.properties(_WILL_PROPERTIES)
        topic = validate_topic_name(reader.string())
        will = Publish(topic, reader.binary(), will_qos, bool(flags & 0x20), [])
        will.apply_properties(properties)
        connect.will = will
    if flags & 0x80:
        connect.username = reader.string()
    if flags & 0x40:
        connect.password = reader.binary()
    if not reader.at_end():
        raise malformed("bytes after the end of the CONNECT payload")
    return connect


def validate_topic_name(topic: str) -> str:
    """Return ``topic``, or raise PacketError 0x90 if it has a wildcard (3.3.2.1)."""
    if "+" in topic or "#" in topic:
        raise PacketError(
            ReasonCode.TOPIC_NAME_INVALID, f"topic name {topic!r} contains a wildcard"
        )
    return topic


def decode_publish(first: int, body: bytes) -> Publish:
    """Decode a PUBLISH from a client (3.3)."""
    qos = (first >> 1) & 0x03
    if qos == 3 or (qos == 0 and first & 0x08):
        # 3.3.1.1 and 3.3.1.2: QoS 3 is malformed, and DUP needs QoS 1 or 2.
        raise malformed(f"invalid PUBLISH flags in 0x{first:02X}")
    reader = _Reader(body)
    publish = Publish(
        validate_topic_name(reader.string()), b"", qos, first & 1 == 1, []
    )
    if qos:
        publish.packet_id = reader.integer(2)
        if not publish.packet_id:
            raise malformed("packet identifier 0")  # 2.2.1
    publish.apply_properties(reader.properties(_PUBLISH_PROPERTIES))
    publish.payload = reader.rest()
    return publish


def decode_ack(first: int, body: bytes) -> int:
    """Decode PUBACK, PUBREC, PUBREL or PUBCOMP and return its packet id (3.4)."""
    check_fixed_header(first)
    reader = _Reader(body)
    packet_id = reader.integer(2)
    if not reader.at_end():
        reader.take(1)  # the reason code, which the broker does not act on
    if not reader.at_end():
        reader.properties(_ACK_PROPERTIES)
    return packet_id


def decode_subscribe(first: int, body: bytes) -> tuple[int, list[SubscriptionRequest]]:
    """Decode a SUBSCRIBE into its packet id and requests (3.8).

    This broker announces both Subscription Identifiers and Shared
    Subscriptions as unavailable, so either raises PacketError 0xA1 or 0x9E
    (3.2.2.3.12 and 3.2.2.3.13).
    """
    check_fixed_header(first)
    reader = _Reader(body)
    packet_id = reader.integer(2)
    if property_value(reader.properties(_SUBSCRIBE_PROPERTIES), 0x0B) is not None:
        raise PacketError(
            ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            "subscription identifiers are not supported",
        )
    requests = []
    while not reader.at_end():
        topic_filter = reader.string()
        options = reader.take(1)[0]
        if options & 0xC0 or options & 0x03 == 3:
            raise malformed(f"invalid subscription options 0x{options:02X}")
        if options & 0x30 == 0x30:
            raise protocol_error("retain handling 3")
        if topic_filter.startswith("$share/"):
            raise PacketError(
                ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                f"shared subscription {topic_filter!r} is not supported",
            )
        no_local, retain_as_published = bool(options & 0x04), bool(options & 0x08)
        requests.append(
            SubscriptionRequest(
                topic_filter, options & 3, no_local, retain_as_published, options >> 4
            )
        )
    if not requests:
        raise protocol_error("SUBSCRIBE without a topic filter")  # 3.8.3
    return packet_id, requests


def decode_unsubscribe(first: int, body: bytes) -> tuple[int, list[str]]:
    """Decode an UNSUBSCRIBE into its packet id and topic filters (3.10)."""
    check_fixed_header(first)
    reader = _Reader(body)
    packet_id = reader.integer(2)
    reader.properties(_UNSUBSCRIBE_PROPERTIES)
    filters = []
    while not reader.at_end():
        filters.append(reader.string())
    if not filters:
        raise protocol_error("UNSUBSCRIBE without a topic filter")  # 3.10.3
    return packet_id, filters


def decode_disconnect(first: int, body: bytes) -> int:
    """Decode a DISCONNECT and return its reason code, 0 when absent (3.14.2.1)."""
    check_fixed_header(first)
    reader = _Reader(body)
    reason = reader.take(1)[0] if body else ReasonCode.SUCCESS
    if not reader.at_end():
        reader.properties(_DISCONNECT_PROPERTIES)
    return reason
