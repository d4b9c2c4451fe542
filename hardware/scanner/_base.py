"""The scanner interface every backend implements."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType


class ScannerError(RuntimeError):
    """The scanner could not start or stopped working."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advert as heard: raw AD structures, RSSI and arrival time."""

    address: str
    rssi_dbm: int
    data: bytes
    t: float


class Scanner(ABC):
    """A source of adverts, used as an async context manager.

    Adverts queue up between reads. When the consumer falls behind by more
    than ``queue_size`` adverts, the oldest are dropped and counted, because a
    stale advert is worth less than a fresh one.
    """

    def __init__(self, queue_size: int = 10_000) -> None:
        self._queue: asyncio.Queue[Advertisement] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.heard = 0

    async def __aenter__(self) -> Scanner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @abstractmethod
    async def start(self) -> None:
        """Start scanning."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop scanning; adverts already queued can still be read."""

    def _enqueue(self, advert: Advertisement) -> None:
        self.heard += 1
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(advert)

    async def adverts(self) -> AsyncIterator[Advertisement]:
        """Yield adverts as they are heard, until cancelled."""
        while True:
            yield await self._queue.get()

    def drain(self) -> list[Advertisement]:
        """Return every queued advert without waiting."""
        items: list[Advertisement] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items
