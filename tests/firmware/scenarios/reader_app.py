"""Scenario: the whole reader app running its asyncio tasks on stand-ins.

Intervals are shortened (``batch_ms`` 50, ``watchdog_ms`` 1000) by changing
the parsed configuration, so each case runs for a few seconds.
"""

import asyncio
import io
import json

import bluetooth
import machine
import network
import support
import umqtt.simple
from nbreader.app import App
from nbreader.uplink_serial import SerialUplink

TOPIC = "nightbox/test/reader/exit-1/"


def _fast_config(**changes):
    config = support.config(**changes)
    config.batch_ms = 50
    config.watchdog_ms = 1000
    return config


def _published(suffix):
    return [
        (message.decode(), retain, qos)
        for topic, message, retain, qos in umqtt.simple.broker.published
        if topic == TOPIC + suffix
    ]


def _status_reconnects():
    statuses = _published("status")
    if not statuses:
        return None
    return json.loads(statuses[-1][0])["data"]["reconnects"]


async def _start(app):
    task = asyncio.create_task(app.run())
    connected = await support.wait_until(lambda: app.uplink.connected)
    return task, connected


async def _stop(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def watchdog_healthy():
    app = App(_fast_config(), boot="a1b2c3d4")
    task, _ = await _start(app)
    await support.run_for(2500)
    wdt = machine.watchdogs[0]
    await _stop(task)
    return {"resets": machine.resets, "feeds": len(wdt.feeds), "timeout": wdt.timeout}


async def watchdog_stuck_task():
    app = App(_fast_config(), boot="a1b2c3d4")
    task, _ = await _start(app)
    await support.run_for(300)
    app.tasks["batch"].cancel()
    fired = await support.wait_until(lambda: machine.resets, timeout_ms=5000)
    await _stop(task)
    return {
        "fired": fired,
        "resets": [reset[0] for reset in machine.resets],
        "stuck": app.stuck,
    }


async def broken_radio_resets():
    config = _fast_config()
    # Every scan check counts as a stall, so restarts fail quickly.
    config.stall_s = 0
    bluetooth.BLE().break_radio()
    app = App(config, boot="a1b2c3d4")
    task = asyncio.create_task(app.run())
    fired = await support.wait_until(lambda: machine.resets, timeout_ms=5000)
    await _stop(task)
    return {
        "fired": fired,
        "resets": [reset[0] for reset in machine.resets],
        "stuck": app.stuck,
        "last_error": app.health.last_error,
    }


async def reconnect_resubscribes():
    app = App(_fast_config(), boot="a1b2c3d4")
    task, connected = await _start(app)
    broker = umqtt.simple.broker
    first_subscriptions = sorted(broker.subscriptions)
    broker.drop(forget_session=True)
    reconnected = await support.wait_until(lambda: app.uplink.reconnects == 1)
    resubscribed = sorted(broker.subscriptions)
    # A broker that stays down: the uplink gives up and tries again later.
    broker.drop(forget_session=True)
    broker.down = True
    down = await support.wait_until(lambda: not app.uplink.connected)
    broker.down = False
    back = await support.wait_until(lambda: app.uplink.reconnects == 2, timeout_ms=4000)
    await support.wait_until(lambda: _status_reconnects() == 2)
    await _stop(task)
    return {
        "connected": connected,
        "first_subscriptions": first_subscriptions,
        "reconnected": reconnected,
        "resubscribed": resubscribed,
        "down": down,
        "back": back,
        "final_subscriptions": sorted(broker.subscriptions),
        "connects": broker.connects,
        "availability": _published("availability"),
        "last_error": app.health.last_error,
        "status_reconnects": _status_reconnects(),
    }


async def status_and_empty_batches():
    app = App(_fast_config(), boot="a1b2c3d4")
    task, _ = await _start(app)
    await support.run_for(200)
    unsynced_batches = len(_published("sightings"))
    umqtt.simple.broker.deliver(
        "nightbox/test/clock", support.clock_message("1780000000.000")
    )
    await support.wait_until(lambda: len(_published("sightings")) >= 8)
    await _stop(task)
    return {
        "unsynced_batches": unsynced_batches,
        "sightings": [json.loads(text) for text, _, _ in _published("sightings")],
        "sightings_flags": [
            [retain, qos] for _, retain, qos in _published("sightings")
        ],
        "status": [
            [json.loads(text), retain, qos]
            for text, retain, qos in _published("status")
        ],
    }


async def sightings_end_to_end():
    app = App(_fast_config(), boot="a1b2c3d4")
    task, _ = await _start(app)
    umqtt.simple.broker.deliver(
        "nightbox/test/clock", support.clock_message("1780000000.000")
    )
    await support.wait_until(lambda: app.clock.synced)
    radio = bluetooth.BLE()
    for _ in range(5):
        radio.inject(support.address(7), -48, support.ibeacon(1, 7))
        radio.inject(support.address(8), -90, support.ibeacon(9, 9, -59, bytes(16)))
        await asyncio.sleep_ms(20)
    await support.run_for(200)
    await _stop(task)
    batches = [json.loads(text)["data"] for text, _, _ in _published("sightings")]
    return {"batches": batches}


async def wifi_drop_buffers():
    app = App(_fast_config(), boot="a1b2c3d4")
    task, _ = await _start(app)
    umqtt.simple.broker.deliver(
        "nightbox/test/clock", support.clock_message("1780000000.000")
    )
    await support.wait_until(lambda: app.clock.synced)
    wlan = network.WLAN(network.STA_IF)
    wlan.set_up(False)
    umqtt.simple.broker.drop(forget_session=True)
    lost = await support.wait_until(lambda: not app.uplink.connected)
    await support.run_for(300)
    buffered = len(app.ring)
    wlan.set_up(True)
    back = await support.wait_until(lambda: app.uplink.connected and len(app.ring) == 0)
    await _stop(task)
    seqs = [json.loads(text)["data"]["seq"] for text, _, _ in _published("sightings")]
    return {"lost": lost, "buffered": buffered, "back": back, "seqs": seqs}


class _Line:
    """A serial line: bytes written by the test, read by the uplink."""

    def __init__(self):
        self.incoming = bytearray()

    def read(self, count):
        data = bytes(self.incoming[:count])
        self.incoming = self.incoming[count:]
        return data

    def poll(self, timeout_ms):
        return [(self, 1)] if self.incoming else []

    def register(self, stream, mask):
        pass


async def serial_uplink():
    config = _fast_config(uplink="serial")
    line = _Line()
    output = io.BytesIO()
    uplink = SerialUplink(config, "a1b2c3d4", None, line, output, line)
    app = App(config, boot="a1b2c3d4", uplink=uplink)
    task, _ = await _start(app)
    with open("/serial_clock.bin", "rb") as file:
        line.incoming.extend(file.read())
    await support.wait_until(lambda: app.clock.synced)
    await support.run_for(200)
    await _stop(task)
    return {
        "output": output.getvalue().decode(),
        "synced": app.clock.synced,
        "counts": [
            app.uplink.decoder.frames,
            app.uplink.decoder.noise,
            app.uplink.decoder.corrupt,
        ],
    }


CASES = [
    ("watchdog_healthy", watchdog_healthy),
    ("watchdog_stuck_task", watchdog_stuck_task),
    ("broken_radio_resets", broken_radio_resets),
    ("reconnect_resubscribes", reconnect_resubscribes),
    ("status_and_empty_batches", status_and_empty_batches),
    ("sightings_end_to_end", sightings_end_to_end),
    ("wifi_drop_buffers", wifi_drop_buffers),
    ("serial_uplink", serial_uplink),
]
