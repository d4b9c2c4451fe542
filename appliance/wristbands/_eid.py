"""Eddystone-EID: ephemeral ids computed and resolved from identity keys.

The computation follows the Eddystone EID spec (eid-computation.md in the
google/eddystone repository). A band stores a 128-bit AES identity key, a
32-bit seconds counter and a rotation exponent K, and sends a new 8-byte id
every 2**K seconds. Only the box, which holds the keys, can map those ids
back to bands, so a wristband cannot be followed outside the venue.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_LOGGER = logging.getLogger(__name__)

IDENTITY_KEY_LENGTH = 16
EID_LENGTH = 8
MAX_ROTATION_EXPONENT = 15
_MAX_BEACON_TIME = 0xFFFFFFFF
# Rotation periods resolved on each side of the current one, which is the
# clock-skew allowance. It covers the randomised moment within a period at
# which a band switches ids, and clock drift (the spec allows 150 ppm, about
# 13 s a day) while the drift stays under one period.
SKEW_PERIODS = 1


def _aes_128_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def _check_inputs(identity_key: bytes, beacon_time_s: int) -> None:
    if len(identity_key) != IDENTITY_KEY_LENGTH:
        raise ValueError(
            f"identity key is {len(identity_key)} bytes; an Eddystone identity key "
            f"is an AES-128 key of {IDENTITY_KEY_LENGTH} bytes"
        )
    if not 0 <= beacon_time_s <= _MAX_BEACON_TIME:
        raise ValueError(
            f"beacon time {beacon_time_s} s is outside the 32-bit counter range "
            f"0-{_MAX_BEACON_TIME}"
        )


def _check_exponent(rotation_exponent: int) -> None:
    if not 0 <= rotation_exponent <= MAX_ROTATION_EXPONENT:
        raise ValueError(
            f"rotation exponent {rotation_exponent} is outside 0-"
            f"{MAX_ROTATION_EXPONENT}"
        )


def compute_temporary_key(identity_key: bytes, beacon_time_s: int) -> bytes:
    """Compute the 16-byte temporary key for a beacon time.

    The key is AES-128(identity key) of 11 zero bytes, 0xFF, 2 zero bytes
    and the top 16 bits of the beacon time, big-endian, so it changes every
    65536 s. Raises ValueError for a key that is not 16 bytes or a time
    outside 0 to 2**32 - 1.
    """
    _check_inputs(identity_key, beacon_time_s)
    block = bytes(11) + b"\xff" + bytes(2) + (beacon_time_s >> 16).to_bytes(2, "big")
    return _aes_128_block(identity_key, block)


def compute_eid(
    identity_key: bytes, beacon_time_s: int, rotation_exponent: int
) -> bytes:
    """Compute the 8-byte ephemeral id a band sends at a beacon time.

    The id is the first 8 bytes of AES-128(temporary key) of 11 zero bytes,
    K, and the beacon time with its low K bits cleared as 4 bytes
    big-endian. Raises ValueError for a key that is not 16 bytes, a time
    outside 0 to 2**32 - 1, or K outside 0 to 15.
    """
    _check_exponent(rotation_exponent)
    temporary_key = compute_temporary_key(identity_key, beacon_time_s)
    period_start = beacon_time_s >> rotation_exponent << rotation_exponent
    block = bytes(11) + bytes((rotation_exponent,)) + period_start.to_bytes(4, "big")
    return _aes_128_block(temporary_key, block)[:EID_LENGTH]


@dataclass(slots=True)
class _Band:
    band_id: str
    identity_key: bytes
    rotation_exponent: int
    clock_offset_s: float
    period_index: int | None = None
    eids: tuple[bytes, ...] = ()


class EidResolver:
    """Map Eddystone-EIDs to registered band ids.

    Each band is registered with its identity key, rotation exponent K and
    beacon clock offset: the wall time in seconds at which the band's
    counter was 0. The resolver keeps a table of every band's ids for its
    current rotation period and ``SKEW_PERIODS`` periods on each side, and
    rebuilds a band's entries only when its period rolls, so a lookup is a
    dict hit. Not thread-safe: use one resolver per thread or a lock.
    """

    def __init__(self) -> None:
        """Create a resolver with no bands."""
        self._bands: dict[str, _Band] = {}
        self._table: dict[bytes, str] = {}
        self._valid_from_s = math.inf
        self._valid_until_s = -math.inf

    def register(
        self,
        band_id: str,
        identity_key: bytes,
        rotation_exponent: int,
        clock_offset_s: float,
    ) -> None:
        """Register a band, replacing any earlier registration of the same id.

        Raises ValueError for a key that is not 16 bytes or K outside 0-15.
        """
        _check_inputs(identity_key, 0)
        _check_exponent(rotation_exponent)
        self.unregister(band_id)
        self._bands[band_id] = _Band(
            band_id, bytes(identity_key), rotation_exponent, clock_offset_s
        )
        self._valid_until_s = -math.inf

    def unregister(self, band_id: str) -> None:
        """Forget a band and its ids. Unknown band ids are ignored."""
        band = self._bands.pop(band_id, None)
        if band is not None:
            self._drop_ids(band)

    def resolve(self, eid: bytes, now_s: float) -> str | None:
        """Return the band id that sends ``eid`` at wall time ``now_s``, or None.

        Ids from the band's current rotation period and one period on each
        side resolve. Older or newer ids return None, and so does a time
        that is not finite.
        """
        if not self._valid_from_s <= now_s < self._valid_until_s:
            if not math.isfinite(now_s):
                return None
            self._refresh(now_s)
        return self._table.get(bytes(eid))

    def _refresh(self, now_s: float) -> None:
        valid_from_s = -math.inf
        valid_until_s = math.inf
        for band in self._bands.values():
            period_s = 1 << band.rotation_exponent
            beacon_time_s = now_s - band.clock_offset_s
            period_index = math.floor(beacon_time_s / period_s)
            if period_index != band.period_index:
                self._drop_ids(band)
                self._add_ids(band, period_index)
            period_start_s = band.clock_offset_s + period_index * period_s
            valid_from_s = max(valid_from_s, period_start_s)
            valid_until_s = min(valid_until_s, period_start_s + period_s)
        self._valid_from_s = valid_from_s
        self._valid_until_s = valid_until_s

    def _add_ids(self, band: _Band, period_index: int) -> None:
        period_s = 1 << band.rotation_exponent
        eids = []
        for index in range(
            period_index - SKEW_PERIODS, period_index + SKEW_PERIODS + 1
        ):
            beacon_time_s = index * period_s
            # A counter before 0 or past 32 bits has no id to compute.
            if not 0 <= beacon_time_s <= _MAX_BEACON_TIME:
                continue
            eid = compute_eid(band.identity_key, beacon_time_s, band.rotation_exponent)
            owner = self._table.setdefault(eid, band.band_id)
            if owner != band.band_id:
                _LOGGER.warning(
                    "EID %s of band %s collides with band %s; keeping %s",
                    eid.hex(),
                    band.band_id,
                    owner,
                    owner,
                )
                continue
            eids.append(eid)
        band.period_index = period_index
        band.eids = tuple(eids)

    def _drop_ids(self, band: _Band) -> None:
        for eid in band.eids:
            if self._table.get(eid) == band.band_id:
                del self._table[eid]
        band.eids = ()
        band.period_index = None
