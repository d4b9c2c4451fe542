"""``nightbox rehearse`` against a box started with ``nightbox run``, and usage errors.

The box runs as its own process from a site file, with a private mosquitto,
one exit reader that never connects and no studio. The rehearsal finds the
broker and the accounts in the box's data folder, issues and revokes its
tokens through the box's store, and must report the silent reader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.bus.broker import find_mosquitto

START_TIMEOUT_S = 30.0
REHEARSAL_TIMEOUT_S = 90.0

SITE = """\
[site]
id = "venue"
name = "Rehearsal venue"
timezone = "Europe/Berlin"

[box]
id = "box-1"
data_dir = "data"
scanner = "none"
clock_trusted = true

[broker]
mode = "mosquitto"
host = "127.0.0.1"
port = 0

[bands]
ibeacon_uuid = "426c7565-4368-6172-6d42-6561636f6e73"

[[readers]]
id = "exit-1"
role = "exit"
"""


def nightbox(*arguments: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run the ``nightbox`` command and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=REHEARSAL_TIMEOUT_S,
        check=False,
        **options,
    )


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A site file whose box runs under ``nightbox run`` for the module."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    folder = tmp_path_factory.mktemp("site")
    path = folder / "site.toml"
    path.write_text(SITE)
    log = (folder / "box.log").open("w")
    box = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "running" not in (folder / "box.log").read_text():
            if box.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the box did not start: {(folder / 'box.log').read_text()}"
                )
            time.sleep(0.1)
        yield path
    finally:
        box.send_signal(signal.SIGTERM)
        box.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def report(site_file: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """A rehearsal of the running box, in JSON."""
    process = nightbox(
        "rehearse", "--config", str(site_file), "--json", "--seconds", "2"
    )
    return process, json.loads(process.stdout)


def checks_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the report's checks by name."""
    return {check["name"]: check for check in document["checks"]}


def test_running_box_silent_reader_exits_one(report: Any) -> None:
    process, document = report
    assert process.returncode == 1, process.stdout + process.stderr[-3000:]
    assert document["failed_required"] == ["readers"]


def test_running_box_reports_silent_reader(report: Any) -> None:
    _process, document = report
    readers = checks_of(document)["readers"]
    assert readers["ok"] is False
    assert "reader exit-1 sent no batch" in readers["detail"]


@pytest.mark.parametrize("name", ["broker-acl", "time", "storage", "wallet-selftest"])
def test_running_box_passes_check(report: Any, name: str) -> None:
    _process, document = report
    check = checks_of(document)[name]
    assert check["ok"] is True, check["detail"]
    assert check["required"] is True


@pytest.mark.parametrize("name", ["box-scanner", "camera-encode", "hls-stream", "clip"])
def test_running_box_without_part_is_optional(report: Any, name: str) -> None:
    _process, document = report
    check = checks_of(document)[name]
    assert check["required"] is False
    assert "none" in check["detail"] or "no [studio] table" in check["detail"]


def test_running_box_revokes_selftest_token(report: Any, site_file: Path) -> None:
    _process, document = report
    token_id = checks_of(document)["wallet-selftest"]["facts"]["token_id"]
    listing = nightbox("token", "list", "--json", "--config", str(site_file))
    assert listing.returncode == 0, listing.stderr
    records = [json.loads(line) for line in listing.stdout.splitlines()]
    tokens = {record["token_id"]: record for record in records}
    assert tokens[token_id]["subject"] == "console"
    assert tokens[token_id]["revoked_at"] is not None


def test_text_report_names_failure(site_file: Path) -> None:
    process = nightbox("rehearse", "--config", str(site_file), "--seconds", "2")
    assert process.returncode == 1
    lines = process.stdout.splitlines()
    assert lines[0].startswith("Rehearsal of box box-1 of site venue")
    failing = [line for line in lines if line.strip().startswith("FAIL")]
    assert len(failing) == 1
    assert "readers" in failing[0]
    assert "reader exit-1 sent no batch" in failing[0]
    assert lines[-1].startswith("Rehearsal failed: 1 required check(s) failed")


def test_box_never_started_is_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE)
    process = nightbox("rehearse", "--config", str(path))
    assert process.returncode == 2
    assert "start the box" in process.stderr
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--demo", "--seconds", "0"], "must be from 2 to 600 seconds, not 0"),
        (["--demo", "--seconds", "nan"], "must be from 2 to 600 seconds"),
        (["--demo", "--seconds", "soon"], "must be a number of seconds"),
        (["--demo-fault", "camera"], "--demo-fault needs --demo"),
        (["--demo", "--demo-fault", "fire"], "invalid choice: 'fire'"),
        (["--demo", "--config", "site.toml"], "either --demo or --config"),
        ([], "no site configuration given"),
    ],
)
def test_usage_error_exits_two(arguments: list[str], message: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "NIGHTBOX_CONFIG"}
    process = nightbox("rehearse", *arguments, env=environment)
    assert process.returncode == 2
    assert message in process.stderr
    assert "Traceback" not in process.stderr
