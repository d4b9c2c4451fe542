"""Wellness-check notes that staff keep about guests during a night.

A note ("ib-1-7 looked unwell at the bar, water given") helps the next
person on shift, and is sensitive health information. It is therefore kept
only in the ``wellness_notes`` table: no event, no outbox row, no sync, no
telemetry, no log line and no stored request reply carries its text or
even its hash. Each note expires at most 24 hours after it was written, and
:class:`WellnessNotes` deletes expired notes when the box starts and every
minute, with ``PRAGMA secure_delete`` on and the write-ahead log truncated
after, so the text leaves the database files too.

The console's ``wellness-add``, ``wellness-list`` and ``wellness-delete``
handlers live here; :mod:`appliance.console.service` serves them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import sqlite3
from typing import Any

from appliance._tasks import cancel_and_wait
from appliance.clock import Clock
from appliance.errors import PayloadError
from appliance.requests import Refusal, Request
from appliance.store import Store, Transaction

_LOGGER = logging.getLogger(__name__)

MAX_TTL_S = 24 * 3600.0
MIN_TTL_S = 60.0
MAX_NOTE_LENGTH = 500
PURGE_INTERVAL_S = 60.0
_BAND = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
_NOTE_ID = re.compile(r"^[0-9a-f]{32}\Z")


class WellnessNotes:
    """The notes of one box: the console's handlers and the expiry purge.

    ``purge_interval_s`` is read before each wait, so a test may shorten it
    before the box starts.
    """

    def __init__(
        self, store: Store, clock: Clock, purge_interval_s: float = PURGE_INTERVAL_S
    ) -> None:
        self._store = store
        self._clock = clock
        self.purge_interval_s = purge_interval_s
        self._task: asyncio.Task[None] | None = None
        self.purged = 0

    async def start(self) -> None:
        """Delete expired notes now and start deleting them every interval."""
        self.purge()
        self._task = asyncio.create_task(self._purge_forever(), name="wellness-purge")

    async def stop(self) -> None:
        """Stop the purge task."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def purge(self) -> int:
        """Delete every note whose time is up; return how many were deleted."""
        now = self._clock.now()
        with self._store.transaction() as transaction:
            transaction.execute("PRAGMA secure_delete = ON")
            try:
                deleted = transaction.execute(
                    "DELETE FROM wellness_notes WHERE expires_at <= ?", (now,)
                ).rowcount
            finally:
                transaction.execute("PRAGMA secure_delete = OFF")
        if deleted:
            self.purged += deleted
            truncate_wal(self._store)
            _LOGGER.info("Deleted %d expired wellness notes", deleted)
        return deleted

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.purge_interval_s)
            try:
                self.purge()
            except sqlite3.Error as err:
                # The next run deletes what this one could not.
                _LOGGER.error("Could not delete expired wellness notes: %s", err)

    def add(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        """Handle ``console/wellness-add``: store a note; reply its id and expiry.

        The note's id is derived from the requester and the idempotency key,
        so a retry stores no second note although the reply is not stored.
        """
        data = request.data
        note = data.get("note")
        if not isinstance(note, str) or not 0 < len(note.strip()) <= MAX_NOTE_LENGTH:
            # The message never repeats the note: rejected requests are logged.
            raise PayloadError(
                f"field 'note' must be text of 1 to {MAX_NOTE_LENGTH} characters"
            )
        band = data.get("band")
        if band is not None and (not isinstance(band, str) or not _BAND.match(band)):
            raise PayloadError(
                f"field 'band' must be a band id such as ib-1-7, not {band!r:.50}"
            )
        ttl_s = data.get("ttl_s", MAX_TTL_S)
        if (
            isinstance(ttl_s, bool)
            or not isinstance(ttl_s, int | float)
            or not math.isfinite(ttl_s)
            or not MIN_TTL_S <= ttl_s <= MAX_TTL_S
        ):
            raise PayloadError(
                f"field 'ttl_s' must be {MIN_TTL_S:.0f} to {MAX_TTL_S:.0f} seconds "
                f"(24 hours at most), not {ttl_s!r:.20}"
            )
        note_id = hashlib.sha256(
            f"{request.requester_kind}/{request.requester}/{request.key}".encode()
        ).hexdigest()[:32]
        now = self._clock.now()
        expires_at = now + float(ttl_s)
        inserted = transaction.execute(
            "INSERT INTO wellness_notes (id, band, note, staff, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (note_id, band, note.strip(), request.requester, now, expires_at),
        ).rowcount
        if not inserted:
            row = transaction.execute(
                "SELECT expires_at FROM wellness_notes WHERE id = ?", (note_id,)
            ).fetchone()
            if row is None:
                raise Refusal(
                    "note-expired",
                    f"wellness note {note_id} was added with this key and has "
                    "expired; use a new key to add another",
                    id=note_id,
                )
            expires_at = float(row[0])
        return {"id": note_id, "expires_at": round(expires_at, 3)}

    def list_notes(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        """Handle ``console/wellness-list``: the notes still in time, newest first."""
        now = self._clock.now()
        rows = transaction.execute(
            "SELECT id, band, note, staff, created_at, expires_at FROM wellness_notes"
            " WHERE expires_at > ? ORDER BY created_at DESC, id",
            (now,),
        ).fetchall()
        return {
            "notes": [
                {
                    "id": note_id,
                    "band": band,
                    "note": note,
                    "staff": staff,
                    "created_at": created_at,
                    "expires_at": expires_at,
                }
                for note_id, band, note, staff, created_at, expires_at in rows
            ]
        }

    def delete(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        """Handle ``console/wellness-delete``: delete one note now."""
        note_id = request.data.get("id")
        if not isinstance(note_id, str) or not _NOTE_ID.match(note_id):
            raise PayloadError(
                "field 'id' must be the 32 hex digits of a wellness note id, "
                f"not {note_id!r:.40}"
            )
        transaction.execute("PRAGMA secure_delete = ON")
        try:
            deleted = transaction.execute(
                "DELETE FROM wellness_notes WHERE id = ?", (note_id,)
            ).rowcount
        finally:
            transaction.execute("PRAGMA secure_delete = OFF")
        if deleted:
            # The log's checkpoint runs once the request's group committed.
            asyncio.get_running_loop().call_soon(truncate_wal, self._store)
        return {"id": note_id, "deleted": bool(deleted)}


def truncate_wal(store: Store) -> bool:
    """Copy the write-ahead log into the database and empty it; return success.

    The log still contains the pages of deleted rows until this runs. It fails
    (and is logged) while another connection reads an older snapshot.
    """
    try:
        row = store.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as err:
        _LOGGER.warning("Could not checkpoint the write-ahead log: %s", err)
        return False
    if row is not None and int(row[0]) != 0:
        _LOGGER.warning(
            "Could not empty the write-ahead log of %s, because another "
            "connection is reading; the next checkpoint does",
            store.path,
        )
        return False
    return True
