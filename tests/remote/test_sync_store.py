"""The store's sync bookkeeping: ``unsynced``, ``unsynced_count``, ``mark_synced``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.clock import ManualClock
from appliance.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "nightbox.sqlite3", ManualClock(1_800_000_000.0))
    yield opened
    opened.close()


def emit(store: Store, count: int) -> list[int]:
    with store.transaction() as transaction:
        for number in range(count):
            transaction.emit("checkout", {"band": f"ib-1-{number}"})
        return [event.seq for event in transaction.events]


def test_unsynced_oldest_first(store: Store) -> None:
    seqs = emit(store, 5)
    assert [event.seq for event in store.unsynced()] == seqs
    assert [event.seq for event in store.unsynced(limit=2)] == seqs[:2]


def test_unsynced_after_seq(store: Store) -> None:
    seqs = emit(store, 5)
    assert [event.seq for event in store.unsynced(after_seq=seqs[2])] == seqs[3:]
    assert store.unsynced(after_seq=seqs[-1]) == []


def test_unsynced_event_fields(store: Store) -> None:
    emit(store, 1)
    (event,) = store.unsynced()
    assert event.type == "checkout"
    assert event.data == {"band": "ib-1-0"}
    assert event.created_at == 1_800_000_000.0
    assert event.clock_trusted is True  # a ManualClock is trusted


def test_mark_synced_skips_marked(store: Store) -> None:
    seqs = emit(store, 4)
    store.mark_synced([seqs[0], seqs[2]])
    assert [event.seq for event in store.unsynced()] == [seqs[1], seqs[3]]
    assert store.unsynced_count() == 2


def test_mark_synced_records_time(store: Store) -> None:
    seqs = emit(store, 2)
    store.mark_synced([seqs[0]])
    rows = store.query("SELECT seq, synced_at FROM outbox ORDER BY seq")
    assert rows == [(seqs[0], 1_800_000_000.0), (seqs[1], None)]


def test_mark_synced_empty_list(store: Store) -> None:
    emit(store, 2)
    store.mark_synced([])
    assert store.unsynced_count() == 2


def test_synced_independent_of_published(store: Store) -> None:
    seqs = emit(store, 3)
    store.mark_published(seqs)
    assert store.unsynced_count() == 3
    store.mark_synced(seqs[:1])
    assert store.unpublished() == []
    assert store.unsynced_count() == 2


def test_mark_synced_keeps_full_sync(store: Store) -> None:
    seqs = emit(store, 1)
    store.mark_synced(seqs)
    # 2 is FULL: every other commit still survives a power cut.
    assert store.query_one("PRAGMA synchronous") == (2,)


def test_unsynced_count_uses_index(store: Store) -> None:
    plan = store.query(
        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM outbox WHERE synced_at IS NULL"
    )
    assert "outbox_unsynced" in plan[0][3]
