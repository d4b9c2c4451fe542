"""Advert decoding: from AD structures to frames, with a reason when none fit.

The decoders never raise on any bytes. They return an ``Advert`` whose
``reason`` names the value that ruled each structure out, so a rejected
advert can be logged and counted without a traceback.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ._adverts import (
    AD_TYPE_MANUFACTURER_DATA,
    AD_TYPE_SERVICE_DATA_UUID16,
    byte_count,
    split_ad_structures,
)
from ._eddystone import EDDYSTONE_UUID16, decode_eddystone
from ._frames import (
    ALTBEACON_CODE,
    APPLE_COMPANY_ID,
    ForeignTag,
    Frame,
    IBeacon,
    decode_altbeacon,
    decode_ibeacon,
    frame_to_json,
)
from ._vendors import (
    KSENSOR_FRAME_TYPE,
    decode_ksensor,
    decode_vendor_ibeacon,
    decode_vendor_manufacturer_data,
    decode_vendor_service_data,
)

# Readers resend the same advert many times a second, and a venue has a few
# thousand bands at most, so this many distinct adverts cover a busy exit.
DECODE_CACHE_SIZE = 4096
_MAX_UINT16 = 0xFFFF


@dataclass(frozen=True, slots=True)
class Advert:
    """The frames decoded from one advert.

    ``frames`` are in advert order, vendor frames included. ``reason`` is
    None when at least one wristband-format frame (iBeacon, AltBeacon or
    Eddystone) was decoded, and otherwise explains why none was.
    ``problems`` lists deviations that did not stop decoding, and the
    reasons other structures of the advert were skipped.
    """

    frames: tuple[Frame, ...]
    problems: tuple[str, ...]
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        """Convert to a JSON-ready dict; bytes become lowercase hex strings."""
        return {
            "frames": [frame_to_json(frame) for frame in self.frames],
            "problems": list(self.problems),
            "reason": self.reason,
        }


def decode_advert(data: bytes) -> Advert:
    """Decode raw advertising data (a sequence of AD structures).

    Manufacturer data (AD type 0xFF) and 16-bit service data (AD type 0x16)
    are decoded; other AD types are skipped. Never raises on any bytes.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if not data:
        return Advert((), (), "advert is empty")

    structures, problems = split_ad_structures(data)
    frames: list[Frame] = []
    reasons: list[str] = []
    for ad_type, value in structures:
        if ad_type == AD_TYPE_MANUFACTURER_DATA:
            if len(value) < 2:
                problems.append(
                    f"manufacturer data has {byte_count(len(value))}, too short for "
                    "the 2-byte company id"
                )
                continue
            result = _manufacturer_frame(value[0] | value[1] << 8, value[2:], problems)
        elif ad_type == AD_TYPE_SERVICE_DATA_UUID16:
            if len(value) < 2:
                problems.append(
                    f"service data has {byte_count(len(value))}, too short for the "
                    "16-bit UUID"
                )
                continue
            result = _service_frame(value[0] | value[1] << 8, value[2:], problems)
        else:
            continue
        if isinstance(result, str):
            reasons.append(result)
        else:
            frames.append(result)
    return _finish(frames, reasons, problems)


@functools.lru_cache(maxsize=DECODE_CACHE_SIZE)
def decode_advert_cached(data: bytes) -> Advert:
    """Decode like ``decode_advert``, remembering the result by the raw bytes.

    ``data`` must be ``bytes`` (hashable). The cache is a bounded LRU of
    ``DECODE_CACHE_SIZE`` entries; results are shared, so callers must not
    change a ``ForeignTag.fields`` dict. ``decode_advert_cached.cache_clear()``
    empties it.
    """
    return decode_advert(data)


def decode_manufacturer_data(company_id: int, payload: bytes) -> Advert:
    """Decode manufacturer data given the company id and the bytes after it.

    Never raises on any bytes; an out-of-range company id gives a reason.
    """
    if not 0 <= company_id <= _MAX_UINT16:
        return Advert((), (), f"company id {company_id} is outside 0x0000-0xFFFF")
    problems: list[str] = []
    result = _manufacturer_frame(company_id, bytes(payload), problems)
    if isinstance(result, str):
        return _finish([], [result], problems)
    return _finish([result], [], problems)


def decode_service_data(uuid16: int, payload: bytes) -> Advert:
    """Decode service data given the 16-bit service UUID and the bytes after it.

    Never raises on any bytes; an out-of-range UUID gives a reason.
    """
    if not 0 <= uuid16 <= _MAX_UINT16:
        return Advert((), (), f"16-bit service UUID {uuid16} is outside 0x0000-0xFFFF")
    problems: list[str] = []
    result = _service_frame(uuid16, bytes(payload), problems)
    if isinstance(result, str):
        return _finish([], [result], problems)
    return _finish([result], [], problems)


def _manufacturer_frame(
    company_id: int, payload: bytes, problems: list[str]
) -> Frame | str:
    if company_id == APPLE_COMPANY_ID:
        ibeacon = decode_ibeacon(payload, problems)
        if type(ibeacon) is IBeacon:
            return decode_vendor_ibeacon(ibeacon) or ibeacon
        return ibeacon
    if payload[:2] == ALTBEACON_CODE:
        return decode_altbeacon(company_id, payload, problems)
    tag = decode_vendor_manufacturer_data(company_id, payload)
    if tag is not None:
        return tag
    if payload[:2] == b"\x02\x15":
        return (
            f"manufacturer data for company 0x{company_id:04X} is not an iBeacon "
            "(Apple company id 0x004C required)"
        )
    size = byte_count(len(payload))
    return (
        f"manufacturer data for company 0x{company_id:04X} ({size}) is not a known "
        "beacon format"
    )


def _service_frame(uuid16: int, payload: bytes, problems: list[str]) -> Frame | str:
    if uuid16 == EDDYSTONE_UUID16:
        if payload[:1] == bytes((KSENSOR_FRAME_TYPE,)):
            size = byte_count(len(payload))
            return decode_ksensor(payload) or (
                f"KSensor frame (Eddystone frame type 0x21) of {size} is shorter "
                "than its sensor mask requires"
            )
        return decode_eddystone(payload, problems)
    tag = decode_vendor_service_data(uuid16, payload)
    if tag is not None:
        return tag
    return (
        f"service data for UUID 0x{uuid16:04X} ({byte_count(len(payload))}) is not a "
        "known beacon format"
    )


def _finish(frames: list[Frame], reasons: list[str], problems: list[str]) -> Advert:
    foreign_count = sum(1 for frame in frames if type(frame) is ForeignTag)
    has_wristband_frame = foreign_count < len(frames)
    if foreign_count > 1:
        frames = _merge_foreign_tags(frames)
    if has_wristband_frame:
        return Advert(tuple(frames), tuple(problems + reasons), None)
    if frames:
        models = ", ".join(frame.model for frame in frames if type(frame) is ForeignTag)
        reason = f"advert contains no wristband frame, only foreign tags: {models}"
        return Advert(tuple(frames), tuple(problems + reasons), reason)
    if reasons:
        return Advert((), tuple(problems), "; ".join(reasons))
    reason = "advert has no complete manufacturer data or 16-bit service data"
    if problems:
        reason += ": " + "; ".join(problems)
    return Advert((), tuple(problems), reason)


def _merge_foreign_tags(frames: list[Frame]) -> list[Frame]:
    # A tag may split its values over two structures (the Mi Band sends heart
    # rate in manufacturer data and steps in service data): one tag, one frame.
    merged: list[Frame] = []
    by_model: dict[str, int] = {}
    for frame in frames:
        if type(frame) is not ForeignTag:
            merged.append(frame)
            continue
        index = by_model.get(frame.model)
        if index is None:
            by_model[frame.model] = len(merged)
            merged.append(frame)
            continue
        earlier = merged[index]
        if type(earlier) is ForeignTag:
            merged[index] = ForeignTag(frame.model, {**earlier.fields, **frame.fields})
    return merged
