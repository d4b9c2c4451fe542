"""Malformed messages: rejected, counted, stored and acknowledged.

Each message below fails one check. The collector must store it in
``rejected_messages`` with its reason, log it without its payload, and
acknowledge it, so that a later collector with the same session gets
nothing again and the events behind it are not held up.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from postgres import Postgres, postgres  # noqa: F401
from test_collect import (
    collecting,
    collector_settings,
    eventually,
    fleet_box,
    make_event,
    stored_ids,
)
from upstream_broker import Upstream, upstream  # noqa: F401

BASE = "nightbox/club/box/box-1"
# A value that must appear in no log line and no table.
SECRET = "hunter2-not-for-logs"


def event_bytes(**changes: Any) -> bytes:
    """Return a valid event of box-1 with ``changes`` applied."""
    body = make_event("box-1", 1)
    body.update(changes)
    return orjson.dumps(body)


def without(key: str) -> bytes:
    """Return a valid event of box-1 without the field ``key``."""
    body = make_event("box-1", 1)
    del body[key]
    return orjson.dumps(body)


# (case, topic, payload, reason)
MALFORMED: list[tuple[str, str, bytes, str]] = [
    (
        "not json",
        f"{BASE}/events/checkout",
        b"password=" + SECRET.encode(),
        "invalid-json",
    ),
    ("json array", f"{BASE}/events/checkout", b"[1, 2]", "not-an-object"),
    ("missing id", f"{BASE}/events/checkout", without("id"), "missing-id"),
    (
        "id not a uuid",
        f"{BASE}/events/checkout",
        event_bytes(id="box-1-7"),
        "invalid-id",
    ),
    ("id a number", f"{BASE}/events/checkout", event_bytes(id=7), "invalid-id"),
    ("version 2", f"{BASE}/events/checkout", event_bytes(v=2), "unsupported-version"),
    (
        "type differs from topic",
        f"{BASE}/events/checkout",
        event_bytes(type="kit_issued", data={"password": SECRET}),
        "type-mismatch",
    ),
    (
        "src of another box",
        f"{BASE}/events/checkout",
        event_bytes(src="box/box-9"),
        "source-mismatch",
    ),
    ("missing seq", f"{BASE}/events/checkout", without("seq"), "missing-field"),
    ("boolean seq", f"{BASE}/events/checkout", event_bytes(seq=True), "invalid-field"),
    (
        "ts beyond year 9999",
        f"{BASE}/events/checkout",
        event_bytes(ts=1e20),
        "invalid-field",
    ),
    (
        "data an array",
        f"{BASE}/events/checkout",
        event_bytes(data=[1]),
        "invalid-field",
    ),
    (
        "nested event topic",
        f"{BASE}/events/checkout/extra",
        event_bytes(),
        "invalid-topic",
    ),
    (
        "nul character in data",
        f"{BASE}/events/checkout",
        event_bytes(data={"note": "a\u0000b"}),
        "database-rejected",
    ),
    (
        "payload over 256 KiB",
        f"{BASE}/events/checkout",
        event_bytes(data={"blob": "x" * 300_000}),
        "too-large",
    ),
    (
        "availability not a state",
        f"{BASE}/availability",
        b"maybe",
        "invalid-availability",
    ),
    ("unknown telemetry", f"{BASE}/tele/power", event_bytes(), "invalid-topic"),
    ("telemetry not json", f"{BASE}/tele/state", b"{", "invalid-json"),
]


async def test_malformed_messages_rejected(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    settings = collector_settings(upstream, postgres)
    marker = make_event("box-1", 2)
    total = len(MALFORMED) + 1

    async with collecting(settings) as running:
        with fleet_box(upstream) as box_1:
            for _case, topic, payload, _reason in MALFORMED:
                box_1.publish(topic, payload)
            box_1.send_events([marker])
            await eventually(
                lambda: running.stats.acknowledged >= total,
                "every message is acknowledged",
            )

    assert stored_ids(postgres) == [marker["id"]]
    stored = postgres.query(
        "SELECT topic, reason, deliveries, payload_bytes FROM rejected_messages"
    )
    for case, topic, payload, reason in MALFORMED:
        assert (topic, reason, 1, len(payload)) in stored, case
    assert len(stored) == len(MALFORMED)
    expected_counts: dict[str, int] = {}
    for _case, _topic, _payload, reason in MALFORMED:
        expected_counts[reason] = expected_counts.get(reason, 0) + 1
    assert dict(running.stats.rejected) == expected_counts


async def test_rejections_logged_without_payload(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = collector_settings(upstream, postgres)

    async with collecting(settings) as running:
        with fleet_box(upstream) as box_1:
            for _case, topic, payload, _reason in MALFORMED:
                box_1.publish(topic, payload)
            await eventually(
                lambda: running.stats.acknowledged >= len(MALFORMED),
                "every message is acknowledged",
            )

    assert SECRET not in caplog.text
    details = postgres.query(
        "SELECT detail, coalesce(event_id, '') FROM rejected_messages"
    )
    assert all(
        SECRET not in detail and SECRET not in event_id for detail, event_id in details
    )
    rejected_lines = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("Rejected a message")
    ]
    # Three messages fail with invalid-field in a row; within the log
    # interval only the first is logged.
    assert sum("(invalid-field)" in line for line in rejected_lines) == 1
    assert sum("(invalid-json)" in line for line in rejected_lines) == 1
    assert any("(type-mismatch)" in line for line in rejected_lines)


async def test_rejected_messages_acknowledged(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    settings = collector_settings(upstream, postgres)
    junk = b"not an event"

    async with collecting(settings) as running:
        with fleet_box(upstream) as box_1:
            box_1.publish(f"{BASE}/events/checkout", junk)
            box_1.publish(f"{BASE}/events/checkout", junk)
            await eventually(
                lambda: running.stats.acknowledged >= 2,
                "both messages are acknowledged",
            )
    # A collector with the same session gets only what is sent after this.
    marker = make_event("box-1", 3)
    async with collecting(settings) as again:
        with fleet_box(upstream) as box_1:
            box_1.send_events([marker])
        await eventually(lambda: again.stats.events_stored == 1, "the marker is stored")

    assert again.stats.received == 1
    rows = postgres.query("SELECT reason, deliveries FROM rejected_messages")
    assert rows == [("invalid-json", 2)]
