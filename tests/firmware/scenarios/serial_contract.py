"""Scenario: the reader app on USB serial, its line relayed to a pty of the box.

/reader.json configures a reader with ``uplink = "serial"``; /contract.json
names the role to play. The firmware's serial uplink writes and reads
through ``RelayedLine``, which hands the bytes to the test over the Node.js
process's stdio, and the test passes them to and from the pty that the
box's serial bridge has open. An exit reader hears band ib-1-7 coming
closer; a kit station hears band ib-1-9 and its button is pressed twice.
"""

import asyncio
import json

import bluetooth
import machine
import nbrelay
import support
from nbreader.app import App
from nbreader.config import load
from nbreader.uplink_serial import SerialUplink

with open("/contract.json") as file:
    CONTRACT = json.load(file)


class RelayedLine:
    """The board's USB serial line: stdin, stdout and poller in one object."""

    def __init__(self):
        self._pending = bytearray()
        self.stop = False

    def write(self, data):
        self._exchange({"op": "write", "data": bytes(data).decode()})
        return len(data)

    def read(self, size):
        taken = bytes(self._pending[:size])
        self._pending = self._pending[size:]
        return taken

    def poll(self, timeout_ms):
        if not self._pending:
            self._exchange({"op": "read"})
        return [1] if self._pending else []

    def _exchange(self, request):
        answer = json.loads(nbrelay.call(json.dumps(request)))
        self._pending.extend(answer.get("data", "").encode())
        self.stop = answer.get("stop", False)


LINE = RelayedLine()


def _lit(pin_id):
    pin = machine.pins.get(pin_id)
    return [] if pin is None else [value for _, value in pin.history]


async def _start():
    config = load("/reader.json")
    boot = "5e71a10c"
    uplink = SerialUplink(config, boot, None, stdin=LINE, stdout=LINE, poller=LINE)
    app = App(config, uplink=uplink, boot=boot)
    task = asyncio.create_task(app.run())
    # The bridge writes the box's clock down the line every 5 s.
    synced = await support.wait_until(lambda: app.clock.synced, timeout_ms=12000)
    return app, task, synced


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


async def _until_stopped():
    await support.wait_until(lambda: LINE.stop, timeout_ms=CONTRACT["limit_ms"])


async def exit_reader():
    app, task, synced = await _start()
    await _hear(7, -50, 4000, start_rssi=-80)
    await _until_stopped()
    await _stop(task)
    return {
        "synced": synced,
        "batches_sent": app.health.batches_sent,
        "frames_corrupt": app.uplink.decoder.corrupt,
        "last_error": app.health.last_error,
    }


async def _press(app, ms):
    handled = app.kit.handled
    machine.pins[CONTRACT["button_pin"]].press()
    await support.wait_until(lambda: app.kit.handled > handled, timeout_ms=ms)


async def kit_station():
    app, task, synced = await _start()
    await _hear(9, -40, 500)
    await _press(app, 5000)
    green_after_first = _lit(CONTRACT["green_pin"])
    await _hear(9, -40, 500)
    await _press(app, 5000)
    await _until_stopped()
    await _stop(task)
    return {
        "synced": synced,
        "green_after_first": green_after_first,
        "red": _lit(CONTRACT["red_pin"]),
        "outcomes": app.kit.outcomes,
        "last_error": app.health.last_error,
    }


CASES = [(CONTRACT["role"], exit_reader if CONTRACT["role"] == "exit" else kit_station)]
