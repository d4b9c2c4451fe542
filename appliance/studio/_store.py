"""The studio's clips in the box's store, and the queue of clips to upload.

A clip's row and its ``clip_written`` event commit in one transaction once
the clip file is complete, so every row names a whole file. The sync
service reads :meth:`ClipStore.pending_uploads` and marks each clip
uploaded once the fleet acknowledged all of it.

Retention keeps the newest ``keep`` set-end clips and the newest ``keep``
other clips on disk. It removes an older clip only once it is uploaded, so
a clip the fleet does not have is never deleted for a newer one. Set-end
clips are counted apart, so clips cut on request never push them out.
Clips that wait for their upload may exceed ``keep`` up to
:attr:`ClipStore.limit`. At that many, the studio rejects new clips other
than set-end clips. Clips cut on request by creator stations have a share
of their own, :attr:`ClipStore.request_limit`, so stations cannot use up
the room of the panel button, the console and the fleet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.clock import Clock
from appliance.store import Store, Transaction

_LOGGER = logging.getLogger(__name__)

_COLUMNS = "id, path, size, sha256, created_at, trigger, set_id, duration_s, note"
SET_END = "set-end"
# The trigger of a clip that a creator station requested.
REQUEST = "request"
# The trigger of a whole clip file found without its row at start-up: the
# box stopped after the file was finished and before its row committed.
RECOVERED = "recovered"
# Clips other than set-end clips allowed on disk, as a multiple of ``keep``,
# while the oldest of them wait for their upload.
LIMIT_PER_KEEP = 2


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """A written clip file: its checksum, its length and why it was cut.

    ``created_at`` is box time (Unix seconds); ``trigger`` is ``button``,
    ``command``, ``console``, ``set-end``, ``request`` or ``recovered``;
    ``set_id`` is the set that was playing, if any.
    """

    id: str
    path: Path
    size: int
    sha256: str
    created_at: float
    trigger: str
    set_id: str | None
    duration_s: float
    note: str | None = None

    def summary(self) -> dict[str, Any]:
        """Return the clip as JSON for replies, events and the stream state."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["file"] = self.path.name
        data["duration_s"] = round(self.duration_s, 3)
        return data

    @classmethod
    def from_row(cls, row: Iterable[Any]) -> ClipRecord:
        """Build a record from the columns listed in ``_COLUMNS``."""
        (id_, path, size, sha256, created_at, trigger, set_id, duration_s, note) = row
        return cls(
            id=id_,
            path=Path(path),
            size=size,
            sha256=sha256,
            created_at=created_at,
            trigger=trigger,
            set_id=set_id,
            duration_s=duration_s,
            note=note,
        )


class ClipStore:
    """The ``clips`` table: written clips, their uploads and their retention.

    ``wake`` is set on the event loop whenever a clip is queued for upload;
    the uploader clears it before it reads :meth:`pending_uploads` again.
    ``limit`` is the most clips other than set-end clips that may wait for
    their upload on disk, and ``request_limit`` the most of them cut on
    request: ``keep``, half of ``limit``.
    """

    def __init__(self, store: Store, clock: Clock, keep: int) -> None:
        self._store = store
        self._clock = clock
        self._keep = keep
        self.limit = keep * LIMIT_PER_KEEP
        self.request_limit = keep
        self.wake = asyncio.Event()

    def record(self, transaction: Transaction, clip: ClipRecord) -> None:
        """Insert ``clip`` and its ``clip_written`` event in ``transaction``."""
        transaction.execute(
            f"INSERT INTO clips ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                clip.id,
                str(clip.path),
                clip.size,
                clip.sha256,
                clip.created_at,
                clip.trigger,
                clip.set_id,
                clip.duration_s,
                clip.note,
            ),
        )
        event = clip.summary()
        # The event names the file but not its path on the box.
        del event["path"]
        transaction.emit("clip_written", event)

    def queued(self) -> None:
        """Wake the uploader after a clip was committed."""
        self.wake.set()

    def pending_uploads(self) -> list[ClipRecord]:
        """Return the clips still to upload whose file is kept, oldest first."""
        rows = self._store.query(
            f"SELECT {_COLUMNS} FROM clips"
            " WHERE uploaded_at IS NULL AND removed_at IS NULL"
            " ORDER BY created_at, id"
        )
        return [ClipRecord.from_row(row) for row in rows]

    def mark_uploaded(self, clip_id: str) -> bool:
        """Record that the fleet has all of clip ``clip_id``.

        Returns False, and logs why, when no clip has that id.
        """
        now = self._clock.now()
        with self._store.transaction() as transaction:
            cursor = transaction.execute(
                "UPDATE clips SET uploaded_at = ? WHERE id = ? AND uploaded_at IS NULL",
                (now, clip_id),
            )
            changed = cursor.rowcount
        if changed == 0 and self.find(clip_id) is None:
            _LOGGER.warning("Clip %.40s marked uploaded is not in the store", clip_id)
            return False
        return True

    def find(self, clip_id: str) -> ClipRecord | None:
        """Return the clip ``clip_id``, or None."""
        row = self._store.query_one(
            f"SELECT {_COLUMNS} FROM clips WHERE id = ?", (clip_id,)
        )
        return None if row is None else ClipRecord.from_row(row)

    def latest(self) -> ClipRecord | None:
        """Return the newest clip, or None before the first one."""
        row = self._store.query_one(
            f"SELECT {_COLUMNS} FROM clips ORDER BY created_at DESC, rowid DESC LIMIT 1"
        )
        return None if row is None else ClipRecord.from_row(row)

    def counts(self) -> dict[str, int]:
        """Return how many clips were written, wait for upload and are on disk."""
        row = self._store.query_one(
            "SELECT COUNT(*),"
            " COALESCE(SUM(uploaded_at IS NULL AND removed_at IS NULL), 0),"
            " COALESCE(SUM(removed_at IS NULL), 0) FROM clips"
        )
        written, pending, kept = row if row is not None else (0, 0, 0)
        return {"written": written, "pending_upload": pending, "on_disk": kept}

    def on_disk(self, *, set_end: bool, waiting: bool = False) -> int:
        """Return how many set-end clips (or other clips) have their file kept.

        With ``waiting``, count only those whose upload is still to come.
        """
        row = self._store.query_one(
            "SELECT COUNT(*) FROM clips WHERE removed_at IS NULL"
            " AND (trigger = ?) = ? AND (uploaded_at IS NULL OR NOT ?)",
            (SET_END, set_end, waiting),
        )
        return 0 if row is None else int(row[0])

    def waiting(self, trigger: str) -> int:
        """Return how many clips cut by ``trigger`` have their upload still to come."""
        row = self._store.query_one(
            "SELECT COUNT(*) FROM clips WHERE removed_at IS NULL"
            " AND uploaded_at IS NULL AND trigger = ?",
            (trigger,),
        )
        return 0 if row is None else int(row[0])

    def files(self) -> dict[str, bool]:
        """Return every clip id with True when its file is kept, False if removed."""
        rows = self._store.query("SELECT id, removed_at IS NULL FROM clips")
        return {clip_id: bool(kept) for clip_id, kept in rows}

    def mark_removed(self, clip_ids: list[str]) -> None:
        """Record that the files of ``clip_ids`` are gone from disk."""
        now = self._clock.now()
        with self._store.transaction() as transaction:
            transaction.execute_many(
                "UPDATE clips SET removed_at = ? WHERE id = ? AND removed_at IS NULL",
                [(now, clip_id) for clip_id in clip_ids],
            )

    def prune(self) -> list[Path]:
        """Mark uploaded clips beyond the newest ``keep`` removed; return their files.

        Set-end clips and other clips are counted apart, so no other clip
        pushes a set's clip out. A clip still waiting for its
        upload is kept. The caller deletes the files after this commit.
        """
        rows = self._store.query(
            "SELECT id, path, uploaded_at FROM ("
            " SELECT id, path, uploaded_at, ROW_NUMBER() OVER ("
            "  PARTITION BY trigger = ? ORDER BY created_at DESC, rowid DESC"
            " ) AS newest FROM clips WHERE removed_at IS NULL"
            ") WHERE newest > ? AND uploaded_at IS NOT NULL",
            (SET_END, self._keep),
        )
        if not rows:
            return []
        self.mark_removed([clip_id for clip_id, _path, _uploaded in rows])
        return [Path(path) for _id, path, _uploaded in rows]
