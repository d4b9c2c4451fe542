"""Every screen of the console against the running demo night, driven by its keys.

The expected readers, drop, catalogue, creator, terminals and kit stock
come from the demo's own site. :func:`demo_site` builds it from the same
plan and seed as ``nightbox demo``. The bands, balances and logs come from
the running night. Each operations screen that can act on the demo does so
once: the PIN unlocks it, the POS charges and refunds a band the demo topped up, the
demo's drop is started and stopped, and its kit station is restocked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from op_box import message_of, table_rows, text_of, unlock
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Input,
    OptionList,
    RichLog,
    Select,
    Static,
)
from tui_night import (
    DEMO_GUESTS,
    SIZE,
    demo_night_fixture,  # noqa: F401 - registers the demo_night fixture
    screen_text,
    wait_until,
)

from appliance.config import SiteConfig
from appliance.sim._site import demo_config
from appliance.sim._world import NightPlan
from appliance.sim.demo import NIGHT_START_S, DemoOptions
from tui.app import NightboxApp
from tui.demo import DEMO_MINUTES, DemoNight
from tui.link import LinkSettings
from tui.screens._form import FormModal
from tui.screens.creators import CreatorsScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.drops import DropsScreen
from tui.screens.kits import KitsScreen
from tui.screens.pos import PosScreen
from tui.screens.readers import ReadersScreen
from tui.screens.stream import StreamScreen
from tui.screens.system import SystemScreen
from tui.screens.tokens import TokensScreen

DROP = "tee-drop"
KIT_STATION = "kit-1"


def demo_site() -> SiteConfig:
    """Return the site that ``nightbox tui --demo`` plays, as the demo builds it."""
    options = DemoOptions()
    plan = NightPlan(
        DEMO_GUESTS, options.exits, options.seed, NIGHT_START_S, DEMO_MINUTES * 60.0
    )
    return demo_config(plan, Path("demo-site-not-written"), "mosquitto")


def demo_app(night: DemoNight) -> NightboxApp:
    return NightboxApp(
        LinkSettings.from_login_file(night.console_file), demo_pin=night.pin
    )


async def show(
    app: NightboxApp, pilot: Pilot[None], key: str, screen: type[Screen[Any]]
) -> None:
    """Press the screen key ``key`` and wait until ``screen`` is shown.

    A sensitive screen is shown under the PIN modal, so ``screen`` may be
    anywhere in the stack.
    """
    await pilot.press(key)
    await wait_until(
        lambda: any(isinstance(shown, screen) for shown in app.screen_stack),
        f"the {screen.__name__} after the key {key}",
    )


async def connected(app: NightboxApp) -> None:
    await wait_until(
        lambda: (
            app.link.online
            and app.link.state.overview is not None
            and app.link.state.box_status is not None
        ),
        "the console's first overview and box status",
    )


def table_cells(table: DataTable[Any]) -> dict[str, dict[str, str]]:
    """Return the rows of ``table`` by row key, each a dict of column label to text."""
    labels = [column.label.plain for column in table.columns.values()]
    return {
        key: dict(zip(labels, cells, strict=True))
        for key, cells in table_rows(table).items()
    }


def option_prompts(select: Select[Any]) -> list[str]:
    """Return the prompts of the options that ``select`` offers."""
    options = select.query_one(OptionList)
    return [
        str(options.get_option_at_index(index).prompt)
        for index in range(options.option_count)
    ]


def topped_up_bands(app: NightboxApp) -> list[str]:
    """Return the bands of the ``wallet_topup`` events the console received."""
    return [
        str(data["band"])
        for event_type, data in app.link.state.events
        if event_type == "wallet_topup"
    ]


async def test_screens_show_demo_night(demo_night: DemoNight) -> None:
    site = demo_site()
    readers = {reader.id: reader for reader in site.readers}
    kit_stock = readers[KIT_STATION].kit_stock
    drop = site.commerce.drops[0]
    app = demo_app(demo_night)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)

        await show(app, pilot, "d", DashboardScreen)
        await wait_until(
            lambda: f"Readers {len(readers)}/{len(readers)} online" in screen_text(app),
            "every demo reader online on the dashboard",
        )
        assert site.site_name in screen_text(app).splitlines()[0]

        await show(app, pilot, "r", ReadersScreen)
        table = app.screen.query_one("#readers", DataTable)
        await wait_until(
            lambda: set(table_rows(table)) == set(readers), "the demo's readers"
        )
        await wait_until(
            lambda: all(
                row["state"] == "online" for row in table_cells(table).values()
            ),
            "each reader's availability",
        )
        for reader_id, row in table_cells(table).items():
            assert row["role"] == readers[reader_id].role
        bands = app.screen.query_one("#bands", DataTable)
        await wait_until(lambda: bands.row_count > 0, "bands heard by exit-1")
        assert "Bands heard by exit-1" in screen_text(app)

        await show(app, pilot, "o", DropsScreen)
        drops = app.screen.query_one("#drops", DataTable)
        await wait_until(lambda: DROP in table_rows(drops), "the demo's drop")
        row = table_cells(drops)[DROP]
        assert row["item"] == drop.item
        assert row["price"] == "35.00 EUR"
        assert row["left"] == f"{drop.quantity}/{drop.quantity}"
        assert drop.quantity == DEMO_GUESTS // 10

        await show(app, pilot, "p", PosScreen)
        nearby = app.screen.query_one("#nearby", DataTable)
        await wait_until(lambda: nearby.row_count > 0, "bands near the box")
        items = option_prompts(app.screen.query_one("#item", Select))
        # The first option is the Select's blank one, shown as its prompt.
        assert items[1:] == [
            "Beer 4.50 EUR",
            "Water 2.50 EUR",
            "Drop tee 35.00 EUR",
        ]
        codes = option_prompts(app.screen.query_one("#creator", Select))
        assert "Maya (MAYA)" in codes

        await show(app, pilot, "c", CreatorsScreen)
        figures = app.screen.query_one("#figures", DataTable)
        await wait_until(lambda: figures.row_count > 0, "the creators' figures")
        creators = {row["creator"]: row for row in table_cells(figures).values()}
        assert set(creators) == {creator.name for creator in site.commerce.creators}
        assert creators["Maya"]["codes"] == "MAYA"

        await show(app, pilot, "k", KitsScreen)
        stock = app.screen.query_one("#stock", DataTable)
        await wait_until(lambda: KIT_STATION in table_rows(stock), "the kit station")
        assert table_cells(stock)[KIT_STATION]["initial"] == str(kit_stock)
        assert int(table_cells(stock)[KIT_STATION]["left"]) <= kit_stock

        await show(app, pilot, "v", StreamScreen)
        await wait_until(
            lambda: "showing camera" in screen_text(app), "the demo studio's stream"
        )
        assert "simulator camera, 640x360" in screen_text(app)
        for button in app.screen.query(Button):
            assert not button.disabled

        await show(app, pilot, "t", TokensScreen)
        await unlock(app, pilot, demo_night.pin)
        tokens = app.screen.query_one("#tokens", DataTable)
        await wait_until(lambda: tokens.row_count > 0, "the demo's tokens")
        subjects = {row["subject"] for row in table_cells(tokens).values()}
        assert set(site.commerce.terminals) <= subjects
        assert "console" in subjects
        await pilot.press("n")
        await wait_until(lambda: isinstance(app.screen, FormModal), "the token form")
        offered = option_prompts(app.screen.query_one("#field-subject", Select))
        assert set(site.commerce.terminals) <= set(offered)
        assert "console" in offered
        await pilot.press("escape")

        await show(app, pilot, "s", SystemScreen)
        logs = app.screen.query_one("#logs", RichLog)
        await wait_until(lambda: len(logs.lines) > 0, "the box's log lines")
        assert re.fullmatch(r"\d+ log lines at box time \S+", message_of(app))
        system = text_of(app.screen.query_one("#system-info", Static))
        assert "clock trusted (simulated)" in " ".join(system.split())
        assert "broker mosquitto" in system
        log_text = "\n".join(line.text for line in logs.lines)
        assert "Console unlocked" in log_text


async def test_pos_charges_topped_up_band(demo_night: DemoNight) -> None:
    app = demo_app(demo_night)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        await show(app, pilot, "p", PosScreen)
        await wait_until(
            lambda: bool(topped_up_bands(app)), "a top-up by the demo", timeout_s=30
        )
        band = topped_up_bands(app)[-1]
        app.screen.query_one("#band", Input).value = band

        await pilot.press("f4")
        await unlock(app, pilot, demo_night.pin)
        await wait_until(
            lambda: message_of(app).startswith(f"band {band}: balance"),
            "the balance",
        )
        balance = re.fullmatch(
            rf"band {band}: balance (\d+)\.(\d\d) EUR, spent tonight \S+ EUR",
            message_of(app),
        )
        assert balance is not None
        assert int(balance[1] + balance[2]) > 0

        app.screen.query_one("#item", Select).value = "water"
        app.screen.query_one("#creator", Select).value = "MAYA"
        await pilot.press("f2")
        await wait_until(lambda: "charged" in message_of(app), "the charge")
        charged = message_of(app)
        receipt = text_of(app.screen.query_one("#receipt", Static))
        token = await app.session.token()
        after = await app.link.request("wallet", "balance", {"band": band}, token=token)

        # The demo plans each guest's drinks within the top-up, so the charge
        # is refunded to leave the night's own purchases unrefused.
        await pilot.press("f3")
        await wait_until(lambda: "refunded" in message_of(app), "the refund")
        refunded = message_of(app)

        # A sale with Maya's code counts for the set playing, her all-night set.
        await show(app, pilot, "c", CreatorsScreen)
        figures = app.screen.query_one("#figures", DataTable)
        set_row = f"maya/{demo_site().commerce.sets[0].id}"
        await wait_until(lambda: set_row in table_rows(figures), "Maya's set figures")
        maya_set = table_cells(figures)[set_row]

    assert charged == f"charged 2.50 EUR to {band}"
    assert refunded == f"refunded 2.50 EUR to {band}"
    assert receipt.startswith("CHARGE  transaction ")
    assert f"band {band}  item water x 1" in receipt
    assert "amount 2.50 EUR" in receipt
    charged_balance = re.search(r"balance (\d+)\.(\d\d) EUR", receipt)
    assert charged_balance is not None
    # The demo may charge the same band again meanwhile; it tops each band up once.
    assert after["balance"] <= int(charged_balance[1] + charged_balance[2])
    assert maya_set["creator"] == "Maya"
    assert maya_set["codes"] == "MAYA"
    # The box hides the set's sales until five guests bought with the code.
    assert maya_set["sales"] == "hidden" or int(maya_set["sales"]) >= 1


async def test_drop_and_kit_actions(demo_night: DemoNight) -> None:
    app = demo_app(demo_night)
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        await show(app, pilot, "o", DropsScreen)
        drops = app.screen.query_one("#drops", DataTable)
        await wait_until(lambda: DROP in table_rows(drops), "the demo's drop")
        drops.move_cursor(row=drops.get_row_index(DROP))

        await pilot.press("a")
        await unlock(app, pilot, demo_night.pin)
        await wait_until(
            lambda: table_cells(drops)[DROP]["state"] == "live", "the drop to start"
        )
        assert message_of(app) == f"drop {DROP} is now live"
        await pilot.press("x")
        await wait_until(
            lambda: table_cells(drops)[DROP]["state"] == "stopped",
            "the drop to stop",
        )
        assert message_of(app) == f"drop {DROP} is now stopped"

        await show(app, pilot, "k", KitsScreen)
        stock = app.screen.query_one("#stock", DataTable)
        await wait_until(lambda: KIT_STATION in table_rows(stock), "the kit station")
        initial = int(table_cells(stock)[KIT_STATION]["initial"])
        await pilot.press("a")
        await wait_until(lambda: isinstance(app.screen, FormModal), "the restock form")
        app.screen.query_one("#field-add", Input).value = "5"
        await pilot.press("f2")
        await wait_until(lambda: "restocked" in message_of(app), "the restock")
        await wait_until(
            lambda: table_cells(stock)[KIT_STATION]["initial"] == str(initial + 5),
            "the new initial stock",
        )
        events = app.screen.query_one("#kit-events", DataTable)
        await wait_until(
            lambda: any(
                row["event"] == "restocked" for row in table_cells(events).values()
            ),
            "the kit_restocked event",
        )
        restocked = message_of(app)

    assert re.fullmatch(
        rf"station {KIT_STATION} restocked: \d+ left of {initial + 5}", restocked
    )
