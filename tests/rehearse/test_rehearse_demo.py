"""``nightbox rehearse --demo``: a healthy simulated box passes, a broken one fails.

Each rehearsal runs as a subprocess, as a user starts it, against the
simulated box, readers and studio it starts itself on a private mosquitto.
The broken run breaks parts through the demo's own fault switches, and each
broken part must fail its own check with its reason while the other checks
still pass. Each run gets a temporary folder of its own (``TMPDIR``), so the
tests can see what the rehearsal leaves there: nothing when it passed, and
the demo box's log file when it failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.rehearse import CHECK_NAMES
from appliance.studio.config import StudioConfig

REHEARSAL_TIMEOUT_S = 120.0
FAULTS = ("reader-silent", "scan-stalled", "camera", "acl-open", "clock-untrusted")


def rehearse(
    temporary_folder: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox rehearse`` with ``TMPDIR`` set; return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", "rehearse", *arguments],
        capture_output=True,
        text=True,
        timeout=REHEARSAL_TIMEOUT_S,
        check=False,
        env=os.environ | {"TMPDIR": str(temporary_folder)},
    )


def checks_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the report's checks by name."""
    return {check["name"]: check for check in document["checks"]}


@pytest.fixture(scope="module")
def healthy(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """A rehearsal of the healthy demo box, in JSON, and its temporary folder."""
    folder = tmp_path_factory.mktemp("healthy")
    process = rehearse(folder, "--demo", "--json", "--seconds", "3")
    return process, json.loads(process.stdout), folder


@pytest.fixture(scope="module")
def broken(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """A rehearsal of the demo box with every fault on, in JSON, and its folder."""
    folder = tmp_path_factory.mktemp("broken")
    faults = [argument for fault in FAULTS for argument in ("--demo-fault", fault)]
    process = rehearse(folder, "--demo", "--json", "--seconds", "3", *faults)
    return process, json.loads(process.stdout), folder


def test_healthy_demo_exits_zero(healthy: Any) -> None:
    process, document, _folder = healthy
    assert process.returncode == 0, process.stdout + process.stderr[-3000:]
    assert document["passed"] is True
    assert document["failed_required"] == []


def test_healthy_demo_lists_every_check(healthy: Any) -> None:
    _process, document, _folder = healthy
    names = [check["name"] for check in document["checks"]]
    assert names == list(CHECK_NAMES)
    for check in document["checks"]:
        assert set(check) >= {"name", "ok", "required", "detail", "seconds", "facts"}
        assert isinstance(check["ok"], bool)
        assert isinstance(check["required"], bool)
        assert check["detail"]
        assert check["seconds"] >= 0


def test_healthy_demo_passes_every_check(healthy: Any) -> None:
    _process, document, _folder = healthy
    failures = {
        check["name"]: check["detail"]
        for check in document["checks"]
        if not check["ok"]
    }
    assert failures == {}


def test_healthy_demo_measures_media(healthy: Any) -> None:
    _process, document, _folder = healthy
    checks = checks_of(document)
    camera = checks["camera-encode"]["facts"]
    assert camera["measured_fps"] >= 0.9 * camera["configured_fps"]
    segment = checks["hls-stream"]["facts"]
    assert segment["codec"] == "h264"
    assert (segment["width"], segment["height"]) == (camera["width"], camera["height"])
    assert segment["status_after_revoke"] == 401
    clip = checks["clip"]["facts"]
    assert clip["probed_duration_s"] > 0


def test_healthy_demo_streams_default_camera(healthy: Any) -> None:
    _process, document, _folder = healthy
    defaults = StudioConfig()
    checks = checks_of(document)
    assert checks["camera-encode"]["facts"]["configured_fps"] == defaults.fps
    segment = checks["hls-stream"]["facts"]
    assert (segment["width"], segment["height"]) == (defaults.width, defaults.height)


def test_healthy_demo_prints_report_only(healthy: Any) -> None:
    process, _document, _folder = healthy
    assert process.stderr == ""


def test_healthy_demo_leaves_no_files(healthy: Any) -> None:
    _process, _document, folder = healthy
    assert list(folder.iterdir()) == []


def test_healthy_demo_wallet_balance_unchanged(healthy: Any) -> None:
    _process, document, _folder = healthy
    wallet = checks_of(document)["wallet-selftest"]["facts"]
    assert wallet["balance_topped_up"] == wallet["balance_before"] + wallet["amount"]
    assert wallet["balance_after"] == wallet["balance_before"]


def test_sync_link_is_optional(healthy: Any) -> None:
    _process, document, _folder = healthy
    sync = checks_of(document)["sync-link"]
    assert sync["required"] is False
    assert sync["facts"]["configured"] is False


def test_broken_demo_exits_one(broken: Any) -> None:
    process, document, _folder = broken
    assert process.returncode == 1, process.stdout + process.stderr[-3000:]
    assert document["passed"] is False
    assert [check["name"] for check in document["checks"]] == list(CHECK_NAMES)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broker-acl", "could publish on nightbox/rehearsal/"),
        ("time", "clock is untrusted"),
        ("readers", "reader exit-2 sent no batch"),
        ("readers", "reader kit-1 sent"),
        ("readers", "heard no advert"),
        ("camera-encode", "simulated camera failure"),
        ("clip", "the camera is down"),
    ],
)
def test_broken_part_fails_its_check(broken: Any, name: str, reason: str) -> None:
    _process, document, _folder = broken
    check = checks_of(document)[name]
    assert check["ok"] is False
    assert check["required"] is True
    assert reason in check["detail"]
    assert name in document["failed_required"]


@pytest.mark.parametrize(
    "name", ["storage", "wallet-selftest", "box-scanner", "hls-stream"]
)
def test_unbroken_parts_still_pass(broken: Any, name: str) -> None:
    _process, document, _folder = broken
    check = checks_of(document)[name]
    assert check["ok"] is True, check["detail"]


def test_broken_camera_keeps_stream_on_slate(broken: Any) -> None:
    _process, document, _folder = broken
    camera = checks_of(document)["camera-encode"]
    assert "slate" in camera["detail"]


def test_broken_demo_keeps_box_log(broken: Any) -> None:
    process, _document, folder = broken
    logs = list(folder.glob("nightbox-rehearsal-*.log"))
    assert len(logs) == 1
    assert list(folder.iterdir()) == logs
    assert f"the demo box's log lines are in {logs[0]}" in process.stderr
    assert "WARNING" not in process.stderr


def test_broken_demo_log_has_box_warnings(broken: Any) -> None:
    _process, _document, folder = broken
    (log,) = folder.glob("nightbox-rehearsal-*.log")
    text = log.read_text()
    assert "WARNING appliance.bus.client: Rejected message" in text
    assert "(token-revoked)" in text
    assert "simulated camera failure" in text
