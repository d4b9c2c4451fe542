"""Site band matching: band ids, powers, telemetry, aliases and the cache."""

from __future__ import annotations

import struct

import pytest

from appliance.wristbands import (
    BandMatch,
    EidResolver,
    Rejection,
    SiteBands,
    compute_eid,
    decode_advert_cached,
    estimate_distance_m,
)

SITE_UUID = bytes.fromhex("c0ffee00c0ffee00c0ffee00c0ffee00")
OTHER_UUID = bytes.fromhex("fda50693a4e24fb1afcfc6eb07647825")
SITE_NAMESPACE = bytes.fromhex("00112233445566778899")
SITE_PREFIX = bytes(range(16))
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
OFFSET_S = 1_700_000_000.0
K = 8
FLAGS = bytes.fromhex("020106")
TLM_BODY = bytes.fromhex("20000c001c000000066800003810")


def ibeacon(uuid: bytes, major: int, minor: int, power_dbm: int) -> bytes:
    body = b"\x4c\x00\x02\x15" + uuid + struct.pack(">HHb", major, minor, power_dbm)
    return FLAGS + bytes((len(body) + 1, 0xFF)) + body


def altbeacon(beacon_id: bytes, reference_rssi_dbm: int) -> bytes:
    body = b"\x18\x01\xbe\xac" + beacon_id + struct.pack(">bB", reference_rssi_dbm, 0)
    return FLAGS + bytes((len(body) + 1, 0xFF)) + body


def eddystone(*frames: bytes) -> bytes:
    data = FLAGS + bytes.fromhex("0303aafe")
    for frame in frames:
        data += bytes((len(frame) + 3, 0x16, 0xAA, 0xFE)) + frame
    return data


def uid_frame(namespace: bytes, instance: bytes, tx_power_dbm: int) -> bytes:
    return struct.pack(">Bb", 0x00, tx_power_dbm) + namespace + instance + b"\0\0"


def eid_frame(eid: bytes, tx_power_dbm: int) -> bytes:
    return struct.pack(">Bb", 0x30, tx_power_dbm) + eid


def _site(**overrides: object) -> SiteBands:
    resolver = EidResolver()
    resolver.register("band-eid", KEY, K, OFFSET_S)
    settings: dict[str, object] = {
        "ibeacon_uuid": SITE_UUID,
        "altbeacon_prefix": SITE_PREFIX,
        "eddystone_namespace": SITE_NAMESPACE,
        "eid_resolver": resolver,
    }
    settings.update(overrides)
    return SiteBands(**settings)  # type: ignore[arg-type]


def _match(result: BandMatch | Rejection) -> BandMatch:
    assert isinstance(result, BandMatch), result
    return result


def _rejection(result: BandMatch | Rejection) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def test_ibeacon_band_id() -> None:
    match = _match(_site().identify(ibeacon(SITE_UUID, 12, 345, -59), 0.0))
    assert match.band_id == "ib-12-345"
    assert match.format == "ibeacon"
    assert match.measured_power_dbm == -59
    assert match.telemetry is None


def test_ibeacon_zero_major_minor() -> None:
    match = _match(_site().identify(ibeacon(SITE_UUID, 0, 0, -70), 0.0))
    assert match.band_id == "ib-0-0"


@pytest.mark.parametrize("power_dbm", [0, 1, 26, 127])
def test_ibeacon_impossible_power(power_dbm: int) -> None:
    match = _match(_site().identify(ibeacon(SITE_UUID, 1, 2, power_dbm), 0.0))
    assert match.measured_power_dbm is None


def test_ibeacon_other_site_uuid() -> None:
    reason = _rejection(_site().identify(ibeacon(OTHER_UUID, 1, 2, -59), 0.0))
    assert reason == (
        "iBeacon UUID fda50693-a4e2-4fb1-afcf-c6eb07647825 is not this site's"
    )


def test_ibeacon_site_without_uuid() -> None:
    site = _site(ibeacon_uuid=None)
    reason = _rejection(site.identify(ibeacon(SITE_UUID, 1, 2, -59), 0.0))
    assert "ignored: this site has no iBeacon UUID configured" in reason


def test_altbeacon_band_id() -> None:
    beacon_id = SITE_PREFIX + bytes.fromhex("0001000a")
    match = _match(_site().identify(altbeacon(beacon_id, -61), 0.0))
    assert match.band_id == "alt-0001000a"
    assert match.format == "altbeacon"
    assert match.measured_power_dbm == -61


def test_altbeacon_other_prefix() -> None:
    beacon_id = bytes(16) + bytes.fromhex("0001000a")
    reason = _rejection(_site().identify(altbeacon(beacon_id, -61), 0.0))
    assert "AltBeacon id prefix" in reason
    assert "is not this site's" in reason


def test_altbeacon_positive_reference_rssi() -> None:
    beacon_id = SITE_PREFIX + bytes(4)
    match = _match(_site().identify(altbeacon(beacon_id, 5), 0.0))
    assert match.band_id == "alt-00000000"
    assert match.measured_power_dbm is None


def test_uid_band_id_and_power() -> None:
    advert = eddystone(uid_frame(SITE_NAMESPACE, bytes.fromhex("00000000002a"), -29))
    match = _match(_site().identify(advert, 0.0))
    assert match.band_id == "uid-00000000002a"
    assert match.format == "eddystone-uid"
    # Eddystone sends power at 0 m; at 1 m it is 41 dB lower.
    assert match.measured_power_dbm == -70


@pytest.mark.parametrize(
    ("tx_power_dbm", "expected"), [(40, -1), (41, None), (60, None)]
)
def test_uid_power_limits(tx_power_dbm: int, expected: int | None) -> None:
    advert = eddystone(uid_frame(SITE_NAMESPACE, bytes(6), tx_power_dbm))
    assert _match(_site().identify(advert, 0.0)).measured_power_dbm == expected


def test_uid_other_namespace() -> None:
    advert = eddystone(uid_frame(bytes(10), bytes(6), -20))
    reason = _rejection(_site().identify(advert, 0.0))
    assert reason == "Eddystone-UID namespace 00000000000000000000 is not this site's"


def test_uid_with_telemetry() -> None:
    advert = eddystone(uid_frame(SITE_NAMESPACE, bytes(6), -20), TLM_BODY)
    match = _match(_site().identify(advert, 0.0))
    assert match.telemetry is not None
    assert match.telemetry.battery_mv == 3072
    assert match.telemetry.temperature_c == 28.0


def test_telemetry_alone_rejected() -> None:
    reason = _rejection(_site().identify(eddystone(TLM_BODY), 0.0))
    assert "Eddystone-TLM carries no band identity" in reason


def test_url_rejected() -> None:
    advert = eddystone(bytes.fromhex("10f8036769746875620063697472757a"))
    reason = _rejection(_site().identify(advert, 0.0))
    assert reason == "Eddystone-URL carries no band identity"


def test_encrypted_telemetry_rejected() -> None:
    advert = eddystone(bytes.fromhex("2001" + "41" * 12 + "deadbeff"))
    reason = _rejection(_site().identify(advert, 0.0))
    assert "encrypted Eddystone-TLM" in reason


def test_eid_resolves_to_band() -> None:
    now_s = OFFSET_S + 40 * (1 << K) + 17
    eid = compute_eid(KEY, 40 << K, K)
    match = _match(_site().identify(eddystone(eid_frame(eid, -10)), now_s))
    assert match.band_id == "band-eid"
    assert match.format == "eddystone-eid"
    assert match.measured_power_dbm == -51


def test_eid_unknown() -> None:
    advert = eddystone(eid_frame(bytes(8), -10))
    reason = _rejection(_site().identify(advert, OFFSET_S))
    assert reason == (
        "Eddystone-EID 0000000000000000 matches no registered band within one "
        "rotation period of now"
    )


def test_eid_without_resolver() -> None:
    advert = eddystone(eid_frame(bytes(8), -10))
    reason = _rejection(_site(eid_resolver=None).identify(advert, OFFSET_S))
    assert "this site has no EID resolver" in reason


def test_eid_not_cached_across_periods() -> None:
    site = _site()
    eid = compute_eid(KEY, 40 << K, K)
    advert = eddystone(eid_frame(eid, -10))
    now_s = OFFSET_S + 40 * (1 << K)
    assert isinstance(site.identify(advert, now_s), BandMatch)
    # The same bytes three periods later: the decode is cached, the id expired.
    later = site.identify(advert, now_s + 3 * (1 << K))
    assert isinstance(later, Rejection)


def test_aliases_merge_two_identities() -> None:
    instance = bytes.fromhex("0000000000ff")
    site = _site(aliases={"ib-7-8": "band-x", "uid-0000000000ff": "band-x"})
    by_ibeacon = _match(site.identify(ibeacon(SITE_UUID, 7, 8, -59), 0.0))
    by_uid = _match(
        site.identify(eddystone(uid_frame(SITE_NAMESPACE, instance, -20)), 0.0)
    )
    assert by_ibeacon.band_id == "band-x"
    assert by_uid.band_id == "band-x"
    assert by_ibeacon.format != by_uid.format


def test_identify_accepts_bytearray() -> None:
    advert = bytearray(ibeacon(SITE_UUID, 1, 2, -59))
    assert _match(_site().identify(advert, 0.0)).band_id == "ib-1-2"


def test_identify_caches_decode() -> None:
    site = _site()
    advert = ibeacon(SITE_UUID, 31337, 1, -59)
    site.identify(advert, 0.0)
    hits_before = decode_advert_cached.cache_info().hits
    for _ in range(5):
        site.identify(advert, 0.0)
    assert decode_advert_cached.cache_info().hits == hits_before + 5


def test_decode_cache_bounded() -> None:
    assert decode_advert_cached.cache_info().maxsize == 4096


def test_first_identity_frame_wins() -> None:
    advert = ibeacon(OTHER_UUID, 1, 1, -59) + ibeacon(SITE_UUID, 2, 2, -59)[3:]
    match = _match(_site().identify(advert, 0.0))
    assert match.band_id == "ib-2-2"


@pytest.mark.parametrize(
    ("power_dbm", "rssi_dbm", "expected_m"),
    [
        (-59, -59, 1.01076),
        (-59, -40, (40 / 59) ** 10),
        (-3, -100, 400.0),
    ],
)
def test_distance_estimate(power_dbm: int, rssi_dbm: int, expected_m: float) -> None:
    assert estimate_distance_m(power_dbm, rssi_dbm) == pytest.approx(expected_m)


@pytest.mark.parametrize(
    ("power_dbm", "rssi_dbm"), [(0, -60), (12, -80), (-59, 0), (-59, 5)]
)
def test_distance_unknown(power_dbm: int, rssi_dbm: int) -> None:
    assert estimate_distance_m(power_dbm, rssi_dbm) is None


def test_distance_grows_with_weaker_rssi() -> None:
    figures = [estimate_distance_m(-59, rssi) for rssi in range(-30, -101, -1)]
    assert all(isinstance(figure, float) for figure in figures)
    assert figures == sorted(figures)  # type: ignore[type-var]
