"""The rehearsal report, its exit codes and the demo's fault names."""

from __future__ import annotations

import json

import pytest

from appliance.rehearse import (
    EXIT_FAILED,
    EXIT_PASSED,
    FAULTS,
    CheckResult,
    DemoFaults,
    Report,
)
from appliance.rehearse._storage_check import STORE_MARGIN_BYTES, needed_bytes
from appliance.studio.config import StudioConfig


def result(name: str, ok: bool, required: bool = True) -> CheckResult:
    """Return a check result with a detail that names it."""
    return CheckResult(name, ok, required, f"detail of {name}", 0.25, {"n": 1})


def test_report_passes_with_optional_failure() -> None:
    report = Report(
        "box", (result("time", True), result("sync-link", False, False)), 1.0
    )
    assert report.passed is True
    assert report.exit_code == EXIT_PASSED


def test_report_fails_with_required_failure() -> None:
    report = Report("box", (result("time", True), result("readers", False)), 1.0)
    assert report.passed is False
    assert report.exit_code == EXIT_FAILED


def test_text_report_marks_each_check() -> None:
    checks = (
        result("time", True),
        result("readers", False),
        result("sync-link", False, False),
    )
    lines = Report("box b", checks, 2.0).to_text().splitlines()
    assert lines[0] == "Rehearsal of box b"
    assert lines[1].split()[:2] == ["PASS", "time"]
    assert lines[2].split()[:2] == ["FAIL", "readers"]
    assert "detail of readers" in lines[2]
    assert lines[3].split()[:2] == ["WARN", "sync-link"]
    assert "(optional)" in lines[3]
    assert (
        lines[4] == "Rehearsal failed: 1 required check(s) failed (readers) in 2.0 s."
    )


def test_json_report_holds_every_check() -> None:
    checks = (result("time", True), result("readers", False))
    document = json.loads(Report("box", checks, 2.0).to_json())
    assert document["passed"] is False
    assert document["failed_required"] == ["readers"]
    assert [check["name"] for check in document["checks"]] == ["time", "readers"]
    assert document["checks"][1] == {
        "name": "readers",
        "ok": False,
        "required": True,
        "detail": "detail of readers",
        "seconds": 0.25,
        "facts": {"n": 1},
    }


def test_demo_faults_from_names() -> None:
    faults = DemoFaults.from_names(["camera", "acl-open"])
    assert faults.camera is not None
    assert faults.acl_open is True
    assert faults.reader_silent is False
    assert faults.clock_untrusted is False


def test_every_fault_name_switches_a_fault() -> None:
    for name in FAULTS:
        assert DemoFaults.from_names([name]) != DemoFaults(), name


def test_unknown_fault_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown demo fault 'fire'"):
        DemoFaults.from_names(["fire"])


def test_storage_need_without_studio() -> None:
    need, parts = needed_bytes(None)
    assert need == STORE_MARGIN_BYTES
    assert parts == {"store": STORE_MARGIN_BYTES}


def test_storage_need_counts_clips_and_segments() -> None:
    studio = StudioConfig(
        bitrate_kbps=2000,
        audio="none",
        clip_seconds=30.0,
        clips_keep=50,
        segment_s=2.0,
        hls_window=6,
    )
    need, parts = needed_bytes(studio, sets=3)
    bytes_per_s = 2000 * 1000 // 8
    # 50 uploaded and 100 waiting triggered clips, 50 uploaded set-end
    # clips, and the set-end clips of the 3 sets still waiting.
    assert parts["clips"] == (4 * 50 + 3) * 30 * bytes_per_s
    assert parts["hls"] == (6 + 2) * 2 * bytes_per_s
    assert need == STORE_MARGIN_BYTES + parts["clips"] + parts["hls"]
