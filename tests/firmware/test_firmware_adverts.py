"""The firmware's advert decoder against the box's, on real MicroPython.

Every vector of tests/vectors/adverts.json is turned into advertising data
(AD structures) the way a reader would receive it, decoded by
``appliance.wristbands`` and by the firmware under MicroPython, and both
must give the same wristband frames and the same band key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from appliance.sim._adverts import (
    altbeacon,
    eddystone_eid,
    eddystone_tlm,
    eddystone_uid,
    ibeacon,
)
from appliance.wristbands import (
    AltBeacon,
    BandMatch,
    EddystoneEid,
    EddystoneUid,
    ForeignTag,
    IBeacon,
    SiteBands,
    decode_advert,
    frame_to_json,
    parse_hci_le_advertising_report,
)

from micropython_runner import Results, run_scenario

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "adverts.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
SITE_UUID = bytes.fromhex("426c7565436861726d426561636f6e73")
NAMESPACE = bytes.fromhex("00112233445566778899")
ALT_ID = bytes.fromhex("2f234454cf6d4a0fadf2f4911ba9ffa600010002")


def _structure(ad_type: int, value: bytes) -> bytes:
    return bytes((len(value) + 1, ad_type)) + value


def _service(uuid16: int, payload: bytes) -> bytes:
    return _structure(0x16, uuid16.to_bytes(2, "little") + payload)


def vector_adverts(vector: dict[str, Any]) -> list[bytes]:
    """Return the advertising data a reader would receive for a vector."""
    data = bytes.fromhex(vector["hex"])
    kind = vector["input_kind"]
    context = vector.get("context") or {}
    if kind.startswith("raw HCI"):
        return [parse_hci_le_advertising_report(data).data]
    if kind.startswith("AD structures"):
        return [data]
    if kind.startswith("8-byte EID"):
        return [_service(0xFEAA, b"\x30\xee" + data)]
    if kind.startswith("manufacturer_data hex + service data"):
        steps = bytes.fromhex(context["servicedata"])
        return [_structure(0xFF, data) + _service(0xFEE0, steps)]
    if kind.startswith("manufacturer_data payload"):
        company = context["company_id"].to_bytes(2, "little")
        return [_structure(0xFF, company + data)]
    if kind.startswith("manufacturer_data"):
        return [_structure(0xFF, data)]
    if kind.startswith("service_data payload for UUID 0x"):
        uuid16 = int(kind.split("UUID 0x")[1][:4], 16)
        return [_service(uuid16, data)]
    if kind.startswith("service_data payload"):
        return [
            _service(int(text, 16), data) for text in context["service_uuids_accepted"]
        ]
    raise AssertionError(
        f"vector {vector['id']}: input kind {kind!r} has no advert rule"
    )


def _synthetic() -> dict[str, bytes]:
    flags = _structure(0x01, b"\x06")
    tlm = eddystone_tlm(3000, 21.5, 10, 100)
    return {
        "zero-major-minor": flags + ibeacon(SITE_UUID, 0, 0, -59),
        "positive-power": ibeacon(SITE_UUID, 65535, 1, 12),
        "altbeacon": altbeacon(0x0118, ALT_ID, -60),
        "altbeacon-no-reserved": _structure(
            0xFF, b"\x18\x01\xbe\xac" + ALT_ID + b"\xc4"
        ),
        "altbeacon-under-apple": altbeacon(0x004C, ALT_ID, -60),
        "uid": eddystone_uid(NAMESPACE, bytes.fromhex("00000000002a"), -20),
        "uid-no-rfu": _service(0xFEAA, b"\x00\xec" + NAMESPACE + bytes(6)),
        "eid": eddystone_eid(bytes.fromhex("0102030405060708"), -18),
        "tlm-then-ibeacon": tlm + ibeacon(SITE_UUID, 1, 7, -59),
        "tilt-uuid": ibeacon(
            bytes.fromhex("a495bb30c5b14b44b5121370f02d74de"), 1, 2, -59
        ),
        "truncated-structure": ibeacon(SITE_UUID, 1, 7, -59)[:-1],
        "zero-length-end": ibeacon(SITE_UUID, 3, 4, -59) + b"\x00\x00",
        "empty": b"",
    }


def _items() -> list[dict[str, Any]]:
    items = []
    for vector in VECTORS:
        for index, advert in enumerate(vector_adverts(vector)):
            items.append(_item(f"{vector['id']}#{index}", advert))
    for name, advert in _synthetic().items():
        items.append(_item(name, advert))
    return items


def _item(item_id: str, advert: bytes) -> dict[str, Any]:
    frames = decode_advert(advert).frames
    identities: dict[str, str | None] = {
        "ibeacon_uuid": None,
        "altbeacon_prefix": None,
        "eddystone_namespace": None,
    }
    for frame in frames:
        if isinstance(frame, IBeacon) and identities["ibeacon_uuid"] is None:
            identities["ibeacon_uuid"] = frame.uuid.hex()
        elif isinstance(frame, AltBeacon) and identities["altbeacon_prefix"] is None:
            identities["altbeacon_prefix"] = frame.beacon_id[:16].hex()
        elif (
            isinstance(frame, EddystoneUid)
            and identities["eddystone_namespace"] is None
        ):
            identities["eddystone_namespace"] = frame.namespace.hex()
    return {"id": item_id, "adv": advert.hex(), **identities}


def expected_frames(advert: bytes) -> list[dict[str, Any]]:
    """Return the box's wristband frames as JSON, without derived uptime_s."""
    frames = []
    for frame in decode_advert(advert).frames:
        if isinstance(frame, ForeignTag):
            continue
        as_json = frame_to_json(frame)
        as_json.pop("uptime_s", None)
        frames.append(as_json)
    return frames


def expected_band(item: dict[str, Any]) -> str | None:
    """Return the box's band key; an EID passes on the reader by its ephemeral id."""
    advert = bytes.fromhex(item["adv"])

    def identity(name: str) -> bytes | None:
        value = item[name]
        return bytes.fromhex(value) if value else None

    site = SiteBands(
        ibeacon_uuid=identity("ibeacon_uuid"),
        altbeacon_prefix=identity("altbeacon_prefix"),
        eddystone_namespace=identity("eddystone_namespace"),
    )
    match = site.identify(advert, 0.0)
    if isinstance(match, BandMatch):
        return match.band_id
    for frame in decode_advert(advert).frames:
        if isinstance(frame, EddystoneEid):
            return f"eid-{frame.eid.hex()}"
    return None


ITEMS = _items()


@pytest.fixture(scope="module")
def results() -> Results:
    return run_scenario("adverts", {"/adverts.json": json.dumps(ITEMS)})


@pytest.mark.parametrize("item", ITEMS, ids=[item["id"] for item in ITEMS])
def test_advert_frames_match_box(results: Results, item: dict[str, Any]) -> None:
    decoded = results["identify_all"][item["id"]]
    assert decoded["frames"] == expected_frames(bytes.fromhex(item["adv"]))


@pytest.mark.parametrize("item", ITEMS, ids=[item["id"] for item in ITEMS])
def test_advert_band_matches_box(results: Results, item: dict[str, Any]) -> None:
    decoded = results["identify_all"][item["id"]]
    assert decoded["band"] == expected_band(item)


@pytest.mark.parametrize("item", ITEMS, ids=[item["id"] for item in ITEMS])
def test_advert_foreign_site_filtered(results: Results, item: dict[str, Any]) -> None:
    decoded = results["identify_all"][item["id"]]
    frames = decoded["frames"]
    eid_frames = [frame for frame in frames if frame["format"] == "eddystone-eid"]
    assert decoded["foreign_band"] is None or eid_frames


def test_advert_band_keys_of_edge_cases(results: Results) -> None:
    decoded = results["identify_all"]
    assert decoded["zero-major-minor"]["band"] == "ib-0-0"
    assert decoded["positive-power"]["band"] == "ib-65535-1"
    assert decoded["altbeacon"]["band"] == "alt-00010002"
    assert decoded["altbeacon-no-reserved"]["band"] == "alt-00010002"
    assert decoded["altbeacon-under-apple"]["band"] is None
    assert decoded["uid"]["band"] == "uid-00000000002a"
    assert decoded["eid"]["band"] == "eid-0102030405060708"
    assert decoded["tlm-then-ibeacon"]["band"] == "ib-1-7"
    assert decoded["tilt-uuid"]["band"] is None
    assert decoded["truncated-structure"]["band"] is None
    assert decoded["zero-length-end"]["band"] == "ib-3-4"


def test_advert_measured_power_signed(results: Results) -> None:
    frames = results["identify_all"]["positive-power"]["frames"]
    assert frames[0]["measured_power_dbm"] == 12
    frames = results["identify_all"]["zero-major-minor"]["frames"]
    assert frames[0]["measured_power_dbm"] == -59


def test_advert_eid_switch(results: Results) -> None:
    outcome = results["eid_switch"]
    assert outcome["allowed"] == "eid-0011223344556677"
    assert outcome["blocked"] == 0


def test_advert_decoders_never_raise(results: Results) -> None:
    outcome = results["never_raises"]
    assert outcome["inputs"] > 4000
    assert outcome["failures"] == []


def test_every_vector_has_advert() -> None:
    ids = {item["id"].split("#")[0] for item in ITEMS}
    assert {vector["id"] for vector in VECTORS} <= ids
