"""The admin screens against a real box: PIN, tokens, drops, kits, system.

Each action goes through the PIN modal and the box's console requests, and
each test checks the outcome on the box itself too: a revoked token is
rejected, a terminal's claim changes the stock shown, a restock is counted.
"""

from __future__ import annotations

from typing import Any

import pytest
from op_box import (
    SIZE,
    OpBox,
    enter_pin,
    message_of,
    op_box_fixture,  # noqa: F401 - registers the op_box fixture
    start_console,
    table_rows,
    terminal_call,
    text_of,
    unlock,
    wait_until,
)
from test_op_qr import modules_from_lines, reference_matrix
from textual.widgets import DataTable, Input, RichLog, Select, SelectionList, Static

from appliance.errors import RequestError
from tui.screens._form import FormModal
from tui.screens.pin import PinScreen
from tui.screens.tokens import TokenQrScreen

pytestmark = pytest.mark.asyncio(loop_scope="module")


def form_of(app: Any) -> FormModal:
    screen = app.screen
    assert isinstance(screen, FormModal)
    return screen


async def test_wrong_pin_refuses(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "t")
        await enter_pin(app, pilot, op_box.wrong_pin())
        pin_message = app.screen.query_one("#pin-message", Static)
        await wait_until(lambda: "wrong PIN" in text_of(pin_message), "the refusal")
        assert text_of(pin_message) == "wrong PIN, 4 attempts left"

        await pilot.press("escape")
        await wait_until(lambda: "locked" in message_of(app), "the screen's message")
        assert not app.session.unlocked
        assert table_rows(app.screen.query_one("#tokens", DataTable)) == {}

        # The right PIN resets the count of wrong ones.
        await pilot.press("g")
        await unlock(app, pilot, op_box.pin)


async def test_issue_and_revoke_token(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "t")
        await unlock(app, pilot, op_box.pin)
        await pilot.press("n")
        form = form_of(app)
        form.query_one("#field-subject", Select).value = "bar-1"
        form.query_one("#field-scopes", SelectionList).select("pos:charge")
        form.query_one("#field-ttl", Input).value = "2h"
        await pilot.press("f2")

        await wait_until(lambda: isinstance(app.screen, TokenQrScreen), "the QR")
        token = text_of(app.screen.query_one("#token-text", Static))
        drawn = text_of(app.screen.query_one("#qr", Static)).split("\n")
        reference = reference_matrix(token)
        assert modules_from_lines(drawn)[: len(reference)] == reference

        await pilot.press("escape")
        tokens = app.screen.query_one("#tokens", DataTable)
        await wait_until(lambda: "issued to bar-1" in message_of(app), "the message")
        token_id = message_of(app).split()[1]
        await wait_until(lambda: token_id in table_rows(tokens), "the new token")
        row = table_rows(tokens)[token_id]
        assert row[1:3] == ["bar-1", "valid"]
        assert row[4] == "pos:charge"
        assert row[0] == token_id[:7] + "\u2026"
        detail = text_of(app.screen.query_one("#token-detail", Static))
        tokens.move_cursor(row=tokens.get_row_index(token_id))
        await wait_until(
            lambda: text_of(app.screen.query_one("#token-detail", Static)).startswith(
                f"{token_id} for bar-1, valid"
            ),
            f"the selected token's detail line, not {detail!r}",
        )

        async with op_box.client("terminal-bar-1", "terminal", "bar-1") as bar:
            reply = await terminal_call(bar, token, "wallet", "balance", band="ib-1-9")
            assert reply["balance"] == 0

            tokens.move_cursor(row=tokens.get_row_index(token_id))
            await pilot.press("x")
            form_of(app)
            await pilot.press("f2")
            await wait_until(
                lambda: table_rows(tokens)[token_id][2] == "revoked", "the revocation"
            )
            assert message_of(app) == f"token {token_id} revoked"
            with pytest.raises(RequestError) as refused:
                await terminal_call(bar, token, "wallet", "balance", band="ib-1-9")
            assert refused.value.code == "token-revoked"


async def test_create_start_and_claim_drop(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "o")
        drops = app.screen.query_one("#drops", DataTable)
        await wait_until(lambda: "tee-drop" in table_rows(drops), "the site's drop")
        assert table_rows(drops)["tee-drop"][2:4] == ["35.00 EUR", "20/20"]

        await pilot.press("n")
        form = form_of(app)
        values = {"id": "cap-drop", "price": "30.00", "quota": "5"}
        for name, value in values.items():
            form.query_one(f"#field-{name}", Input).value = value
        form.query_one("#field-item", Select).value = "tee"
        form.query_one("#field-starts_at", Input).value = "+1h"
        form.query_one("#field-per_guest_limit", Input).value = "1"
        await pilot.press("f2")
        assert isinstance(app.screen, PinScreen)
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "cap-drop" in table_rows(drops), "the new drop")
        assert message_of(app) == "drop cap-drop created: 5 units"
        row = table_rows(drops)["cap-drop"]
        assert row[1:5] == ["tee", "30.00 EUR", "5/5", "upcoming"]

        drops.move_cursor(row=drops.get_row_index("cap-drop"))
        await pilot.press("a")
        await wait_until(
            lambda: table_rows(drops)["cap-drop"][4] == "live", "the drop to start"
        )
        assert message_of(app) == "drop cap-drop is now live"

        async with op_box.client("terminal-merch-1", "terminal", "merch-1") as merch:
            token = op_box.token("merch-1", "drops:claim")
            claim = await terminal_call(
                merch, token, "drops", "claim", drop="cap-drop", band="ib-1-501"
            )
        assert claim["available"] == 4
        await wait_until(
            lambda: table_rows(drops)["cap-drop"][3] == "4/5", "the stock after a claim"
        )
        detail = app.screen.query_one("#drop-detail", Static)
        await wait_until(
            lambda: "4 of 5 left, 1 reserved, 0 paid, 1 per guest" in text_of(detail),
            "the selected drop's detail line",
        )

        await pilot.press("x")
        await wait_until(
            lambda: table_rows(drops)["cap-drop"][4] == "stopped", "the drop to stop"
        )


async def test_restock_and_optins(op_box: OpBox) -> None:
    async with op_box.client("terminal-desk", "terminal", "desk") as desk:
        await terminal_call(
            desk,
            op_box.token("desk", "optin:register"),
            "optin",
            "register",
            band="ib-1-601",
            email="guest601@example.org",
            consent=True,
            consent_text="Send me the follow-up coupon.",
        )
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "k")
        stock = app.screen.query_one("#stock", DataTable)
        await wait_until(lambda: "kit-1" in table_rows(stock), "the kit station")
        assert table_rows(stock)["kit-1"] == ["kit-1", "0", "5", "5"]

        await pilot.press("a")
        form = form_of(app)
        assert form.query_one("#field-station", Select).value == "kit-1"
        form.query_one("#field-add", Input).value = "3"
        await pilot.press("f2")
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "restocked" in message_of(app), "the restock")
        assert message_of(app) == "station kit-1 restocked: 8 left of 8"
        await wait_until(
            lambda: table_rows(stock)["kit-1"] == ["kit-1", "0", "8", "8"],
            "the new stock",
        )
        events = app.screen.query_one("#kit-events", DataTable)
        await wait_until(lambda: table_rows(events) != {}, "the restock event")
        assert table_rows(events)["0"][:2] == ["restocked", "kit-1"]

        await pilot.press("g")
        summary = app.screen.query_one("#optins-summary", Static)
        await wait_until(lambda: "Opt-ins: 1" in text_of(summary), "the opt-ins")
        assert text_of(summary) == ("Opt-ins: 1 (email 1, wallet 0); coupons issued: 0")
        recent = table_rows(app.screen.query_one("#optins", DataTable))
        assert [row[:2] for row in recent.values()] == [["ib-1-601", "email"]]


async def test_system_shows_logs_after_pin(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "s")
        # The PIN modal covers the system screen as soon as it is shown.
        system = app.screen_stack[0]
        logs = system.query_one("#logs", RichLog)
        assert logs.lines == []
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: len(logs.lines) > 0, "the box's logs")

        lines = [strip.text for strip in logs.lines]
        assert any("Box box-1 of site test started" in line for line in lines)
        info = text_of(app.screen.query_one("#system-info", Static))
        assert "clock trusted (ntp)" in info
        assert "version " in info
        sync = text_of(app.screen.query_one("#sync-info", Static))
        assert "no upstream broker configured" in sync

        await pilot.press("l")
        await wait_until(lambda: len(logs.lines) == 0, "the logs hidden on lock")
        info = text_of(app.screen.query_one("#system-info", Static))
        assert "locked" in info
