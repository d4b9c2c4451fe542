"""Site band matching: which of this site's wristbands sent an advert.

A band is its decoded identity, never its BLE address, because phones and
many tags rotate addresses. Band ids are derived from the identity:
``ib-<major>-<minor>`` for iBeacon, ``alt-<last 4 id bytes hex>`` for
AltBeacon, ``uid-<instance hex>`` for Eddystone-UID, and the registered id
for Eddystone-EID.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ._decode import decode_advert_cached
from ._eid import EidResolver
from ._frames import (
    AltBeacon,
    EddystoneEid,
    EddystoneEtlm,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    Frame,
    IBeacon,
)

_UUID_LENGTH = 16
_ALTBEACON_PREFIX_LENGTH = 16
_NAMESPACE_LENGTH = 10
# Eddystone sends its calibrated power at 0 m, and the Eddystone-URL spec
# puts the loss over the first metre at 41 dB.
_EDDYSTONE_LOSS_AT_1M_DB = 41
# Longer estimates are reported as this cap. It is far outside any exit
# reader's range, so the figure only means "far". ibeacon-ble 1.2.0 uses the
# same cap.
MAX_DISTANCE_M = 400.0


def estimate_distance_m(measured_power_dbm: int, rssi_dbm: int) -> float | None:
    """Estimate the distance in metres from the power at 1 m and the RSSI.

    ``ratio`` is the RSSI over the measured power. The path-loss curve fit
    is 0.89976 * ratio**7.7095 + 0.111, or ratio**10 closer than 1 m, capped
    at ``MAX_DISTANCE_M``. ibeacon-ble 1.2.0 uses the same curve, so the
    figures match Home Assistant's for negative powers. Returns None when
    the measured power is impossible (zero or positive) or the RSSI is
    0 dBm or more, which some stacks send for "no reading". The result is
    an estimate: walls and bodies at a venue exit move it by metres.
    """
    if measured_power_dbm >= 0 or rssi_dbm >= 0:
        return None
    ratio = rssi_dbm / measured_power_dbm
    if ratio < 1.0:
        return ratio**10
    return min(0.89976 * ratio**7.7095 + 0.111, MAX_DISTANCE_M)


@dataclass(frozen=True, slots=True)
class BandMatch:
    """A site wristband identified in an advert.

    ``measured_power_dbm`` is the band's power at 1 m: the iBeacon measured
    power or AltBeacon reference RSSI as sent, or the Eddystone power at
    0 m minus 41 dB. It is None when that power is zero or positive, which
    no real band sends, so it never decides a distance. ``telemetry`` is an
    Eddystone-TLM frame sent in the same advert.
    """

    band_id: str
    format: str
    measured_power_dbm: int | None
    telemetry: EddystoneTlm | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An advert that names no band of this site, with the reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class SiteBands:
    """The identities of one site's wristbands, and the matcher for adverts.

    ``ibeacon_uuid`` is the site's 16-byte proximity UUID,
    ``altbeacon_prefix`` the first 16 bytes of its AltBeacon ids and
    ``eddystone_namespace`` its 10-byte Eddystone-UID namespace. None turns
    a format off. ``aliases`` maps a derived band id to the band id to
    report, so one tag that sends two identities is one band. Raises
    ValueError when an identity has the wrong length.
    """

    ibeacon_uuid: bytes | None = None
    altbeacon_prefix: bytes | None = None
    eddystone_namespace: bytes | None = None
    eid_resolver: EidResolver | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the identity lengths."""
        for name, value, length in (
            ("ibeacon_uuid", self.ibeacon_uuid, _UUID_LENGTH),
            ("altbeacon_prefix", self.altbeacon_prefix, _ALTBEACON_PREFIX_LENGTH),
            ("eddystone_namespace", self.eddystone_namespace, _NAMESPACE_LENGTH),
        ):
            if value is not None and len(value) != length:
                raise ValueError(
                    f"{name} is {len(value)} bytes ({value.hex()}); it must be "
                    f"{length} bytes"
                )

    def identify(self, advert_bytes: bytes, now_s: float) -> BandMatch | Rejection:
        """Identify the site band that sent raw advertising data.

        ``now_s`` is the wall time of the sighting, used to resolve
        Eddystone-EIDs. The decode step is cached by the raw bytes, but EID
        resolution is not, so an id from an expired rotation period is
        rejected. Never raises on any bytes.
        """
        if type(advert_bytes) is not bytes:
            advert_bytes = bytes(advert_bytes)
        advert = decode_advert_cached(advert_bytes)
        telemetry: EddystoneTlm | None = None
        match: tuple[str, str, int | None] | None = None
        reasons: list[str] = []
        for frame in advert.frames:
            if type(frame) is EddystoneTlm:
                telemetry = frame
            elif match is None:
                match = self._match_frame(frame, now_s, reasons)

        if match is not None:
            derived_id, format_name, power_dbm = match
            return BandMatch(
                self.aliases.get(derived_id, derived_id),
                format_name,
                power_dbm,
                telemetry,
            )
        if advert.reason is not None:
            return Rejection(advert.reason)
        if telemetry is not None and not reasons:
            reasons.append(
                "Eddystone-TLM carries no band identity; pair it with the UID or "
                "EID adverts from the same address"
            )
        return Rejection("; ".join(reasons))

    def _match_frame(
        self, frame: Frame, now_s: float, reasons: list[str]
    ) -> tuple[str, str, int | None] | None:
        if isinstance(frame, IBeacon):
            if frame.uuid != self.ibeacon_uuid:
                reasons.append(
                    _other_site("iBeacon UUID", frame.uuid, self.ibeacon_uuid)
                )
                return None
            power = frame.measured_power_dbm
            band_id = f"ib-{frame.major}-{frame.minor}"
            return band_id, IBeacon.FORMAT, power if power < 0 else None
        if isinstance(frame, EddystoneUid):
            namespace = self.eddystone_namespace
            if frame.namespace != namespace:
                reasons.append(
                    _other_site("Eddystone-UID namespace", frame.namespace, namespace)
                )
                return None
            band_id = f"uid-{frame.instance.hex()}"
            return band_id, EddystoneUid.FORMAT, _eddystone_power(frame.tx_power_dbm)
        if isinstance(frame, AltBeacon):
            prefix = frame.beacon_id[:_ALTBEACON_PREFIX_LENGTH]
            if prefix != self.altbeacon_prefix:
                reasons.append(
                    _other_site("AltBeacon id prefix", prefix, self.altbeacon_prefix)
                )
                return None
            power = frame.reference_rssi_dbm
            band_id = f"alt-{frame.beacon_id[_ALTBEACON_PREFIX_LENGTH:].hex()}"
            return band_id, AltBeacon.FORMAT, power if power < 0 else None
        if isinstance(frame, EddystoneEid):
            return self._match_eid(frame, now_s, reasons)
        if isinstance(frame, EddystoneEtlm):
            reasons.append(
                "encrypted Eddystone-TLM carries no band identity and is not "
                "decrypted here"
            )
        elif isinstance(frame, EddystoneUrl):
            reasons.append("Eddystone-URL carries no band identity")
        return None

    def _match_eid(
        self, frame: EddystoneEid, now_s: float, reasons: list[str]
    ) -> tuple[str, str, int | None] | None:
        if self.eid_resolver is None:
            reasons.append(
                f"Eddystone-EID {frame.eid.hex()} ignored: this site has no EID "
                "resolver"
            )
            return None
        band_id = self.eid_resolver.resolve(frame.eid, now_s)
        if band_id is None:
            reasons.append(
                f"Eddystone-EID {frame.eid.hex()} matches no registered band within "
                "one rotation period of now"
            )
            return None
        return band_id, EddystoneEid.FORMAT, _eddystone_power(frame.tx_power_dbm)


def _eddystone_power(tx_power_at_0m_dbm: int) -> int | None:
    power_dbm = tx_power_at_0m_dbm - _EDDYSTONE_LOSS_AT_1M_DB
    return power_dbm if power_dbm < 0 else None


def _other_site(field_name: str, value: bytes, expected: bytes | None) -> str:
    if len(value) == _UUID_LENGTH:
        value_text = str(uuid.UUID(bytes=value))
    else:
        value_text = value.hex()
    if expected is None:
        return (
            f"{field_name} {value_text} ignored: this site has no {field_name} "
            "configured"
        )
    return f"{field_name} {value_text} is not this site's"
