"""The JSON envelope every Nightbox message travels in.

``{"v": 1, "id": "<uuid>", "ts": <unix s>, "src": "<kind>/<id>", ...}``
plus ``data`` for events and requests, or ``ok`` with ``data`` or ``error``
for replies. ``id`` is unique per message, so a QoS 1 duplicate is
recognised; events also carry the box's ``seq`` and ``type``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from appliance.errors import PayloadError

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message: its id, time, source and body."""

    id: str
    ts: float
    src: str
    body: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        """The ``data`` object, or an empty dict when the message has none."""
        value = self.body.get("data")
        return value if isinstance(value, dict) else {}


def encode(src: str, fields: dict[str, Any], *, message_id: str | None = None) -> bytes:
    """Wrap ``fields`` in an envelope from ``src`` and return compact JSON bytes.

    Raises PayloadError naming the problem when a value has no JSON form
    here: an integer beyond 64 bits, a key that is not a string, a string
    with lone surrogates, or a type JSON has no value for.
    """
    envelope = {
        "v": SCHEMA_VERSION,
        "id": message_id or str(uuid.uuid4()),
        "ts": round(time.time(), 3),
        "src": src,
    }
    envelope.update(fields)
    try:
        return orjson.dumps(envelope)
    except orjson.JSONEncodeError as err:
        # orjson raises JSONEncodeError, a TypeError, with a message such as
        # "Integer exceeds 64-bit range". Callers handle bad input as a
        # ValueError, so the message is kept and the type changed.
        raise PayloadError(f"message from {src} cannot be encoded: {err}") from err


def decode(payload: bytes) -> Envelope:
    """Parse and check an envelope.

    Raises PayloadError naming the problem: too large, not UTF-8 JSON (which
    includes NaN, Infinity and nesting deeper than 1024 levels), not an
    object, a missing or mistyped field, or an unsupported schema version.
    """
    return validate(load(payload))


def load(payload: bytes) -> dict[str, Any]:
    """Parse a payload into a JSON object without checking its fields.

    Raises PayloadError when the payload is too large, not UTF-8 JSON (which
    includes NaN, Infinity and nesting deeper than 1024 levels) or not an
    object.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"payload of {len(payload)} bytes exceeds the limit of "
            f"{MAX_PAYLOAD_BYTES} bytes"
        )
    try:
        # orjson parses batches several times faster than the json module and
        # is stricter: it rejects NaN, Infinity, invalid UTF-8 and nesting
        # deeper than 1024 levels, all with JSONDecodeError.
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise PayloadError(f"payload is not UTF-8 JSON: {err}") from err
    if not isinstance(body, dict):
        raise PayloadError(f"payload must be a JSON object, not {type(body).__name__}")
    return body


def validate(body: dict[str, Any]) -> Envelope:
    """Check the fields of a parsed envelope and return it.

    Raises PayloadError for a missing or mistyped field or an unsupported
    schema version.
    """
    version = body.get("v")
    # True == 1 in Python, but JSON true is no schema version.
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise PayloadError(
            f"unsupported schema version v={version!r}; "
            f"this box speaks v={SCHEMA_VERSION}"
        )
    message_id = body.get("id")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 64:
        raise PayloadError(
            f"field 'id' must be a string of 1-64 characters, not {message_id!r:.80}"
        )
    ts = body.get("ts")
    # orjson has already rejected NaN, Infinity and numbers beyond a double,
    # so a number here converts to a finite float.
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise PayloadError(f"field 'ts' must be Unix seconds, not {ts!r:.40}")
    seconds = float(ts)
    src = body.get("src", "")
    if not isinstance(src, str):
        raise PayloadError(f"field 'src' must be a string, not {src!r:.80}")
    if "data" in body and not isinstance(body["data"], dict):
        raise PayloadError("field 'data' must be a JSON object")
    return Envelope(message_id, seconds, src, body)


def require(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``data[key]`` if it has type ``kind``; else raise PayloadError."""
    value = data.get(key)
    if value is None:
        raise PayloadError(f"missing field {key!r}")
    if isinstance(value, bool) and bool not in (
        kind if isinstance(kind, tuple) else (kind,)
    ):
        raise PayloadError(f"field {key!r} must not be a boolean, got {value!r}")
    if not isinstance(value, kind):
        raise PayloadError(f"field {key!r} has the wrong type: {value!r:.60}")
    return value
