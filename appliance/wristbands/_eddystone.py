"""Eddystone frames in service data for UUID 0xFEAA.

Frame layouts follow the google/eddystone protocol specification: the first
byte is the frame type (0x00 UID, 0x10 URL, 0x20 TLM, 0x30 EID) and all
multi-byte values are big-endian. Tx power in UID, URL and EID frames is
the calibrated power at 0 m as a signed byte.
"""

from __future__ import annotations

import struct

from ._adverts import byte_count
from ._frames import (
    EddystoneEid,
    EddystoneEtlm,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
)

EDDYSTONE_UUID16 = 0xFEAA
FRAME_UID = 0x00
FRAME_URL = 0x10
FRAME_TLM = 0x20
FRAME_EID = 0x30
_TLM_PLAIN = 0x00
_TLM_ENCRYPTED = 0x01

# UID: type, tx power, 10-byte namespace, 6-byte instance, then two RFU bytes
# that must be 0x00. Some beacons, such as the BBC micro:bit with MakeCode,
# leave the RFU bytes out, so 18 bytes are accepted too.
_UID_FIELDS = struct.Struct(">b10s6s")
_UID_LENGTH = 20
_UID_LENGTH_WITHOUT_RFU = 18
# TLM version 0x00: type, version, battery mV, temperature in signed 8.8
# fixed point, advertising PDU count, time since boot in 0.1 s units.
_TLM_FIELDS = struct.Struct(">hII")
_TLM_LENGTH = 14
_TLM_TEMPERATURE_NOT_SUPPORTED = -0x8000
# eTLM version 0x01: type, version, 12 encrypted bytes, salt, MIC.
_ETLM_FIELDS = struct.Struct(">12sHH")
_ETLM_LENGTH = 18
_EID_LENGTH = 10
_URL_MIN_LENGTH = 3
_URL_MAX_LENGTH = 20

# URL scheme prefixes and expansion codes of the Eddystone-URL spec. Codes
# 0x0E-0x20 and 0x7F-0xFF are reserved, so a URL containing one is invalid.
URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_EXPANSIONS = (
    ".com/",
    ".org/",
    ".edu/",
    ".net/",
    ".info/",
    ".biz/",
    ".gov/",
    ".com",
    ".org",
    ".edu",
    ".net",
    ".info",
    ".biz",
    ".gov",
)

EddystoneFrame = (
    EddystoneUid | EddystoneUrl | EddystoneTlm | EddystoneEtlm | EddystoneEid
)


def expand_url(scheme: int, encoded: bytes) -> str | None:
    """Expand an Eddystone-URL scheme byte and encoded URL to the full URL.

    Returns None when the scheme or a byte is reserved by the spec.
    """
    if scheme >= len(URL_SCHEMES):
        return None
    parts = [URL_SCHEMES[scheme]]
    for byte in encoded:
        if byte < len(_URL_EXPANSIONS):
            parts.append(_URL_EXPANSIONS[byte])
        elif 0x20 < byte < 0x7F:
            parts.append(chr(byte))
        else:
            return None
    return "".join(parts)


def decode_eddystone(payload: bytes, problems: list[str]) -> EddystoneFrame | str:
    """Decode Eddystone service data (after the UUID) as one frame.

    Returns the frame, or a reason naming the frame type and the length
    when the data is not a valid frame. Non-fatal deviations, such as
    non-zero RFU bytes, are reported in ``problems``.
    """
    if not payload:
        return "Eddystone service data is empty (no frame type byte)"
    frame_type = payload[0]
    if frame_type == FRAME_UID:
        return _decode_uid(payload, problems)
    if frame_type == FRAME_TLM:
        return _decode_tlm(payload, problems)
    if frame_type == FRAME_EID:
        if len(payload) < _EID_LENGTH:
            return _short("Eddystone-EID", payload, _EID_LENGTH)
        _note_extra("Eddystone-EID", payload, _EID_LENGTH, problems)
        return EddystoneEid(payload[2:10], _signed(payload[1]))
    if frame_type == FRAME_URL:
        return _decode_url(payload, problems)
    return (
        f"Eddystone frame type 0x{frame_type:02X} is not defined by the Eddystone "
        "spec (0x00 UID, 0x10 URL, 0x20 TLM, 0x30 EID)"
    )


def _decode_uid(payload: bytes, problems: list[str]) -> EddystoneUid | str:
    length = len(payload)
    if length < _UID_LENGTH_WITHOUT_RFU:
        return _short("Eddystone-UID", payload, _UID_LENGTH)
    if length == _UID_LENGTH_WITHOUT_RFU + 1:
        problems.append("Eddystone-UID has 1 of its 2 RFU bytes")
    elif length > _UID_LENGTH_WITHOUT_RFU:
        _note_extra("Eddystone-UID", payload, _UID_LENGTH, problems)
    if payload[18:20].strip(b"\x00"):
        problems.append(
            f"Eddystone-UID RFU bytes are 0x{payload[18:20].hex()}, expected 0x00"
        )
    tx_power, namespace, instance = _UID_FIELDS.unpack_from(payload, 1)
    return EddystoneUid(namespace, instance, tx_power)


def _decode_tlm(
    payload: bytes, problems: list[str]
) -> EddystoneTlm | EddystoneEtlm | str:
    if len(payload) < 2:
        return "Eddystone-TLM frame has no version byte"
    version = payload[1]
    if version == _TLM_PLAIN:
        if len(payload) < _TLM_LENGTH:
            return _short("Eddystone-TLM version 0x00", payload, _TLM_LENGTH)
        _note_extra("Eddystone-TLM", payload, _TLM_LENGTH, problems)
        temperature, advertising_count, sec_cnt = _TLM_FIELDS.unpack_from(payload, 4)
        return EddystoneTlm(
            battery_mv=payload[2] << 8 | payload[3],
            temperature_c=(
                None
                if temperature == _TLM_TEMPERATURE_NOT_SUPPORTED
                else temperature / 256
            ),
            advertising_count=advertising_count,
            uptime_s=sec_cnt / 10,
            sec_cnt=sec_cnt,
        )
    if version == _TLM_ENCRYPTED:
        if len(payload) < _ETLM_LENGTH:
            return _short(
                "Eddystone-TLM version 0x01 (encrypted)", payload, _ETLM_LENGTH
            )
        _note_extra("Eddystone-eTLM", payload, _ETLM_LENGTH, problems)
        encrypted, salt, mic = _ETLM_FIELDS.unpack_from(payload, 2)
        return EddystoneEtlm(encrypted, salt, mic)
    return (
        f"Eddystone-TLM version 0x{version:02X} is not defined (0x00 plain, "
        "0x01 encrypted)"
    )


def _decode_url(payload: bytes, problems: list[str]) -> EddystoneUrl | str:
    if len(payload) < _URL_MIN_LENGTH:
        return (
            f"Eddystone-URL frame is {byte_count(len(payload))}, too short for tx "
            f"power and URL scheme (at least {_URL_MIN_LENGTH})"
        )
    if len(payload) > _URL_MAX_LENGTH:
        problems.append(
            f"Eddystone-URL frame is {byte_count(len(payload))}, longer than the "
            f"{_URL_MAX_LENGTH} the spec allows"
        )
    url = expand_url(payload[2], payload[3:])
    if url is None:
        return (
            f"Eddystone-URL 0x{payload[2:].hex()} uses a reserved scheme or byte code"
        )
    return EddystoneUrl(url, _signed(payload[1]))


def _signed(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _short(name: str, payload: bytes, expected: int) -> str:
    return f"{name} frame is {byte_count(len(payload))}, expected {expected}"


def _note_extra(name: str, payload: bytes, expected: int, problems: list[str]) -> None:
    if len(payload) > expected:
        problems.append(
            f"{name} frame is {byte_count(len(payload))}, longer than its "
            f"{expected}; the rest was ignored"
        )
