"""The sightings batch a reader publishes, parsed and checked.

A batch summarises what one reader heard during one interval: per distinct
advert of a site band, the mean RSSI, the number of adverts heard and the
time of the last one. ``heard`` counts every advert received before
filtering, which shows that the radio is alive. Readers send summaries so
the bus carries tens of messages a second, not every advert.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

from appliance.errors import PayloadError

MAX_SIGHTINGS_PER_BATCH = 2000
# A sighting belongs to its batch's interval; a minute covers any interval
# a reader is configured with.
MAX_SIGHTING_AGE_S = 60.0
# The count weights the RSSI mean as a float, so it needs an upper bound.
# NOTE: the bound is generous, not measured on readers.
MAX_ADVERTS_PER_SIGHTING = 1_000_000
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_BOOT = re.compile(r"^[A-Za-z0-9-]{1,32}$")


@dataclass(frozen=True, slots=True)
class Sighting:
    """One advert as a reader summarised it for an interval."""

    t: float
    address: str
    rssi_dbm: float
    count: int
    advert: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """A reader's report for one interval."""

    reader_id: str
    boot: str
    seq: int
    t: float
    sightings: tuple[Sighting, ...]
    rejected: tuple[str, ...]
    heard: int | None


def parse_batch(reader_id: str, data: dict[str, Any]) -> Batch:
    """Check a batch's fields; bad sightings are dropped with a reason each.

    Raises PayloadError when the batch itself is unusable (missing fields,
    wrong types, a different reader id than the topic's).
    """
    named = data.get("reader", reader_id)
    if named != reader_id:
        raise PayloadError(
            f"batch names reader {named!r:.40} but was published on the "
            f"topic of reader {reader_id!r}"
        )
    boot = data.get("boot")
    if not isinstance(boot, str) or not _BOOT.match(boot):
        raise PayloadError(
            f"field 'boot' must be 1-32 letters, digits or '-', not {boot!r:.40}"
        )
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PayloadError(
            f"field 'seq' must be a non-negative integer, not {seq!r:.40}"
        )
    t = _number(data.get("t"), "t")
    items = data.get("sightings")
    if not isinstance(items, list):
        raise PayloadError("field 'sightings' must be a list")
    if len(items) > MAX_SIGHTINGS_PER_BATCH:
        raise PayloadError(
            f"batch has {len(items)} sightings; the limit is {MAX_SIGHTINGS_PER_BATCH}"
        )
    sightings: list[Sighting] = []
    rejected: list[str] = []
    for index, item in enumerate(items):
        try:
            sighting = _sighting(item)
            if not t - MAX_SIGHTING_AGE_S <= sighting.t <= t + 1.0:
                raise PayloadError(
                    f"field 't' = {sighting.t} lies outside the batch, which "
                    f"ends at {t}"
                )
            sightings.append(sighting)
        except PayloadError as err:
            rejected.append(f"sightings[{index}]: {err}")
    heard = data.get("heard")
    if heard is not None and (
        isinstance(heard, bool) or not isinstance(heard, int) or heard < 0
    ):
        raise PayloadError(
            f"field 'heard' must be a non-negative integer, not {heard!r:.40}"
        )
    return Batch(reader_id, boot, seq, t, tuple(sightings), tuple(rejected), heard)


def _sighting(item: Any) -> Sighting:
    if not isinstance(item, dict):
        raise PayloadError("a sighting must be a JSON object")
    advert_hex = item.get("adv")
    if not isinstance(advert_hex, str) or not 0 < len(advert_hex) <= 124:
        raise PayloadError(
            f"field 'adv' must be 1-62 bytes of hex, not {advert_hex!r:.40}"
        )
    try:
        advert = bytes.fromhex(advert_hex)
    except ValueError as err:
        raise PayloadError(f"field 'adv' is not hex: {advert_hex!r:.40}") from err
    address = item.get("addr", "00:00:00:00:00:00")
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise PayloadError(
            "field 'addr' must be a BLE address like aa:bb:cc:dd:ee:ff, "
            f"not {address!r:.40}"
        )
    rssi = _number(item.get("rssi"), "rssi")
    if not -127 <= rssi <= 20:
        raise PayloadError(f"field 'rssi' = {rssi} dBm is outside -127..20")
    count = item.get("n", 1)
    if (
        isinstance(count, bool)
        or not isinstance(count, int)
        or not 1 <= count <= MAX_ADVERTS_PER_SIGHTING
    ):
        raise PayloadError(
            f"field 'n' must be an integer from 1 to {MAX_ADVERTS_PER_SIGHTING}, "
            f"not {count!r:.40}"
        )
    return Sighting(_number(item.get("t"), "t"), address.lower(), rssi, count, advert)


def _number(value: Any, name: str) -> float:
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        # json.loads reads NaN, Infinity and 1e999, and an integer too large
        # for a float raises OverflowError: none of them is a time or an RSSI.
        with contextlib.suppress(OverflowError):
            number = float(value)
    if not math.isfinite(number):
        raise PayloadError(f"field {name!r} must be a number, not {value!r:.40}")
    return number
