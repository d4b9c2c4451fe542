"""The sightings batch a reader publishes, parsed and checked.

A batch summarises what one reader heard during one interval: per distinct
advert of a site band, the mean RSSI, the number of adverts heard and the
time of the last one. ``heard`` counts every advert received before
filtering, which shows that the radio is alive. Readers send summaries so
the bus carries tens of messages a second, not every advert.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from appliance.errors import PayloadError

MAX_SIGHTINGS_PER_BATCH = 2000
# A reader at 10 batches a second takes 28 million years to get here. A
# larger seq can only be a bug, and it would make every later batch look
# like a duplicate until the reader reboots.
MAX_SEQ = 2**53
# A sighting belongs to its batch's interval; a minute covers any interval
# a reader is configured with.
MAX_SIGHTING_AGE_S = 60.0
# The count weights the RSSI mean as a float, so it needs an upper bound.
# NOTE: the bound is generous, not measured on readers.
MAX_ADVERTS_PER_SIGHTING = 1_000_000
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
# Integers beyond this are no time or RSSI, and float() would overflow.
_MAX_INTEGER = 2**53
# Validated adverts and addresses, emptied when full: a night has a few
# thousand distinct ones.
_CACHE_SIZE = 8192
_ADVERTS: dict[str, bytes] = {}
_ADDRESSES: dict[str, str] = {}
_BOOT = re.compile(r"^[A-Za-z0-9-]{1,32}\Z")


@dataclass(slots=True)
class Sighting:
    """One advert as a reader summarised it for an interval.

    Not frozen: sightings are built by the ten thousand and never changed,
    and a frozen one takes about four times as long to construct (0.6 µs
    against 0.14 µs, CPython 3.11).
    """

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
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise PayloadError(
            f"field 'seq' must be an integer from 0 to {MAX_SEQ}, not {seq!r:.40}"
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
    earliest = t - MAX_SIGHTING_AGE_S
    latest = t + 1.0
    for index, item in enumerate(items):
        try:
            sightings.append(_sighting(item, earliest, latest))
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


def _sighting(item: Any, earliest: float, latest: float) -> Sighting:
    # This runs for every sighting of every batch, tens of thousands a
    # second, so it checks exact types and caches adverts and addresses
    # that readers send again and again.
    if type(item) is not dict:
        raise PayloadError("a sighting must be a JSON object")
    value = item.get("adv")
    advert = _ADVERTS.get(value) if type(value) is str else None
    if advert is None:
        advert = _advert(value)
    value = item.get("addr", "00:00:00:00:00:00")
    address = _ADDRESSES.get(value) if type(value) is str else None
    if address is None:
        address = _address(value)
    rssi = item.get("rssi")
    if type(rssi) is not float or not -127.0 <= rssi <= 20.0:
        rssi = _number(rssi, "rssi")
        if not -127.0 <= rssi <= 20.0:
            raise PayloadError(f"field 'rssi' = {rssi} dBm is outside -127..20")
    count = item.get("n", 1)
    if type(count) is not int or not 1 <= count <= MAX_ADVERTS_PER_SIGHTING:
        raise PayloadError(
            f"field 'n' must be an integer from 1 to {MAX_ADVERTS_PER_SIGHTING}, "
            f"not {count!r:.40}"
        )
    seen_t = item.get("t")
    if type(seen_t) is not float:
        seen_t = _number(seen_t, "t")
    if not earliest <= seen_t <= latest:
        raise PayloadError(
            f"field 't' = {seen_t} lies outside the batch, which ends at {latest - 1.0}"
        )
    return Sighting(seen_t, address, rssi, count, advert)


def _advert(value: Any) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= 124:
        raise PayloadError(f"field 'adv' must be 1-62 bytes of hex, not {value!r:.40}")
    try:
        advert = bytes.fromhex(value)
    except ValueError as err:
        raise PayloadError(f"field 'adv' is not hex: {value!r:.40}") from err
    if len(_ADVERTS) >= _CACHE_SIZE:
        _ADVERTS.clear()
    _ADVERTS[value] = advert
    return advert


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise PayloadError(
            "field 'addr' must be a BLE address like aa:bb:cc:dd:ee:ff, "
            f"not {value!r:.40}"
        )
    if len(_ADDRESSES) >= _CACHE_SIZE:
        _ADDRESSES.clear()
    _ADDRESSES[value] = value.lower()
    return value.lower()


def _number(value: Any, name: str) -> float:
    # JSON numbers arrive as int or float (a bool is neither here). json.loads
    # also reads NaN, Infinity and 1e999, and an integer too large for a
    # float raises OverflowError: none of them is a time or an RSSI.
    if type(value) is float:
        if math.isfinite(value):
            return value
    elif type(value) is int and -_MAX_INTEGER <= value <= _MAX_INTEGER:
        return float(value)
    raise PayloadError(f"field {name!r} must be a number, not {value!r:.40}")
