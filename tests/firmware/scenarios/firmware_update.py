"""Scenario: a Wi-Fi reader across boots while the box offers new firmware.

Each boot does what the board's ``/main.py`` does: the loader picks the
firmware folder (and counts trial boots), the ``nbreader`` package is
imported from it and the reader runs. A boot ends when the firmware asks
for a reset (after switching to a new firmware, or from the watchdog), or
when the test sets the relay's stop flag. A firmware that fails to import
on a trial boot resets, as ``main.start`` does. ``/update_case.json``
holds ``limit_ms`` (per boot), ``max_boots`` and optionally
``free_bytes`` (what the file system reports free) and ``retry_ms``.
"""

import asyncio
import json
import sys

import machine
import main as loader
import nbrelay
import support
import umqtt.simple

umqtt.simple.use_relay(nbrelay.call)

with open("/update_case.json") as file:
    CASE = json.load(file)

BASE_PATH = list(sys.path)


def _reset_path():
    while sys.path:
        sys.path.pop()
    for entry in BASE_PATH:
        sys.path.append(entry)


def _forget_firmware():
    # A reset empties the module table; the next import reads the new folder.
    for name in list(sys.modules):
        if name == "nbreader" or name.startswith("nbreader."):
            del sys.modules[name]


def _adjust(updater):
    if updater is None:
        return
    if CASE.get("free_bytes") is not None:
        updater.free_space = lambda: CASE["free_bytes"]
    if CASE.get("retry_ms") is not None:
        updater.retry_ms = CASE["retry_ms"]


async def _boot(record):
    _reset_path()
    folder, on_trial = loader.select_folder()
    loader.use_folder(folder)
    _forget_firmware()
    record["folder"] = folder
    record["trial"] = on_trial
    resets = len(machine.resets)
    try:
        import nbreader
        import nbreader.app
        from nbreader.config import load
    except Exception as err:
        record["crash"] = repr(err)
        if on_trial:
            machine.reset()
            return "reset"
        return "stopped"
    record["version"] = nbreader.FW_VERSION
    app = nbreader.app.App(load("/reader.json"))
    _adjust(app.updater)
    task = asyncio.create_task(app.run())
    await support.wait_until(
        lambda: len(machine.resets) > resets or umqtt.simple.relay_stop,
        timeout_ms=CASE["limit_ms"],
    )
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    updater = app.updater
    record["update"] = None if updater is None else updater.data()
    record["resumed_bytes"] = None if updater is None else updater.resumed_bytes
    record["last_error"] = app.health.last_error
    if len(machine.resets) > resets:
        record["reset"] = machine.resets[-1][0]
        return "reset"
    return "stopped"


async def board():
    boots = []
    for _ in range(CASE["max_boots"]):
        record = {}
        boots.append(record)
        record["outcome"] = await _boot(record)
        if record["outcome"] != "reset":
            break
    return {"boots": boots, "state": loader.read_state()}


CASES = [("board", board)]
