"""Turn the messages that boxes send upstream into rows for the collector.

Site and box come from the topic, which the upstream broker's ACL lets only
that box publish. The payload must agree with the topic: an event's
``type`` and ``src`` are checked against it. A message that fails a check
becomes a :class:`Rejection`, whose detail names the field and the rule but
never quotes the payload, because a malformed message may carry anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from appliance._toml_values import ID_PATTERN
from appliance.bus.envelope import MAX_PAYLOAD_BYTES, SCHEMA_VERSION
from appliance.bus.topics import ROOT

# Event ids are UUIDs in their canonical text form (``str(uuid.uuid4())``).
EVENT_ID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
)
# One topic level: the store's event types are lowercase words joined by '_'.
EVENT_TYPE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")
# The ``tele/<name>`` topics a box publishes, and their column in ``boxes``.
TELEMETRY_NAMES = ("state", "sync")
AVAILABILITY_STATES = (b"online", b"offline")
_MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event for the ``events`` table."""

    topic: str
    payload: bytes = field(repr=False)
    event_id: str
    site: str
    box: str
    seq: int
    type: str
    created_at: dt.datetime
    clock_trusted: bool
    data: dict[str, Any]
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AvailabilityRow:
    """A box's availability: ``online``, ``offline``, or None once it is cleared."""

    site: str
    box: str
    state: str | None
    retained: bool
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TelemetryRow:
    """A box's ``tele/state`` or ``tele/sync`` data, or None once it is cleared."""

    topic: str
    payload: bytes = field(repr=False)
    site: str
    box: str
    name: str
    data: dict[str, Any] | None
    # The box's ``ts``, by a clock that may not be set.
    sent_at: dt.datetime | None
    retained: bool
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message the collector stores in ``rejected_messages`` instead."""

    topic: str
    reason: str
    detail: str
    event_id: str | None
    payload_bytes: int
    payload_sha256: str
    received_at: dt.datetime


Row = EventRow | AvailabilityRow | TelemetryRow | Rejection


class _Invalid(Exception):
    """A check failed: ``reason`` is one word, ``detail`` a sentence."""

    def __init__(self, reason: str, detail: str, event_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.event_id = event_id


def parse_message(
    topic: str, payload: bytes, *, retained: bool, received_at: dt.datetime
) -> Row:
    """Parse one message into its row, which is a Rejection when a check fails."""
    try:
        return _parse(topic, payload, retained, received_at)
    except _Invalid as invalid:
        return rejection(
            topic,
            payload,
            invalid.reason,
            invalid.detail,
            received_at,
            event_id=invalid.event_id,
        )


def rejection(
    topic: str,
    payload: bytes,
    reason: str,
    detail: str,
    received_at: dt.datetime,
    *,
    event_id: str | None = None,
) -> Rejection:
    """Build the Rejection of a message, with its size and SHA-256 but not its bytes."""
    return Rejection(
        topic=topic,
        reason=reason,
        detail=detail,
        event_id=event_id,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        received_at=received_at,
    )


def _parse(topic: str, payload: bytes, retained: bool, received_at: dt.datetime) -> Row:
    site, box, kind, rest = _split_topic(topic)
    if kind == "events" and len(rest) == 1:
        return _event(topic, payload, site, box, rest[0], received_at)
    if kind == "availability" and not rest:
        return _availability(site, box, payload, retained, received_at)
    if kind == "tele" and len(rest) == 1:
        return _telemetry(topic, payload, site, box, rest[0], retained, received_at)
    raise _Invalid(
        "invalid-topic",
        "the topic is not a box's events/<type>, availability or tele/<name>",
    )


def _split_topic(topic: str) -> tuple[str, str, str, list[str]]:
    levels = topic.split("/")
    if len(levels) < 5 or levels[0] != ROOT or levels[2] != "box":
        raise _Invalid(
            "invalid-topic", f"the topic does not start with {ROOT}/<site>/box/<box>/"
        )
    site, box = levels[1], levels[3]
    if not ID_PATTERN.match(site) or not ID_PATTERN.match(box):
        raise _Invalid(
            "invalid-topic",
            "the topic's site or box is not an id (1-32 lowercase letters, "
            "digits and '-')",
        )
    return site, box, levels[4], levels[5:]


def _json_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Invalid(
            "too-large",
            f"the payload has {len(payload)} bytes, more than the limit of "
            f"{MAX_PAYLOAD_BYTES}",
        )
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        # orjson's message gives the position of the error, not the text.
        raise _Invalid("invalid-json", f"the payload is not UTF-8 JSON: {err}") from err
    if not isinstance(body, dict):
        raise _Invalid(
            "not-an-object",
            f"the payload is a JSON {type(body).__name__}, not an object",
        )
    return body


def _event(
    topic: str,
    payload: bytes,
    site: str,
    box: str,
    topic_type: str,
    received_at: dt.datetime,
) -> EventRow:
    body = _json_object(payload)
    if "id" not in body:
        raise _Invalid("missing-id", "the event has no field 'id'")
    event_id = body["id"]
    if not isinstance(event_id, str) or not EVENT_ID_PATTERN.match(event_id):
        raise _Invalid(
            "invalid-id", "field 'id' is not a UUID in lowercase canonical form"
        )
    try:
        fields = _event_fields(box, topic_type, body)
    except _Invalid as invalid:
        invalid.event_id = event_id
        raise
    seq, event_type, created_at, clock_trusted, data = fields
    return EventRow(
        topic=topic,
        payload=payload,
        event_id=event_id,
        site=site,
        box=box,
        seq=seq,
        type=event_type,
        created_at=created_at,
        clock_trusted=clock_trusted,
        data=data,
        received_at=received_at,
    )


def _event_fields(
    box: str, topic_type: str, body: dict[str, Any]
) -> tuple[int, str, dt.datetime, bool, dict[str, Any]]:
    _check_version(body)
    if not EVENT_TYPE_PATTERN.match(topic_type):
        raise _Invalid(
            "invalid-topic",
            "the topic's event type is not 1-64 lowercase letters, digits, "
            "'_', '.' and '-'",
        )
    event_type = _field(body, "type", str, "a string")
    if event_type != topic_type:
        raise _Invalid(
            "type-mismatch", f"field 'type' differs from the topic's {topic_type!r}"
        )
    _check_source(body, box)
    seq = _field(body, "seq", int, "a whole number")
    if not 1 <= seq <= _MAX_SEQ:
        raise _Invalid("invalid-field", f"field 'seq' must be from 1 to {_MAX_SEQ}")
    created_at = _timestamp(body)
    clock_trusted = _field(body, "clock_trusted", bool, "true or false")
    data = _field(body, "data", dict, "an object")
    return seq, event_type, created_at, clock_trusted, data


def _check_version(body: dict[str, Any]) -> None:
    version = body.get("v")
    # True == 1 in Python, but JSON true is no schema version.
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise _Invalid(
            "unsupported-version",
            f"field 'v' must be {SCHEMA_VERSION}, the schema version this "
            "collector reads",
        )


def _check_source(body: dict[str, Any], box: str) -> None:
    source = _field(body, "src", str, "a string")
    if source != f"box/{box}":
        raise _Invalid(
            "source-mismatch", f"field 'src' is not 'box/{box}', the topic's box"
        )


def _field(
    body: dict[str, Any], key: str, kind: type | tuple[type, ...], expected: str
) -> Any:
    if key not in body:
        raise _Invalid("missing-field", f"the message has no field {key!r}")
    value = body[key]
    # bool is a subclass of int, but JSON true is no number.
    if isinstance(value, bool) and kind is not bool:
        raise _Invalid("invalid-field", f"field {key!r} must be {expected}")
    if not isinstance(value, kind):
        raise _Invalid("invalid-field", f"field {key!r} must be {expected}")
    return value


def _timestamp(body: dict[str, Any]) -> dt.datetime:
    ts = _field(body, "ts", (int, float), "Unix seconds")
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, OSError, ValueError) as err:
        raise _Invalid(
            "invalid-field", "field 'ts' is outside the years 1 to 9999"
        ) from err


def _availability(
    site: str, box: str, payload: bytes, retained: bool, received_at: dt.datetime
) -> AvailabilityRow:
    if not payload:
        return AvailabilityRow(site, box, None, retained, received_at)
    if payload not in AVAILABILITY_STATES:
        raise _Invalid(
            "invalid-availability", "the payload is neither 'online' nor 'offline'"
        )
    return AvailabilityRow(site, box, payload.decode(), retained, received_at)


def _telemetry(
    topic: str,
    payload: bytes,
    site: str,
    box: str,
    name: str,
    retained: bool,
    received_at: dt.datetime,
) -> TelemetryRow:
    if name not in TELEMETRY_NAMES:
        raise _Invalid(
            "invalid-topic",
            f"tele/{name} is unknown; this collector stores tele/state and tele/sync",
        )
    if not payload:
        return TelemetryRow(
            topic, payload, site, box, name, None, None, retained, received_at
        )
    body = _json_object(payload)
    _check_version(body)
    _check_source(body, box)
    sent_at = _timestamp(body)
    data = _field(body, "data", dict, "an object")
    return TelemetryRow(
        topic, payload, site, box, name, data, sent_at, retained, received_at
    )
