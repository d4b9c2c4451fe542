"""``bench.sync --quick``: the benchmark runs, and no event is lost or repeated.

The benchmark runs as a subprocess, as a developer would start it, and is
judged on the JSON line it prints. It starts its own mosquitto brokers on
loopback, so mosquitto must be installed. Speed targets belong to the
benchmark, so nothing here asserts a rate beyond being positive.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from quick_benchmark import only_json_line, run_quick_benchmark

RUN_TIMEOUT_S = 120.0
TOP_LEVEL_KEYS = {
    "benchmark",
    "quick",
    "python",
    "mosquitto",
    "events",
    "window",
    "events_per_s",
    "ratio",
    "lost",
    "duplicated",
    "unexpected",
    "raw",
    "sync",
    "targets",
    "targets_met",
}


@pytest.fixture(scope="module")
def run() -> subprocess.CompletedProcess[str]:
    """One quick run of ``python -m bench.sync --quick --json``."""
    return run_quick_benchmark("bench.sync", RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def result(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line that the quick run printed."""
    return only_json_line(run)


def test_sync_quick_exit_status(run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, run.stderr[-2000:]


def test_sync_quick_keys(result: dict[str, Any]) -> None:
    assert TOP_LEVEL_KEYS - result.keys() == set()
    assert result["benchmark"] == "sync"
    assert result["quick"] is True


def test_sync_quick_nothing_lost(result: dict[str, Any]) -> None:
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["unexpected"] == 0
    collector = result["sync"]["collector"]
    assert collector["expected"] == result["events"]
    assert collector["received"] == result["events"]
    assert result["sync"]["backlog_after"] == 0


def test_sync_quick_raw_complete(result: dict[str, Any]) -> None:
    collector = result["raw"]["collector"]
    assert collector["received"] == result["events"]
    assert collector["lost"] == 0
    assert result["raw_lost"] == 0


def test_sync_quick_rates_positive(result: dict[str, Any]) -> None:
    rates = result["events_per_s"]
    assert rates["sync"] > 0
    assert rates["raw"] > 0
    assert result["ratio"] > 0
    assert result["sync"]["window"] == result["raw"]["window"]


def test_sync_quick_targets_reported(result: dict[str, Any]) -> None:
    assert result["targets"] == {"ratio": 0.7, "lost": 0, "duplicated": 0}
    met = result["targets_met"]
    assert set(met) == {"ratio", "lost", "duplicated"}
    assert all(isinstance(value, bool) for value in met.values())
