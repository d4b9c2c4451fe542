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
import unicodedata
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
_ADD_FIELDS = frozenset({"note", "band", "ttl_s", "idempotency_key"})
# Control characters a note may contain: a note can have several lines.
_NOTE_WHITESPACE = frozenset("\n\t")


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
        so a retry stores no second note although the request is not stored.
        The box distinguishes a retry from another request with the same key
        by comparing it with the stored note: band, text and lifetime.
        """
        band, note, ttl_s = _checked_note(request.data)
        _reject_key_of_other_action(transaction, request)
        note_id = hashlib.sha256(
            f"{request.requester_kind}/{request.requester}/{request.key}".encode()
        ).hexdigest()[:32]
        now = self._clock.now()
        row = transaction.execute(
            "SELECT band, note, created_at, expires_at FROM wellness_notes"
            " WHERE id = ?",
            (note_id,),
        ).fetchone()
        if row is None and not _was_deleted(transaction, note_id):
            # NOTE: a retry that arrives after the purge removed the expired
            # note adds it again, because nothing of a purged note is kept.
            expires_at = now + ttl_s
            transaction.execute(
                "INSERT INTO wellness_notes"
                " (id, band, note, staff, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (note_id, band, note, request.requester, now, expires_at),
            )
            return {"id": note_id, "expires_at": round(expires_at, 3)}
        if row is None or row[3] <= now:
            raise Refusal(
                "note-expired",
                f"wellness note {note_id} was added with this key and has "
                "expired or was deleted; use a new key to add another",
                id=note_id,
            )
        stored_band, stored_note, created_at, stored_expires_at = row
        # Lifetimes are compared to the millisecond, the precision of replies.
        same_ttl = abs((stored_expires_at - created_at) - ttl_s) < 0.001
        if stored_band != band or stored_note != note or not same_ttl:
            _LOGGER.warning(
                "Rejected console/wellness-add of %s: key %r was already used "
                "for another note",
                request.requester,
                request.key,
            )
            raise Refusal(
                "idempotency-key-reused",
                f"key {request.key!r} was already used for another "
                "console/wellness-add request; use a new key",
            )
        return {"id": note_id, "expires_at": round(float(stored_expires_at), 3)}

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


def _checked_note(data: dict[str, Any]) -> tuple[str | None, str, float]:
    """Return the band, trimmed text and lifetime of a ``wellness-add`` request.

    Raises PayloadError naming the field. Messages never repeat the note,
    because rejected requests are logged.
    """
    unknown = sorted(set(data) - _ADD_FIELDS)
    if unknown:
        named = ", ".join(f"{name!r:.40}" for name in unknown[:5])
        raise PayloadError(
            f"unknown field {named} in wellness-add; it takes only 'note', "
            "'band' and 'ttl_s'"
        )
    note = data.get("note")
    if not isinstance(note, str) or not 0 < len(note.strip()) <= MAX_NOTE_LENGTH:
        raise PayloadError(
            f"field 'note' must be text of 1 to {MAX_NOTE_LENGTH} characters"
        )
    if any(
        unicodedata.category(character) == "Cc" and character not in _NOTE_WHITESPACE
        for character in note
    ):
        raise PayloadError(
            "field 'note' contains a control character; only line breaks and "
            "tabs are allowed, so remove it and send the note again"
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
    return band, note.strip(), float(ttl_s)


def _was_deleted(transaction: Transaction, note_id: str) -> bool:
    """Return whether a stored ``wellness-delete`` reply deleted ``note_id``.

    That reply stores the note's id only, so it outlives the note and keeps
    a late retry of the add from writing the deleted note again.
    """
    row = transaction.execute(
        "SELECT 1 FROM requests WHERE action = 'console/wellness-delete'"
        " AND json_extract(reply, '$.data.id') = ?"
        " AND json_extract(reply, '$.data.deleted') LIMIT 1",
        (note_id,),
    ).fetchone()
    return row is not None


def _reject_key_of_other_action(transaction: Transaction, request: Request) -> None:
    """Raise a Refusal when the requester used the key for another action.

    Stored replies of other actions are keyed by requester and key, as in
    :class:`~appliance.requests.RequestServer`.
    """
    row = transaction.execute(
        "SELECT action FROM requests WHERE key = ? AND requester IN (?, '')",
        (request.key, f"{request.requester_kind}/{request.requester}"),
    ).fetchone()
    if row is not None:
        raise Refusal(
            "idempotency-key-reused",
            f"key {request.key!r} was already used for {row[0]}; use a new key",
        )


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
