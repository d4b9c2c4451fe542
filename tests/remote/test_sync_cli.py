"""``nightbox sync status``, run as a subprocess against a site file and its store."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import ManualClock
from appliance.store import Store

TIMEOUT_S = 60.0
SITE_TOML = """\
[site]
id = "club"
name = "Club"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"
"""
SYNC_TOML = """
[sync]
broker = "mqtts://127.0.0.1:8883"
"""
CREATED_AT = 1_800_000_000.0
SYNCED_AT = 1_800_000_100.0


def write_site(folder: Path, *, sync: bool) -> Path:
    path = folder / "site.toml"
    path.write_text(SITE_TOML + (SYNC_TOML if sync else ""))
    return path


def fill_store(folder: Path, events: int, synced: int) -> None:
    """Commit ``events`` events and mark the first ``synced`` of them synced."""
    clock = ManualClock(CREATED_AT)
    store = Store(folder / "data" / "nightbox.sqlite3", clock)
    try:
        with store.transaction() as transaction:
            for number in range(events):
                transaction.emit("checkout", {"band": f"ib-1-{number}"})
        clock.advance_to(SYNCED_AT)
        seqs = [event.seq for event in store.unsynced(limit=synced)]
        store.mark_synced(seqs)
    finally:
        store.close()


def nightbox(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        name: value for name, value in os.environ.items() if name != "NIGHTBOX_CONFIG"
    }
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=env,
    )


def status_json(config: Path) -> dict[str, Any]:
    result = nightbox("sync", "status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_sync_status_json_backlog(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path, events=5, synced=2)
    report = status_json(config)
    assert report["site"] == "club"
    assert report["box"] == "box-1"
    assert report["broker"] == "mqtts://127.0.0.1:8883"
    assert report["backlog"] == 3
    assert report["synced"] == 2
    assert report["oldest_unsynced"] == {
        "seq": 3,
        "created_at": CREATED_AT,
        "clock_trusted": True,
    }
    assert report["last_synced_at"] == SYNCED_AT


def test_sync_status_json_all_synced(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path, events=4, synced=4)
    report = status_json(config)
    assert report["backlog"] == 0
    assert report["oldest_unsynced"] is None
    assert report["last_synced_at"] == SYNCED_AT


def test_sync_status_without_sync_section(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=False)
    fill_store(tmp_path, events=2, synced=0)
    report = status_json(config)
    assert report["broker"] is None
    assert report["backlog"] == 2
    assert report["synced"] == 0
    assert report["last_synced_at"] is None


def test_sync_status_table(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path, events=1500, synced=100)
    result = nightbox("sync", "status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    oldest = dt.datetime.fromtimestamp(CREATED_AT).astimezone()
    synced = dt.datetime.fromtimestamp(SYNCED_AT).astimezone()
    assert lines[0] == "Sync of box box-1 (site club) to mqtts://127.0.0.1:8883"
    assert "backlog:          1,400 events" in lines[1]
    assert f"{oldest.isoformat(timespec='seconds')} (seq 101)" in lines[2]
    assert f"{synced.isoformat(timespec='seconds')} (100 events synced)" in lines[3]


def test_sync_status_without_store(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    result = nightbox("sync", "status", "--config", str(config))
    assert result.returncode == 2
    assert "no Nightbox store at" in result.stderr
    assert not (tmp_path / "data" / "nightbox.sqlite3").exists()


def test_sync_status_without_config(tmp_path: Path) -> None:
    result = nightbox("sync", "status")
    assert result.returncode == 2
    assert "pass --config FILE or set NIGHTBOX_CONFIG" in result.stderr


@pytest.mark.parametrize("command", [["sync"], ["sync", "bogus"]])
def test_sync_requires_known_subcommand(command: list[str]) -> None:
    result = nightbox(*command)
    assert result.returncode == 2
    assert "status" in result.stderr
