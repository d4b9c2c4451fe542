"""The SQLite store: migrations, WAL, transactions with their outbox events.

Every test opens a real database file under a temporary folder and reads it
back through a second connection, as another process would.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import ManualClock
from appliance.errors import StoreError
from appliance.store import OutboxEvent, Store
from appliance.store._migrations import MIGRATIONS

T0 = 1_780_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "box" / "nightbox.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    opened = Store(path, ManualClock(T0))
    yield opened
    opened.close()


def read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a separate connection, as another process would."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def add_checkout(store: Store, band: str) -> OutboxEvent:
    with store.transaction() as transaction:
        event = transaction.emit("checkout", {"band": band})
        transaction.execute(
            "INSERT INTO checkouts (event_id, band, reader, seen_at, rssi_dbm)"
            " VALUES (?, ?, 'exit-1', ?, -60.0)",
            (event.id, band, T0),
        )
    return event


def test_store_migrations_set_user_version(store: Store, path: Path) -> None:
    tables = {row[0] for row in read(path, "SELECT name FROM sqlite_master")}

    assert read(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert {"outbox", "checkouts", "kits", "coupons", "requests"} <= tables


def test_store_reopen_is_idempotent(store: Store, path: Path) -> None:
    event = add_checkout(store, "ib-1-1")
    store.close()

    reopened = Store(path, ManualClock(T0))
    again = Store(path, ManualClock(T0))
    try:
        versions = read(path, "PRAGMA user_version")
        bands = read(path, "SELECT band, event_id FROM checkouts")
    finally:
        again.close()
        reopened.close()

    assert versions == [(len(MIGRATIONS),)]
    assert bands == [("ib-1-1", event.id)]


def test_store_newer_schema_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    newer = len(MIGRATIONS) + 1
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version={newer}")
    connection.close()

    with pytest.raises(StoreError) as caught:
        Store(path, ManualClock(T0))

    message = str(caught.value)
    assert f"schema version {newer}" in message
    assert str(path) in message
    assert "newer" in message
    # The file is left as it was, for the newer release to open.
    assert read(path, "PRAGMA user_version") == [(newer,)]


def test_store_wal_mode_on(store: Store, path: Path) -> None:
    add_checkout(store, "ib-1-1")

    assert read(path, "PRAGMA journal_mode") == [("wal",)]
    assert path.with_name(path.name + "-wal").exists()


def test_store_failed_transaction_rolls_back(store: Store, path: Path) -> None:
    delivered: list[list[OutboxEvent]] = []
    store.on_commit(delivered.append)

    with (
        pytest.raises(ValueError, match="scanner unplugged"),
        store.transaction() as tx,
    ):
        event = tx.emit("checkout", {"band": "ib-1-2"})
        tx.execute(
            "INSERT INTO checkouts (event_id, band, reader, seen_at, rssi_dbm)"
            " VALUES (?, 'ib-1-2', 'exit-1', ?, -60.0)",
            (event.id, T0),
        )
        raise ValueError("scanner unplugged")

    assert read(path, "SELECT * FROM checkouts") == []
    assert read(path, "SELECT * FROM outbox") == []
    assert store.unpublished() == []
    assert delivered == []


def test_store_usable_after_rollback(store: Store, path: Path) -> None:
    with pytest.raises(KeyError), store.transaction() as transaction:
        transaction.emit("checkout", {"band": "ib-1-3"})
        raise KeyError("band")

    event = add_checkout(store, "ib-1-4")

    assert [row[0] for row in read(path, "SELECT id FROM outbox")] == [event.id]


def test_store_listeners_after_commit(store: Store, path: Path) -> None:
    seen_in_file: list[list[tuple[Any, ...]]] = []
    delivered: list[list[OutboxEvent]] = []

    def listener(events: list[OutboxEvent]) -> None:
        # Another connection must already see the rows, because the commit is done.
        seen_in_file.append(read(path, "SELECT id FROM outbox ORDER BY seq"))
        delivered.append(events)

    store.on_commit(listener)
    with store.transaction() as transaction:
        first = transaction.emit("kit_issued", {"band": "ib-1-5"})
        second = transaction.emit("coupon_issued", {"band": "ib-1-5"})
        pending = list(delivered)
        outside = read(path, "SELECT id FROM outbox")

    assert pending == []
    assert outside == []
    assert [[event.id for event in events] for events in delivered] == [
        [first.id, second.id]
    ]
    assert seen_in_file == [[(first.id,), (second.id,)]]


def test_store_no_events_no_listener_call(store: Store) -> None:
    delivered: list[list[OutboxEvent]] = []
    store.on_commit(delivered.append)

    store.set_meta("site", "test")

    assert store.meta("site") == "test"
    assert delivered == []


def test_store_event_fields_round_trip(store: Store) -> None:
    event = add_checkout(store, "ib-1-6")

    (stored,) = store.unpublished()

    assert stored == event
    assert stored.created_at == T0
    assert stored.clock_trusted is True
    assert stored.data == {"band": "ib-1-6"}


def test_store_unpublished_in_order(store: Store) -> None:
    events = [add_checkout(store, f"ib-1-{minor}") for minor in range(1, 6)]

    store.mark_published([events[1].seq, events[3].seq])

    assert [event.seq for event in events] == sorted({e.seq for e in events})
    assert [event.id for event in store.unpublished()] == [
        events[0].id,
        events[2].id,
        events[4].id,
    ]
    assert [event.id for event in store.unpublished(limit=2)] == [
        events[0].id,
        events[2].id,
    ]


def test_store_file_private(store: Store, path: Path) -> None:
    # Opt-in contacts are stored here, so only the box's user may read it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
