"""Token buckets per client address, bounded in memory."""

from __future__ import annotations

import pytest

from appliance.portal._limits import RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(60, 3, clock)
    assert [limiter.take("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait_s = limiter.take("10.0.0.1")
    assert wait_s == pytest.approx(1.0)
    assert retry_after(wait_s) == "1"


def test_refill_at_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(60, 2, clock)
    limiter.take("a")
    limiter.take("a")
    assert limiter.take("a") > 0
    clock.now += 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 3600.0
    # A bucket never contains more than its burst.
    assert [limiter.take("a") for _ in range(3)][-1] > 0


def test_addresses_have_own_buckets() -> None:
    clock = Clock()
    limiter = RateLimiter(60, 1, clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_memory_bounded_least_recent_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(60, 1, clock, max_clients=3)
    for address in ("a", "b", "c"):
        limiter.take(address)
    limiter.take("a")  # "a" is now the most recent
    limiter.take("d")
    assert limiter.clients == 3
    # "b" was dropped and comes back with a full bucket; "a" was kept, empty.
    assert limiter.take("b") == 0.0
    assert limiter.take("a") > 0


def test_many_addresses_stay_bounded() -> None:
    limiter = RateLimiter(60, 1, Clock(), max_clients=100)
    for index in range(10_000):
        limiter.take(f"10.0.{index // 256}.{index % 256}")
    assert limiter.clients == 100


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError, match="invalid rate limit"):
        RateLimiter(0, 1, Clock())


def test_retry_after_rounds_up() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(2.2) == "3"
