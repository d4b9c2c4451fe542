"""Erasure of a guest's contact details on request.

A contact (an email address or a wallet id) exists on the box only because
the guest opted in with consent. On request it is erased by band or by the
contact itself. By contact, the bands whose opt-in or coupon names it are
found, and every contact of those bands goes, from every table that contains
it or something derived from it:

- ``optins``: the row is deleted, consent included, so the band counts as
  never opted in; opting in again needs new consent.
- ``coupons``: ``contact`` is set to ``''``. The coupon itself stays, so
  its code can still be redeemed and the night's figures stay right.
- ``requests``: the stored ``optin/register`` replies of the band keep
  their reply (band and contact kind only) but lose their fingerprint, a
  SHA-256 over the request that included the contact.
- ``portal_sessions`` and ``wellness_notes`` of the band are deleted.

The deletes run with ``PRAGMA secure_delete`` on, so SQLite overwrites the
freed bytes. Then :func:`scrub_files` rebuilds the database (``VACUUM``,
which also drops stale copies that earlier updates left in free space) and
truncates the write-ahead log, so the contact is in neither file. An
``erasures`` row records when and how many rows, never whose.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from appliance.errors import PayloadError
from appliance.store import Store, Transaction

_LOGGER = logging.getLogger(__name__)

_BAND = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
_WALLET = re.compile(r"^[A-Za-z0-9._:-]{4,64}\Z")
_MAX_EMAIL = 254


@dataclass(frozen=True, slots=True)
class Erasure:
    """The outcome of one erasure: its id, the rows changed and the bands found."""

    id: str
    rows: int
    bands: int

    def to_json(self) -> dict[str, Any]:
        """Return the erasure as a reply object, which contains no guest data."""
        return {"erasure": self.id, "rows": self.rows, "bands": self.bands}


@dataclass(frozen=True, slots=True)
class ContactSelector:
    """The guest to erase: exactly one of a band, an email address or a wallet id."""

    band: str | None = None
    email: str | None = None
    wallet_id: str | None = None


def selector_from_request(data: dict[str, Any]) -> ContactSelector:
    """Return the selector of an ``erase-contact`` request.

    Raises PayloadError naming the field. Messages never repeat an email
    address or wallet id, because rejected requests are logged.
    """
    present_fields = [name for name in ("band", "email", "wallet_id") if name in data]
    if len(present_fields) != 1:
        raise PayloadError(
            "give exactly one of 'band', 'email' or 'wallet_id' to name the "
            f"guest whose contact to erase, not {len(present_fields)}"
        )
    return check_selector(
        ContactSelector(**{present_fields[0]: data[present_fields[0]]})
    )


def check_selector(selector: ContactSelector) -> ContactSelector:
    """Return ``selector`` with its value checked and trimmed; raise PayloadError."""
    if selector.band is not None:
        band = selector.band
        if not isinstance(band, str) or not _BAND.match(band):
            raise PayloadError(
                f"field 'band' must be a band id such as ib-1-7, not {band!r:.50}"
            )
        return selector
    if selector.email is not None:
        email = selector.email
        if (
            not isinstance(email, str)
            or len(email) > _MAX_EMAIL
            or "@" not in email.strip()
        ):
            raise PayloadError(
                f"field 'email' must be an email address of at most {_MAX_EMAIL} "
                "characters"
            )
        return ContactSelector(email=email.strip())
    wallet_id = selector.wallet_id
    if not isinstance(wallet_id, str) or not _WALLET.match(wallet_id):
        raise PayloadError(
            "field 'wallet_id' must be 4-64 letters, digits or ._:- as the guest "
            "gave it at opt-in"
        )
    return selector


def erase_contact(
    transaction: Transaction, selector: ContactSelector, now: float, requested_by: str
) -> Erasure:
    """Erase the contact named by ``selector`` inside ``transaction``.

    Call :func:`scrub_files` once the transaction committed. Erasing a
    contact that is not stored changes nothing but still records the
    erasure, with 0 rows.
    """
    transaction.execute("PRAGMA secure_delete = ON")
    try:
        bands, rows = _erase(transaction, selector)
    finally:
        transaction.execute("PRAGMA secure_delete = OFF")
    erasure = Erasure(uuid.uuid4().hex, rows, len(bands))
    transaction.execute(
        "INSERT INTO erasures (id, erased_at, rows, requested_by) VALUES (?, ?, ?, ?)",
        (erasure.id, now, rows, requested_by),
    )
    _LOGGER.info(
        "Erasure %s by %s changed %d rows of %d bands",
        erasure.id,
        requested_by,
        rows,
        len(bands),
    )
    return erasure


def _erase(transaction: Transaction, selector: ContactSelector) -> tuple[set[str], int]:
    bands = _bands_of(transaction, selector)
    rows = 0
    # Every contact of a band found goes, not only the one named: a band's
    # redeemed coupon can still name the contact the guest gave before.
    for band in sorted(bands):
        rows += transaction.execute(
            "DELETE FROM optins WHERE band = ?", (band,)
        ).rowcount
        rows += transaction.execute(
            "UPDATE coupons SET contact = '' WHERE band = ? AND contact != ''",
            (band,),
        ).rowcount
        rows += transaction.execute(
            "UPDATE requests SET fingerprint = NULL WHERE action = 'optin/register'"
            " AND json_extract(reply, '$.data.band') = ? AND fingerprint IS NOT NULL",
            (band,),
        ).rowcount
        rows += transaction.execute(
            "DELETE FROM portal_sessions WHERE band = ?", (band,)
        ).rowcount
        rows += transaction.execute(
            "DELETE FROM wellness_notes WHERE band = ?", (band,)
        ).rowcount
    return bands, rows


def _bands_of(transaction: Transaction, selector: ContactSelector) -> set[str]:
    """Return the bands that ``selector`` names, through every table with a contact."""
    if selector.band is not None:
        return {selector.band}
    kind, contact = (
        ("email", selector.email)
        if selector.email is not None
        else ("wallet", selector.wallet_id)
    )
    # Email addresses are matched without regard to case, as mail servers
    # treat them in practice; wallet ids exactly.
    match = "lower(contact) = lower(?)" if kind == "email" else "contact = ?"
    return {
        str(band)
        for (band,) in transaction.execute(
            f"SELECT band FROM optins WHERE contact_kind = ? AND {match}"
            f" UNION SELECT band FROM coupons WHERE contact_kind = ? AND {match}",
            (kind, contact, kind, contact),
        ).fetchall()
    }


def scrub_files(store: Store) -> bool:
    """Rebuild the database and empty its write-ahead log; return whether both ran.

    Call it outside any transaction, after an erasure committed. The WAL
    cannot be truncated while another connection reads an older snapshot
    (``nightbox report`` while it runs); the next checkpoint then empties it.
    """
    # NOTE: VACUUM rewrites the whole file on the event loop's thread, a
    # second or more for a store of tens of MB on a Raspberry Pi. Erasures
    # are rare staff actions, so the pause is accepted.
    try:
        store.query("VACUUM")
        row = store.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as err:
        _LOGGER.error(
            "Could not rebuild %s after an erasure: %s; the erased rows are "
            "overwritten, but free pages may keep older copies until the next "
            "erasure or a restart of the box runs it again",
            store.path,
            err,
        )
        return False
    busy = row is not None and int(row[0]) != 0
    if busy:
        _LOGGER.warning(
            "Could not truncate the write-ahead log of %s after an erasure, "
            "because another connection is reading; the next checkpoint does",
            store.path,
        )
    return not busy
