"""The POS screen against a real box: charge, refund, a refused charge, balance.

A desk terminal tops the band up first, as at the venue; the console then
charges and refunds it with its admin token, and each receipt must show the
exact balance that the box holds afterwards.
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
from textual.widgets import DataTable, Input, Select, Static

from appliance.sim._adverts import ibeacon

pytestmark = pytest.mark.asyncio(loop_scope="module")

BEER_PRICE = 450


async def balance_on_box(op_box: OpBox, band: str) -> int:
    async with op_box.client("terminal-bar-1", "terminal", "bar-1") as bar:
        token = op_box.token("bar-1", "pos:charge")
        reply = await terminal_call(bar, token, "wallet", "balance", band=band)
    return int(reply["balance"])


async def top_up(op_box: OpBox, band: str, amount: int) -> None:
    async with op_box.client("terminal-bar-1", "terminal", "bar-1") as desk:
        token = op_box.token("bar-1", "wallet:topup")
        await terminal_call(
            desk,
            token,
            "wallet",
            "topup",
            band=band,
            amount=amount,
            currency="EUR",
            method="cash",
        )


def fill_charge(app: Any, band: str, item: str, quantity: int) -> None:
    screen = app.screen
    screen.query_one("#band", Input).value = band
    screen.query_one("#item", Select).value = item
    screen.query_one("#quantity", Input).value = str(quantity)


def receipt_of(app: Any) -> str:
    return text_of(app.screen.query_one("#receipt", Static))


async def test_charge_refund_and_refusal(op_box: OpBox) -> None:
    band = "ib-1-301"
    await top_up(op_box, band, 1000)
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        fill_charge(app, band, "beer", 2)

        await pilot.press("f2")
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "CHARGE" in receipt_of(app), "the charge receipt")
        receipt = receipt_of(app)
        assert "item beer x 2" in receipt
        assert "list 9.00 EUR" in receipt
        assert "discount 0.00 EUR" in receipt
        assert "amount 9.00 EUR" in receipt
        assert "balance 1.00 EUR" in receipt
        assert "box time " in receipt
        assert await balance_on_box(op_box, band) == 100

        await pilot.press("f3")
        await wait_until(lambda: "REFUND" in receipt_of(app), "the refund receipt")
        receipt = receipt_of(app)
        assert "amount 9.00 EUR" in receipt
        assert "balance 10.00 EUR" in receipt
        assert await balance_on_box(op_box, band) == 1000

        fill_charge(app, band, "beer", 3)
        await pilot.press("f2")
        await wait_until(lambda: "refused" in message_of(app), "the refusal")
        message = message_of(app)
        assert message.startswith("wallet/charge refused: insufficient-funds: ")
        assert "1350" in message
        assert "REFUND" in receipt_of(app)
        assert await balance_on_box(op_box, band) == 1000

        await pilot.press("f4")
        await wait_until(lambda: "balance" in message_of(app), "the balance")
        assert message_of(app) == (
            f"band {band}: balance 10.00 EUR, spent tonight 0.00 EUR"
        )


async def test_charge_without_band_is_not_sent(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        await pilot.press("f2")
        await pilot.pause()

        assert message_of(app) == "band is missing: type it or pick one with F5"
        assert not app.session.unlocked


async def test_nearest_band_fills_the_form(op_box: OpBox) -> None:
    band_minor = 302
    advert = ibeacon(op_box.config.ibeacon_uuid or b"", 1, band_minor, -59).hex()
    app = op_box.app()
    async with (
        op_box.client("reader-exit-1", "reader", "exit-1") as reader,
        app.run_test(size=SIZE) as pilot,
    ):
        await start_console(app, pilot, "p")
        nearby = app.screen.query_one("#nearby", DataTable)
        seq = 0

        async def heard() -> bool:
            nonlocal seq
            seq += 1
            # A reader sends about two batches a second.
            await asyncio.sleep(0.5)
            now = round(time.time(), 3)
            batch = {
                "reader": "exit-1",
                "boot": "pos-test",
                "seq": seq,
                "t": now,
                "heard": 1,
                "sightings": [
                    {
                        "t": now,
                        "addr": "c4:7c:8d:6a:11:2e",
                        "rssi": -48,
                        "n": 4,
                        "adv": advert,
                    },
                ],
            }
            await reader.publish_json(
                reader.topics.sightings("exit-1"), {"data": batch}
            )
            return f"ib-1-{band_minor}" in table_rows(nearby)

        await wait_until(heard, "the band in the nearest bands")
        row = table_rows(nearby)[f"ib-1-{band_minor}"]
        assert row[1] == "-48"
        assert row[2] == "exit-1"

        nearby.focus()
        await pilot.press("f5")
        await pilot.pause()
        assert app.screen.query_one("#band", Input).value == f"ib-1-{band_minor}"
