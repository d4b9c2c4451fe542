"""Band identities in BLE advertising data, with the box's rules.

Advertising data is a sequence of AD structures: a length byte, an AD type
byte and ``length - 1`` data bytes (Bluetooth Core Spec Vol 3 Part C
section 11). A zero length byte ends the data and a structure that runs
past the end is dropped with everything after it, as the box does.

Band keys are those of the box: ``ib-<major>-<minor>`` (iBeacon),
``alt-<last 4 id bytes hex>`` (AltBeacon), ``uid-<instance hex>``
(Eddystone-UID). An Eddystone-EID cannot be resolved here, because the
identity keys stay on the box, so an EID passes as ``eid-<ephemeral id hex>``
and the box resolves the advert.

``SiteFilter.identify`` runs for every advert and needs no heap: it
reads the bytes in place and writes the identity into a preallocated
``bytearray(KEY_SIZE)``. ``decode`` builds frame dicts for diagnosis and
tests, and may allocate.
"""

import binascii

from micropython import const

# AD types, Bluetooth Assigned Numbers section "Common Data Types".
_AD_SERVICE_DATA_16 = const(0x16)
_AD_MANUFACTURER = const(0xFF)
# Company identifiers, Bluetooth Assigned Numbers.
_COMPANY_APPLE = const(0x004C)
_UUID16_EDDYSTONE = const(0xFEAA)
# iBeacon: 0x02 0x15, 16-byte UUID, major, minor (big-endian), measured
# power at 1 m (int8): 23 bytes after the company id.
_IBEACON_LENGTH = const(23)
# AltBeacon spec 1.0: code 0xBEAC, 20-byte beacon id, reference RSSI (int8),
# reserved byte. The box accepts a frame that lacks the reserved byte.
_ALTBEACON_MIN_LENGTH = const(23)
# Eddystone frame types and minimum lengths (google/eddystone protocol spec).
_EDDYSTONE_UID = const(0x00)
_EDDYSTONE_URL = const(0x10)
_EDDYSTONE_TLM = const(0x20)
_EDDYSTONE_EID = const(0x30)
_UID_MIN_LENGTH = const(18)
_EID_LENGTH = const(10)
_TLM_LENGTH = const(14)
_ETLM_LENGTH = const(18)
_URL_MIN_LENGTH = const(3)

KIND_IBEACON = const(1)
KIND_ALTBEACON = const(2)
KIND_UID = const(3)
KIND_EID = const(4)
# A key is the kind byte and up to 8 identity bytes, zero-padded.
KEY_SIZE = const(9)

_KEY_PREFIXES = ("", "ib-", "alt-", "uid-", "eid-")
_KEY_LENGTHS = (0, 4, 4, 6, 8)

# Sensor products that send iBeacons but are no wristbands: Tilt hydrometers
# (UUID A495BBx0-C5B1-4B44-B512-1370F02D74DE, x = 1..8 names the colour) and
# the Cypress CYALKIT-E02 sensor beacon. The box reports them as foreign
# tags, so they never name a band here either.
_TILT_UUID = b"\xa4\x95\xbb\x00\xc5\xb1\x4b\x44\xb5\x12\x13\x70\xf0\x2d\x74\xde"
_CYPRESS_UUID = b"\x00\x05\x00\x01\x00\x00\x10\x00\x80\x00\x00\x80\x5f\x9b\x01\x31"

_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_EXPANSIONS = (
    ".com/",
    ".org/",
    ".edu/",
    ".net/",
    ".info/",
    ".biz/",
    ".gov/",
    ".com",
    ".org",
    ".edu",
    ".net",
    ".info",
    ".biz",
    ".gov",
)


def _equal(buf, start, expected):
    for i in range(len(expected)):
        if buf[start + i] != expected[i]:
            return False
    return True


def _is_sensor_ibeacon(buf, start):
    # ``start`` is the first UUID byte.
    if _equal(buf, start, _CYPRESS_UUID):
        return True
    for i in range(16):
        value = buf[start + i]
        if i == 3:
            if value & 0x0F or not 0x10 <= value <= 0x80:
                return False
        elif value != _TILT_UUID[i]:
            return False
    return True


class SiteFilter:
    """The site's band identities, matched against raw advertising data.

    ``ibeacon_uuid`` (16 bytes), ``altbeacon_prefix`` (the first 16 bytes of
    the AltBeacon id) and ``eddystone_namespace`` (10 bytes) are None for a
    format the site does not use. ``eid`` lets Eddystone-EID frames pass.
    """

    def __init__(
        self,
        ibeacon_uuid=None,
        altbeacon_prefix=None,
        eddystone_namespace=None,
        eid=False,
    ):
        self.ibeacon_uuid = ibeacon_uuid
        self.altbeacon_prefix = altbeacon_prefix
        self.eddystone_namespace = eddystone_namespace
        self.eid = eid

    def identify(self, buf, start, length, key):
        """Write the first site band named in ``buf[start:start+length]`` into ``key``.

        ``key`` is a ``bytearray(KEY_SIZE)``. Returns the kind (``KIND_*``)
        or 0 when the advert names no band of this site. Needs no heap
        and never raises on any bytes.
        """
        end = start + length
        position = start
        while position < end:
            size = buf[position]
            if size == 0:
                break
            following = position + 1 + size
            if following > end:
                break
            ad_type = buf[position + 1]
            kind = 0
            if ad_type == _AD_MANUFACTURER and size >= 3:
                kind = self._manufacturer(buf, position + 2, size - 1, key)
            elif ad_type == _AD_SERVICE_DATA_16 and size >= 3:
                kind = self._service(buf, position + 2, size - 1, key)
            if kind:
                return kind
            position = following
        return 0

    def _manufacturer(self, buf, start, length, key):
        company = buf[start] | buf[start + 1] << 8
        payload = start + 2
        payload_length = length - 2
        if company == _COMPANY_APPLE:
            if (
                self.ibeacon_uuid is None
                or payload_length < _IBEACON_LENGTH
                or buf[payload] != 0x02
                or buf[payload + 1] != 0x15
                or _is_sensor_ibeacon(buf, payload + 2)
                or not _equal(buf, payload + 2, self.ibeacon_uuid)
            ):
                return 0
            return _write_key(key, KIND_IBEACON, buf, payload + 18, 4)
        if (
            self.altbeacon_prefix is None
            or payload_length < _ALTBEACON_MIN_LENGTH
            or buf[payload] != 0xBE
            or buf[payload + 1] != 0xAC
            or not _equal(buf, payload + 2, self.altbeacon_prefix)
        ):
            return 0
        return _write_key(key, KIND_ALTBEACON, buf, payload + 18, 4)

    def _service(self, buf, start, length, key):
        if buf[start] | buf[start + 1] << 8 != _UUID16_EDDYSTONE or length < 3:
            return 0
        frame = start + 2
        frame_length = length - 2
        frame_type = buf[frame]
        if frame_type == _EDDYSTONE_UID:
            namespace = self.eddystone_namespace
            if (
                namespace is None
                or frame_length < _UID_MIN_LENGTH
                or not _equal(buf, frame + 2, namespace)
            ):
                return 0
            return _write_key(key, KIND_UID, buf, frame + 12, 6)
        if frame_type == _EDDYSTONE_EID and self.eid and frame_length >= _EID_LENGTH:
            return _write_key(key, KIND_EID, buf, frame + 2, 8)
        return 0


def _write_key(key, kind, buf, start, count):
    key[0] = kind
    for i in range(8):
        key[1 + i] = buf[start + i] if i < count else 0
    return kind


def band_key(key):
    """Return the band id text of a key written by ``SiteFilter.identify``."""
    kind = key[0]
    if kind == KIND_IBEACON:
        return "ib-%d-%d" % (key[1] << 8 | key[2], key[3] << 8 | key[4])
    identity = bytes(key[1 : 1 + _KEY_LENGTHS[kind]])
    return _KEY_PREFIXES[kind] + binascii.hexlify(identity).decode()


def decode(data):
    """Decode the wristband frames of an advert into dicts, in advert order.

    Field names and values follow the box's ``frame_to_json``: bytes as
    lowercase hex, powers as signed dBm. Vendor frames (sensor tags) are
    left out. Eddystone-TLM carries ``sec_cnt`` (0.1 s units) without the
    box's derived ``uptime_s``, because an ESP32 float has 24 bits of
    mantissa. Never raises on any bytes.
    """
    frames = []
    end = len(data)
    position = 0
    while position < end:
        size = data[position]
        if size == 0:
            break
        following = position + 1 + size
        if following > end:
            break
        value = bytes(data[position + 2 : following])
        ad_type = data[position + 1]
        frame = None
        if ad_type == _AD_MANUFACTURER and len(value) >= 2:
            frame = _decode_manufacturer(value[0] | value[1] << 8, value[2:])
        elif (
            ad_type == _AD_SERVICE_DATA_16
            and len(value) >= 2
            and value[0] | value[1] << 8 == _UUID16_EDDYSTONE
        ):
            frame = _decode_eddystone(value[2:])
        if frame is not None:
            frames.append(frame)
        position = following
    return frames


def _hex(value):
    return binascii.hexlify(value).decode()


def _signed(byte):
    return byte - 256 if byte > 127 else byte


def _decode_manufacturer(company, payload):
    if company == _COMPANY_APPLE:
        if (
            len(payload) < _IBEACON_LENGTH
            or payload[0] != 0x02
            or payload[1] != 0x15
            or _is_sensor_ibeacon(payload, 2)
        ):
            return None
        return {
            "format": "ibeacon",
            "uuid": _hex(payload[2:18]),
            "major": payload[18] << 8 | payload[19],
            "minor": payload[20] << 8 | payload[21],
            "measured_power_dbm": _signed(payload[22]),
        }
    if len(payload) < _ALTBEACON_MIN_LENGTH or payload[0] != 0xBE or payload[1] != 0xAC:
        return None
    return {
        "format": "altbeacon",
        "beacon_id": _hex(payload[2:22]),
        "manufacturer_id": company,
        "reference_rssi_dbm": _signed(payload[22]),
        "manufacturer_reserved": payload[23] if len(payload) > 23 else 0,
    }


def _decode_eddystone(frame):
    if not frame:
        return None
    frame_type = frame[0]
    if frame_type == _EDDYSTONE_UID and len(frame) >= _UID_MIN_LENGTH:
        return {
            "format": "eddystone-uid",
            "namespace": _hex(frame[2:12]),
            "instance": _hex(frame[12:18]),
            "tx_power_dbm": _signed(frame[1]),
        }
    if frame_type == _EDDYSTONE_EID and len(frame) >= _EID_LENGTH:
        return {
            "format": "eddystone-eid",
            "eid": _hex(frame[2:10]),
            "tx_power_dbm": _signed(frame[1]),
        }
    if frame_type == _EDDYSTONE_TLM and len(frame) >= 2:
        return _decode_tlm(frame)
    if frame_type == _EDDYSTONE_URL and len(frame) >= _URL_MIN_LENGTH:
        url = _expand_url(frame[2], frame[3:])
        if url is None:
            return None
        return {
            "format": "eddystone-url",
            "url": url,
            "tx_power_dbm": _signed(frame[1]),
        }
    return None


def _decode_tlm(frame):
    if frame[1] == 0x00 and len(frame) >= _TLM_LENGTH:
        raw_temperature = frame[4] << 8 | frame[5]
        if raw_temperature == 0x8000:
            temperature_c = None
        else:
            # Signed 8.8 fixed point: exact in a 32-bit float as well.
            temperature_c = (
                raw_temperature - 0x10000
                if raw_temperature & 0x8000
                else raw_temperature
            ) / 256
        return {
            "format": "eddystone-tlm",
            "battery_mv": frame[2] << 8 | frame[3],
            "temperature_c": temperature_c,
            "advertising_count": int.from_bytes(frame[6:10], "big"),
            "sec_cnt": int.from_bytes(frame[10:14], "big"),
        }
    if frame[1] == 0x01 and len(frame) >= _ETLM_LENGTH:
        return {
            "format": "eddystone-etlm",
            "encrypted": _hex(frame[2:14]),
            "salt": frame[14] << 8 | frame[15],
            "mic": frame[16] << 8 | frame[17],
        }
    return None


def _expand_url(scheme, encoded):
    # Codes 0x0E-0x20 and 0x7F-0xFF are reserved by the Eddystone-URL spec.
    if scheme >= len(_URL_SCHEMES):
        return None
    parts = [_URL_SCHEMES[scheme]]
    for byte in encoded:
        if byte < len(_URL_EXPANSIONS):
            parts.append(_URL_EXPANSIONS[byte])
        elif 0x20 < byte < 0x7F:
            parts.append(chr(byte))
        else:
            return None
    return "".join(parts)
