"""``nightbox sync resend``: acknowledged events marked unsynced and sent again.

The command runs as a subprocess on a site file and its store. A running
SyncService must send again events that another process marked unsynced,
as it does after the command.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from test_sync import (
    EVENTS_FILTER,
    Collector,
    emit_events,
    local_bus,  # noqa: F401
    running,
    site_config,  # noqa: F401
    store,  # noqa: F401
    synced_seqs,
    wait_until,
)
from test_sync_cli import nightbox, write_site
from upstream_broker import Upstream, upstream  # noqa: F401

from appliance.bus.client import Bus
from appliance.clock import ManualClock, SystemClock
from appliance.config import SiteConfig
from appliance.store import Store

FIRST_SYNC_AT = 1_800_000_000.0
SECOND_SYNC_AT = 1_800_000_600.0


def fill_store(folder: Path) -> None:
    """Commit 10 events; mark seq 1-5 synced at one time and 6-10 later."""
    clock = ManualClock(FIRST_SYNC_AT - 60.0)
    opened = Store(folder / "data" / "nightbox.sqlite3", clock)
    try:
        with opened.transaction() as transaction:
            for number in range(10):
                transaction.emit("checkout", {"band": f"ib-1-{number}"})
        clock.advance_to(FIRST_SYNC_AT)
        opened.mark_synced([1, 2, 3, 4, 5])
        clock.advance_to(SECOND_SYNC_AT)
        opened.mark_synced([6, 7, 8, 9, 10])
    finally:
        opened.close()


def unsynced_seqs(folder: Path) -> list[int]:
    opened = Store(folder / "data" / "nightbox.sqlite3", SystemClock())
    try:
        rows = opened.query("SELECT seq FROM outbox WHERE synced_at IS NULL")
    finally:
        opened.close()
    return sorted(int(row[0]) for row in rows)


def test_resend_from_seq(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path)

    result = nightbox(
        "sync", "resend", "--config", str(config), "--from-seq", "4", "--yes"
    )

    assert result.returncode == 0, result.stderr
    assert "7 synced events from seq 4 on (seq 4 to 10)" in result.stdout
    assert "Marked 7 events unsynced" in result.stdout
    assert unsynced_seqs(tmp_path) == [4, 5, 6, 7, 8, 9, 10]


def test_resend_since_time(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path)
    since = dt.datetime.fromtimestamp(SECOND_SYNC_AT, dt.UTC).isoformat()

    result = nightbox(
        "sync", "resend", "--config", str(config), "--since", since, "--yes"
    )

    assert result.returncode == 0, result.stderr
    assert "Marked 5 events unsynced" in result.stdout
    assert unsynced_seqs(tmp_path) == [6, 7, 8, 9, 10]


def test_resend_without_yes_or_terminal(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path)

    command = [sys.executable, "-m", "appliance", "sync", "resend"]
    result = subprocess.run(
        [*command, "--config", str(config), "--from-seq", "1"],
        capture_output=True,
        text=True,
        timeout=60.0,
        check=False,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 2
    assert "10 synced events from seq 1 on" in result.stdout
    assert "pass --yes" in result.stderr
    assert unsynced_seqs(tmp_path) == []


def test_resend_nothing_synced(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path)

    result = nightbox(
        "sync", "resend", "--config", str(config), "--from-seq", "11", "--yes"
    )

    assert result.returncode == 0, result.stderr
    assert "no synced events from seq 11 on" in result.stdout
    assert unsynced_seqs(tmp_path) == []


def test_resend_needs_start(tmp_path: Path) -> None:
    config = write_site(tmp_path, sync=True)
    fill_store(tmp_path)

    result = nightbox("sync", "resend", "--config", str(config), "--yes")

    assert result.returncode == 2
    assert "--from-seq" in result.stderr
    assert unsynced_seqs(tmp_path) == []


async def test_running_sync_sends_marked_events(
    site_config: SiteConfig,  # noqa: F811
    store: Store,  # noqa: F811
    local_bus: Bus,  # noqa: F811
    upstream: Upstream,  # noqa: F811
) -> None:
    events = emit_events(store, 6)
    all_seqs = {event.seq for event in events}
    async with (
        Collector(upstream, upstream.collector_credentials(), [EVENTS_FILTER]) as seen,
        running(site_config, store, local_bus) as service,
    ):
        await wait_until(lambda: synced_seqs(store) == all_seqs, "the first sync")
        await wait_until(lambda: len(seen.events()) == 6, "six events upstream")

        # Another process, as `nightbox sync resend` is, marks seq 3 on.
        other = Store(store.path, SystemClock())
        try:
            marked = other.mark_unsynced(from_seq=events[2].seq)
        finally:
            other.close()
        await wait_until(lambda: len(seen.events()) == 10, "four events again")
        await wait_until(lambda: synced_seqs(store) == all_seqs, "marked again")
        sent = service.sent

    ids = [body["id"] for _topic, body in seen.events()]
    assert marked == 4
    assert ids[6:] == [event.id for event in events[2:]]
    assert sent == 10
