"""Wall time taken from the box's ``clock`` messages, kept as integers.

An ESP32 float has 24 bits of mantissa, so a Unix time as a float is off by
up to a minute. The reader keeps the last clock message as ``base_s`` (int
seconds), ``base_ms`` (0-999) and ``base_ticks`` (``ticks_ms`` at receipt),
and derives any later time from ``ticks_diff``. Times are written as
``"%d.%03d"``.
"""

import json
import time


class ClockError(ValueError):
    """Error for a clock message whose time cannot be read."""


class Base:
    """One synced point: ``s`` and ``ms`` of Unix time at ``ticks`` (ticks_ms)."""

    def __init__(self, s, ms, ticks):
        self.s = s
        self.ms = ms
        self.ticks = ticks


class Clock:
    """The reader's wall clock.

    Before the first clock message, times come from the board's own clock
    (``time.time()``, which is wrong after a power cycle without a
    battery-backed clock) and ``synced`` is False.
    """

    def __init__(self):
        self.base = Base(int(time.time()), 0, time.ticks_ms())
        self.synced = False
        self.trusted = False
        self.updates = 0
        self.rejected = 0

    def update(self, payload):
        """Set the clock from a clock message envelope (bytes or str).

        Raises ClockError naming the problem when the payload is not an
        envelope whose ``data.t`` is a non-negative number of seconds.
        """
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode()
        try:
            envelope = json.loads(payload)
        except ValueError:
            self.rejected += 1
            raise ClockError("clock message is not JSON") from None
        data = envelope.get("data") if type(envelope) is dict else None
        if type(data) is not dict or "t" not in data:
            self.rejected += 1
            raise ClockError("clock message has no data.t")
        try:
            s, ms = parse_seconds(_number_text(payload))
        except ClockError:
            self.rejected += 1
            raise
        self.base = Base(s, ms, time.ticks_ms())
        self.trusted = data.get("trusted") is True
        self.synced = True
        self.updates += 1

    def at(self, ticks, base=None):
        """Return ``(s, ms)`` of Unix time at ``ticks`` (a ticks_ms value)."""
        if base is None:
            base = self.base
        ms = base.ms + time.ticks_diff(ticks, base.ticks)
        return base.s + ms // 1000, ms % 1000

    def text(self, ticks, base=None):
        """Return the Unix time at ``ticks`` as text with 3 decimals."""
        s, ms = self.at(ticks, base)
        return "%d.%03d" % (s, ms)

    def now_text(self):
        """Return the current Unix time as text with 3 decimals."""
        return self.text(time.ticks_ms())

    def seconds(self):
        """Return the current Unix time in whole seconds."""
        return self.at(time.ticks_ms())[0]


def parse_seconds(text):
    """Parse decimal seconds like ``"1780000123.456"`` into ``(s, ms)`` ints.

    Digits after the third decimal are cut off. Raises ClockError for a
    negative number, an exponent or any other character.
    """
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ClockError("clock time %r is not a non-negative decimal number" % text)
    fraction = (fraction + "000")[:3]
    return int(whole), int(fraction)


def _number_text(payload):
    # The number is read from the text, because json.loads would round it
    # to a float. The box writes the envelope's ``data`` last, and ``"t"``
    # is that object's key for the time.
    start = payload.find('"data"')
    start = payload.find('"t"', start if start >= 0 else 0)
    if start < 0:
        raise ClockError("clock message has no data.t")
    position = start + 3
    while position < len(payload) and payload[position] in " \t\r\n:":
        position += 1
    end = position
    while end < len(payload) and payload[end] in "0123456789.-+eE":
        end += 1
    return payload[position:end]
