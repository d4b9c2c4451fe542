"""Times in reader batches: sightings inside their interval, batches near the
box clock, and stalls counted from a reader's first batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import SITE_UUID, ClientFactory

from appliance.checkout import HealthMonitor, parse_batch
from appliance.checkout._batches import MAX_SEQ
from appliance.errors import PayloadError
from appliance.runtime import Box
from appliance.sim import _adverts

ADVERT = _adverts.ibeacon(SITE_UUID, 1, 7, -59).hex()


def sighting(t: float) -> dict[str, Any]:
    return {"t": t, "addr": "aa:bb:cc:dd:ee:01", "rssi": -60, "n": 2, "adv": ADVERT}


def batch(t: float, sightings: list[dict[str, Any]], seq: int = 1) -> dict[str, Any]:
    return {
        "reader": "exit-1",
        "boot": "b1",
        "seq": seq,
        "t": t,
        "sightings": sightings,
    }


def test_sighting_inside_interval_kept() -> None:
    parsed = parse_batch("exit-1", batch(1000.0, [sighting(999.6), sighting(1000.0)]))

    assert len(parsed.sightings) == 2
    assert parsed.rejected == ()


def test_sighting_outside_interval_dropped() -> None:
    parsed = parse_batch(
        "exit-1", batch(1000.0, [sighting(1.0), sighting(1002.0), sighting(999.0)])
    )

    assert [item.t for item in parsed.sightings] == [999.0]
    assert len(parsed.rejected) == 2
    assert "sightings[0]" in parsed.rejected[0]
    assert "outside the batch" in parsed.rejected[0]
    assert "sightings[1]" in parsed.rejected[1]


def test_stall_from_first_batch() -> None:
    monitor = HealthMonitor(["exit-1", "exit-2"], silence_s=10.0, stall_s=5.0)

    for second in range(8):
        monitor.record_batch("exit-1", 100.0 + second, heard=0)
        monitor.record_batch("exit-2", 100.0 + second, heard=4)
    raised = monitor.check(107.0)

    assert [(fault.reader_id, fault.kind) for fault in raised] == [
        ("exit-1", "scan-stalled")
    ]


def test_no_stall_when_all_quiet() -> None:
    monitor = HealthMonitor(["exit-1", "exit-2"], silence_s=10.0, stall_s=5.0)

    for second in range(8):
        monitor.record_batch("exit-1", 100.0 + second, heard=0)
        monitor.record_batch("exit-2", 100.0 + second, heard=0)

    assert monitor.check(107.0) == []


async def test_batch_from_future_rejected(box: Box, make_client: ClientFactory) -> None:
    async with make_client("reader-exit-1", "reader", "exit-1") as reader:
        topic = reader.topics.sightings("exit-1")
        future_t = time.time() + 600.0
        await reader.publish_json(
            topic, {"data": batch(future_t, [sighting(future_t)])}
        )
        now = time.time()
        await reader.publish_json(topic, {"data": batch(now, [sighting(now)], seq=2)})
        await _wait_for(lambda: box.checkouts.stats.batches == 1)

    assert box.checkouts.stats.rejected["reader-clock"] == 1
    assert box.bus.stats.rejected["reader-clock"] == 1
    assert box.checkouts.last_batch("exit-1") == pytest.approx(now, abs=0.01)


async def test_backlog_batch_accepted(box: Box, make_client: ClientFactory) -> None:
    # A reader replays what it buffered while the box was unreachable.
    async with make_client("reader-exit-1", "reader", "exit-1") as reader:
        old = time.time() - 1800.0
        await reader.publish_json(
            reader.topics.sightings("exit-1"), {"data": batch(old, [sighting(old)])}
        )
        await _wait_for(lambda: box.checkouts.stats.batches == 1)

    assert box.checkouts.stats.rejected["reader-clock"] == 0
    assert box.checkouts.stats.band_sightings == 1


async def _wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    # The box exposes counters, not events, so the test polls them.
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_backlog_batches_keep_reader_alive() -> None:
    # A reader back from an outage replays old batches; health goes by arrival.
    monitor = HealthMonitor(["exit-1"], silence_s=10.0, stall_s=30.0)
    monitor.record_batch("exit-1", 100.0, heard=3)
    raised = monitor.check(112.0)
    cleared = [
        monitor.record_batch("exit-1", 112.0 + step, heard=3) for step in range(5)
    ]
    later = [monitor.check(112.5 + step) for step in range(5)]

    assert [fault.kind for fault in raised] == ["reader-silent"]
    assert [len(faults) for faults in cleared] == [1, 0, 0, 0, 0]
    assert "sends batches again" in cleared[0][0].message
    assert later == [[], [], [], [], []]


def test_seq_beyond_limit_rejected() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_batch("exit-1", batch(1000.0, [], seq=2**63))

    assert "'seq'" in str(caught.value)
    assert str(MAX_SEQ) in str(caught.value)


def test_seq_at_limit_accepted() -> None:
    assert parse_batch("exit-1", batch(1000.0, [], seq=MAX_SEQ)).seq == MAX_SEQ
