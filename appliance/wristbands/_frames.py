"""Decoded frames, and the iBeacon and AltBeacon manufacturer data layouts.

Every frame is a frozen dataclass whose field names carry their units.
Powers are signed dBm as sent, never corrected: the identity layer decides
what an impossible power means.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ._adverts import byte_count

APPLE_COMPANY_ID = 0x004C
# iBeacon: Apple manufacturer data type 0x02, then 0x15 (21) more bytes of
# UUID, major and minor (big-endian) and measured power at 1 m (int8).
_IBEACON_PREFIX = b"\x02\x15"
_IBEACON_LENGTH = 23
_IBEACON_FIELDS = struct.Struct(">16sHHb")
# AltBeacon (AltBeacon spec 1.0): after the company id, the beacon code 0xBEAC
# big-endian, a 20-byte beacon id, reference RSSI at 1 m (int8) and one byte
# reserved for the manufacturer.
ALTBEACON_CODE = b"\xbe\xac"
_ALTBEACON_LENGTH = 24
_ALTBEACON_FIELDS = struct.Struct(">20sbB")


@dataclass(frozen=True, slots=True)
class IBeacon:
    """An Apple iBeacon: proximity UUID, major, minor and power at 1 m."""

    FORMAT: ClassVar[str] = "ibeacon"

    uuid: bytes
    major: int
    minor: int
    measured_power_dbm: int


@dataclass(frozen=True, slots=True)
class AltBeacon:
    """An AltBeacon: 20-byte beacon id and reference RSSI at 1 m."""

    FORMAT: ClassVar[str] = "altbeacon"

    beacon_id: bytes
    manufacturer_id: int
    reference_rssi_dbm: int
    manufacturer_reserved: int


@dataclass(frozen=True, slots=True)
class EddystoneUid:
    """An Eddystone-UID frame: 10-byte namespace, 6-byte instance, power at 0 m."""

    FORMAT: ClassVar[str] = "eddystone-uid"

    namespace: bytes
    instance: bytes
    tx_power_dbm: int


@dataclass(frozen=True, slots=True)
class EddystoneEid:
    """An Eddystone-EID frame: 8-byte ephemeral id and power at 0 m."""

    FORMAT: ClassVar[str] = "eddystone-eid"

    eid: bytes
    tx_power_dbm: int


@dataclass(frozen=True, slots=True)
class EddystoneTlm:
    """An unencrypted Eddystone-TLM frame (version 0x00).

    ``battery_mv`` is 0 when the beacon does not measure it and
    ``temperature_c`` is None when it sent 0x8000 (not supported), as the
    Eddystone TLM spec defines. ``sec_cnt`` is the raw time-since-boot
    counter in 0.1 s units and ``uptime_s`` the same time in seconds.
    """

    FORMAT: ClassVar[str] = "eddystone-tlm"

    battery_mv: int
    temperature_c: float | None
    advertising_count: int
    uptime_s: float
    sec_cnt: int


@dataclass(frozen=True, slots=True)
class EddystoneEtlm:
    """An encrypted Eddystone-TLM frame (version 0x01), still encrypted.

    ``salt`` and ``mic`` are read big-endian, as the Eddystone eTLM spec
    states for all multi-byte values.
    """

    FORMAT: ClassVar[str] = "eddystone-etlm"

    encrypted: bytes
    salt: int
    mic: int


@dataclass(frozen=True, slots=True)
class EddystoneUrl:
    """An Eddystone-URL frame: the expanded URL and power at 0 m."""

    FORMAT: ClassVar[str] = "eddystone-url"

    url: str
    tx_power_dbm: int


@dataclass(frozen=True, slots=True)
class ForeignTag:
    """A vendor frame that is not a wristband format, such as a sensor tag.

    ``fields`` contains JSON-ready values named with their units. Decoded
    adverts may be shared through a cache, so callers must not change it.
    """

    FORMAT: ClassVar[str] = "foreign"

    model: str
    fields: dict[str, Any]


Frame = (
    IBeacon
    | AltBeacon
    | EddystoneUid
    | EddystoneEid
    | EddystoneTlm
    | EddystoneEtlm
    | EddystoneUrl
    | ForeignTag
)


def frame_to_json(frame: Frame) -> dict[str, Any]:
    """Convert a frame to a JSON-ready dict with a ``format`` key.

    Bytes become lowercase hex strings, and every other value is kept.
    """
    result: dict[str, Any] = {"format": frame.FORMAT}
    for field in fields(frame):
        value = getattr(frame, field.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, dict):
            value = dict(value)
        result[field.name] = value
    return result


def decode_ibeacon(payload: bytes, problems: list[str]) -> IBeacon | str:
    """Decode Apple manufacturer data (after the company id) as an iBeacon.

    Returns the frame, or a reason naming the value when it is not one.
    Extra bytes after the measured power are reported in ``problems``.
    """
    if payload[:2] != _IBEACON_PREFIX:
        if not payload:
            return "Apple manufacturer data is empty, so it is not an iBeacon"
        if payload[0] != _IBEACON_PREFIX[0]:
            return (
                f"Apple manufacturer data type 0x{payload[0]:02X} is not an iBeacon "
                "(iBeacon data starts with 0x02 0x15)"
            )
        length = f"0x{payload[1]:02X}" if len(payload) > 1 else "missing"
        return f"iBeacon length byte is {length}, expected 0x15"
    if len(payload) < _IBEACON_LENGTH:
        return (
            f"iBeacon data is {byte_count(len(payload))}, expected {_IBEACON_LENGTH} "
            "(type, length, UUID, major, minor, measured power)"
        )
    if len(payload) > _IBEACON_LENGTH:
        problems.append(
            f"iBeacon data is {byte_count(len(payload))}, longer than its "
            f"{_IBEACON_LENGTH}; the bytes after the measured power were ignored"
        )
    uuid, major, minor, power = _IBEACON_FIELDS.unpack_from(payload, 2)
    return IBeacon(uuid, major, minor, power)


def decode_altbeacon(
    company_id: int, payload: bytes, problems: list[str]
) -> AltBeacon | str:
    """Decode manufacturer data (after the company id) as an AltBeacon.

    Any company id may send an AltBeacon. A frame missing only the final
    reserved byte is accepted with ``manufacturer_reserved`` 0 and a
    problem, because its identity and reference RSSI are complete. Returns
    the frame, or a reason naming the value when it is not one.
    """
    if payload[:2] != ALTBEACON_CODE:
        return (
            f"manufacturer data for company 0x{company_id:04X} does not start "
            "with the AltBeacon code 0xBEAC"
        )
    if len(payload) < _ALTBEACON_LENGTH - 1:
        size = byte_count(len(payload))
        return (
            f"AltBeacon data for company 0x{company_id:04X} is {size} after the "
            f"company id, expected {_ALTBEACON_LENGTH} (beacon code, 20-byte beacon "
            "id, reference RSSI, reserved byte)"
        )
    if len(payload) == _ALTBEACON_LENGTH - 1:
        problems.append("AltBeacon has no manufacturer reserved byte; reported it as 0")
        payload += b"\x00"
    elif len(payload) > _ALTBEACON_LENGTH:
        problems.append(
            f"AltBeacon data is {byte_count(len(payload))} after the company id, "
            f"longer than its {_ALTBEACON_LENGTH}; the rest was ignored"
        )
    beacon_id, reference_rssi, reserved = _ALTBEACON_FIELDS.unpack_from(payload, 2)
    return AltBeacon(beacon_id, company_id, reference_rssi, reserved)
