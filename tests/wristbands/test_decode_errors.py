"""Malformed and foreign adverts: each gives a reason that names the problem."""

from __future__ import annotations

import pytest

from appliance.wristbands import (
    AdvertError,
    Rejection,
    SiteBands,
    advert_from_hex,
    decode_advert,
    decode_manufacturer_data,
    decode_service_data,
    parse_ad_structures,
    parse_hci_le_advertising_report,
)

IBEACON_BODY = "0215" + "426c7565436861726d426561636f6e73" + "0efe1355c5"
UID_BODY = "00e3" + "12345678901234678901" + "000000000001" + "0000"


def _service(uuid16: int, body_hex: str) -> bytes:
    body = bytes.fromhex(body_hex)
    return bytes((len(body) + 3, 0x16, uuid16 & 0xFF, uuid16 >> 8)) + body


def _manufacturer(company_id: int, body_hex: str) -> bytes:
    body = bytes.fromhex(body_hex)
    return bytes((len(body) + 3, 0xFF, company_id & 0xFF, company_id >> 8)) + body


REJECTED_ADVERTS = [
    ("empty", b"", ["advert is empty"]),
    ("flags only", bytes.fromhex("020106"), ["no complete manufacturer data"]),
    ("truncated", bytes.fromhex("02010603ff4c"), ["offset 3", "declares 3 bytes"]),
    ("ascii text", b"0000000", ["offset 0", "declares 48 bytes"]),
    ("company id cut", bytes.fromhex("02ff4c"), ["too short for the 2-byte company"]),
    ("uuid cut", bytes.fromhex("0216aa"), ["too short for the 16-bit UUID"]),
    ("apple phone", _manufacturer(0x004C, "10050a1c77f95b"), ["type 0x10"]),
    ("apple empty", _manufacturer(0x004C, ""), ["Apple manufacturer data is empty"]),
    (
        "ibeacon length byte",
        _manufacturer(0x004C, "0214" + IBEACON_BODY[4:]),
        ["length byte is 0x14"],
    ),
    (
        "ibeacon short",
        _manufacturer(0x004C, IBEACON_BODY[:36]),
        ["iBeacon data is 18 bytes, expected 23"],
    ),
    (
        "ibeacon wrong company",
        _manufacturer(0x0015, IBEACON_BODY),
        ["company 0x0015 is not an iBeacon", "0x004C"],
    ),
    (
        "altbeacon short",
        _manufacturer(0x0118, "beac" + "11" * 17),
        ["AltBeacon data for company 0x0118 is 19 bytes", "expected 24"],
    ),
    (
        "unknown company",
        _manufacturer(0x0227, "01508094"),
        ["company 0x0227 (4 bytes)"],
    ),
    ("eddystone empty", _service(0xFEAA, ""), ["Eddystone service data is empty"]),
    ("eddystone type", _service(0xFEAA, "40e3"), ["frame type 0x40"]),
    ("uid short", _service(0xFEAA, UID_BODY[:20]), ["Eddystone-UID frame is 10 bytes"]),
    ("tlm no version", _service(0xFEAA, "20"), ["no version byte"]),
    ("tlm version", _service(0xFEAA, "2002" + "00" * 12), ["version 0x02"]),
    (
        "tlm short",
        _service(0xFEAA, "2000" + "00" * 8),
        ["Eddystone-TLM version 0x00 frame is 10 bytes, expected 14"],
    ),
    (
        "etlm short",
        _service(0xFEAA, "2001" + "41" * 12),
        ["version 0x01 (encrypted) frame is 14 bytes, expected 18"],
    ),
    ("eid short", _service(0xFEAA, "30e3aabbcc"), ["Eddystone-EID frame is 5 bytes"]),
    ("url short", _service(0xFEAA, "10"), ["Eddystone-URL frame is 1 byte"]),
    ("url scheme", _service(0xFEAA, "10f804676f6f"), ["0x04676f6f", "reserved"]),
    ("url code", _service(0xFEAA, "10f8036f0e"), ["0x036f0e", "reserved"]),
    ("url space", _service(0xFEAA, "10f8036f20"), ["reserved"]),
    ("ksensor short", _service(0xFEAA, "21010b0c13"), ["KSensor", "5 bytes"]),
    ("unknown service", _service(0x1234, "0102"), ["UUID 0x1234 (2 bytes)"]),
    (
        "tile only",
        _service(0xFEED, "0200c58aaccd312f479e"),
        ["no wristband frame", "Tile tracker"],
    ),
]


@pytest.mark.parametrize(
    ("data", "fragments"),
    [(data, fragments) for _, data, fragments in REJECTED_ADVERTS],
    ids=[name for name, _, _ in REJECTED_ADVERTS],
)
def test_rejected_advert_reason(data: bytes, fragments: list[str]) -> None:
    advert = decode_advert(data)
    assert advert.reason is not None
    assert all(type(frame).__name__ == "ForeignTag" for frame in advert.frames)
    for fragment in fragments:
        assert fragment in advert.reason


def test_reasons_joined_for_several_structures() -> None:
    data = _manufacturer(0x0227, "01") + _service(0xFEAA, "40")
    reason = decode_advert(data).reason
    assert reason is not None
    assert "company 0x0227" in reason
    assert "frame type 0x40" in reason


def test_skipped_structures_listed_beside_frame() -> None:
    data = _manufacturer(0x004C, IBEACON_BODY) + _manufacturer(0x0227, "01")
    advert = decode_advert(data)
    assert advert.reason is None
    assert any("company 0x0227" in problem for problem in advert.problems)


NON_FATAL_PROBLEMS = [
    ("ibeacon extra", _manufacturer(0x004C, IBEACON_BODY + "ff"), "24 bytes"),
    ("uid rfu", _service(0xFEAA, UID_BODY[:-4] + "0100"), "RFU bytes are 0x0100"),
    ("uid half rfu", _service(0xFEAA, UID_BODY[:-2]), "1 of its 2 RFU bytes"),
    ("tlm extra", _service(0xFEAA, "2000" + "00" * 13), "15 bytes"),
    (
        "garbage after end",
        _manufacturer(0x004C, IBEACON_BODY) + bytes.fromhex("0007"),
        "after the zero length byte at offset 27",
    ),
    (
        "url too long",
        _service(0xFEAA, "10f803" + "61" * 18),
        "longer than the 20 the spec allows",
    ),
]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(data, fragment) for _, data, fragment in NON_FATAL_PROBLEMS],
    ids=[name for name, _, _ in NON_FATAL_PROBLEMS],
)
def test_non_fatal_problem_reported(data: bytes, fragment: str) -> None:
    advert = decode_advert(data)
    assert advert.reason is None
    assert len(advert.frames) == 1
    assert any(fragment in problem for problem in advert.problems), advert.problems


def test_foreign_tags_merged_beside_frame() -> None:
    mi_band = "0202017d" + "ff" * 13 + "02aabbccddeeff"
    data = (
        _manufacturer(0x0157, mi_band)
        + _manufacturer(0x004C, IBEACON_BODY)
        + _service(0xFEE0, "8d230000")
    )
    advert = decode_advert(data)
    assert advert.reason is None
    assert [type(frame).__name__ for frame in advert.frames] == [
        "ForeignTag",
        "IBeacon",
    ]


def test_zero_padding_no_problem() -> None:
    advert = decode_advert(_manufacturer(0x004C, IBEACON_BODY) + bytes(4))
    assert advert.reason is None
    assert advert.problems == ()


def test_company_id_out_of_range() -> None:
    advert = decode_manufacturer_data(70000, bytes.fromhex(IBEACON_BODY))
    assert advert.frames == ()
    assert advert.reason == "company id 70000 is outside 0x0000-0xFFFF"


def test_service_uuid_out_of_range() -> None:
    advert = decode_service_data(-1, b"\x00")
    assert advert.frames == ()
    assert advert.reason is not None
    assert "16-bit service UUID -1" in advert.reason


def test_ad_split_problems_named() -> None:
    structures = parse_ad_structures(bytes.fromhex("0201060303aafe0202aa030a0500"))
    assert structures.service_uuids == (0xFEAA,)
    problems = " | ".join(structures.problems)
    assert "16-bit service UUID list has 1 byte" in problems
    assert "tx power level has 2 bytes, expected 1" in problems


def test_hex_with_bad_character() -> None:
    with pytest.raises(AdvertError) as caught:
        advert_from_hex("02 01 0g")
    message = str(caught.value)
    assert "'g' at index 7" in message
    assert "'02 01 0g'" in message
    assert "0-9 and a-f" in message


def test_hex_with_odd_length() -> None:
    with pytest.raises(AdvertError) as caught:
        advert_from_hex("123456789ABCDEF")
    message = str(caught.value)
    assert "15 hex digits is an odd count" in message
    assert "'123456789ABCDEF'" in message


def test_hex_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="odd count"):
        advert_from_hex("abc")


def test_hex_long_text_shortened() -> None:
    with pytest.raises(AdvertError) as caught:
        advert_from_hex("00" * 50 + "zz")
    assert "..." in str(caught.value)
    assert len(str(caught.value)) < 200


def test_hex_error_index_after_prefix() -> None:
    with pytest.raises(AdvertError, match="'z' at index 5 "):
        advert_from_hex(" 0x01z")


def test_hex_accepts_prefix_and_spaces() -> None:
    assert advert_from_hex(" 0x02 01\n06 ") == b"\x02\x01\x06"
    assert advert_from_hex("") == b""


def test_hci_not_advertising_report() -> None:
    report = parse_hci_le_advertising_report(
        bytes.fromhex("040e0401030c00" + "00" * 10)
    )
    assert report.address is None
    assert report.data == b""
    assert "event code 0x0E" in report.problems[0]


def test_hci_packet_too_short() -> None:
    report = parse_hci_le_advertising_report(bytes.fromhex("043e0402"))
    assert report.address is None
    assert "4 bytes, too short" in report.problems[0]


def test_hci_several_reports() -> None:
    packet = bytes.fromhex("043e0c0202" + "00" * 10 + "c5")
    report = parse_hci_le_advertising_report(packet)
    assert report.address is None
    assert "contains 2 reports" in report.problems[0]


def test_hci_rssi_not_available() -> None:
    packet = bytes.fromhex("043e00020100016655443322110" + "07f")
    packet = packet[:2] + bytes((len(packet) - 3,)) + packet[3:]
    report = parse_hci_le_advertising_report(packet)
    assert report.rssi_dbm is None
    assert report.data == b""
    assert report.problems == ()


def test_site_band_wrong_length() -> None:
    with pytest.raises(ValueError, match="ibeacon_uuid is 4 bytes"):
        SiteBands(ibeacon_uuid=b"abcd")
    with pytest.raises(ValueError, match="eddystone_namespace is 16 bytes"):
        SiteBands(eddystone_namespace=bytes(16))
    with pytest.raises(ValueError, match="altbeacon_prefix is 20 bytes"):
        SiteBands(altbeacon_prefix=bytes(20))


def test_identify_rejects_foreign_tag() -> None:
    result = SiteBands(ibeacon_uuid=bytes(16)).identify(
        _service(0xFEAA, "21010b0c1318000021fffdfc12"), 0.0
    )
    assert isinstance(result, Rejection)
    assert "only foreign tags: BlueCharm KSensor" in result.reason


def test_identify_rejects_malformed() -> None:
    result = SiteBands(ibeacon_uuid=bytes(16)).identify(b"\x05\xff\x4c", 0.0)
    assert isinstance(result, Rejection)
    assert "declares 5 bytes" in result.reason
