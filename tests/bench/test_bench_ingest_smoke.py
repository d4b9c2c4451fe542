"""``bench.ingest --quick``: the benchmark runs and reports every figure.

The benchmark runs as a subprocess, as a developer would start it, and is
judged on the JSON line it prints. It starts its own mosquitto on loopback,
so mosquitto must be installed. Speed targets belong to the benchmark, so
nothing here asserts a rate or a latency beyond being positive.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from quick_benchmark import only_json_line, run_quick_benchmark

RUN_TIMEOUT_S = 60.0
TOP_LEVEL_KEYS = {
    "benchmark",
    "quick",
    "python",
    "mosquitto",
    "sightings_per_s",
    "ratio",
    "p99_ms",
    "reference",
    "throughput",
    "paced",
    "box",
    "targets",
    "targets_met",
}


@pytest.fixture(scope="module")
def run() -> subprocess.CompletedProcess[str]:
    """One quick run of ``python -m bench.ingest --quick --json``."""
    return run_quick_benchmark("bench.ingest", RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def result(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line that the quick run printed."""
    return only_json_line(run)


def test_ingest_quick_exit_status(run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, run.stderr[-2000:]


def test_ingest_quick_keys(result: dict[str, Any]) -> None:
    assert TOP_LEVEL_KEYS - result.keys() == set()
    assert result["benchmark"] == "ingest"
    assert result["quick"] is True


def test_ingest_quick_rates_positive(result: dict[str, Any]) -> None:
    rates = result["sightings_per_s"]
    assert rates["box"] > 0
    assert rates["broker_raw"] > 0
    assert rates["box_paced"] > 0
    assert result["reference"]["sightings_per_s"] == rates["broker_raw"]
    assert result["throughput"]["sightings_per_s"] == rates["box"]
    assert result["ratio"] > 0


def test_ingest_quick_every_checkout_timed(result: dict[str, Any]) -> None:
    paced = result["paced"]
    latency = paced["latency_ms"]
    assert paced["checkouts_expected"] > 0
    assert paced["checkouts_received"] == paced["checkouts_expected"]
    assert paced["checkouts_wrong_seen_at"] == 0
    assert latency["count"] == paced["checkouts_received"]
    assert latency["p50"] > 0
    assert latency["p99"] >= latency["p50"]
    assert latency["max"] >= latency["p99"]
    assert result["p99_ms"] == latency["p99"]


def test_ingest_quick_box_clean(result: dict[str, Any]) -> None:
    box = result["box"]
    assert box["faults_raised"] == 0
    assert box["rejected"] == {}
    assert box["handler_errors"] == 0
    assert box["outbox_backlog"] == 0
    assert result["throughput"]["duplicate_batches"] == 0


def test_ingest_quick_targets_reported(result: dict[str, Any]) -> None:
    assert result["targets"]["ratio"] == 0.5
    assert result["targets"]["p99_ms"] == 25.0
    met = result["targets_met"]
    assert set(met) == {"ratio", "p99_ms", "paced_kept_up"}
    assert all(isinstance(value, bool) for value in met.values())
