"""The live screens against a real box: readers, creators, stream, small terminals.

A test reader client publishes its retained status and sightings batches as
an ESP32 does; a terminal sells with a creator code; the screens must show
what the box and the reader published.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from op_box import (
    SIZE,
    OpBox,
    message_of,
    op_box_fixture,  # noqa: F401 - registers the op_box fixture
    start_console,
    table_rows,
    terminal_call,
    text_of,
    unlock,
    wait_until,
)
from textual.widgets import Button, DataTable, Input, Select, Static

from appliance.bus.client import Bus
from appliance.sim._adverts import eddystone_tlm, ibeacon
from tui.app import SCREEN_KEYS
from tui.screens import OPERATION_SCREENS
from tui.screens._form import FormModal
from tui.screens.stream import NO_STUDIO

pytestmark = pytest.mark.asyncio(loop_scope="module")

READER_STATUS = {
    "reader": "exit-1",
    "role": "exit",
    "zone": "main-door",
    "fw": "1.2.3",
    "boot": "live-test",
    "uptime_s": 7300,
    "heap_free": 81234,
    "heap_min_free": 70000,
    "scan_per_min": 420,
    "reconnects": 2,
    "last_error": "wifi: beacon timeout",
    "uplink": "wifi",
    "ring_used": 3,
    "ring_dropped": 0,
    "scan_restarts": 0,
    "clock_synced": True,
    "batches_sent": 100,
}


async def publish_batch(op_box: OpBox, reader: Bus, seq: int) -> None:
    """Publish one batch: band ib-1-401 with a TLM advert from the same address."""
    now = round(time.time(), 3)
    address = "c4:7c:8d:6a:11:91"
    band_advert = ibeacon(op_box.config.ibeacon_uuid or b"", 1, 401, -59)
    telemetry_advert = eddystone_tlm(3012, 21.5, 100, 3600)
    sightings = [
        {"t": now, "addr": address, "rssi": -55, "n": 3, "adv": band_advert.hex()},
        {"t": now, "addr": address, "rssi": -56, "n": 1, "adv": telemetry_advert.hex()},
    ]
    batch = {
        "reader": "exit-1",
        "boot": "live-test",
        "seq": seq,
        "t": now,
        "heard": 4,
        "sightings": sightings,
    }
    await reader.publish_json(reader.topics.sightings("exit-1"), {"data": batch})


async def test_readers_show_status_and_bands(op_box: OpBox) -> None:
    app = op_box.app()
    async with (
        op_box.client("reader-exit-1", "reader", "exit-1") as reader,
        app.run_test(size=SIZE) as pilot,
    ):
        await reader.publish_json(
            reader.topics.status("reader", "exit-1"),
            {"data": READER_STATUS},
            retain=True,
        )
        await start_console(app, pilot, "r")
        readers = app.screen.query_one("#readers", DataTable)
        await wait_until(
            lambda: table_rows(readers).get("exit-1", [""] * 6)[5] == "1.2.3",
            "the reader's status",
        )
        row = table_rows(readers)["exit-1"]
        assert row[:5] == ["exit-1", "exit", "main-door", "wifi", "online"]
        assert row[6:12] == [
            "2 h 1 min",
            "81234",
            "420",
            "2",
            "3",
            "wifi: beacon timeout",
        ]
        assert table_rows(readers)["kit-1"][1:3] == ["kit", "cloakroom"]

        bands = app.screen.query_one("#bands", DataTable)
        seq = 0

        async def heard() -> bool:
            nonlocal seq
            seq += 1
            # A reader sends about two batches a second.
            await asyncio.sleep(0.5)
            await publish_batch(op_box, reader, seq)
            return "ib-1-401" in table_rows(bands)

        await wait_until(heard, "the band heard by exit-1")
        row = table_rows(bands)["ib-1-401"]
        assert row[:4] == ["ib-1-401", "-55", "3012 mV", "21.5 C"]
        title = text_of(app.screen.query_one("#bands-title", Static))
        assert title == "Bands heard by exit-1 in the last 5 s"


async def test_provisioning_refusal_is_shown(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "r")
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, FormModal)
        await pilot.press("f2")
        assert text_of(form.query_one("#form-error", Static)) == (
            "USB port is missing: give the board's device, /dev/ttyUSB0"
        )

        form.query_one("#field-port", Input).value = "/dev/ttyUSB7"
        form.query_one("#field-zone", Input).value = "back-door"
        await pilot.press("f2")
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "refused" in message_of(app), "the refusal")
        assert message_of(app).startswith(
            "console/reader-provision refused: no-site-file: "
        )


async def sell_with_code(op_box: OpBox, bands: list[str]) -> None:
    """Top up each band and sell it two beers with Maya's code."""
    async with op_box.client("terminal-bar-1", "terminal", "bar-1") as bar:
        token = op_box.token("bar-1", "wallet:topup", "pos:charge")
        for band in bands:
            await terminal_call(
                bar,
                token,
                "wallet",
                "topup",
                band=band,
                amount=2000,
                currency="EUR",
                method="card",
            )
            await terminal_call(
                bar,
                token,
                "wallet",
                "charge",
                band=band,
                item="beer",
                quantity=2,
                amount=900,
                currency="EUR",
                creator="MAYA",
            )


async def test_creator_figures_and_promo_codes(op_box: OpBox) -> None:
    await sell_with_code(op_box, ["ib-1-701"])
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "c")
        figures = app.screen.query_one("#figures", DataTable)
        await wait_until(
            lambda: "maya/set-maya" in table_rows(figures), "Maya's figures"
        )
        # One buyer is too few guests to show the set's sales.
        assert table_rows(figures)["maya/set-maya"] == [
            "Maya",
            "MAYA",
            "set-maya",
            "hidden",
            "hidden",
            "0",
            "0",
        ]
        await sell_with_code(op_box, [f"ib-1-70{minor}" for minor in range(2, 6)])
        await wait_until(
            lambda: table_rows(figures)["maya/set-maya"][3] != "hidden",
            "Maya's figures of five buyers",
        )
        assert table_rows(figures)["maya/set-maya"] == [
            "Maya",
            "MAYA",
            "set-maya",
            "5",
            "45.00 EUR",
            "0",
            "0",
        ]

        await pilot.press("n")
        form: Any = app.screen
        assert isinstance(form, FormModal)
        form.query_one("#field-code", Input).value = "NIGHT15"
        form.query_one("#field-value", Input).value = "15"
        form.query_one("#field-uses", Input).value = "10"
        form.query_one("#field-creator", Select).value = "maya"
        await pilot.press("f2")
        await unlock(app, pilot, op_box.pin)
        promos = app.screen.query_one("#promos", DataTable)
        await wait_until(lambda: "NIGHT15" in table_rows(promos), "the promo code")
        assert message_of(app) == "promo code NIGHT15 created"
        assert table_rows(promos)["NIGHT15"] == [
            "NIGHT15",
            "15 %",
            "0",
            "10",
            "never",
            "maya",
        ]


async def test_stream_without_studio(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "v")

        assert text_of(app.screen.query_one("#stream-state", Static)) == NO_STUDIO
        for action in ("start", "stop", "clip"):
            button = app.screen.query_one(f"#stream-{action}", Button)
            assert button.disabled
            assert button.tooltip == NO_STUDIO
        await pilot.press("a")
        assert message_of(app) == f"stream start unavailable: {NO_STUDIO}"


async def test_screens_survive_small_terminal(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=(40, 12)) as pilot:
        await start_console(app, pilot, "d")
        await unlock_through_tokens(app, pilot, op_box.pin)
        for key, name, _label in SCREEN_KEYS:
            if name == "dashboard":
                continue
            await pilot.press(key)
            await pilot.pause()
            await pilot.resize_terminal(80, 24)
            await pilot.pause()
            await pilot.resize_terminal(40, 12)
            await pilot.pause()
            assert type(app.screen) is OPERATION_SCREENS[name]
            assert app.screen.query_one("#message", Static).is_attached
        assert app.is_running


async def unlock_through_tokens(app: Any, pilot: Any, pin: str) -> None:
    """Unlock once, so the PIN-only screens show their data while resized."""
    await pilot.press("t")
    await unlock(app, pilot, pin)
