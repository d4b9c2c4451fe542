"""``bench.footprint``: the box starts on the demo site, is measured and stops.

The benchmark runs as a subprocess and is judged on its JSON line. Its
targets belong to the benchmark, so nothing here asserts a size or a time
beyond being positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    """The JSON line of one ``python -m bench.footprint --settle 0 --json`` run."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.footprint", "--settle", "0", "--json"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line; stderr: {run.stderr[-2000:]}"
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


def test_reports_ratios(result: dict[str, Any]) -> None:
    assert result["benchmark"] == "footprint"
    assert result["rss_mb"] > 0
    assert result["ready_s"] > 0
    assert result["rss_limit_mb"] == 120
    assert result["ready_limit_s"] == 2
    assert result["rss_ratio"] == pytest.approx(result["rss_mb"] / 120, abs=0.001)
    assert result["ready_ratio"] == pytest.approx(result["ready_s"] / 2, abs=0.001)


def test_measures_broker_child(result: dict[str, Any]) -> None:
    names = [child["name"] for child in result["children"]]
    assert "mosquitto" in names
    assert result["children_rss_mb"] == pytest.approx(
        sum(child["rss_mb"] for child in result["children"]), abs=0.1
    )


def test_lists_demo_services(result: dict[str, Any]) -> None:
    assert "broker (mosquitto)" in result["services"]
    assert "studio (simulator camera)" in result["services"]
    assert "portal" in result["services"]


def test_box_stopped_cleanly(result: dict[str, Any]) -> None:
    assert result["exit_code"] == 0


def test_negative_settle_is_usage_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.footprint", "--settle", "-1"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 2
    assert "--settle must be 0 or more seconds, not -1.0" in run.stderr
