"""Per-client request rates of the portal: one token bucket per client address.

Each address gets a bucket that holds ``burst`` requests and refills at
``per_minute``. A request takes one token; without a token it is rejected
with the seconds until the next one. At most ``max_clients`` buckets are
kept. The least recently used one is dropped first, so a flood from many
addresses cannot grow the memory, and a bucket dropped that way comes back
full, which costs the portal no more than a new client would.
"""

from __future__ import annotations

import math
from collections import OrderedDict
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
        """The number of addresses whose bucket is kept."""
        return len(self._buckets)

    def take(self, address: str) -> float:
        """Take one request from ``address``'s bucket.

        Returns 0 when the request may go ahead, else the seconds until the
        bucket holds a token again (the request is not counted then).
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
