"""Per-band summaries of one batch interval, kept in preallocated tables.

Every scan result passes through ``Aggregator.add``, which counts it in
``heard``, identifies the site band it names and adds it to that band's
entry: the sum and count of RSSI readings (the count-weighted mean is taken
when the batch is built), the time it was last heard as ``ticks_ms`` and the
last advert's bytes and address. ``add`` needs no heap (a test runs it with
the heap locked): bands live in fixed arrays found through an
open-addressing hash table.
"""

import array
import binascii

from micropython import const

from .adverts import KEY_SIZE, band_key
from .scanner import ADV_MAX

DEFAULT_MAX_BANDS = const(256)
_ADDRESS_SIZE = const(6)
_EMPTY = const(-1)


class Aggregator:
    """The bands heard in the current interval, at most ``max_bands``.

    A band beyond ``max_bands`` in one interval is counted in
    ``bands_dropped`` and left out of the batch; its adverts still count
    in ``heard``.
    """

    def __init__(self, site_filter, max_bands=DEFAULT_MAX_BANDS):
        self._filter = site_filter
        self._max_bands = max_bands
        size = 1
        while size < 2 * max_bands:
            size <<= 1
        self._mask = size - 1
        self._index = array.array("h", [_EMPTY] * size)
        self._positions = array.array("h", [0] * max_bands)
        self._keys = bytearray(max_bands * KEY_SIZE)
        self._adv = bytearray(max_bands * ADV_MAX)
        self._adv_length = bytearray(max_bands)
        self._address = bytearray(max_bands * _ADDRESS_SIZE)
        self._rssi_sum = array.array("i", [0] * max_bands)
        self._count = array.array("i", [0] * max_bands)
        self._last_ms = array.array("i", [0] * max_bands)
        self._used = 0
        self.key = bytearray(KEY_SIZE)
        self.heard = 0
        self.bands_dropped = 0

    def add(self, adv, offset, length, rssi_dbm, address, address_offset, ticks_ms):
        """Count one scan result; return the band's entry index, or -1.

        -1 means the advert names no site band or the table is full. After
        a match, ``self.key`` contains the band's key. Needs no heap.
        """
        self.heard += 1
        key = self.key
        if not self._filter.identify(adv, offset, length, key):
            return -1
        entry = self._find(key)
        if entry < 0:
            return -1
        self._rssi_sum[entry] += rssi_dbm
        self._count[entry] += 1
        self._last_ms[entry] = ticks_ms
        start = entry * ADV_MAX
        stored = self._adv
        for i in range(length):
            stored[start + i] = adv[offset + i]
        self._adv_length[entry] = length
        start = entry * _ADDRESS_SIZE
        for i in range(_ADDRESS_SIZE):
            self._address[start + i] = address[address_offset + i]
        return entry

    def _find(self, key):
        keys = self._keys
        position = 0
        for i in range(KEY_SIZE):
            position = (position * 31 + key[i]) & 0xFFFFFF
        position &= self._mask
        while True:
            entry = self._index[position]
            if entry == _EMPTY:
                break
            start = entry * KEY_SIZE
            same = True
            for i in range(KEY_SIZE):
                if keys[start + i] != key[i]:
                    same = False
                    break
            if same:
                return entry
            position = (position + 1) & self._mask
        entry = self._used
        if entry == self._max_bands:
            self.bands_dropped += 1
            return -1
        self._used = entry + 1
        self._index[position] = entry
        self._positions[entry] = position
        start = entry * KEY_SIZE
        for i in range(KEY_SIZE):
            keys[start + i] = key[i]
        self._rssi_sum[entry] = 0
        self._count[entry] = 0
        return entry

    def band_count(self):
        """Return the number of bands heard in the current interval."""
        return self._used

    def take(self):
        """Return ``(heard, sightings)`` of the interval and start a new one.

        ``sightings`` is a list of ``(ticks_ms, band_key, json_tail)``, one per
        band in the order first heard, where ``json_tail`` is the rest of
        the sighting object after its time: ``,"addr":…,"rssi":…,"n":…,"adv":…}``.
        """
        sightings = []
        for entry in range(self._used):
            key = self._keys[entry * KEY_SIZE : (entry + 1) * KEY_SIZE]
            start = entry * ADV_MAX
            adv = self._adv[start : start + self._adv_length[entry]]
            start = entry * _ADDRESS_SIZE
            address = self._address[start : start + _ADDRESS_SIZE]
            count = self._count[entry]
            tail = ',"addr":"%s","rssi":%s,"n":%d,"adv":"%s"}' % (
                binascii.hexlify(address, ":").decode(),
                mean_text(self._rssi_sum[entry], count),
                count,
                binascii.hexlify(adv).decode(),
            )
            sightings.append((self._last_ms[entry], band_key(key), tail))
            self._index[self._positions[entry]] = _EMPTY
        heard = self.heard
        self._used = 0
        self.heard = 0
        return heard, sightings


def mean_text(total, count):
    """Return ``total / count`` rounded to 0.1 as JSON number text, by integer maths.

    Rounds half up: ``mean_text(-121, 2)`` is ``"-60.5"`` and
    ``mean_text(-181, 3)`` is ``"-60.3"``.
    """
    tenths = (20 * total + count) // (2 * count)
    sign = "-" if tenths < 0 else ""
    tenths = abs(tenths)
    return "%s%d.%d" % (sign, tenths // 10, tenths % 10)
