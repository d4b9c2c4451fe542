"""Vendor frames that are not wristbands, and a small OUI table of tag makers.

Readers at a venue exit also receive adverts from sensor tags, trackers and
phones. Decoding their frames lets ``nightbox decode`` show what a stray
advert is, not only that it is not a wristband. Each decoder returns None
when the bytes do not have the vendor's layout.
"""

from __future__ import annotations

from ._eddystone import expand_url
from ._frames import ForeignTag, IBeacon

HUAMI_COMPANY_ID = 0x0157
GIGASET_COMPANY_ID = 0x0180
MI_BAND_UUID16 = 0xFEE0
TILE_UUID16S = frozenset({0xFEED, 0xFEEC, 0xFD84})
FEASYCOM_UUID16 = 0xFFF0
URIBEACON_UUID16 = 0xFED8
KSENSOR_FRAME_TYPE = 0x21

# Tilt hydrometers send an iBeacon with UUID A495BBx0-C5B1-4B44-B512-1370F02D74DE,
# where x names the colour of the float, and put temperature and gravity in
# major and minor, so the identity changes with every reading.
_TILT_COLOURS = {
    bytes.fromhex(f"a495bb{digit}0c5b14b44b5121370f02d74de"): colour
    for digit, colour in (
        ("1", "red"),
        ("2", "green"),
        ("3", "black"),
        ("4", "purple"),
        ("5", "orange"),
        ("6", "blue"),
        ("7", "yellow"),
        ("8", "pink"),
    )
}
# Default UUID of the Cypress CYALKIT-E02 solar sensor beacon, which puts
# humidity in the low byte of major and temperature in the low byte of minor.
_CYPRESS_UUID = bytes.fromhex("0005000100001000800000805f9b0131")

# Feasycom beacon model codes (first service data byte), as listed by the
# Theengs Decoder 2.5.0 model table.
_FEASYCOM_MODELS = {
    0x15: "BP102",
    0x19: "BP109",
    0x1A: "BP103",
    0x1B: "BP104",
    0x1C: "BP201",
    0x1D: "BP106",
    0x1E: "BP101",
    0x24: "BP120",
    0x27: "BP108",
    0x28: "BP108N",
    0x29: "BP103B",
    0x46: "BP104D",
}
_FEASYCOM_LENGTH = 11
_FEASYCOM_PLUGGED_IN = 0x65
_MI_BAND_LENGTH = 24
_MI_BAND_NOT_MEASURED = 0xFF

# Organisationally unique identifiers of BLE tag and module makers, from the
# IEEE MA-L registry. A vendor is only meaningful for a public address.
_OUI_VENDORS = {
    "A4:C1:38": "Telink Semiconductor (Taipei) Co. Ltd.",
    "AC:23:3F": "Shenzhen Minew Technologies Co., Ltd.",
    "DC:0D:30": "Shenzhen Feasycom Technology Co., Ltd.",
    "24:0A:C4": "Espressif Inc.",
    "30:AE:A4": "Espressif Inc.",
    "00:0B:57": "Silicon Laboratories",
    "EC:1B:BD": "Silicon Laboratories",
    "F4:B8:5E": "Texas Instruments",
    "D0:39:72": "Texas Instruments",
}


def vendor_from_address(address: str) -> str | None:
    """Look up the maker of a public device address in a small OUI table.

    Accepts ``AA:BB:CC:DD:EE:FF`` or dashes. Returns None for unknown
    prefixes. For a random address the result is meaningless.
    """
    prefix = address.strip()[:8].upper().replace("-", ":")
    return _OUI_VENDORS.get(prefix)


def cypress_sensor_values(major: int, minor: int) -> tuple[float, float]:
    """Return (temperature_c, humidity_pct) of a Cypress sensor iBeacon.

    The beacon sends the high byte of its Si7020 readings, so the sensor's
    data sheet formulas apply to ``byte * 256``.
    """
    temperature_c = 175.72 * (minor & 0xFF) / 256 - 46.85
    humidity_pct = 125 * (major & 0xFF) / 256 - 6.0
    return temperature_c, humidity_pct


def decode_vendor_ibeacon(frame: IBeacon) -> ForeignTag | None:
    """Return a foreign tag for iBeacons that carry sensor values, else None."""
    colour = _TILT_COLOURS.get(frame.uuid)
    if colour is not None:
        # NOTE: gravity scaling differs between Tilt models, so the raw
        # major and minor are kept instead of guessing units.
        return ForeignTag(
            "Tilt hydrometer",
            {"colour": colour, "major": frame.major, "minor": frame.minor},
        )
    if frame.uuid == _CYPRESS_UUID:
        temperature_c, humidity_pct = cypress_sensor_values(frame.major, frame.minor)
        return ForeignTag(
            "Cypress sensor beacon",
            {"temperature_c": temperature_c, "humidity_pct": humidity_pct},
        )
    return None


def decode_vendor_manufacturer_data(
    company_id: int, payload: bytes
) -> ForeignTag | None:
    """Decode a known vendor's manufacturer data, or return None."""
    if company_id == HUAMI_COMPANY_ID and len(payload) == _MI_BAND_LENGTH:
        heart_rate = payload[3]
        return ForeignTag(
            "Xiaomi Mi Band",
            {
                "heart_rate_bpm": (
                    None
                    if payload[0] != 0x02 or heart_rate == _MI_BAND_NOT_MEASURED
                    else heart_rate
                ),
                "mac": _mac(payload[18:24]),
            },
        )
    if company_id == GIGASET_COMPANY_ID and payload[:2] == b"\x02\x15":
        # The G-Tag borrows the iBeacon type bytes under Gigaset's company
        # id; the rest of its layout is not public.
        return ForeignTag("Gigaset G-Tag tracker", {"payload": payload.hex()})
    return None


def decode_vendor_service_data(uuid16: int, payload: bytes) -> ForeignTag | None:
    """Decode a known vendor's service data, or return None."""
    if uuid16 in TILE_UUID16S:
        return ForeignTag(
            "Tile tracker",
            {"service_uuid": f"0x{uuid16:04x}", "payload": payload.hex()},
        )
    if uuid16 == MI_BAND_UUID16 and len(payload) == 4:
        return ForeignTag(
            "Xiaomi Mi Band", {"steps": int.from_bytes(payload, "little")}
        )
    if uuid16 == FEASYCOM_UUID16 and len(payload) == _FEASYCOM_LENGTH:
        return _decode_feasycom(payload)
    if uuid16 == URIBEACON_UUID16:
        return _decode_uribeacon(payload)
    return None


def decode_ksensor(payload: bytes) -> ForeignTag | None:
    """Decode the KKM KSensor frame (Eddystone frame type 0x21) or return None.

    Blue Charm and KKM beacons send it under the Eddystone UUID. Byte 2 is
    a sensor mask, and the values follow in mask bit order. Bit 0 is the
    battery (mV) and bit 1 the temperature (signed 8.8 fixed point, degrees
    C). Bit 2 is humidity (8.8 fixed point, %) and bit 3 acceleration x, y
    and z (int16 each).
    """
    if len(payload) < 3 or payload[0] != KSENSOR_FRAME_TYPE:
        return None
    mask = payload[2]
    fields: dict[str, int | float] = {}
    offset = 3
    if mask & 0x01:
        fields["battery_mv"] = int.from_bytes(payload[offset : offset + 2], "big")
        offset += 2
    if mask & 0x02:
        raw = int.from_bytes(payload[offset : offset + 2], "big", signed=True)
        fields["temperature_c"] = raw / 256
        offset += 2
    if mask & 0x04:
        fields["humidity_pct"] = (
            int.from_bytes(payload[offset : offset + 2], "big") / 256
        )
        offset += 2
    if mask & 0x08:
        # NOTE: the frame does not state the acceleration unit, so the raw
        # signed values are kept.
        for axis in "xyz":
            value = int.from_bytes(payload[offset : offset + 2], "big", signed=True)
            fields[f"acceleration_{axis}"] = value
            offset += 2
    if offset > len(payload):
        return None
    return ForeignTag("BlueCharm KSensor", fields)


def _decode_feasycom(payload: bytes) -> ForeignTag:
    model_code = payload[0]
    battery = payload[10]
    plugged_in = battery == _FEASYCOM_PLUGGED_IN
    return ForeignTag(
        "Feasycom beacon",
        {
            "beacon_model": _FEASYCOM_MODELS.get(model_code, f"0x{model_code:02x}"),
            "battery_pct": None if plugged_in else battery & 0x7F,
            "plugged_in": plugged_in,
            "mac": _mac(payload[4:10]),
        },
    )


def _decode_uribeacon(payload: bytes) -> ForeignTag | None:
    # UriBeacon, the predecessor of Eddystone-URL: flags, tx power at 0 m,
    # then the same scheme byte and URL compression.
    if len(payload) < 3:
        return None
    url = expand_url(payload[2], payload[3:])
    if url is None:
        return None
    tx_power_dbm = payload[1] - 256 if payload[1] > 127 else payload[1]
    return ForeignTag(
        "UriBeacon", {"url": url, "tx_power_dbm": tx_power_dbm, "flags": payload[0]}
    )


def _mac(raw: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in raw)
