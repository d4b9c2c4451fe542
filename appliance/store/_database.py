"""SQLite in WAL mode, where every state change commits with its outbox event.

The connection belongs to the event loop's thread. Transactions are short and
synchronous: a check-out or kit issue is a handful of rows, and
``synchronous=FULL`` makes each commit survive a power cut, which matters on
a box that runs from a wall socket in a venue.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from appliance.clock import Clock
from appliance.errors import StoreError
from appliance.store._migrations import MIGRATIONS
from appliance.store._outbox import OutboxEvent

_LOGGER = logging.getLogger(__name__)


class Transaction:
    """One open SQLite transaction; :meth:`emit` adds an outbox event to it."""

    def __init__(self, connection: sqlite3.Connection, clock: Clock) -> None:
        self._connection = connection
        self._clock = clock
        self.events: list[OutboxEvent] = []

    def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run one statement inside the transaction."""
        return self._connection.execute(sql, parameters)

    def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> sqlite3.Cursor:
        """Run one statement for each row of parameters inside the transaction."""
        return self._connection.executemany(sql, rows)

    def emit(self, event_type: str, data: dict[str, Any]) -> OutboxEvent:
        """Add an event to the outbox, visible only if the transaction commits."""
        event_id = str(uuid.uuid4())
        created_at = self._clock.now()
        trusted = self._clock.trusted
        body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
        cursor = self._connection.execute(
            "INSERT INTO outbox (id, type, created_at, clock_trusted, body)"
            " VALUES (?, ?, ?, ?, ?)",
            (event_id, event_type, created_at, int(trusted), body),
        )
        seq = cursor.lastrowid
        if seq is None:
            raise sqlite3.IntegrityError("outbox insert returned no sequence number")
        event = OutboxEvent(seq, event_id, event_type, created_at, trusted, data)
        self.events.append(event)
        return event


class Store:
    """The box's database file, migrated on open."""

    def __init__(self, path: Path, clock: Clock) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = path
        self._clock = clock
        self._connection = sqlite3.connect(path, isolation_level=None)
        # Opt-in contacts live here: readable by the box's user only. SQLite
        # gives the -wal and -shm files the same mode.
        os.chmod(path, 0o600)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._listeners: list[Callable[[list[OutboxEvent]], None]] = []
        self._migrate()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def _migrate(self) -> None:
        (version,) = self._connection.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self._path} has schema version {version}, newer than this "
                f"Nightbox ({len(MIGRATIONS)}); install the newer release"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            _LOGGER.info("Migrating %s to schema version %d", self._path, number)
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self._connection.execute(statement)
                self._connection.execute(f"PRAGMA user_version={number}")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def on_commit(self, listener: Callable[[list[OutboxEvent]], None]) -> None:
        """Call ``listener`` with the events of every transaction that commits."""
        self._listeners.append(listener)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Open a write transaction; commit on exit, roll back on any exception."""
        transaction = Transaction(self._connection, self._clock)
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield transaction
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")
        if transaction.events:
            for listener in self._listeners:
                listener(transaction.events)

    def query(
        self, sql: str, parameters: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only query and return every row."""
        return self._connection.execute(sql, parameters).fetchall()

    def query_one(
        self, sql: str, parameters: tuple[Any, ...] = ()
    ) -> tuple[Any, ...] | None:
        """Run a read-only query and return its first row, or None."""
        row: tuple[Any, ...] | None = self._connection.execute(
            sql, parameters
        ).fetchone()
        return row

    def meta(self, key: str) -> str | None:
        """Return a value from ``box_meta``, or None."""
        row = self.query_one("SELECT value FROM box_meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a value in ``box_meta``; it reports no event."""
        with self.transaction() as transaction:
            transaction.execute(
                "INSERT INTO box_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def unpublished(self, limit: int = 500) -> list[OutboxEvent]:
        """Return outbox events not yet published on the local bus, oldest first."""
        rows = self.query(
            "SELECT seq, id, type, created_at, clock_trusted, body FROM outbox"
            " WHERE published_at IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [OutboxEvent.from_row(row) for row in rows]

    def mark_published(self, seqs: list[int]) -> None:
        """Record that the broker acknowledged the events with these numbers."""
        if not seqs:
            return
        now = self._clock.now()
        # A mark lost in a power cut only makes the event publish again, and
        # consumers drop repeats by event id, so this commit skips the fsync
        # that synchronous=FULL gives every other commit. The next full commit
        # makes it durable too, because WAL frames are synced in order.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        try:
            self._mark(seqs, now)
        finally:
            self._connection.execute("PRAGMA synchronous=FULL")

    def _mark(self, seqs: list[int], now: float) -> None:
        with self.transaction() as transaction:
            transaction.execute(
                "UPDATE outbox SET published_at = ? WHERE seq IN ("
                + ",".join("?" * len(seqs))
                + ")",
                (now, *seqs),
            )

    def unsynced(self, limit: int = 500, after_seq: int = 0) -> list[OutboxEvent]:
        """Return outbox events the upstream broker has not acknowledged yet.

        Events come oldest first, from the first ``seq`` above ``after_seq``,
        so a sender with events in flight reads only the ones after them.
        """
        rows = self.query(
            "SELECT seq, id, type, created_at, clock_trusted, body FROM outbox"
            " WHERE synced_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [OutboxEvent.from_row(row) for row in rows]

    def unsynced_count(self) -> int:
        """Return how many outbox events wait for the upstream broker.

        The count reads only the partial index ``outbox_unsynced``, which
        contains the unsynced rows alone, not the whole outbox.
        """
        row = self.query_one("SELECT COUNT(*) FROM outbox WHERE synced_at IS NULL")
        return 0 if row is None else int(row[0])

    def mark_synced(self, seqs: list[int]) -> None:
        """Record that the upstream broker acknowledged the events with these seqs."""
        if not seqs:
            return
        now = self._clock.now()
        # As in mark_published: a mark lost in a power cut only sends the
        # event upstream again, and the collector drops repeats by event id.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with self.transaction() as transaction:
                transaction.execute(
                    "UPDATE outbox SET synced_at = ? WHERE seq IN ("
                    + ",".join("?" * len(seqs))
                    + ")",
                    (now, *seqs),
                )
        finally:
            self._connection.execute("PRAGMA synchronous=FULL")

    def lowest_unsynced_seq(self) -> int | None:
        """Return the lowest ``seq`` the upstream broker has not acknowledged."""
        row = self.query_one("SELECT MIN(seq) FROM outbox WHERE synced_at IS NULL")
        return None if row is None or row[0] is None else int(row[0])

    def synced_range(
        self, *, from_seq: int | None = None, synced_since: float | None = None
    ) -> tuple[int, int | None, int | None]:
        """Return the count, lowest and highest seq of synced events in a range.

        The range is every event from ``from_seq`` on, or every event that
        the upstream broker acknowledged at or after ``synced_since`` (Unix
        time by the box's clock). Exactly one of the two must be given.
        """
        condition, value = _synced_condition(from_seq, synced_since)
        row = self.query_one(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM outbox"
            f" WHERE synced_at IS NOT NULL AND {condition}",
            (value,),
        )
        if row is None:
            return 0, None, None
        return int(row[0]), row[1], row[2]

    def mark_unsynced(
        self, *, from_seq: int | None = None, synced_since: float | None = None
    ) -> int:
        """Clear ``synced_at`` of the events in a range; return how many changed.

        The range is as in :meth:`synced_range`. A running sync service
        sends the events again once it notices them (see ``SyncService``).
        """
        condition, value = _synced_condition(from_seq, synced_since)
        with self.transaction() as transaction:
            cursor = transaction.execute(
                "UPDATE outbox SET synced_at = NULL"
                f" WHERE synced_at IS NOT NULL AND {condition}",
                (value,),
            )
            return cursor.rowcount

    def close(self) -> None:
        """Close the connection; committed data is already on disk."""
        self._connection.close()


def _synced_condition(
    from_seq: int | None, synced_since: float | None
) -> tuple[str, float]:
    """Return the SQL condition and its value for an outbox range."""
    if (from_seq is None) == (synced_since is None):
        raise ValueError("give exactly one of from_seq and synced_since")
    if from_seq is not None:
        return "seq >= ?", from_seq
    assert synced_since is not None
    return "synced_at >= ?", synced_since
