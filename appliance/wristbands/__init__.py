"""Wristband adverts: decoding, Eddystone-EID resolution and site band matching.

Readers at venue exits pass the raw advertising data of every BLE advert
they see. ``decode_advert`` turns it into frames (iBeacon, AltBeacon,
Eddystone UID, EID, TLM and URL, plus foreign vendor tags) and never raises
on any bytes. ``SiteBands.identify`` maps an advert to one of the site's
bands or rejects it with a reason.

Example, an iBeacon with flags::

    data = advert_from_hex(
        "0201061aff4c000215" "41424344454647484940414243444546" "00010002f8"
    )
    decode_advert(data).to_json()["frames"][0]["major"]  # 1
"""

from ._adverts import (
    AdStructures,
    AdvertError,
    HciAdvertisingReport,
    advert_from_hex,
    parse_ad_structures,
    parse_hci_le_advertising_report,
    split_ad_structures,
)
from ._decode import (
    DECODE_CACHE_SIZE,
    Advert,
    decode_advert,
    decode_advert_cached,
    decode_manufacturer_data,
    decode_service_data,
)
from ._eddystone import expand_url
from ._eid import EidResolver, compute_eid, compute_temporary_key
from ._frames import (
    AltBeacon,
    EddystoneEid,
    EddystoneEtlm,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    ForeignTag,
    Frame,
    IBeacon,
    frame_to_json,
)
from ._identity import (
    MAX_DISTANCE_M,
    BandMatch,
    Rejection,
    SiteBands,
    estimate_distance_m,
)
from ._vendors import cypress_sensor_values, vendor_from_address

__all__ = [
    "DECODE_CACHE_SIZE",
    "MAX_DISTANCE_M",
    "AdStructures",
    "Advert",
    "AdvertError",
    "AltBeacon",
    "BandMatch",
    "EddystoneEid",
    "EddystoneEtlm",
    "EddystoneTlm",
    "EddystoneUid",
    "EddystoneUrl",
    "EidResolver",
    "ForeignTag",
    "Frame",
    "HciAdvertisingReport",
    "IBeacon",
    "Rejection",
    "SiteBands",
    "advert_from_hex",
    "compute_eid",
    "compute_temporary_key",
    "cypress_sensor_values",
    "decode_advert",
    "decode_advert_cached",
    "decode_manufacturer_data",
    "decode_service_data",
    "estimate_distance_m",
    "expand_url",
    "frame_to_json",
    "parse_ad_structures",
    "parse_hci_le_advertising_report",
    "split_ad_structures",
    "vendor_from_address",
]
