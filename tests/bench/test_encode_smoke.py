"""``bench.encode --quick``: the benchmark runs and its clip covers the ring.

The benchmark runs as a subprocess, as a developer would start it, and is
judged on the JSON line it prints. Speed targets belong to the benchmark,
so nothing here asserts a rate beyond being positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    """The JSON line of one ``python -m bench.encode --quick --json`` run."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.encode", "--quick", "--json"],
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


def test_reports_both_encoders(result):
    assert result["benchmark"] == "encode"
    assert result["quick"] is True
    assert result["ours_fps"] > 0
    assert result["ffmpeg_fps"] > 0
    assert result["ratio"] == pytest.approx(
        result["ours_fps"] / result["ffmpeg_fps"], rel=0.01
    )
    assert result["limit"] == 0.8


def test_clip_covers_ring(result):
    assert result["ring_duration_s"] == pytest.approx(result["clip_seconds"], abs=1.0)
    assert result["clip_duration_s"] == pytest.approx(
        result["ring_duration_s"], abs=0.1
    )
    assert result["clip_bytes"] > 0
    assert result["clip_ready_s"] > 0
    assert result["clip_limit_s"] == 0.5


def test_invalid_frames_is_usage_error():
    run = subprocess.run(
        [sys.executable, "-m", "bench.encode", "--frames", "0"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 2
    assert "invalid --frames 0" in run.stderr
