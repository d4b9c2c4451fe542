"""Stand-in for MicroPython's ``machine`` module: pins, watchdog, reset.

Everything the firmware does is recorded. The watchdog runs on a clock the
test drives: ``watchdog_check()`` fires a recorded reset when a WDT was not
fed within its timeout. ``drive_clock(function)`` replaces the default
clock, ``time.ticks_ms``.
"""

import time

resets = []
pins = {}
watchdogs = []
_clock = None


def now_ms():
    """Return the stand-in's clock in ms."""
    return _clock() if _clock is not None else time.ticks_ms()


def drive_clock(function):
    """Use ``function()`` (ms) as the clock; None restores ``time.ticks_ms``."""
    global _clock
    _clock = function


def clear():
    """Forget every pin, watchdog and reset."""
    pins.clear()
    watchdogs.clear()
    del resets[:]
    drive_clock(None)


class Pin:
    """A GPIO pin recording every output value as ``(ms, value)``."""

    IN = 1
    OUT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        self.mode = mode
        self.pull = pull
        self.level = 1 if pull == Pin.PULL_UP else 0
        self.history = []
        self.handler = None
        self.trigger = 0
        if value is not None:
            self.value(value)
        pins[pin_id] = self

    def value(self, level=None):
        """Return the level, or set it and record ``(ms, level)``."""
        if level is None:
            return self.level
        self.level = 1 if level else 0
        self.history.append((now_ms(), self.level))

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING):
        """Register ``handler(pin)`` for the edges in ``trigger``."""
        self.handler = handler
        self.trigger = trigger

    def drive(self, level):
        """Drive an input pin from outside, calling the IRQ handler on an edge."""
        old = self.level
        self.level = 1 if level else 0
        if self.handler is None or old == self.level:
            return
        edge = Pin.IRQ_FALLING if self.level == 0 else Pin.IRQ_RISING
        if self.trigger & edge:
            self.handler(self)

    def press(self):
        """Press and release a pulled-up button."""
        self.drive(0)
        self.drive(1)


class WDT:
    """A watchdog recording its feeds; see ``watchdog_check``."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = []
        self.last_feed_ms = now_ms()
        self.fired = False
        watchdogs.append(self)

    def feed(self):
        now = now_ms()
        self.feeds.append(now)
        self.last_feed_ms = now


def watchdog_check():
    """Fire every watchdog not fed within its timeout; return True if one fired."""
    fired = False
    for watchdog in watchdogs:
        if watchdog.fired:
            continue
        if time.ticks_diff(now_ms(), watchdog.last_feed_ms) > watchdog.timeout:
            watchdog.fired = True
            resets.append(("watchdog", now_ms()))
            fired = True
    return fired


def reset():
    """Record a reset request."""
    resets.append(("reset", now_ms()))


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"
