"""Wellness notes: added from the console, gone after their time, kept nowhere else.

The console talks to the box over mosquitto with its admin token. The box
runs on a clock the test moves, and its purge task runs on its own timer:
the tests move the clock past a note's expiry and wait for the timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from analytics_site import (  # noqa: F401 - registers the fixtures
    EVENING,
    WAIT_S,
    Night,
    config_path_fixture,
    night_fixture,
    site_config_fixture,
)

from appliance.analytics.wellness import WellnessNotes
from appliance.bus.client import Bus
from appliance.clock import ManualClock
from appliance.config import SiteConfig
from appliance.store import Store
from tests.conftest import ClientFactory
from tests.console.console_site import (
    call,
    console_client,
    refused,
    set_pin,
    unlock,
)

SECRET = "Guest at the bar felt faint, gave water - wellness-check-7f3a"


@pytest.fixture
def pinned_site(site_config: SiteConfig) -> SiteConfig:
    """The site with its console PIN set before the box starts."""
    set_pin(site_config)
    return site_config


@pytest.fixture
async def console(
    pinned_site: SiteConfig, night: Night, make_client: ClientFactory
) -> AsyncIterator[tuple[Bus, str]]:
    """The console's bus client and its admin token."""
    async with console_client(make_client) as bus:
        yield bus, await unlock(bus)


async def add_note(bus: Bus, token: str, **fields: object) -> dict[str, object]:
    return await call(bus, "wellness-add", fields, token=token, mutating=True)


async def wait_until_gone(night: Night) -> None:
    deadline = time.monotonic() + WAIT_S
    while night.box.store.query("SELECT id FROM wellness_notes"):
        assert time.monotonic() < deadline, "the purge did not delete the note"
        await asyncio.sleep(0.02)


def store_files(night: Night) -> bytes:
    path = night.box.store.path
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_note_listed_until_expiry(night: Night, console: tuple[Bus, str]) -> None:
    bus, token = console

    added = await add_note(bus, token, note=SECRET, band="ib-1-7", ttl_s=600)
    listed = await call(bus, "wellness-list", token=token)

    assert added["expires_at"] == EVENING + 600
    (note,) = listed["notes"]
    assert note["id"] == added["id"]
    assert note["note"] == SECRET
    assert note["band"] == "ib-1-7"
    assert note["staff"] == "console"
    assert note["created_at"] == EVENING
    assert note["expires_at"] == EVENING + 600

    night.clock.advance_to(EVENING + 599)
    await asyncio.sleep(0.2)
    assert len((await call(bus, "wellness-list", token=token))["notes"]) == 1

    night.clock.advance_to(EVENING + 600)
    await wait_until_gone(night)

    assert (await call(bus, "wellness-list", token=token))["notes"] == []
    assert night.box.wellness.purged == 1
    assert SECRET.encode() not in store_files(night)


async def test_note_lives_24_hours_at_most(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console

    default = await add_note(bus, token, note="checked on guest, fine")
    too_long = await refused(
        bus, "wellness-add", {"note": "x", "ttl_s": 86401}, token=token, mutating=True
    )

    assert default["expires_at"] == EVENING + 24 * 3600
    assert too_long.code == "invalid-request"
    assert "field 'ttl_s' must be 60 to 86400 seconds (24 hours at most)" in (
        too_long.message
    )
    night.clock.advance_to(EVENING + 24 * 3600)
    await wait_until_gone(night)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "field 'note' must be text of 1 to 500 characters"),
        ({"note": "   "}, "field 'note' must be text of 1 to 500 characters"),
        ({"note": "y" * 501}, "field 'note' must be text of 1 to 500 characters"),
        ({"note": ["a"]}, "field 'note' must be text of 1 to 500 characters"),
        ({"note": "ok", "band": "IB 1"}, "field 'band' must be a band id"),
        ({"note": "ok", "ttl_s": 59}, "field 'ttl_s' must be 60 to 86400"),
        ({"note": "ok", "ttl_s": True}, "field 'ttl_s' must be 60 to 86400"),
        ({"note": "ok", "ttl_s": "1h"}, "field 'ttl_s' must be 60 to 86400"),
    ],
)
async def test_invalid_note_rejected(
    night: Night,
    console: tuple[Bus, str],
    fields: dict[str, object],
    expected: str,
) -> None:
    bus, token = console

    error = await refused(bus, "wellness-add", fields, token=token, mutating=True)

    assert error.code == "invalid-request"
    assert expected in error.message
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]


async def test_note_kept_nowhere_else(
    night: Night, console: tuple[Bus, str], caplog: pytest.LogCaptureFixture
) -> None:
    bus, token = console
    caplog.set_level(logging.DEBUG)
    events_before = night.box.store.query("SELECT COUNT(*) FROM outbox")

    await add_note(bus, token, note=SECRET, band="ib-1-3", ttl_s=120)
    # A rejected request with the note in it is logged, and its log line
    # must not repeat the note.
    await refused(
        bus,
        "wellness-add",
        {"note": SECRET, "ttl_s": 10**9},
        token=token,
        mutating=True,
    )
    listed = await call(bus, "wellness-list", token=token)
    logs = await call(bus, "logs", token=token)

    assert listed["notes"][0]["note"] == SECRET
    assert night.box.store.query("SELECT COUNT(*) FROM outbox") == events_before
    for (body,) in night.box.store.query("SELECT body FROM outbox"):
        assert "wellness" not in body
    assert night.box.store.query(
        "SELECT COUNT(*) FROM requests WHERE action LIKE 'console/wellness%'"
    ) == [(0,)]
    assert SECRET not in caplog.text
    assert "wellness-check-7f3a" not in "\n".join(logs["lines"])
    assert "wellness-check-7f3a" not in str(night.box.status())

    night.clock.advance_to(EVENING + 120)
    await wait_until_gone(night)
    assert b"wellness-check-7f3a" not in store_files(night)


async def test_retry_adds_no_second_note(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console
    key = str(uuid.uuid4())

    first = await add_note(bus, token, note="water given", idempotency_key=key)
    again = await add_note(bus, token, note="water given", idempotency_key=key)

    assert again == first
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(1,)]


@pytest.mark.parametrize(
    "changed",
    [
        {"note": "WELLMARK-theta"},
        {"band": "ib-1-8"},
        {"band": None},
        {"ttl_s": 600},
    ],
    ids=["note", "band", "no-band", "ttl"],
)
async def test_reused_key_other_note_rejected(
    night: Night,
    console: tuple[Bus, str],
    caplog: pytest.LogCaptureFixture,
    changed: dict[str, object],
) -> None:
    bus, token = console
    key = str(uuid.uuid4())
    fields: dict[str, object] = {"note": SECRET, "band": "ib-1-6", "ttl_s": 3600}
    first = await add_note(bus, token, **fields, idempotency_key=key)
    caplog.set_level(logging.DEBUG)
    reused = {**fields, **changed, "idempotency_key": key}
    if reused["band"] is None:
        del reused["band"]

    error = await refused(bus, "wellness-add", reused, token=token, mutating=True)
    listed = await call(bus, "wellness-list", token=token)

    assert error.code == "idempotency-key-reused"
    assert "use a new key" in error.message
    assert [note["id"] for note in listed["notes"]] == [first["id"]]
    assert listed["notes"][0]["note"] == SECRET
    assert listed["notes"][0]["band"] == "ib-1-6"
    assert listed["notes"][0]["expires_at"] == first["expires_at"]
    assert "WELLMARK-theta" not in caplog.text
    assert b"WELLMARK-theta" not in store_files(night)
    assert night.box.store.query(
        "SELECT COUNT(*) FROM requests WHERE action LIKE 'console/wellness%'"
    ) == [(0,)]


async def test_retry_with_spaces_same_note(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console
    key = str(uuid.uuid4())

    first = await add_note(bus, token, note="water given", idempotency_key=key)
    again = await add_note(bus, token, note="  water given\n", idempotency_key=key)

    assert again == first


async def test_retry_after_delete_rejected(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console
    key = str(uuid.uuid4())
    added = await add_note(bus, token, note=SECRET, idempotency_key=key)
    await call(bus, "wellness-delete", {"id": added["id"]}, token=token, mutating=True)

    error = await refused(
        bus,
        "wellness-add",
        {"note": SECRET, "idempotency_key": key},
        token=token,
        mutating=True,
    )

    assert error.code == "note-expired"
    assert "expired or was deleted; use a new key" in error.message
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]


async def test_key_of_other_action_rejected(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console
    key = str(uuid.uuid4())
    await call(
        bus,
        "kit-restock",
        {"station": "kit-1", "add": 1, "idempotency_key": key},
        token=token,
        mutating=True,
    )

    error = await refused(
        bus,
        "wellness-add",
        {"note": SECRET, "idempotency_key": key},
        token=token,
        mutating=True,
    )

    assert error.code == "idempotency-key-reused"
    assert "console/kit-restock" in error.message
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]


@pytest.mark.parametrize(
    "control",
    ["\u0000", "\u001b", "\r", "\u007f", "\u0085"],
    ids=["nul", "escape", "carriage-return", "delete", "next-line"],
)
async def test_note_control_character_rejected(
    night: Night,
    console: tuple[Bus, str],
    caplog: pytest.LogCaptureFixture,
    control: str,
) -> None:
    bus, token = console
    caplog.set_level(logging.DEBUG)

    error = await refused(
        bus,
        "wellness-add",
        {"note": f"WELLMARK-delta{control}ctl"},
        token=token,
        mutating=True,
    )

    assert error.code == "invalid-request"
    assert "field 'note' contains a control character" in error.message
    assert "WELLMARK" not in error.message
    assert "WELLMARK" not in caplog.text
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]


async def test_note_lines_and_tabs_kept(night: Night, console: tuple[Bus, str]) -> None:
    bus, token = console
    text = "bar, 22:10\twater given\nchecked again at 22:30"

    await add_note(bus, token, note=text)
    listed = await call(bus, "wellness-list", token=token)

    assert listed["notes"][0]["note"] == text


async def test_note_unknown_fields_rejected(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console

    error = await refused(
        bus,
        "wellness-add",
        {"note": SECRET, "extra": 1, "staff": "bar"},
        token=token,
        mutating=True,
    )

    assert error.code == "invalid-request"
    assert "unknown field 'extra', 'staff'" in error.message
    assert "'note', 'band' and 'ttl_s'" in error.message
    assert SECRET not in error.message
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]


async def test_delete_note(night: Night, console: tuple[Bus, str]) -> None:
    bus, token = console
    added = await add_note(bus, token, note=SECRET)

    deleted = await call(
        bus, "wellness-delete", {"id": added["id"]}, token=token, mutating=True
    )
    again = await call(
        bus, "wellness-delete", {"id": added["id"]}, token=token, mutating=True
    )
    invalid = await refused(
        bus, "wellness-delete", {"id": "note-1"}, token=token, mutating=True
    )

    assert deleted == {"id": added["id"], "deleted": True}
    assert again == {"id": added["id"], "deleted": False}
    assert invalid.code == "invalid-request"
    assert "32 hex digits" in invalid.message
    assert (await call(bus, "wellness-list", token=token))["notes"] == []
    assert SECRET.encode() not in store_files(night)


async def test_notes_need_admin_token(
    night: Night, pinned_site: SiteConfig, make_client: ClientFactory
) -> None:
    async with console_client(make_client) as bus:
        added = await refused(bus, "wellness-add", {"note": SECRET}, mutating=True)
        listed = await refused(bus, "wellness-list")

    assert added.code == "token-missing"
    assert listed.code == "token-missing"
    assert night.box.store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]


async def test_purge_on_start(tmp_path: Path) -> None:
    clock = ManualClock(EVENING)
    store = Store(tmp_path / "nightbox.sqlite3", clock)
    with store.transaction() as transaction:
        for note_id, expires_at in (("a" * 32, EVENING - 1), ("b" * 32, EVENING + 60)):
            transaction.execute(
                "INSERT INTO wellness_notes"
                " (id, band, note, staff, created_at, expires_at)"
                " VALUES (?, NULL, ?, 'console', ?, ?)",
                (note_id, SECRET, EVENING - 3600, expires_at),
            )
    notes = WellnessNotes(store, clock, purge_interval_s=3600)

    await notes.start()
    try:
        remaining = store.query("SELECT id FROM wellness_notes")
    finally:
        await notes.stop()
        store.close()

    assert remaining == [("b" * 32,)]
    assert notes.purged == 1
