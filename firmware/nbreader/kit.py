"""The kit station: a button press requests a kit for the nearest band.

The button IRQ only sets a flag. The kit task picks the strongest site band
heard in the last ``_NEAR_WINDOW_MS`` at or above ``near_dbm``, sends
``api/kits/issue`` with the advert and waits at most ``answer_ms`` for the
reply. A green light means a kit; red blinks a count per reason code, and
the buzzer beeps the same pattern when one is fitted.

Without an answer in time, ``offline_rule`` decides: ``refuse`` shows red
``box-unreachable``. ``issue-once`` shows green once per band per boot and
queues the request with ``offline_at``. The queue is replayed whenever a
clock message shows the box is back, until the box gives a definitive answer.
"""

import array
import asyncio
import binascii
import json
import time

from micropython import const

from .adverts import KEY_SIZE, band_key
from .scanner import ADV_MAX

_NEAR_WINDOW_MS = const(2000)
_NEAR_SLOTS = const(16)
_GREEN_MS = const(1500)
_BLINK_MS = const(150)
_DEBOUNCE_MS = const(300)
_WAIT_STEP_MS = const(10)
# Kits handed out offline in one boot; beyond this the station rejects
# offline presses, because it could not replay them all.
MAX_OFFLINE = const(64)
# Red blinks per reason: distinct counts staff can tell apart.
BLINKS = {
    "no-band": 1,
    "already-issued": 2,
    "out-of-stock": 3,
    "not-checked-out": 4,
    "box-unreachable": 5,
}
_OTHER_BLINKS = const(6)
MAX_OUTCOMES = const(16)
# Replies that may change when the same request is sent again.
_RETRYABLE = ("store-error", "internal-error", "deadline-exceeded")


class NearBands:
    """The strongest recent advert of up to 16 site bands, updated without the heap."""

    def __init__(self, near_dbm):
        self._near_dbm = near_dbm
        self._keys = bytearray(_NEAR_SLOTS * KEY_SIZE)
        self._rssi = array.array("i", [0] * _NEAR_SLOTS)
        self._ticks = array.array("i", [0] * _NEAR_SLOTS)
        self._adv = bytearray(_NEAR_SLOTS * ADV_MAX)
        self._adv_length = bytearray(_NEAR_SLOTS)

    def note(self, key, rssi_dbm, ticks_ms, adv, offset, length):
        """Remember one advert of band ``key`` when it is at or above ``near_dbm``."""
        if rssi_dbm < self._near_dbm:
            return
        slot = -1
        oldest = 0
        for index in range(_NEAR_SLOTS):
            start = index * KEY_SIZE
            if self._adv_length[index] == 0:
                slot = index
                break
            same = True
            for i in range(KEY_SIZE):
                if self._keys[start + i] != key[i]:
                    same = False
                    break
            if same:
                slot = index
                break
            if time.ticks_diff(self._ticks[index], self._ticks[oldest]) < 0:
                oldest = index
        if slot < 0:
            slot = oldest
        start = slot * KEY_SIZE
        for i in range(KEY_SIZE):
            self._keys[start + i] = key[i]
        self._rssi[slot] = rssi_dbm
        self._ticks[slot] = ticks_ms
        start = slot * ADV_MAX
        for i in range(length):
            self._adv[start + i] = adv[offset + i]
        self._adv_length[slot] = length

    def nearest(self, now_ms):
        """Return ``(band_key, adv_hex)`` of the strongest recent band, or None."""
        best = -1
        for index in range(_NEAR_SLOTS):
            if self._adv_length[index] == 0:
                continue
            if time.ticks_diff(now_ms, self._ticks[index]) > _NEAR_WINDOW_MS:
                continue
            if best < 0 or self._rssi[index] > self._rssi[best]:
                best = index
        if best < 0:
            return None
        key = self._keys[best * KEY_SIZE : (best + 1) * KEY_SIZE]
        start = best * ADV_MAX
        adv = self._adv[start : start + self._adv_length[best]]
        return band_key(key), binascii.hexlify(adv).decode()


class _Offline:
    """A kit handed out while the box was unreachable, waiting for replay."""

    def __init__(self, band, adv, offline_at, first_corr):
        self.band = band
        self.adv = adv
        self.offline_at = offline_at
        self.first_corr = first_corr
        self.replay_corr = None
        self.replay_key = None


class KitStation:
    """The kit role: button, lights, requests and the offline rule.

    ``machine`` is the ``machine`` module. ``send(channel, payload)``
    publishes a request and raises OSError when the uplink is down.
    ``poll()`` delivers waiting replies to ``on_reply``, and ``connected()``
    returns whether the uplink is up.
    """

    def __init__(
        self, config, boot, clock, machine, send, poll, connected, reply_topic
    ):
        kit = config.kit
        self._config = config
        self._kit = kit
        self._boot = boot
        self._clock = clock
        self._send = send
        self._poll = poll
        self._connected = connected
        self._reply_topic = reply_topic
        self.near = NearBands(kit.near_dbm)
        pin = machine.Pin
        self._green = pin(kit.green_pin, pin.OUT, value=0)
        self._red = pin(kit.red_pin, pin.OUT, value=0)
        self._buzzer = None
        if kit.buzzer_pin is not None:
            self._buzzer = pin(kit.buzzer_pin, pin.OUT, value=0)
        self._button = pin(kit.button_pin, pin.IN, pin.PULL_UP)
        self._button.irq(trigger=pin.IRQ_FALLING, handler=self._pressed)
        self.pressed = False
        self.replay_due = False
        self._press_ms = 0
        self._last_handled_ms = None
        self._requests = 0
        self._waiting_corr = None
        self._answer = None
        self.issued_offline = []
        self.queue = []
        self.presses = 0
        self.handled = 0
        # (band, outcome) of the latest presses and replay replies, at most
        # MAX_OUTCOMES, for diagnosis and tests.
        self.outcomes = []
        self.showing = False

    def _note_outcome(self, band, outcome):
        if len(self.outcomes) >= MAX_OUTCOMES:
            self.outcomes.pop(0)
        self.outcomes.append((band, outcome))

    def _pressed(self, pin):
        # Runs in IRQ context: set a flag and a time, nothing else.
        if not self.pressed:
            self._press_ms = time.ticks_ms()
            self.pressed = True

    async def run(self, progress):
        """Handle presses until cancelled; ``progress()`` is called every loop."""
        while True:
            progress()
            if self.replay_due:
                self.replay_due = False
                self.replay()
            if self.pressed:
                press_ms = self._press_ms
                self.pressed = False
                last = self._last_handled_ms
                if last is None or time.ticks_diff(press_ms, last) >= _DEBOUNCE_MS:
                    self._last_handled_ms = press_ms
                    await self._handle(press_ms)
                    self.handled += 1
                    # Presses while the lights showed the outcome are ignored.
                    self.pressed = False
            await asyncio.sleep_ms(_WAIT_STEP_MS)

    async def _handle(self, press_ms):
        self.presses += 1
        nearest = self.near.nearest(press_ms)
        if nearest is None:
            await self._show("no-band", None)
            return
        band, adv = nearest
        corr = self._next_corr()
        answer = None
        if self._connected():
            try:
                self._send_request(band, adv, corr, self._idempotency_key(corr), None)
                answer = await self._wait_answer(corr, press_ms)
            except OSError:
                answer = None
        if answer is not None:
            await self._show_answer(band, answer)
            return
        await self._offline(band, adv, corr, press_ms)

    def _next_corr(self):
        self._requests += 1
        return "%s%08x" % (self._boot, self._requests)

    def _idempotency_key(self, corr):
        return "%s-%s" % (self._boot, corr[len(self._boot) :])

    def _send_request(self, band, adv, corr, idempotency_key, offline_at):
        s, ms = self._clock.at(time.ticks_ms())
        data = json.dumps(
            {
                "station": self._config.reader,
                "adv": adv,
                "idempotency_key": idempotency_key,
            }
        )
        if offline_at is not None:
            # offline_at is "%d.%03d" text, written as a JSON number.
            data = data[:-1] + ',"offline_at":%s}' % offline_at
        # ts and deadline are written from ints: an ESP32 float cannot hold
        # a Unix time to the millisecond.
        payload = (
            '{"v":1,"id":"%s","ts":%d.%03d,"src":%s,"deadline":%d.%03d,'
            '"reply_to":%s,"corr":"%s","data":%s}'
            % (
                corr,
                s,
                ms,
                json.dumps("reader/" + self._config.reader),
                s + 2,
                ms,
                json.dumps(self._reply_topic),
                corr,
                data,
            )
        )
        self._send("api/kits/issue", payload)

    async def _wait_answer(self, corr, press_ms):
        self._waiting_corr = corr
        self._answer = None
        try:
            while time.ticks_diff(time.ticks_ms(), press_ms) < self._kit.answer_ms:
                self._poll()
                if self._answer is not None:
                    return self._answer
                await asyncio.sleep_ms(_WAIT_STEP_MS)
            return None
        finally:
            self._waiting_corr = None

    def on_reply(self, payload):
        """Take a reply message (bytes); match it to the press or the offline queue."""
        try:
            reply = json.loads(payload)
        except ValueError:
            return
        if type(reply) is not dict:
            return
        corr = reply.get("corr")
        if corr is not None and corr == self._waiting_corr:
            self._answer = reply
        for entry in self.queue:
            if corr in (entry.first_corr, entry.replay_corr):
                if _definitive(reply):
                    self.queue.remove(entry)
                    self._note_outcome(entry.band, _code(reply))
                return

    def replay(self):
        """Send every queued offline kit again; run when the box is heard.

        Must not run inside an uplink message callback.
        """
        if not self.queue or not self._connected():
            return
        for entry in self.queue:
            if entry.replay_corr is None:
                entry.replay_corr = self._next_corr()
                entry.replay_key = self._idempotency_key(entry.replay_corr)
            try:
                self._send_request(
                    entry.band,
                    entry.adv,
                    entry.replay_corr,
                    entry.replay_key,
                    entry.offline_at,
                )
            except OSError:
                return

    async def _offline(self, band, adv, corr, press_ms):
        if self._kit.offline_rule != "issue-once":
            await self._show("box-unreachable", band)
            return
        if band in self.issued_offline:
            await self._show("already-issued", band)
            return
        if len(self.issued_offline) >= MAX_OFFLINE:
            await self._show("box-unreachable", band)
            return
        self.issued_offline.append(band)
        s, ms = self._clock.at(press_ms)
        entry = _Offline(band, adv, "%d.%03d" % (s, ms), corr)
        self.queue.append(entry)
        await self._show(None, band)

    async def _show_answer(self, band, answer):
        if answer.get("ok") is True:
            await self._show(None, band)
        else:
            await self._show(_code(answer), band)

    async def _show(self, code, band):
        """Light green for ``code`` None, else blink red (and buzz) per code."""
        self._note_outcome(band, code or "issued")
        self.showing = True
        try:
            await self._light(code)
        finally:
            self.showing = False

    async def _light(self, code):
        if code is None:
            self._green.value(1)
            await asyncio.sleep_ms(_GREEN_MS)
            self._green.value(0)
            return
        for _ in range(BLINKS.get(code, _OTHER_BLINKS)):
            self._red.value(1)
            if self._buzzer is not None:
                self._buzzer.value(1)
            await asyncio.sleep_ms(_BLINK_MS)
            self._red.value(0)
            if self._buzzer is not None:
                self._buzzer.value(0)
            await asyncio.sleep_ms(_BLINK_MS)


def _code(reply):
    if reply.get("ok") is True:
        return "issued"
    error = reply.get("error")
    if type(error) is dict and type(error.get("code")) is str:
        return error["code"]
    return "invalid-reply"


def _definitive(reply):
    return _code(reply) not in _RETRYABLE
