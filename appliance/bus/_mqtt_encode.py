"""MQTT 5.0 packet encoders and shared protocol constants for the embedded broker.

This module encodes the packets a server sends (CONNACK, PUBLISH, PUBACK,
PUBREC, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT and PINGRESP) and the property
list of a packet. It also defines the packet types, the reason codes and the
data type of each property, which the decoders in
:mod:`appliance.bus._mqtt_codec` import from here. This module imports the
codec only for type checking, so the two modules form no import cycle. Section
numbers refer to the OASIS MQTT Version 5.0 standard of 7 March 2019.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.bus._mqtt_codec import Publish

PropertyValue = int | str | bytes | tuple[str, str]
Properties = list[tuple[int, PropertyValue]]

# Control packet types, the high nibble of the first byte, numbered from 1 (2.1.2).
PacketType = IntEnum(
    "PacketType",
    "CONNECT CONNACK PUBLISH PUBACK PUBREC PUBREL PUBCOMP SUBSCRIBE SUBACK"
    " UNSUBSCRIBE UNSUBACK PINGREQ PINGRESP DISCONNECT AUTH",
)


# The reason codes this broker sends or acts on (2.4).
ReasonCode = IntEnum(
    "ReasonCode",
    {
        "SUCCESS": 0x00, "NO_MATCHING_SUBSCRIBERS": 0x10,
        "NO_SUBSCRIPTION_EXISTED": 0x11, "MALFORMED_PACKET": 0x81,
        "PROTOCOL_ERROR": 0x82, "UNSUPPORTED_PROTOCOL_VERSION": 0x84,
        "BAD_USERNAME_OR_PASSWORD": 0x86, "NOT_AUTHORIZED": 0x87,
        "BAD_AUTHENTICATION_METHOD": 0x8C, "KEEP_ALIVE_TIMEOUT": 0x8D,
        "SESSION_TAKEN_OVER": 0x8E, "TOPIC_FILTER_INVALID": 0x8F,
        "TOPIC_NAME_INVALID": 0x90, "PACKET_ID_NOT_FOUND": 0x92,
        "RECEIVE_MAXIMUM_EXCEEDED": 0x93, "TOPIC_ALIAS_INVALID": 0x94,
        "PACKET_TOO_LARGE": 0x95, "QUOTA_EXCEEDED": 0x97,
        "SHARED_SUBSCRIPTIONS_NOT_SUPPORTED": 0x9E,
        "SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED": 0xA1,
    },
)  # fmt: skip

# Data type of every property in 2.2.2.2: the size in bytes of an integer,
# "v" variable byte integer, "s" UTF-8 string, "b" binary data, "p" string pair.
_PROPERTY_TYPES: dict[int, int | str] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "b", 0x0B: "v", 0x11: 4,
    0x12: "s", 0x13: 2, 0x15: "s", 0x16: "b", 0x17: 1, 0x18: 4, 0x19: 1,
    0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1,
    0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append((value & 0x7F) | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def encode_properties(properties: Properties) -> bytes:
    """Encode ``properties`` after their Property Length (2.2.2.1)."""
    parts: list[bytes] = []
    for key, value in properties:
        parts.append(_varint(key))
        size = _PROPERTY_TYPES[key]
        if isinstance(value, tuple):
            parts.append(_string(value[0]) + _string(value[1]))
        elif isinstance(value, str):
            parts.append(_string(value))
        elif isinstance(value, bytes):
            parts.append(len(value).to_bytes(2, "big") + value)
        elif isinstance(size, int):
            parts.append(value.to_bytes(size, "big"))
        else:
            parts.append(_varint(value))
    encoded = b"".join(parts)
    return _varint(len(encoded)) + encoded


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def encode_connack(
    session_present: bool, reason: ReasonCode, properties: Properties | None = None
) -> bytes:
    """Encode a CONNACK (3.2)."""
    body = bytes((session_present, reason)) + encode_properties(properties or [])
    return _packet(PacketType.CONNACK << 4, body)


def encode_publish(
    message: Publish, qos: int, retain: bool, packet_id: int | None, properties: bytes
) -> bytes:
    """Encode ``message`` with properties from encode_properties (3.3)."""
    header = _string(message.topic)
    if packet_id is not None:
        header += packet_id.to_bytes(2, "big")
    first = (PacketType.PUBLISH << 4) | (qos << 1) | retain
    return _packet(first, header + properties + message.payload)


def encode_ack(packet_type: PacketType, packet_id: int, reason: ReasonCode) -> bytes:
    """Encode PUBACK, PUBREC or PUBCOMP without properties (3.4, 3.5, 3.7)."""
    body = packet_id.to_bytes(2, "big")
    if reason != ReasonCode.SUCCESS:
        body += bytes((reason, 0))  # 3.4.2.1: only Success may be left out
    return _packet(packet_type << 4, body)


def encode_subscription_ack(
    packet_type: PacketType, packet_id: int, reasons: list[int]
) -> bytes:
    """Encode a SUBACK (3.9) or UNSUBACK (3.11) with one reason per topic filter."""
    body = packet_id.to_bytes(2, "big") + b"\x00" + bytes(reasons)
    return _packet(packet_type << 4, body)


def encode_disconnect(reason: ReasonCode) -> bytes:
    """Encode a DISCONNECT with ``reason`` and no properties (3.14)."""
    return _packet(PacketType.DISCONNECT << 4, bytes((reason, 0)))


PINGRESP = bytes((PacketType.PINGRESP << 4, 0))
