"""Property tests: the decoder never raises, and built adverts decode back."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.wristbands import (
    Advert,
    AdvertError,
    AltBeacon,
    BandMatch,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    EidResolver,
    ForeignTag,
    IBeacon,
    Rejection,
    SiteBands,
    advert_from_hex,
    compute_eid,
    decode_advert,
    decode_manufacturer_data,
    decode_service_data,
    parse_ad_structures,
    parse_hci_le_advertising_report,
)

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
OFFSET_S = 1_600_000_000.0
K = 9

uint16 = st.integers(min_value=0, max_value=0xFFFF)
int8 = st.integers(min_value=-128, max_value=127)
adverts = st.binary(max_size=62)
# Adverts that look like AD structures more often than random bytes do.
ad_structure = st.tuples(
    st.sampled_from([0x01, 0x03, 0x09, 0x0A, 0x16, 0xFF, 0x42]), st.binary(max_size=30)
).map(lambda pair: bytes((len(pair[1]) + 1, pair[0])) + pair[1])
structured_adverts = st.lists(ad_structure, max_size=4).map(b"".join)
any_advert = st.one_of(adverts, structured_adverts)


def _site() -> SiteBands:
    resolver = EidResolver()
    resolver.register("band-eid", KEY, K, OFFSET_S)
    return SiteBands(
        ibeacon_uuid=bytes(16),
        altbeacon_prefix=bytes(16),
        eddystone_namespace=bytes(10),
        eid_resolver=resolver,
    )


SITE = _site()


def _assert_well_formed(advert: Advert) -> None:
    assert isinstance(advert.frames, tuple)
    assert isinstance(advert.problems, tuple)
    assert all(isinstance(problem, str) and problem for problem in advert.problems)
    wristband = [f for f in advert.frames if not isinstance(f, ForeignTag)]
    if wristband:
        assert advert.reason is None
    else:
        assert isinstance(advert.reason, str)
        assert advert.reason
    encoded = json.dumps(advert.to_json())
    assert json.loads(encoded)["reason"] == advert.reason


@given(any_advert)
@settings(max_examples=400)
def test_parse_ad_structures_never_raises(data: bytes) -> None:
    structures = parse_ad_structures(data)
    assert all(isinstance(problem, str) for problem in structures.problems)
    assert sum(len(value) + 2 for _, value in structures.structures) <= len(data)
    assert all(0 <= key <= 0xFFFF for key in structures.manufacturer_data)
    assert all(0 <= key <= 0xFFFF for key in structures.service_data)
    if structures.tx_power_dbm is not None:
        assert -128 <= structures.tx_power_dbm <= 127


@given(any_advert)
@settings(max_examples=400)
def test_decode_advert_never_raises(data: bytes) -> None:
    _assert_well_formed(decode_advert(data))


@given(st.integers(min_value=-5, max_value=0x10005), st.binary(max_size=40))
@settings(max_examples=300)
def test_decode_manufacturer_data_never_raises(company_id: int, payload: bytes) -> None:
    _assert_well_formed(decode_manufacturer_data(company_id, payload))


@given(
    st.one_of(st.sampled_from([0xFEAA, 0xFED8, 0xFEE0, 0xFFF0, 0xFEED]), uint16),
    st.binary(max_size=30),
)
@settings(max_examples=300)
def test_decode_service_data_never_raises(uuid16: int, payload: bytes) -> None:
    _assert_well_formed(decode_service_data(uuid16, payload))


@given(any_advert, st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=300)
def test_identify_never_raises(data: bytes, now_s: float) -> None:
    result = SITE.identify(data, now_s)
    assert isinstance(result, BandMatch | Rejection)
    if isinstance(result, Rejection):
        assert result.reason


@given(st.binary(max_size=60))
def test_parse_hci_report_never_raises(packet: bytes) -> None:
    report = parse_hci_le_advertising_report(packet)
    if report.address is None:
        assert report.problems
        assert report.data == b""


@given(st.text(max_size=40))
def test_advert_from_hex_raises_only_advert_error(text: str) -> None:
    try:
        result = advert_from_hex(text)
    except AdvertError as error:
        assert str(error).startswith("invalid advert hex")
    else:
        assert isinstance(result, bytes)


@given(st.binary(max_size=40), st.booleans())
def test_advert_from_hex_round_trip(data: bytes, upper: bool) -> None:
    text = data.hex().upper() if upper else data.hex()
    assert advert_from_hex(text) == data


def _ibeacon_advert(uuid: bytes, major: int, minor: int, power_dbm: int) -> bytes:
    body = b"\x4c\x00\x02\x15" + uuid + struct.pack(">HHb", major, minor, power_dbm)
    return b"\x02\x01\x06" + bytes((len(body) + 1, 0xFF)) + body


@given(
    st.binary(min_size=16, max_size=16),
    st.one_of(st.just(0), uint16),
    st.one_of(st.just(0), uint16),
    int8,
)
def test_ibeacon_round_trip(uuid: bytes, major: int, minor: int, power: int) -> None:
    advert = decode_advert(_ibeacon_advert(uuid, major, minor, power))
    if advert.frames and isinstance(advert.frames[0], ForeignTag):
        return  # a Tilt or Cypress UUID, drawn by chance
    assert advert.frames == (IBeacon(uuid, major, minor, power),)
    assert advert.problems == ()
    site = SiteBands(ibeacon_uuid=uuid)
    match = site.identify(_ibeacon_advert(uuid, major, minor, power), 0.0)
    assert isinstance(match, BandMatch)
    assert match.band_id == f"ib-{major}-{minor}"
    assert match.measured_power_dbm == (power if power < 0 else None)


@given(
    st.binary(min_size=10, max_size=10),
    st.binary(min_size=6, max_size=6),
    int8,
    st.booleans(),
    structured_adverts,
)
def test_uid_round_trip(
    namespace: bytes, instance: bytes, tx_power: int, rfu: bool, noise: bytes
) -> None:
    frame = struct.pack(">Bb", 0x00, tx_power) + namespace + instance
    if rfu:
        frame += b"\x00\x00"
    structure = bytes((len(frame) + 3, 0x16, 0xAA, 0xFE)) + frame
    # Other complete structures before it must not change the result.
    advert = decode_advert(noise + structure)
    uids = [f for f in advert.frames if isinstance(f, EddystoneUid)]
    assert uids[-1] == EddystoneUid(namespace, instance, tx_power)
    match = SiteBands(eddystone_namespace=namespace).identify(structure, 0.0)
    assert isinstance(match, BandMatch)
    assert match.band_id == f"uid-{instance.hex()}"
    expected_power = tx_power - 41
    assert match.measured_power_dbm == (expected_power if expected_power < 0 else None)


@given(st.binary(min_size=20, max_size=20), uint16, int8, st.integers(0, 255))
def test_altbeacon_round_trip(
    beacon_id: bytes, company_id: int, reference_rssi: int, reserved: int
) -> None:
    payload = b"\xbe\xac" + beacon_id + struct.pack(">bB", reference_rssi, reserved)
    advert = decode_manufacturer_data(company_id, payload)
    if company_id == 0x004C:
        assert advert.frames == ()
        return
    assert advert.frames == (
        AltBeacon(beacon_id, company_id, reference_rssi, reserved),
    )


@given(
    uint16,
    st.integers(min_value=-0x8000, max_value=0x7FFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
)
def test_tlm_round_trip(
    battery: int, temperature: int, count: int, sec_cnt: int
) -> None:
    frame = struct.pack(">BBHhII", 0x20, 0x00, battery, temperature, count, sec_cnt)
    advert = decode_service_data(0xFEAA, frame)
    tlm = advert.frames[0]
    assert isinstance(tlm, EddystoneTlm)
    assert tlm.battery_mv == battery
    if temperature == -0x8000:
        assert tlm.temperature_c is None
    else:
        assert tlm.temperature_c == temperature / 256
    assert tlm.advertising_count == count
    assert tlm.sec_cnt == sec_cnt
    assert tlm.uptime_s == sec_cnt / 10


url_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=17
)


@given(st.integers(0, 3), url_text, int8)
def test_url_round_trip(scheme: int, text: str, tx_power: int) -> None:
    frame = struct.pack(">Bb", 0x10, tx_power) + bytes((scheme,)) + text.encode()
    url = decode_service_data(0xFEAA, frame).frames[0]
    prefixes = ("http://www.", "https://www.", "http://", "https://")
    assert url == EddystoneUrl(prefixes[scheme] + text, tx_power)


@given(st.integers(min_value=0, max_value=100_000), st.floats(0, 1))
def test_eid_round_trip(period_index: int, fraction: float) -> None:
    period_s = 1 << K
    eid = compute_eid(KEY, period_index * period_s, K)
    now_s = OFFSET_S + (period_index + fraction * 0.999) * period_s
    frame = struct.pack(">Bb", 0x30, -20) + eid
    advert = b"\x02\x01\x06" + bytes((len(frame) + 3, 0x16, 0xAA, 0xFE)) + frame
    match = SITE.identify(advert, now_s)
    assert isinstance(match, BandMatch)
    assert match.band_id == "band-eid"
