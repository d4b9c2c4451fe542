"""Snapshots at 80x24 of the operations screens and of the setup wizard's first step.

The screens run against the scripted night (``tui_night.scripted_box``),
whose box clock stops at the night's end, here with a live drop and a
creator added to its site. Each test waits in ``run_before`` until the
screen shows the box's data. Token ids are random, so the tokens snapshot
shows each id cell as ``token-<n>`` and sorts the rows by terminal.
The drop starts after the frozen end of the night, so it is upcoming.
Regenerate with ``pytest tests/tui/test_screen_snapshots.py
--snapshot-update`` after a deliberate change of a screen, and look at the
SVGs before keeping them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static
from tui_night import (
    NIGHT_END_S,
    SIZE,
    ScriptedBox,
    screen_text,
    scripted_box_fixture,  # noqa: F401 - registers the scripted_box fixture
    scripted_site_config,
)

from appliance.commerce.config import Creator, DropConfig, Item, SetSlot
from appliance.config import SiteConfig
from hardware.network import SimulatedNetwork
from tui.app import NightboxApp
from tui.screens.pin import PinScreen
from tui.setup import SetupApp
from tui.setup._progress import SetupValues, save_progress

DROP = "tee-drop"


@pytest.fixture(name="site_config")
def snapshot_site(tmp_path: Path) -> SiteConfig:
    """The scripted night's site with Maya's set and a tee drop after its end."""
    config = scripted_site_config(tmp_path / "box")
    commerce = dataclasses.replace(
        config.commerce,
        items=(*config.commerce.items, Item("tee", "Drop tee", price=3500)),
        creators=(Creator("maya", "Maya", "MAYA"),),
        sets=(
            SetSlot("maya-live", "maya", NIGHT_END_S - 3 * 3600, NIGHT_END_S + 3600),
        ),
        drops=(
            DropConfig(
                DROP,
                "tee",
                price=3500,
                quantity=20,
                starts_at=NIGHT_END_S + 600,
                ends_at=NIGHT_END_S + 3600,
                per_guest_limit=2,
                creator="maya",
            ),
        ),
    )
    return dataclasses.replace(config, commerce=commerce)


async def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = 15.0
) -> None:
    """Wait until ``condition()`` is true; raise AssertionError after the timeout.

    pytest.fail raises an exception that is no Exception, which Textual does
    not catch in ``run_before``: the app would then never exit.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}"
            )
        await asyncio.sleep(0.05)


def column_key(table: DataTable[Any], label: str) -> Any:
    """Return the key of the column of ``table`` labelled ``label``."""
    for key, column in table.columns.items():
        if column.label.plain == label:
            return key
    raise AssertionError(f"table #{table.id} has no column {label!r}")


async def console_loaded(pilot: Pilot[None]) -> None:
    """Wait until the console has the box's overview, status and telemetry."""
    state = pilot.app.link.state  # type: ignore[attr-defined]
    await wait_until(
        lambda: (
            state.overview is not None
            and state.box_status is not None
            and state.telemetry is not None
        ),
        "the overview, box status and telemetry",
    )


def stop_cursor_blink(app: Any) -> None:
    """Stop the blinking of every input's cursor, which shows or not by the moment."""
    for field in app.screen.query(Input):
        field.cursor_blink = False


def table_has(app: Any, selector: str, text: str) -> bool:
    """Return whether a cell of the table ``selector`` shows ``text``."""
    table = app.screen.query_one(selector, DataTable)
    return any(text in str(cell) for row in table.rows for cell in table.get_row(row))


def test_readers_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    async def kit_reader_selected(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, NightboxApp)
        await console_loaded(pilot)
        await pilot.press("r")
        await wait_until(lambda: table_has(app, "#readers", "kit-1"), "the readers")
        await wait_until(
            lambda: table_has(app, "#readers", "online"), "the readers' availability"
        )
        # The kit reader heard no band, so its band table is empty. The exit
        # reader's band shows its age counted from the box time extrapolated
        # with this computer's clock, which rounds to 0 s or 1 s by the moment.
        readers = app.screen.query_one("#readers", DataTable)
        readers.move_cursor(row=readers.get_row_index("kit-1"), animate=False)
        await wait_until(
            lambda: "Bands heard by kit-1" in screen_text(app), "kit-1's bands"
        )

    assert snap_compare(
        scripted_box.app(), terminal_size=SIZE, run_before=kit_reader_selected
    )


def test_drops_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    async def drop_shown(pilot: Pilot[None]) -> None:
        app = pilot.app
        await console_loaded(pilot)
        await pilot.press("o")
        await wait_until(lambda: table_has(app, "#drops", DROP), "the drop")
        await wait_until(lambda: table_has(app, "#drops", "20/20"), "the drop's stock")

    assert snap_compare(scripted_box.app(), terminal_size=SIZE, run_before=drop_shown)


def test_pos_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    async def nearby_shown(pilot: Pilot[None]) -> None:
        app = pilot.app
        await console_loaded(pilot)
        await pilot.press("p")
        await wait_until(lambda: table_has(app, "#nearby", "ib-1-"), "a band nearby")
        stop_cursor_blink(app)

    assert snap_compare(scripted_box.app(), terminal_size=SIZE, run_before=nearby_shown)


def test_tokens_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    async def tokens_unlocked(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, NightboxApp)
        await console_loaded(pilot)
        await pilot.press("t")
        await wait_until(lambda: isinstance(app.screen, PinScreen), "the PIN modal")
        await pilot.press(*scripted_box.pin, "enter")
        await wait_until(lambda: app.session.unlocked, "the admin token")
        await wait_until(
            lambda: not isinstance(app.screen, PinScreen), "the modal to close"
        )
        # The scripted night issued tokens to the desk and bar-1; the console
        # has the third.
        tokens = app.screen.query_one("#tokens", DataTable)
        await wait_until(lambda: tokens.row_count == 3, "the box's three tokens")
        tokens.sort(column_key(tokens, "subject"))
        # The cursor stays on the first row, whose token was random before the
        # sort; on the console's row the detail line shows the console's token.
        console_row = next(
            row.key
            for row in tokens.ordered_rows
            if "console" in tokens.get_row(row.key)
        )
        tokens.move_cursor(row=tokens.get_row_index(console_row), animate=False)
        await wait_until(
            lambda: (
                " for console,"
                in str(app.screen.query_one("#token-detail", Static).render())
            ),
            "the console token's detail",
        )
        id_column = column_key(tokens, "token")
        detail = app.screen.query_one("#token-detail", Static)
        detail_text = str(detail.render())
        for index, row in enumerate(tokens.ordered_rows):
            mask = f"token-{index + 1}"
            tokens.update_cell(row.key, id_column, mask)
            detail_text = detail_text.replace(str(row.key.value), mask)
        detail.update(detail_text)
        await pilot.pause()

    assert snap_compare(
        scripted_box.app(), terminal_size=SIZE, run_before=tokens_unlocked
    )


def test_kits_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    async def stock_shown(pilot: Pilot[None]) -> None:
        app = pilot.app
        await console_loaded(pilot)
        await pilot.press("k")
        await wait_until(lambda: table_has(app, "#stock", "kit-1"), "the kit stock")
        await wait_until(
            lambda: table_has(app, "#stock", "7"), "the stock left from the status"
        )

    assert snap_compare(scripted_box.app(), terminal_size=SIZE, run_before=stock_shown)


class SnapshotSetupApp(SetupApp):
    """The wizard with Textual's own ``run``, which returns what ``exit`` got.

    ``SetupApp.run`` turns the return value into a bool, and ``snap_compare``
    receives its screenshot as the value given to ``exit``.
    """

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return App.run(self, *args, **kwargs)


def test_setup_first_step_snapshot(
    snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step shows the site file's path as given and the box id generated
    # at random for the run: a relative path and a saved progress with no
    # step done fix both.
    monkeypatch.chdir(tmp_path)
    config_path = Path("site.toml")
    save_progress(config_path, SetupValues(generated_box_id="box-5c41b0"))
    app = SnapshotSetupApp(config_path, network=SimulatedNetwork())

    async def first_step_shown(pilot: Pilot[bool]) -> None:
        await wait_until(
            lambda: bool(pilot.app.screen.query("#step-title")),
            "the wizard's first step",
        )
        stop_cursor_blink(pilot.app)

    assert snap_compare(app, terminal_size=SIZE, run_before=first_step_shown)
