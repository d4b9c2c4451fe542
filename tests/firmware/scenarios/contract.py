"""Scenario: the reader app against a real box, its MQTT relayed to mosquitto.

/reader.json is the reader's configuration; /contract.json names the role
to play. An exit reader hears band ib-1-7 coming closer and staying near. A
kit station hears band ib-1-9 and its button is pressed twice. The case
ends when the test sets the relay's stop flag, or after ``limit_ms``.
"""

import asyncio
import json

import bluetooth
import machine
import nbrelay
import support
import umqtt.simple
from nbreader.app import App
from nbreader.config import load

umqtt.simple.use_relay(nbrelay.call)

with open("/contract.json") as file:
    CONTRACT = json.load(file)


def _lit(pin_id):
    pin = machine.pins.get(pin_id)
    return [] if pin is None else [value for _, value in pin.history]


async def _start():
    app = App(load("/reader.json"))
    task = asyncio.create_task(app.run())
    connected = await support.wait_until(lambda: app.uplink.connected, timeout_ms=10000)
    # The box's clock beacon comes every 5 s.
    synced = await support.wait_until(lambda: app.clock.synced, timeout_ms=12000)
    return app, task, connected, synced


async def _stop(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def _hear(minor, rssi, ms, start_rssi=None):
    """Inject adverts every 50 ms; from ``start_rssi`` they rise 1 dB each."""
    radio = bluetooth.BLE()
    for index in range(ms // 50):
        level = rssi if start_rssi is None else min(rssi, start_rssi + index)
        radio.inject(support.address(minor), level, support.ibeacon(1, minor))
        await asyncio.sleep_ms(50)


async def exit_reader():
    app, task, connected, synced = await _start()
    # The band approaches: -80 dBm rising to -50 dBm, then held there.
    await _hear(7, -50, 4000, start_rssi=-80)
    await support.wait_until(
        lambda: umqtt.simple.relay_stop, timeout_ms=CONTRACT["limit_ms"]
    )
    await _stop(task)
    return {
        "connected": connected,
        "synced": synced,
        "batches_sent": app.health.batches_sent,
        "ring_used": len(app.ring),
        "last_error": app.health.last_error,
    }


async def _press(app, ms):
    handled = app.kit.handled
    machine.pins[CONTRACT["button_pin"]].press()
    await support.wait_until(lambda: app.kit.handled > handled, timeout_ms=ms)


async def kit_station():
    app, task, connected, synced = await _start()
    await _hear(9, -40, 500)
    await _press(app, 5000)
    green_after_first = _lit(CONTRACT["green_pin"])
    await _hear(9, -40, 500)
    await _press(app, 5000)
    await support.wait_until(
        lambda: umqtt.simple.relay_stop, timeout_ms=CONTRACT["limit_ms"]
    )
    await _stop(task)
    return {
        "connected": connected,
        "synced": synced,
        "green_after_first": green_after_first,
        "green": _lit(CONTRACT["green_pin"]),
        "red": _lit(CONTRACT["red_pin"]),
        "outcomes": app.kit.outcomes,
        "last_error": app.health.last_error,
    }


CASES = [(CONTRACT["role"], exit_reader if CONTRACT["role"] == "exit" else kit_station)]
