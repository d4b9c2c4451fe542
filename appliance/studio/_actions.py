"""Checks and effects shared by every front of the studio: bus, console, HTTP.

A creator station, the terminal console, a signed command and the panel
button all reach the same actions. Their input is checked here, once, with
messages that name the field and the value.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

from appliance.errors import NightboxError, PayloadError
from appliance.studio.overlays import (
    drawable_substitute,
    drawable_text,
    right_to_left_character,
    undrawable_character,
)

if TYPE_CHECKING:
    from appliance.runtime import Box
    from appliance.store import Transaction

MAX_NOTE_CHARS = 200
MAX_MESSAGE_CHARS = 120
# Zero width non-joiner and joiner: format characters that Persian words and
# emoji sequences such as U+1F469 U+200D U+1F4BB need. Other format
# characters, bidi overrides among them, are rejected.
JOINERS = frozenset({"\u200c", "\u200d"})


class StudioError(NightboxError, RuntimeError):
    """A studio action that cannot be done now, with a one-word ``code`` for replies."""

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
    reject_surrogates(data)
    known = ACTION_FIELDS[action] | also
    unknown = sorted(set(data) - known)
    if unknown:
        takes = ", ".join(sorted(ACTION_FIELDS[action])) or "no fields"
        raise PayloadError(
            f"field {unknown[0]!r:.40} is not known for {action}; "
            f"{action} takes {takes}"
        )


def reject_surrogates(data: dict[str, Any]) -> None:
    """Raise PayloadError naming the first field whose text is not valid Unicode.

    JSON's ``\\udfff`` escape decodes to a lone UTF-16 surrogate, which has
    no UTF-8 form: it would make every later publish of the state, event or
    reply that carries it fail.
    """
    for name, value in data.items():
        for text in _strings(name, value):
            surrogate = _first_surrogate(text)
            if surrogate is not None:
                raise PayloadError(
                    f"field {_field_name(name)} contains U+{ord(surrogate):04X}, a "
                    "lone UTF-16 surrogate that is not a Unicode character; send "
                    "UTF-8 text, or escape a character beyond U+FFFF as a pair "
                    "such as \\ud83c\\udf89"
                )


def _strings(name: Any, value: Any, depth: int = 0) -> list[str]:
    """Return the strings in ``name`` and ``value``, nested values included."""
    found = [name] if isinstance(name, str) else []
    if isinstance(value, str):
        found.append(value)
    elif depth < _MAX_DEPTH and isinstance(value, dict):
        for key, item in value.items():
            found.extend(_strings(key, item, depth + 1))
    elif depth < _MAX_DEPTH and isinstance(value, list):
        for item in value:
            found.extend(_strings(None, item, depth + 1))
    return found


# Studio fields are flat, so the field checks reject deeper values.
_MAX_DEPTH = 4


def _first_surrogate(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return text[err.start]
    return None


def _field_name(name: Any) -> str:
    if isinstance(name, str) and _first_surrogate(name) is None:
        return f"{name!r:.40}"
    return ascii(name)[:40]


def note_field(data: dict[str, Any]) -> str | None:
    """Return the optional ``note`` of a clip request."""
    return _text_field(data, "note", MAX_NOTE_CHARS)


def message_field(data: dict[str, Any]) -> str | None:
    """Return the overlay ``message`` to show, or None to hide it.

    ``{"message": "..."}`` shows a line and ``{"hide": true}`` hides it. A
    null message is rejected, so that a client bug that loses the text
    cannot hide the line. A line together with ``"hide": true`` is
    contradictory and rejected, and so is a character the overlay font
    cannot draw, because viewers would see a box in its place.
    """
    hide = data.get("hide", False)
    if not isinstance(hide, bool):
        raise PayloadError(f"field 'hide' must be true or false, not {hide!r:.20}")
    if hide:
        if "message" in data:
            raise PayloadError(
                "fields 'message' and 'hide' = true contradict each other; "
                "send the message to show it, or hide = true alone to hide it"
            )
        return None
    if data.get("message") is None:
        raise PayloadError(
            "field 'message' is missing or null; send the line to show, "
            "or hide = true to hide it"
        )
    message = _checked_text("message", data["message"], MAX_MESSAGE_CHARS)
    backwards = right_to_left_character(message)
    if backwards is not None:
        raise PayloadError(
            f"field 'message' contains {backwards!r} (U+{ord(backwards):04X}) of a "
            "right-to-left script, which the overlay cannot lay out; "
            f"{drawable_text()}"
        )
    missing = undrawable_character(message)
    if missing is not None:
        substitute = drawable_substitute(missing)
        advice = "" if substitute is None else f"; write {substitute!r} in its place"
        raise PayloadError(
            f"field 'message' contains {missing!r} (U+{ord(missing):04X}), which "
            f"the overlay font cannot draw; {drawable_text()}{advice}"
        )
    return message


def _text_field(data: dict[str, Any], name: str, limit: int) -> str | None:
    """Return the checked text of field ``name``, None when it is absent or null."""
    value = data.get(name)
    return None if value is None else _checked_text(name, value, limit)


def _checked_text(name: str, value: Any, limit: int) -> str:
    """Return ``value`` stripped, or raise PayloadError naming field ``name``.

    The limit counts Unicode code points, so an emoji sequence joined with
    U+200D counts each of its parts.
    """
    if not isinstance(value, str):
        raise PayloadError(
            f"field {name!r} must be text of 1 to {limit} characters, "
            f"not {type(value).__name__} {value!r:.40}"
        )
    reject_surrogates({name: value})
    text = value.strip()
    if not text.translate(_WITHOUT_JOINERS).strip():
        raise PayloadError(f"field {name!r} is empty; send 1 to {limit} characters")
    if len(text) > limit:
        raise PayloadError(
            f"field {name!r} has {len(text)} characters (Unicode code points, each "
            f"part of an emoji sequence counted); the maximum is {limit}"
        )
    for character in text:
        # A control character would corrupt the overlay and the logs.
        if unicodedata.category(character) in ("Cc", "Cf") and (
            character not in JOINERS
        ):
            raise PayloadError(
                f"field {name!r} contains the control character "
                f"U+{ord(character):04X}; send plain text"
            )
    return text


_WITHOUT_JOINERS = {ord(joiner): None for joiner in JOINERS}


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
