"""Advert encoders for simulated wristbands, the inverse of the decoder.

Layouts: iBeacon (Apple company 0x004C, type 0x02, length 0x15), AltBeacon
(code 0xBEAC), and Eddystone frames in service data for UUID 0xFEAA
(UID 0x00, TLM 0x20, EID 0x30), each after a Flags structure as bands send.
"""

from __future__ import annotations

import struct

_FLAGS = bytes((0x02, 0x01, 0x06))
_EDDYSTONE_UUID_LIST = bytes((0x03, 0x03, 0xAA, 0xFE))


def ibeacon(uuid: bytes, major: int, minor: int, measured_power_dbm: int) -> bytes:
    """Return AD structures of an iBeacon advert."""
    payload = (
        b"\x4c\x00\x02\x15"
        + uuid
        + struct.pack(">HHb", major, minor, measured_power_dbm)
    )
    return _FLAGS + bytes((len(payload) + 1, 0xFF)) + payload


def altbeacon(company_id: int, beacon_id: bytes, reference_rssi_dbm: int) -> bytes:
    """Return AD structures of an AltBeacon advert (20-byte id, reserved byte 0)."""
    payload = (
        struct.pack("<H", company_id)
        + b"\xbe\xac"
        + beacon_id
        + struct.pack("b", reference_rssi_dbm)
        + b"\x00"
    )
    return _FLAGS + bytes((len(payload) + 1, 0xFF)) + payload


def _eddystone(frame: bytes) -> bytes:
    payload = b"\xaa\xfe" + frame
    return _FLAGS + _EDDYSTONE_UUID_LIST + bytes((len(payload) + 1, 0x16)) + payload


def eddystone_uid(namespace: bytes, instance: bytes, tx_power_dbm: int) -> bytes:
    """Return AD structures of an Eddystone-UID frame with its two RFU bytes."""
    return _eddystone(
        b"\x00" + struct.pack("b", tx_power_dbm) + namespace + instance + b"\x00\x00"
    )


def eddystone_eid(eid: bytes, tx_power_dbm: int) -> bytes:
    """Return AD structures of an Eddystone-EID frame."""
    return _eddystone(b"\x30" + struct.pack("b", tx_power_dbm) + eid)


def eddystone_tlm(
    battery_mv: int, temperature_c: float, count: int, uptime_s: float
) -> bytes:
    """Return AD structures of a plain Eddystone-TLM frame (version 0)."""
    temperature = round(temperature_c * 256)
    return _eddystone(
        b"\x20\x00"
        + struct.pack(">Hh", battery_mv, temperature)
        + struct.pack(">II", count & 0xFFFFFFFF, int(uptime_s * 10) & 0xFFFFFFFF)
    )
