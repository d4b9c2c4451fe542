"""Token buckets per client address, the site-wide limit and the burst log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from appliance.portal._limits import BurstLog, RateLimiter, SiteWideLimit, retry_after


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


def test_site_wide_limit_starts_cooldown() -> None:
    clock = Clock()
    limit = SiteWideLimit(3, 30.0, clock)
    assert [limit.record() for _ in range(3)] == [(0.0, False)] * 3
    assert limit.record() == (30.0, True)
    clock.now += 10.0
    assert limit.record() == (pytest.approx(20.0), False)
    clock.now += 20.0
    assert limit.record() == (0.0, False)


def test_site_wide_limit_forgets_old_minute() -> None:
    clock = Clock()
    limit = SiteWideLimit(2, 30.0, clock)
    limit.record()
    limit.record()
    clock.now += 60.5
    assert limit.record() == (0.0, False)
    assert limit.record() == (0.0, False)


async def test_burst_log_writes_count_when_window_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.portal.burst")
    log = BurstLog(logger, 0.05)
    with caplog.at_level(logging.WARNING, logger="test.portal.burst"):
        for _ in range(6):
            log.record("band-code-unknown", "an unknown band code")
        first = [record.getMessage() for record in caplog.records]
        # Nothing follows the burst; the timer still writes its count.
        await asyncio.sleep(0.2)
    lines = [record.getMessage() for record in caplog.records]
    assert first == [
        "Guest portal rejected a request (band-code-unknown): an unknown band code"
    ]
    assert lines[1:] == [
        "Guest portal: 5 more rejections (band-code-unknown) since the last line on it"
    ]


async def test_burst_log_flush_at_stop(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.portal.burst")
    log = BurstLog(logger, 60.0)
    with caplog.at_level(logging.WARNING, logger="test.portal.burst"):
        for reason in ("origin", "origin", "csrf-missing"):
            log.record(reason, "a rejected form")
        log.flush()
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "Guest portal rejected a request (origin): a rejected form",
        "Guest portal rejected a request (csrf-missing): a rejected form",
        "Guest portal: 1 more rejections (origin) since the last line on it",
    ]
