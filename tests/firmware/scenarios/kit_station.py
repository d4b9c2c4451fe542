"""Scenario: the kit station's button, lights and offline rule on stand-ins.

The case functions play the box: they read the kit requests the firmware
published on the stand-in broker and deliver replies to its reply topic.
"""

import asyncio
import json
import time

import bluetooth
import machine
import support
import umqtt.simple
from nbreader.app import App
from nbreader.config import parse

TOPIC = "nightbox/test/reader/kit-1/"
GREEN, RED, BUZZER, BUTTON = 25, 26, 27, 0


def _requests():
    return [
        json.loads(message)
        for topic, message, _, _ in umqtt.simple.broker.published
        if topic == TOPIC + "api/kits/issue"
    ]


def _reply(request, ok=True, code=None):
    body = {"v": 1, "id": "r-" + request["id"], "ts": 1780000000.0, "src": "box/box-1"}
    body["corr"] = request["corr"]
    if ok:
        body["ok"] = True
        body["data"] = {
            "band": "ib-1-9",
            "station": "kit-1",
            "remaining": 4,
            "coupon": None,
        }
    else:
        body["ok"] = False
        body["error"] = {"code": code, "message": "refused"}
    umqtt.simple.broker.deliver(TOPIC + "reply", json.dumps(body))


def _lit(pin_id):
    pin = machine.pins.get(pin_id)
    if pin is None:
        return []
    return [value for _, value in pin.history]


def _blinks(pin_id):
    return _lit(pin_id).count(1)


async def _start(**kit_changes):
    kit = {
        "button_pin": BUTTON,
        "green_pin": GREEN,
        "red_pin": RED,
        "buzzer_pin": BUZZER,
    }
    kit.update(kit_changes)
    config = parse(json.dumps(support.kit_document(kit=kit)))
    app = App(config, boot="0badc0de")
    task = asyncio.create_task(app.run())
    await support.wait_until(lambda: app.uplink.connected)
    umqtt.simple.broker.deliver(
        "nightbox/test/clock", support.clock_message("1780000000.000")
    )
    await support.wait_until(lambda: app.clock.synced)
    return app, task


async def _stop(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def _hear_band(minor=9, rssi=-40):
    radio = bluetooth.BLE()
    for _ in range(3):
        radio.inject(support.address(minor), rssi, support.ibeacon(1, minor))
        await asyncio.sleep_ms(30)


async def _press_and_answer(app, ok=True, code=None, answer=True):
    before = len(_requests())
    handled = app.kit.handled
    machine.pins[BUTTON].press()
    pressed_ms = time.ticks_ms()
    if answer:
        await support.wait_until(lambda: len(_requests()) > before, timeout_ms=1000)
        requests = _requests()
        if len(requests) > before:
            _reply(requests[-1], ok, code)
    # The outcome was shown and the lights are off again.
    await support.wait_until(lambda: app.kit.handled > handled, timeout_ms=5000)
    return pressed_ms


def _first_light_ms(pin_id):
    pin = machine.pins[pin_id]
    for moment, value in pin.history:
        if value == 1:
            return moment
    return None


async def kit_green():
    app, task = await _start()
    await _hear_band()
    await _press_and_answer(app, ok=True)
    await support.wait_until(lambda: _lit(GREEN) == [0, 1, 0])
    await _stop(task)
    request = _requests()[0]
    return {
        "green": _lit(GREEN),
        "red": _lit(RED),
        "request": request,
        "outcomes": app.kit.outcomes,
    }


async def kit_red_reasons():
    app, task = await _start()
    blinks = {}
    for code in ("already-issued", "out-of-stock", "not-checked-out", "limit-exceeded"):
        machine.pins[RED].history.clear()
        machine.pins[BUZZER].history.clear()
        await _hear_band()
        await _press_and_answer(app, ok=False, code=code)
        blinks[code] = [_blinks(RED), _blinks(BUZZER)]
    await _stop(task)
    return {"blinks": blinks, "green": _lit(GREEN), "outcomes": app.kit.outcomes}


async def kit_no_band():
    app, task = await _start()
    await _press_and_answer(app, answer=False)
    await support.wait_until(lambda: _blinks(RED) == 1 and _lit(RED)[-1] == 0)
    await _stop(task)
    return {
        "red": _blinks(RED),
        "requests": len(_requests()),
        "outcomes": app.kit.outcomes,
    }


async def kit_offline_refuse():
    app, task = await _start(answer_ms=500)
    await _hear_band()
    pressed_ms = await _press_and_answer(app, answer=False)
    await support.wait_until(
        lambda: _blinks(RED) == 5 and _lit(RED)[-1] == 0, timeout_ms=4000
    )
    await _stop(task)
    return {
        "red": _blinks(RED),
        "green": _blinks(GREEN),
        "requests": len(_requests()),
        "light_after_ms": time.ticks_diff(_first_light_ms(RED), pressed_ms),
        "outcomes": app.kit.outcomes,
    }


async def kit_offline_issue_once():
    app, task = await _start(answer_ms=500, offline_rule="issue-once")
    await _hear_band()
    await _press_and_answer(app, answer=False)
    await support.wait_until(lambda: _lit(GREEN) == [0, 1, 0], timeout_ms=4000)
    queued = [entry.band for entry in app.kit.queue]
    await _hear_band()
    await _press_and_answer(app, answer=False)
    await support.wait_until(
        lambda: _blinks(RED) == 2 and _lit(RED)[-1] == 0, timeout_ms=4000
    )
    requests_offline = len(_requests())
    # The box is back: its clock beacon triggers the replay.
    umqtt.simple.broker.deliver(
        "nightbox/test/clock", support.clock_message("1780000010.000")
    )
    await support.wait_until(lambda: len(_requests()) > requests_offline)
    replay = _requests()[-1]
    _reply(replay, ok=False, code="internal-error")
    await asyncio.sleep_ms(100)
    kept_after_retryable = len(app.kit.queue)
    _reply(replay, ok=False, code="already-issued")
    await support.wait_until(lambda: not app.kit.queue)
    await _stop(task)
    return {
        "queued": queued,
        "green": _lit(GREEN),
        "red": _blinks(RED),
        "replay": replay,
        "first": _requests()[0],
        "kept_after_retryable": kept_after_retryable,
        "queue_after": len(app.kit.queue),
        "outcomes": app.kit.outcomes,
    }


async def kit_late_answer_drops_queue():
    app, task = await _start(answer_ms=300, offline_rule="issue-once")
    await _hear_band()
    await _press_and_answer(app, answer=False)
    await support.wait_until(lambda: app.kit.queue)
    late = _requests()[0]
    _reply(late, ok=True)
    await support.wait_until(lambda: not app.kit.queue)
    queue_after = len(app.kit.queue)
    requests = len(_requests())
    umqtt.simple.broker.deliver(
        "nightbox/test/clock", support.clock_message("1780000010.000")
    )
    await asyncio.sleep_ms(200)
    await _stop(task)
    return {
        "queue_after": queue_after,
        "requests_before_clock": requests,
        "requests_after_clock": len(_requests()),
    }


CASES = [
    ("kit_green", kit_green),
    ("kit_red_reasons", kit_red_reasons),
    ("kit_no_band", kit_no_band),
    ("kit_offline_refuse", kit_offline_refuse),
    ("kit_offline_issue_once", kit_offline_issue_once),
    ("kit_late_answer_drops_queue", kit_late_answer_drops_queue),
]
