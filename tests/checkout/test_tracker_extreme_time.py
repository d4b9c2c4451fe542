"""ExitTracker with sighting times so large that subtracting the window is lost.

A reader's batch may carry any finite time (the batch parser accepts up to
about 1.8e308), and at 1e308 ``t - window_s == t`` in floating point.
"""

from __future__ import annotations

from appliance.checkout import ExitTracker, Thresholds

RULE = Thresholds(threshold_dbm=-66.0, min_dwell_s=0.5, window_s=1.5, min_adverts=2)


def test_tracker_huge_time_first_sighting() -> None:
    tracker = ExitTracker()

    crossing = tracker.observe("ib-1-7", "exit-1", 1e308, -50.0, RULE)

    assert crossing is None
    assert len(tracker) == 1


def test_tracker_huge_time_repeated() -> None:
    tracker = ExitTracker()

    results = [
        tracker.observe("ib-1-7", "exit-1", 1e308, -50.0, RULE, count=2)
        for _ in range(5)
    ]

    # Every sighting has the same time, so the 0.5 s dwell never passes.
    assert results == [None] * 5
    assert len(tracker) == 1
