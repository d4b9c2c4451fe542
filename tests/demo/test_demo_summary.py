"""The studio's line in the plain-text summary of ``nightbox demo``."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from appliance.sim.demo import stream_summary

NIGHT_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def night_stream() -> dict[str, Any]:
    """Run a short demo night with its studio; return the ``stream`` results."""
    command = [sys.executable, "-m", "appliance", "demo", "--headless", "--json"]
    night = ["--speed", "5000", "--guests", "40", "--seed", "1", "--minutes", "30"]
    result = subprocess.run(
        [*command, *night],
        capture_output=True,
        text=True,
        timeout=NIGHT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stream: dict[str, Any] = json.loads(result.stdout)["stream"]
    return stream


def test_summary_reports_studio_figures(night_stream: dict[str, Any]) -> None:
    line = stream_summary(night_stream)

    assert night_stream["set_end_clip"] is True
    assert night_stream["clips"] >= 1
    assert line.startswith("Studio: ")
    assert f"HLS segments written {night_stream['segments_written']}," in line
    assert f"clips {night_stream['clips']};" in line
    assert line.endswith("set-end clip written.")


def test_summary_set_end_clip_missing(night_stream: dict[str, Any]) -> None:
    line = stream_summary({**night_stream, "set_end_clip": False})

    assert line.endswith("set-end clip not written.")


def test_summary_without_studio() -> None:
    assert stream_summary(None) == "Studio: not run."


def test_plain_summary_ends_with_the_studio_line() -> None:
    command = [sys.executable, "-m", "appliance", "demo", "--headless"]
    night = ["--speed", "5000", "--guests", "20", "--seed", "2", "--minutes", "20"]
    result = subprocess.run(
        [*command, *night],
        capture_output=True,
        text=True,
        timeout=NIGHT_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("Studio: HLS segments written "), result.stdout[-500:]
    assert "set-end clip written." in last
