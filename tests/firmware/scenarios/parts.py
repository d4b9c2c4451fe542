"""Scenario: the reader's parts one by one, with explicit times.

Inputs come from /parts.json (written by the test): configuration texts
and serial frames encoded in CPython.
"""

import binascii
import json
import time

import bluetooth
import machine
import micropython
import support
from nbreader import frames
from nbreader.adverts import SiteFilter
from nbreader.aggregate import Aggregator, mean_text
from nbreader.app import App
from nbreader.batches import render
from nbreader.clock import Clock, ClockError, parse_seconds
from nbreader.config import ConfigError, parse
from nbreader.ring import Ring
from nbreader.scanner import Scanner


def _inputs():
    with open("/parts.json") as file:
        return json.load(file)


def _locked(function, *args):
    micropython.heap_lock()
    try:
        return function(*args)
    finally:
        micropython.heap_unlock()


def _kit_app():
    config = parse(json.dumps(support.kit_document()))
    return App(config, boot="0badc0de")


def irq_and_drain_heap_locked():
    app = _kit_app()
    app.scanner.start()
    radio = bluetooth.BLE()
    results = []
    for index in range(40):
        advert = (
            support.ibeacon(1, index % 5, -59)
            if index % 4
            else support.ibeacon(1, 1, -59, bytes(16))
        )
        data = (
            0,
            memoryview(support.address(index)),
            0,
            -40 - index % 7,
            memoryview(advert),
        )
        results.append(data)
    handler = radio.handler
    failures = []
    for data in results:
        try:
            _locked(handler, 5, data)
        except MemoryError:
            failures.append("irq")
    try:
        drained = _locked(app.process_scan)
    except MemoryError:
        failures.append("drain")
        drained = -1
    heard, sightings = app.aggregator.take()
    return {
        "failures": failures,
        "received": app.scanner.received,
        "drained": drained,
        "heard": heard,
        "bands": sorted(band for _, band, _ in sightings),
        "nearest": app.kit.near.nearest(time.ticks_ms()),
    }


def scan_ring_overflow():
    radio = bluetooth.BLE()
    scanner = Scanner(radio, 100000, 30000, 30, slots=4)
    scanner.start()
    for index in range(6):
        radio.inject(support.address(index), -50, support.ibeacon(1, index))
    seen = []

    def sink(adv, offset, length, rssi, address, address_offset, ticks):
        seen.append(address[address_offset + 5])

    scanner.drain(sink)
    return {"seen": seen, "dropped": scanner.dropped, "received": scanner.received}


def aggregate_maths():
    site = SiteFilter(support.SITE_UUID, None, None, False)
    aggregator = Aggregator(site, max_bands=2)
    entries = (
        (7, -60, 1000, 1),
        (7, -61, 1100, 2),
        (7, -63, 1250, 3),
        (8, -50, 1300, 4),
        (9, -40, 1400, 5),
    )
    for minor, rssi, ticks, last in entries:
        adv = support.ibeacon(1, minor)
        aggregator.add(adv, 0, len(adv), rssi, support.address(last), 0, ticks)
    foreign = support.ibeacon(1, 7, -59, bytes(16))
    aggregator.add(foreign, 0, len(foreign), -30, support.address(9), 0, 1500)
    heard, sightings = aggregator.take()
    again = aggregator.take()
    return {
        "heard": heard,
        "sightings": [[ticks, band, tail] for ticks, band, tail in sightings],
        "bands_dropped": aggregator.bands_dropped,
        "again": [again[0], len(again[1])],
        "means": [
            mean_text(-181, 3),
            mean_text(-121, 2),
            mean_text(-60, 1),
            mean_text(5, 2),
        ],
        "adv_7": binascii.hexlify(support.ibeacon(1, 7)).decode(),
    }


def batch_render():
    app = App(support.config(), boot="a1b2c3d4")
    radio = bluetooth.BLE()
    app.scanner.start()
    app.clock.update(support.clock_message("1780000000.250"))
    base_ticks = app.clock.base.ticks
    for index in range(3):
        radio.inject(support.address(1), -50 - index, support.ibeacon(1, 7))
    radio.inject(support.address(2), -70, support.ibeacon(2, 0))
    radio.inject(support.address(3), -20, support.ibeacon(1, 1, -59, bytes(16)))
    app.process_scan()
    full = app.close_batch(time.ticks_add(base_ticks, 1000))
    empty = app.close_batch(time.ticks_add(base_ticks, 2000))
    return {
        "full": render(full, "exit-1", app.boot, app.clock),
        "empty": render(empty, "exit-1", app.boot, app.clock),
    }


def ring_bound():
    ring = Ring(3)
    for item in range(5):
        ring.push(item)
    order = ring.items()
    popped = [ring.pop(), ring.pop()]
    ring.push(9)
    return {
        "order": order,
        "dropped": ring.dropped,
        "popped": popped,
        "rest": ring.items(),
        "length": len(ring),
    }


def replay_keeps_seq_and_t():
    app = App(support.config(ring_batches=3), boot="a1b2c3d4")
    app.clock.update(support.clock_message("1780000000.000"))
    base = app.clock.base.ticks
    for index in range(5):
        app.close_batch(time.ticks_add(base, 1000 * (index + 1)))
    before = [
        render(batch, "exit-1", app.boot, app.clock) for batch in app.ring.items()
    ]
    # A later clock message moves the base; built batches keep theirs.
    app.clock.update(support.clock_message("1780000900.000"))
    app.uplink.connect()
    app.uplink.connect()
    sent = app.send_batches()
    import umqtt.simple

    published = [
        message.decode()
        for topic, message, _, _ in umqtt.simple.broker.published
        if topic.endswith("/sightings")
    ]
    return {
        "before": before,
        "published": published,
        "sent": sent,
        "dropped": app.ring.dropped,
    }


def hold_until_synced():
    app = App(support.config(), boot="a1b2c3d4")
    app.uplink.connect()
    app.uplink.connect()
    ticks = time.ticks_ms()
    app.close_batch(ticks)
    sent_before = app.send_batches()
    app.clock.update(support.clock_message("1780000000.000"))
    sent_after = app.send_batches()
    import umqtt.simple

    published = [
        json.loads(message)
        for topic, message, _, _ in umqtt.simple.broker.published
        if topic.endswith("/sightings")
    ]
    return {"before": sent_before, "after": sent_after, "published": published}


def clock_from_ints():
    clock = Clock()
    synced_before = clock.synced
    clock.update(support.clock_message("1780000123.456"))
    base = clock.base
    problems = []
    for payload in (
        b"not json",
        b'{"v": 1, "data": {}}',
        support.clock_message("-5.0"),
        support.clock_message("1.7e9"),
    ):
        try:
            clock.update(payload)
            problems.append(None)
        except ClockError as err:
            problems.append(str(err))
    return {
        "synced_before": synced_before,
        "synced": clock.synced,
        "trusted": clock.trusted,
        "base": [base.s, base.ms],
        "plus_1544": clock.text(time.ticks_add(base.ticks, 1544), base),
        "minus_457": clock.text(time.ticks_add(base.ticks, -457), base),
        "plus_0": clock.text(base.ticks, base),
        "parsed": [
            parse_seconds("1780000123.4"),
            parse_seconds("1780000123"),
            parse_seconds("17.98765"),
        ],
        "problems": problems,
        "rejected": clock.rejected,
    }


def frames_both_ways():
    inputs = _inputs()
    encoded = [
        frames.encode(channel, payload).decode()
        for channel, payload in inputs["to_encode"]
    ]
    decoder = frames.Decoder(frames.BOX_CHANNELS)
    decoded = []
    for line in inputs["to_decode"]:
        frame = decoder.decode(binascii.unhexlify(line))
        decoded.append(None if frame is None else [frame[0], frame[1].decode()])
    errors = []
    for channel, size in (("nope", 10), ("status", 3073)):
        try:
            frames.encode(channel, "x" * size)
        except frames.FrameError as err:
            errors.append(str(err))
    return {
        "encoded": encoded,
        "decoded": decoded,
        "counts": [decoder.frames, decoder.noise, decoder.corrupt, decoder.oversize],
        "errors": errors,
    }


def config_checks():
    outcomes = {}
    for name, text in _inputs()["configs"].items():
        try:
            config = parse(text)
            outcomes[name] = {
                "ok": True,
                "batch_ms": config.batch_ms,
                "eid": config.eid,
                "kit": config.kit is not None,
            }
        except ConfigError as err:
            outcomes[name] = {"ok": False, "error": str(err)}
    return outcomes


def stall_and_scan_done():
    radio = bluetooth.BLE()
    scanner = Scanner(radio, 100000, 30000, 5)
    scanner.start()
    start = time.ticks_ms()
    early = scanner.check(time.ticks_add(start, 1000))
    radio.stall()
    stalled = scanner.check(time.ticks_add(start, 6000))
    scanning_after_restart = radio.scanning
    calm = scanner.check(time.ticks_ms())
    radio.end_scan()
    ended = scanner.check(time.ticks_ms())
    calm_again = scanner.check(time.ticks_ms())
    return {
        "early": early,
        "stalled": stalled,
        "scanning_after_restart": scanning_after_restart,
        "calm": calm,
        "ended": ended,
        "calm_again": calm_again,
        "restarts": scanner.scan_restarts,
        "scans": [list(scan) for scan in radio.scans],
        "active": radio.active(),
    }


class _Line:
    """A serial line with nothing to read."""

    def poll(self, timeout_ms):
        return []

    def read(self, count):
        return b""

    def register(self, stream, mask):
        pass


def serial_split():
    import io

    from nbreader.uplink_serial import SerialUplink

    config = support.config(uplink="serial")
    output = io.BytesIO()
    line = _Line()
    uplink = SerialUplink(config, "a1b2c3d4", None, line, output, line)
    app = App(config, boot="a1b2c3d4", uplink=uplink)
    app.scanner.start()
    app.clock.update(support.clock_message("1780000000.000"))
    radio = bluetooth.BLE()
    for minor in range(40):
        radio.inject(support.address(minor), -60, support.ibeacon(1, minor))
    app.process_scan()
    app.close_batch()
    uplink.connect()
    sent = app.send_batches(limit=100)
    return {
        "sent": sent,
        "output": output.getvalue().decode(),
        "dropped": app.ring.dropped,
    }


class _NoSleep:
    """The time module without waiting, so the error blinks run at once."""

    def __init__(self):
        self.slept_ms = 0

    def sleep_ms(self, ms):
        self.slept_ms += ms

    def __getattr__(self, name):
        return getattr(time, name)


def main_rejects_invalid_file():
    import nbreader.app

    outcomes = {}
    for role in ("exit", "kit"):
        machine.clear()
        bluetooth.clear()
        document = (
            support.document(batch_ms=5)
            if role == "exit"
            else support.kit_document(batch_ms=5)
        )
        with open("/bad.json", "w") as file:
            file.write(json.dumps(document))
        shim = _NoSleep()
        nbreader.app.time = shim
        try:
            nbreader.app.main("/bad.json")
        finally:
            nbreader.app.time = time
        red = machine.pins.get(26)
        outcomes[role] = {
            "scans": len(bluetooth.BLE().scans),
            "radio_active": bluetooth.BLE().active(),
            "red_blinks": [value for _, value in red.history].count(1) if red else 0,
            "watchdogs": len(machine.watchdogs),
        }
    return outcomes


CASES = [
    ("irq_and_drain_heap_locked", irq_and_drain_heap_locked),
    ("scan_ring_overflow", scan_ring_overflow),
    ("aggregate_maths", aggregate_maths),
    ("batch_render", batch_render),
    ("ring_bound", ring_bound),
    ("replay_keeps_seq_and_t", replay_keeps_seq_and_t),
    ("hold_until_synced", hold_until_synced),
    ("clock_from_ints", clock_from_ints),
    ("frames_both_ways", frames_both_ways),
    ("config_checks", config_checks),
    ("stall_and_scan_done", stall_and_scan_done),
    ("main_rejects_invalid_file", main_rejects_invalid_file),
    ("serial_split", serial_split),
]
