"""Checks and effects shared by every front of the studio: bus, console, HTTP.

A creator station, the terminal console, a signed command and the panel
button all reach the same actions. Their input is checked here, once, with
messages that name the field and the value.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

from appliance.errors import NightboxError, PayloadError

if TYPE_CHECKING:
    from appliance.runtime import Box
    from appliance.store import Transaction

MAX_NOTE_CHARS = 200
MAX_MESSAGE_CHARS = 120


class StudioError(NightboxError, RuntimeError):
    """A studio action that cannot be done now; ``code`` is one word for replies."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# The fields each action takes. A request on the bus also carries its
# ``idempotency_key``, which the request server reads.
ACTION_FIELDS: dict[str, frozenset[str]] = {
    "start": frozenset(),
    "stop": frozenset(),
    "clip": frozenset({"note"}),
    "drop-open": frozenset({"drop"}),
    "overlay": frozenset({"message", "hide"}),
}
REQUEST_KEY_FIELD = "idempotency_key"


def check_fields(
    data: dict[str, Any], action: str, *, also: frozenset[str] = frozenset()
) -> None:
    """Raise PayloadError naming a field of ``data`` that ``action`` does not take.

    ``also`` lists fields the caller's channel adds, such as the bus's
    idempotency key.
    """
    known = ACTION_FIELDS[action] | also
    unknown = sorted(set(data) - known)
    if unknown:
        takes = ", ".join(sorted(ACTION_FIELDS[action])) or "no fields"
        raise PayloadError(
            f"field {unknown[0]!r:.40} is not known for {action}; "
            f"{action} takes {takes}"
        )


def note_field(data: dict[str, Any]) -> str | None:
    """Return the optional ``note`` of a clip request."""
    return _text_field(data, "note", MAX_NOTE_CHARS)


def message_field(data: dict[str, Any]) -> str | None:
    """Return the overlay ``message`` to show, or None to hide it.

    ``{"message": "..."}`` shows a line; ``{"message": null}`` or
    ``{"hide": true}`` hides it. A line to show together with
    ``"hide": true`` is contradictory and rejected.
    """
    hide = data.get("hide", False)
    if not isinstance(hide, bool):
        raise PayloadError(f"field 'hide' must be true or false, not {hide!r:.20}")
    if hide:
        if data.get("message") is not None:
            raise PayloadError(
                "fields 'message' and 'hide' = true contradict each other; "
                "send the message to show it, or hide = true alone to hide it"
            )
        return None
    if "message" not in data:
        raise PayloadError(
            "field 'message' is missing; send the line to show, or hide = true"
        )
    return _text_field(data, "message", MAX_MESSAGE_CHARS)


def _text_field(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value.strip()) <= limit:
        raise PayloadError(
            f"field {name!r} must be text of 1 to {limit} characters, not {value!r:.40}"
        )
    for character in value:
        # A control character would corrupt the overlay and the logs.
        if unicodedata.category(character) in ("Cc", "Cf"):
            raise PayloadError(
                f"field {name!r} contains the control character "
                f"U+{ord(character):04X}; send plain text"
            )
    return value.strip()


def open_drop(
    box: Box, transaction: Transaction, data: dict[str, Any], *, by: str
) -> dict[str, Any]:
    """Open a drop of the playing set's creator now, through the drop service.

    ``data`` may name the ``drop``; without it the creator's next drop
    opens. Raises StudioError when no set with a creator plays, when the
    drop belongs to another creator, or when it is open, stopped or over.
    """
    commerce = box.config.commerce
    now = box.clock.now()
    playing = commerce.set_at(now)
    if playing is None or playing.creator is None:
        raise StudioError(
            "no-set",
            "no creator's set is playing now, so the stream has no drop to open",
        )
    drop_id = data.get("drop")
    if drop_id is not None and not isinstance(drop_id, str):
        raise PayloadError(f"field 'drop' must be a drop id, not {drop_id!r:.40}")
    own = [drop for drop in box.drops.all_drops() if drop.creator == playing.creator]
    if drop_id is None:
        waiting = [drop for drop in own if drop.ends_at > now]
        if not waiting:
            raise StudioError(
                "no-drop",
                f"creator {playing.creator} has no drop left tonight; create one "
                "in the console first",
            )
        drop_id = min(waiting, key=lambda drop: drop.starts_at).id
    drop = box.drops.find(drop_id)
    if drop is None:
        names = ", ".join(d.id for d in own) or "none"
        raise PayloadError(
            f"field 'drop' = {drop_id!r:.40} is not a drop of this site; "
            f"{playing.creator}'s drops: {names}"
        )
    if drop.creator != playing.creator:
        raise StudioError(
            "not-set-creator",
            f"drop {drop.id} belongs to {drop.creator or 'no creator'}, not to "
            f"{playing.creator}, whose set is playing",
        )
    (state,) = transaction.execute(
        "SELECT state FROM drops WHERE id = ?", (drop.id,)
    ).fetchone()
    if now >= drop.ends_at:
        raise StudioError("drop-ended", f"drop {drop.id} has ended")
    if state == "stopped":
        raise StudioError(
            "drop-stopped",
            f"drop {drop.id} was stopped; a manager restarts it from the console",
        )
    if state == "live" or now >= drop.starts_at:
        raise StudioError("already-open", f"drop {drop.id} is already open")
    return box.drops.set_state(transaction, drop.id, "live", by=by)
