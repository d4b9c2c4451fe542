"""Simulated wristbands of every supported format, with their true identity."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from appliance.config import RegisteredBand
from appliance.sim import _adverts
from appliance.wristbands import compute_eid

SITE_UUID = bytes.fromhex("6e696768-7462-6f78-2d64-656d6f2d3031".replace("-", ""))
SITE_ALT_PREFIX = bytes.fromhex("4e42" + "00" * 13 + "01")
SITE_NAMESPACE = bytes.fromhex("6e696768746278736974")
ALTBEACON_COMPANY = 0x0118
EID_ROTATION_EXPONENT = 10
# Eddystone tx power is calibrated at 0 m; it reads about 41 dB above the
# power at 1 m (Eddystone frame specification, Tx Power field).
_EDDYSTONE_0M_OFFSET_DB = 41

FORMATS = ("ibeacon", "altbeacon", "eddystone-uid", "eddystone-eid", "dual")
_FORMAT_WEIGHTS = (40, 20, 20, 15, 5)


@dataclass(slots=True)
class SimBand:
    """One wristband: what it advertises and which band id the box should see."""

    index: int
    format: str
    band_id: str
    advertised_power_dbm: int
    true_power_dbm: float
    address: str
    rotates_address: bool
    identity_key: bytes | None = None
    clock_offset_s: float = 0.0
    adverts_sent: int = field(default=0)

    def advert(self, t: float) -> bytes:
        """Return the bytes the band sends at time ``t`` (it alternates frames)."""
        self.adverts_sent += 1
        return self._frame(self.adverts_sent, t)

    def identity_advert(self, t: float) -> bytes:
        """Return an advert that identifies the band (never a TLM frame)."""
        return self._frame(1, t)

    def _frame(self, count: int, t: float) -> bytes:
        eddystone_power = self.advertised_power_dbm + _EDDYSTONE_0M_OFFSET_DB
        if self.format in ("eddystone-uid", "eddystone-eid") and count % 6 == 0:
            return _adverts.eddystone_tlm(
                3000 - self.index % 300, 21.5, count, t - self.clock_offset_s
            )
        if self.format == "ibeacon" or (self.format == "dual" and count % 2):
            return _adverts.ibeacon(
                SITE_UUID, self._major, self.index, self.advertised_power_dbm
            )
        if self.format == "altbeacon":
            beacon_id = SITE_ALT_PREFIX + self.index.to_bytes(4, "big")
            return _adverts.altbeacon(
                ALTBEACON_COMPANY, beacon_id, self.advertised_power_dbm
            )
        if self.format == "eddystone-eid" and self.identity_key is not None:
            beacon_time = int(t - self.clock_offset_s)
            eid = compute_eid(self.identity_key, beacon_time, EID_ROTATION_EXPONENT)
            return _adverts.eddystone_eid(eid, eddystone_power)
        return _adverts.eddystone_uid(
            SITE_NAMESPACE, self.index.to_bytes(6, "big"), eddystone_power
        )

    @property
    def _major(self) -> int:
        return 2 if self.format == "dual" else 1

    def current_address(self, t: float) -> str:
        """Return the BLE address at ``t``; some bands rotate it every 15 minutes."""
        if not self.rotates_address:
            return self.address
        epoch = int(t // 900)
        tail = (self.index * 7919 + epoch * 104729) & 0xFFFFFF
        octets = (tail >> 16, (tail >> 8) & 0xFF, tail & 0xFF)
        return self.address[:8] + "".join(f":{octet:02x}" for octet in octets)

    def registration(self) -> RegisteredBand | None:
        """Return the site registration this band needs, if any."""
        if self.format == "eddystone-eid":
            return RegisteredBand(
                id=self.band_id,
                eid_identity_key=self.identity_key,
                eid_rotation_exponent=EID_ROTATION_EXPONENT,
                eid_clock_offset_s=self.clock_offset_s,
            )
        if self.format == "dual":
            aliases = (f"ib-2-{self.index}", f"uid-{self.index:012x}")
            return RegisteredBand(id=self.band_id, aliases=aliases)
        return None


def make_band(index: int, rng: random.Random, night_start_s: float) -> SimBand:
    """Draw a band of a random format with realistic calibration spread."""
    band_format = rng.choices(FORMATS, weights=_FORMAT_WEIGHTS)[0]
    advertised = -59 + rng.randint(-4, 4)
    true_power = advertised + rng.gauss(0.0, 1.0)
    roll = rng.random()
    if band_format == "ibeacon" and roll < 0.05:
        # Cheap tags ship with measured power 0 or positive, which is
        # impossible; their true power is typical.
        advertised = 0 if roll < 0.03 else 4
        true_power = -59 + rng.gauss(0.0, 1.0)
    address = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
    identity_key = None
    band_id = {
        "ibeacon": f"ib-1-{index}",
        "altbeacon": f"alt-{index:08x}",
        "eddystone-uid": f"uid-{index:012x}",
    }.get(band_format, f"band-{index}")
    if band_format == "eddystone-eid":
        identity_key = rng.randbytes(16)
    return SimBand(
        index=index,
        format=band_format,
        band_id=band_id,
        advertised_power_dbm=advertised,
        true_power_dbm=true_power,
        address=address,
        rotates_address=rng.random() < 0.3,
        identity_key=identity_key,
        clock_offset_s=night_start_s - rng.uniform(3600, 30 * 86400),
    )
