"""A scanner you drive by hand: move a wristband past it, stall it, inspect it."""

from __future__ import annotations

import time

from hardware.scanner._base import Advertisement, Scanner


class SimulatedScanner(Scanner):
    """Hears exactly the adverts that :meth:`hear` is given while scanning.

    ``stalled`` mimics an ESP32 or BlueZ scan that stops reporting without
    an error; ``history`` keeps everything heard for tests.
    """

    def __init__(self, queue_size: int = 10_000, *, keep_history: bool = False) -> None:
        super().__init__(queue_size)
        self.scanning = False
        self.stalled = False
        self.starts = 0
        self._keep_history = keep_history
        self.history: list[Advertisement] = []

    async def start(self) -> None:
        """Start hearing adverts."""
        self.scanning = True
        self.starts += 1

    async def stop(self) -> None:
        """Stop hearing adverts."""
        self.scanning = False

    def hear(
        self, address: str, rssi_dbm: int, data: bytes, t: float | None = None
    ) -> bool:
        """Deliver one advert; return False when it is not heard (stopped, stalled)."""
        if not self.scanning or self.stalled:
            return False
        advert = Advertisement(address, rssi_dbm, data, time.time() if t is None else t)
        if self._keep_history:
            self.history.append(advert)
        self._enqueue(advert)
        return True
