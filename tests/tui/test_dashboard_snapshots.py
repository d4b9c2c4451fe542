"""Snapshots of the dashboard and the PIN modal at 80x24, on the scripted night.

The scripted night's box clock stops at its end, so the figures, the
chart and the times are the same in every run. Regenerate the snapshots with
``pytest tests/tui/test_dashboard_snapshots.py --snapshot-update`` after a
deliberate change of the screens, and look at the SVGs before keeping them.
"""

from __future__ import annotations

from typing import Any

from textual.widgets import Input
from tui_night import (
    SIZE,
    ScriptedBox,
    screen_text,
    scripted_box_fixture,  # noqa: F401 - registers the scripted_box fixture
    scripted_site,  # noqa: F401 - registers the site_config fixture
    wait_until,
)

from tui.app import NightboxApp


async def _dashboard_loaded(pilot: Any) -> None:
    app: NightboxApp = pilot.app
    state = app.link.state
    await wait_until(
        lambda: (
            state.overview is not None
            and state.box_status is not None
            and state.telemetry is not None
        ),
        "the overview, box status and telemetry",
    )
    await wait_until(lambda: "Checked out 6" in screen_text(app), "the dashboard")


def test_dashboard_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    app = scripted_box.app()
    assert snap_compare(app, terminal_size=SIZE, run_before=_dashboard_loaded)


def test_pin_modal_snapshot(snap_compare: Any, scripted_box: ScriptedBox) -> None:
    app = scripted_box.app()

    async def wrong_pin_entered(pilot: Any) -> None:
        await _dashboard_loaded(pilot)
        pilot.app.run_worker(pilot.app.session.token())
        await wait_until(lambda: "Admin PIN" in screen_text(app), "the PIN modal")
        await pilot.press(*scripted_box.wrong_pin(), "enter")
        await wait_until(
            lambda: "attempts left" in screen_text(app), "the wrong-PIN message"
        )
        # A blinking cursor would be drawn or not depending on the moment.
        app.screen.query_one("#pin-input", Input).cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=wrong_pin_entered)


async def test_pin_field_visible_at_40x12(scripted_box: ScriptedBox) -> None:
    app = scripted_box.app()
    async with app.run_test(size=(40, 12)) as pilot:
        await wait_until(lambda: app.link.state.overview is not None, "the overview")
        app.run_worker(app.session.token())
        await wait_until(lambda: "Admin PIN" in screen_text(app), "the PIN modal")
        await pilot.press("4", "8", "2")
        await pilot.pause()

        # A password field shows one bullet per typed digit.
        assert "•••" in screen_text(app)
        assert app.screen.query_one("#pin-input", Input).has_focus
