"""Scenario: decode and identify adverts listed in /adverts.json.

Each item has ``id``, ``adv`` (hex) and the site identities in hex (or
null). The result maps each id to the decoded frames, the band key for the
site, and the band key for a foreign site (same formats, other identities).
"""

import binascii
import json

import micropython
from nbreader.adverts import KEY_SIZE, SiteFilter, band_key, decode


def _bytes(text):
    return binascii.unhexlify(text) if text else None


def _site(item, eid):
    return SiteFilter(
        _bytes(item["ibeacon_uuid"]),
        _bytes(item["altbeacon_prefix"]),
        _bytes(item["eddystone_namespace"]),
        eid,
    )


def _foreign(item):
    def other(text):
        if not text:
            return None
        return bytes(byte ^ 0xFF for byte in binascii.unhexlify(text))

    return SiteFilter(
        other(item["ibeacon_uuid"]),
        other(item["altbeacon_prefix"]),
        other(item["eddystone_namespace"]),
        False,
    )


def _identify_locked(site, buffer, start, length, key):
    micropython.heap_lock()
    try:
        return site.identify(buffer, start, length, key)
    finally:
        micropython.heap_unlock()


def identify_all():
    with open("/adverts.json") as file:
        items = json.load(file)
    results = {}
    key = bytearray(KEY_SIZE)
    for item in items:
        adv = binascii.unhexlify(item["adv"])
        # The advert sits inside a larger buffer, as in the scan ring.
        buffer = bytearray(7) + adv + bytearray(5)
        kind = _identify_locked(_site(item, True), buffer, 7, len(adv), key)
        band = band_key(key) if kind else None
        foreign_kind = _identify_locked(_foreign(item), buffer, 7, len(adv), key)
        results[item["id"]] = {
            "frames": decode(adv),
            "band": band,
            "foreign_band": band_key(key) if foreign_kind else None,
        }
    return results


def eid_switch():
    adv = binascii.unhexlify("0303aafe0d16aafe30e80011223344556677")
    key = bytearray(KEY_SIZE)
    allowed = SiteFilter(None, None, None, True).identify(adv, 0, len(adv), key)
    allowed_band = band_key(key) if allowed else None
    blocked = SiteFilter(None, None, None, False).identify(adv, 0, len(adv), key)
    return {"allowed": allowed_band, "blocked": blocked}


def never_raises():
    """Feed every prefix of every advert and random bytes to both decoders."""
    import random

    with open("/adverts.json") as file:
        items = json.load(file)
    site = SiteFilter(bytes(range(16)), bytes(range(16)), bytes(range(10)), True)
    key = bytearray(KEY_SIZE)
    inputs = []
    for item in items:
        adv = binascii.unhexlify(item["adv"])
        inputs.extend(adv[:end] for end in range(len(adv) + 1))
        for position in range(len(adv)):
            changed = bytearray(adv)
            changed[position] ^= 0xFF
            inputs.append(bytes(changed))
    random.seed(7)
    for _ in range(2000):
        inputs.append(
            bytes(random.getrandbits(8) for _ in range(random.getrandbits(6)))
        )
    failures = []
    for data in inputs:
        try:
            site.identify(data, 0, len(data), key)
            decode(data)
        except Exception as err:
            failures.append([binascii.hexlify(data).decode(), repr(err)])
    return {"inputs": len(inputs), "failures": failures[:5]}


CASES = [
    ("identify_all", identify_all),
    ("eid_switch", eid_switch),
    ("never_raises", never_raises),
]
