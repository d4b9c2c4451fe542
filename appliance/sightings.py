"""Turning heard adverts into the batches readers publish.

Shared by the box's own scanner service and the simulated readers of the
demo, so both send exactly what the ESP32 firmware sends: per distinct
advert in the interval, the mean RSSI, the count and the last time heard.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance.bus.client import Bus
from appliance.clock import Clock
from hardware.scanner import Scanner

_LOGGER = logging.getLogger(__name__)


@dataclass(slots=True)
class _Aggregate:
    address: str
    rssi_sum: float
    count: int
    last_t: float


class BatchBuilder:
    """Aggregates adverts of one reader for one interval at a time."""

    def __init__(self, reader_id: str, boot: str | None = None) -> None:
        self.reader_id = reader_id
        self.boot = boot or secrets.token_hex(4)
        self.seq = 0
        self.heard = 0
        self._current: dict[bytes, _Aggregate] = {}

    def count_heard(self, adverts: int) -> None:
        """Count adverts received this interval that are not site bands."""
        self.heard += adverts

    def add(self, address: str, rssi_dbm: float, data: bytes, t: float) -> None:
        """Add one heard advert of a site band to the current interval."""
        self.heard += 1
        aggregate = self._current.get(data)
        if aggregate is None:
            self._current[data] = _Aggregate(address, rssi_dbm, 1, t)
        else:
            aggregate.rssi_sum += rssi_dbm
            aggregate.count += 1
            aggregate.last_t = max(aggregate.last_t, t)
            aggregate.address = address

    def take(self, t: float) -> dict[str, Any]:
        """Close the interval at ``t`` and return its batch, the envelope's ``data``."""
        sightings = [
            {
                "t": round(aggregate.last_t, 3),
                "addr": aggregate.address,
                "rssi": round(aggregate.rssi_sum / aggregate.count, 1),
                "n": aggregate.count,
                "adv": data.hex(),
            }
            for data, aggregate in self._current.items()
        ]
        heard = self.heard
        self._current = {}
        self.heard = 0
        self.seq += 1
        return {
            "reader": self.reader_id,
            "boot": self.boot,
            "seq": self.seq,
            "t": round(t, 3),
            "heard": heard,
            "sightings": sightings,
        }


class ScannerService:
    """Publishes the box's own scanner as a reader named after the box."""

    def __init__(
        self,
        bus: Bus,
        scanner: Scanner,
        reader_id: str,
        clock: Clock,
        interval_s: float = 1.0,
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._scanner = scanner
        self._builder = BatchBuilder(reader_id)
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the scanner and the batching loop."""
        await self._scanner.start()
        self._task = asyncio.create_task(self._run(), name="scanner-batches")

    async def stop(self) -> None:
        """Stop batching and the scanner."""
        await cancel_and_wait(self._task)
        await self._scanner.stop()

    async def _run(self) -> None:
        topic = self._bus.topics.sightings(self._builder.reader_id)
        while True:
            await asyncio.sleep(self._interval_s)
            for advert in self._scanner.drain():
                self._builder.add(
                    advert.address, advert.rssi_dbm, advert.data, advert.t
                )
            batch = self._builder.take(self._clock.now())
            try:
                await self._bus.publish_json(topic, {"data": batch}, qos=1)
            except aiomqtt.MqttError as err:
                _LOGGER.warning("Scanner batch %d not published: %s", batch["seq"], err)
