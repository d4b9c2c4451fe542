"""The box's time beacon on ``nightbox/<site>/clock``.

ESP32 readers have no real-time clock, so they take the Unix time of their
sightings from this beacon. Readers on USB serial get the same message
through the serial bridge, which registers as a listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.client import Bus
from appliance.clock import Clock

_LOGGER = logging.getLogger(__name__)

# A reader counts time from the last beacon with its own tick counter, so
# its error is its crystal's drift over this interval.
CLOCK_INTERVAL_S = 5.0

ClockListener = Callable[[bytes], None]


class ClockBeacon:
    """Publishes the box's time every ``interval_s`` seconds, QoS 0, not retained.

    The data is ``{"t": <Unix s, rounded to ms>, "trusted": <bool>}``. A
    retained time would be stale for the next reader that subscribes, so
    each beacon is sent once.
    """

    def __init__(
        self, bus: Bus, clock: Clock, *, interval_s: float = CLOCK_INTERVAL_S
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._interval_s = interval_s
        self._listeners: list[ClockListener] = []
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def add_listener(self, listener: ClockListener) -> None:
        """Call ``listener`` with each beacon's payload, also while the bus is down."""
        self._listeners.append(listener)

    def remove_listener(self, listener: ClockListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def payload(self) -> bytes:
        """Return one beacon's envelope with the current time."""
        data = {"t": round(self._clock.now(), 3), "trusted": self._clock.trusted}
        return envelope.encode(self._bus.settings.src, {"data": data})

    async def start(self) -> None:
        """Start sending; the first beacon goes out at once."""
        self._task = asyncio.create_task(self._beat(), name="clock-beacon")

    async def stop(self) -> None:
        """Stop sending."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _beat(self) -> None:
        while True:
            payload = self.payload()
            for listener in list(self._listeners):
                try:
                    listener(payload)
                except Exception:
                    # One failing serial port must not stop the beacon.
                    _LOGGER.exception("A clock listener failed")
            if self._bus.connected.is_set():
                try:
                    await self._bus.publish(
                        self._bus.topics.clock,
                        payload,
                        qos=0,
                        timeout_s=self._interval_s,
                    )
                    self.sent += 1
                except (aiomqtt.MqttError, TimeoutError) as err:
                    _LOGGER.warning(
                        "Could not publish the clock on %s: %s",
                        self._bus.topics.clock,
                        err,
                    )
            await asyncio.sleep(self._interval_s)
