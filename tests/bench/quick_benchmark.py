"""A benchmark's ``--quick --json`` run as a subprocess, as a developer starts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.bus.broker import find_mosquitto

REPOSITORY = Path(__file__).resolve().parents[2]


def run_quick_benchmark(
    module: str, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> --quick --json`` and return the finished process.

    The benchmarks start their own mosquitto on loopback, so the test fails
    when mosquitto is not installed.
    """
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    return subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def only_json_line(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """Return the JSON object of the run's output, which must be one line."""
    lines = run.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line; stderr: {run.stderr[-2000:]}"
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed
