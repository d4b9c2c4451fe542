"""The image's ``slot-check`` script, which runs boot-check before every other unit.

After a power cut during the trial of a version that cannot start,
``app/current`` points at that version. The script must switch back with
the code of the slot that passed its health check, never with the code
under trial.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = REPOSITORY / "image-build/overlay/usr/lib/nightbox/slot-check"
SITE = """\
[site]
id = "test"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"

[update]
updates_dir = "updates"
"""
# What a version that fails at import prints before it exits.
BROKEN_PYTHON = """#!/bin/sh
echo "RuntimeError: this version cannot start" >&2
exit 1
"""


def make_slot(app_dir: Path, name: str, version: str, *, broken: bool) -> None:
    python = app_dir / name / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # A script that runs the test environment's Python by its own path, so
    # that Python finds its venv (a symlink elsewhere would not).
    python.write_text(
        BROKEN_PYTHON if broken else f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    marker = {
        "version": version,
        "complete": True,
        "installed_at": "2027-01-01T00:00:00Z",
    }
    (app_dir / name / "slot.json").write_bytes(orjson.dumps(marker))


def box_on_trial(tmp_path: Path, *, active_runs: bool) -> Path:
    """Return an app folder whose trial of 0.3.0 in slot-a a power cut left open."""
    (tmp_path / "site.toml").write_text(SITE)
    app_dir = tmp_path / "app"
    make_slot(app_dir, "slot-a", "0.3.0", broken=True)
    make_slot(app_dir, "slot-b", "0.2.0", broken=not active_runs)
    (app_dir / "current").symlink_to("slot-a")
    state = {
        "active": "slot-b",
        "trying": "slot-a",
        "previous": "slot-b",
        "trying_version": "0.3.0",
    }
    (app_dir / "state.json").write_bytes(orjson.dumps(state))
    return app_dir


def run_script(app_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), str(app_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_trial_of_broken_version_switched_back(tmp_path: Path) -> None:
    app_dir = box_on_trial(tmp_path, active_runs=True)

    result = run_script(app_dir)

    assert result.returncode == 0, result.stderr
    assert "switched back to slot-b" in result.stdout
    assert (app_dir / "current").readlink() == Path("slot-b")
    state = orjson.loads((app_dir / "state.json").read_bytes())
    assert state["active"] == "slot-b"
    assert state["trying"] is None
    assert "cannot start" not in result.stderr


def test_unreadable_state_tries_each_slot(tmp_path: Path) -> None:
    app_dir = box_on_trial(tmp_path, active_runs=True)
    (app_dir / "state.json").write_text("{not json")

    result = run_script(app_dir)

    assert result.returncode == 0, result.stderr
    assert "boot-check with the code of slot-a failed" in result.stderr
    assert (app_dir / "current").readlink() == Path("slot-a")
    rebuilt = orjson.loads((app_dir / "state.json").read_bytes())
    assert rebuilt["trying"] is None


def test_no_slot_runs_reports_reflash(tmp_path: Path) -> None:
    app_dir = box_on_trial(tmp_path, active_runs=False)

    result = run_script(app_dir)

    assert result.returncode == 1
    assert "reflash the box" in result.stderr
    assert (app_dir / "current").readlink() == Path("slot-a")
