"""Scenario helpers: a reader configuration and adverts of the test site."""

import asyncio
import json

import machine
from nbreader.config import parse

SITE_UUID_HEX = "426c7565436861726d426561636f6e73"
SITE_UUID = bytes.fromhex(SITE_UUID_HEX)


def document(**changes):
    """Return a valid /reader.json document for exit-1, with ``changes`` applied."""
    doc = {
        "v": 1,
        "site": "test",
        "reader": "exit-1",
        "role": "exit",
        "zone": "main-door",
        "uplink": "wifi",
        "wifi": {"ssid": "nightbox", "password": "wifi-secret"},
        "broker": {
            "host": "127.0.0.1",
            "port": 1883,
            "username": "reader-exit-1",
            "password": "broker-secret",
        },
        "bands": {
            "ibeacon_uuid": SITE_UUID_HEX,
            "altbeacon_prefix": None,
            "eddystone_namespace": None,
            "eid": True,
        },
    }
    doc.update(changes)
    if doc["uplink"] == "serial":
        del doc["wifi"]
        del doc["broker"]
    return doc


def kit_document(**changes):
    """Return a valid document for kit station kit-1."""
    doc = document(
        reader="kit-1",
        role="kit",
        broker={
            "host": "127.0.0.1",
            "port": 1883,
            "username": "reader-kit-1",
            "password": "broker-secret",
        },
        kit={"button_pin": 0, "green_pin": 25, "red_pin": 26, "buzzer_pin": 27},
    )
    doc.update(changes)
    return doc


def config(**changes):
    """Return the parsed configuration of ``document(**changes)``."""
    return parse(json.dumps(document(**changes)))


def ibeacon(major, minor, power=-59, uuid=SITE_UUID):
    """Return flags and an iBeacon as advertising data."""
    body = (
        b"\x4c\x00\x02\x15"
        + uuid
        + bytes((major >> 8, major & 255, minor >> 8, minor & 255, power & 255))
    )
    return b"\x02\x01\x06" + bytes((len(body) + 1, 0xFF)) + body


def address(last):
    return bytes((0xC4, 0x7C, 0x8D, 0x6A, 0x11, last))


def clock_message(seconds_text, trusted=True):
    """Return a clock envelope as the box writes it (json.dumps spacing)."""
    return (
        '{"v": 1, "id": "c1", "ts": %s, "src": "box/box-1", '
        '"data": {"t": %s, "trusted": %s}}'
        % (seconds_text, seconds_text, "true" if trusted else "false")
    ).encode()


async def wait_until(condition, timeout_ms=3000, step_ms=10):
    """Wait until ``condition()`` is true; return False on timeout."""
    waited = 0
    while not condition():
        if waited >= timeout_ms:
            return False
        machine.watchdog_check()
        await asyncio.sleep_ms(step_ms)
        waited += step_ms
    return True


async def run_for(ms, step_ms=10):
    """Let the tasks run for ``ms`` while checking the stand-in watchdog."""
    waited = 0
    while waited < ms:
        machine.watchdog_check()
        await asyncio.sleep_ms(step_ms)
        waited += step_ms
