"""Request rates of the portal, and its log of rejections in bursts.

:class:`RateLimiter` gives each client address a token bucket of ``burst``
requests that refills at ``per_minute``. A request takes one token. Without
a token it is rejected with the seconds until the next one. At most
``max_clients`` buckets are stored. The least recently used one is
dropped first, so a flood from many addresses cannot grow the memory, and a
bucket dropped that way comes back full, which costs the portal no more
than a new client would.

:class:`SiteWideLimit` counts events from every address together, such as
unknown band codes, and starts a cool-down when a minute contains too many.
:class:`BurstLog` writes the first rejection of a reason at once and the
number of the others when the burst's window closes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_CLIENTS = 4096


class RateLimiter:
    """Token buckets per client address, bounded to ``max_clients`` addresses."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        monotonic: Callable[[], float],
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if per_minute < 1 or burst < 1 or max_clients < 1:
            raise ValueError(
                f"invalid rate limit {per_minute}/min, burst {burst}, "
                f"{max_clients} clients: give 1 or more for each"
            )
        self._rate_per_s = per_minute / 60.0
        self._burst = float(burst)
        self._monotonic = monotonic
        self._max_clients = max_clients
        # address -> (tokens left, monotonic time of that count)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def clients(self) -> int:
        """The number of addresses whose bucket is stored."""
        return len(self._buckets)

    def take(self, address: str) -> float:
        """Take one request from ``address``'s bucket.

        Returns 0 when the request may go ahead, else the seconds until the
        bucket contains a token again (the request is not counted then).
        """
        now = self._monotonic()
        tokens, updated = self._buckets.pop(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate_per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self._rate_per_s
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait_s


def retry_after(wait_s: float) -> str:
    """Return a ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


class SiteWideLimit:
    """At most ``per_minute`` events in any 60 s from all addresses together.

    The event that passes the limit starts a cool-down of ``cooldown_s``
    seconds. Events during a cool-down are not counted: they are rejected.
    """

    def __init__(
        self, per_minute: int, cooldown_s: float, monotonic: Callable[[], float]
    ) -> None:
        if per_minute < 1 or cooldown_s <= 0:
            raise ValueError(
                f"invalid site-wide limit {per_minute}/min with a cool-down of "
                f"{cooldown_s} s: give 1 or more and a positive cool-down"
            )
        self.per_minute = per_minute
        self.cooldown_s = cooldown_s
        self._monotonic = monotonic
        self._times: deque[float] = deque()
        self._cooldown_until = float("-inf")

    def record(self) -> tuple[float, bool]:
        """Count one event; return the cool-down's seconds left and whether it began.

        ``(0.0, False)`` means the event is within the limit.
        """
        now = self._monotonic()
        if now < self._cooldown_until:
            return self._cooldown_until - now, False
        while self._times and self._times[0] <= now - 60.0:
            self._times.popleft()
        self._times.append(now)
        if len(self._times) <= self.per_minute:
            return 0.0, False
        self._times.clear()
        self._cooldown_until = now + self.cooldown_s
        return self.cooldown_s, True


class BurstLog:
    """Logs rejections per reason: the first at once, the rest counted per window.

    The first rejection of a reason is logged when it happens and opens a
    window of ``interval_s`` seconds. The ones inside the window are only
    counted. When the window closes, a timer logs their number and opens
    the next window, so a steady flood costs one line per window and the
    count of a burst is written even when nothing follows it.
    """

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        # reason -> (rejections counted in the open window, timer closing it)
        self._windows: dict[str, tuple[int, asyncio.TimerHandle | None]] = {}

    def record(self, reason: str, message: str) -> None:
        """Log or count one rejection; ``message`` must hold no guest data."""
        window = self._windows.get(reason)
        if window is not None:
            self._windows[reason] = (window[0] + 1, window[1])
            return
        self._logger.warning(
            "Guest portal rejected a request (%s): %s", reason, message
        )
        self._open_window(reason)

    def _open_window(self, reason: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Without an event loop no timer can close the window, so every
            # rejection is logged on its own.
            return
        timer = loop.call_later(self._interval_s, self._close_window, reason)
        self._windows[reason] = (0, timer)

    def _close_window(self, reason: str) -> None:
        count, _timer = self._windows.pop(reason, (0, None))
        if count == 0:
            return
        self._log_count(reason, count)
        self._open_window(reason)

    def _log_count(self, reason: str, count: int) -> None:
        self._logger.warning(
            "Guest portal: %d more rejections (%s) since the last line on it",
            count,
            reason,
        )

    def flush(self) -> None:
        """Log the counts of every open window and close them (at stop)."""
        for reason, (count, timer) in list(self._windows.items()):
            if timer is not None:
                timer.cancel()
            if count:
                self._log_count(reason, count)
        self._windows.clear()
