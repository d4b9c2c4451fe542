"""The console against a live demo night: figures move, the chart, the PIN modal."""

from __future__ import annotations

import asyncio
import re

from textual.widgets import Input
from tui_night import (
    SIZE,
    demo_night_fixture,  # noqa: F401 - registers the demo_night fixture
    screen_text,
    wait_until,
)

from appliance.console.pin import generate_pin
from tui.app import NightboxApp
from tui.demo import DemoNight
from tui.link import LinkSettings
from tui.screens.dashboard import CHART_MINUTES, ExitChart
from tui.session import RENEW_BEFORE_S, AdminSession
from tui.widgets import Figure

LIVE_FIGURES = ("#guests", "#checkouts", "#sales", "#optins", "#coupons")


def _demo_app(night: DemoNight) -> NightboxApp:
    return NightboxApp(
        LinkSettings.from_login_file(night.console_file), demo_pin=night.pin
    )


def _figures(app: NightboxApp) -> dict[str, str]:
    return {
        selector: app.screen.query_one(selector, Figure).value
        for selector in LIVE_FIGURES
    }


def _header(app: NightboxApp) -> str:
    return screen_text(app).splitlines()[0]


async def test_dashboard_follows_night(demo_night: DemoNight) -> None:
    app = _demo_app(demo_night)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(
            lambda: app.link.online and app.link.state.overview is not None,
            "the console to connect and load the overview",
        )
        await wait_until(
            lambda: "--" not in _figures(app).values(), "every figure to show a value"
        )
        first_figures = _figures(app)
        first_header = _header(app)
        await wait_until(
            lambda: _figures(app) != first_figures,
            "a figure of the dashboard to change as the night goes on",
            timeout_s=40,
        )
        await wait_until(lambda: _header(app) != first_header, "the box time to move")
        text = screen_text(app)
        chart = app.screen.query_one(ExitChart)
        await pilot.pause()

    assert "Nightbox demo night" in text
    assert "live" in text.splitlines()[0]
    assert f"demo PIN {demo_night.pin}" in text
    assert "clock trusted" in text
    assert "Exits per minute" in text
    assert len(chart.counts) == CHART_MINUTES
    assert "(stale)" not in text


async def test_pin_modal_wrong_then_right(demo_night: DemoNight) -> None:
    app = _demo_app(demo_night)
    wrong = generate_pin()
    while wrong == demo_night.pin:
        wrong = generate_pin()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: app.link.online, "the console to connect")
        token_task = asyncio.ensure_future(app.session.token())
        await wait_until(lambda: "Admin PIN" in screen_text(app), "the PIN modal")
        await pilot.press(*wrong, "enter")
        await wait_until(
            lambda: "wrong PIN" in screen_text(app), "the wrong-PIN message"
        )
        wrong_text = screen_text(app)
        assert not token_task.done()
        pin_input = app.screen.query_one("#pin-input", Input)
        await wait_until(lambda: not pin_input.disabled, "the PIN field to reopen")
        await pilot.press(*demo_night.pin, "enter")
        token = await asyncio.wait_for(token_task, timeout=10)
        await wait_until(lambda: "admin" in _header(app), "the header to say admin")
        unlocked = app.session.unlocked
        await pilot.press("l")
        await wait_until(lambda: "admin" not in _header(app), "the lock")
        locked = app.session.unlocked

    assert re.search(r"wrong PIN, \d+ attempts? left", wrong_text)
    assert isinstance(token, str)
    assert token
    assert unlocked
    assert not locked


async def test_pin_modal_cancel_returns_none(demo_night: DemoNight) -> None:
    app = _demo_app(demo_night)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: app.link.online, "the console to connect")
        token_task = asyncio.ensure_future(app.session.token())
        await wait_until(lambda: "Admin PIN" in screen_text(app), "the PIN modal")
        await pilot.press("escape")
        token = await asyncio.wait_for(token_task, timeout=5)
        text = screen_text(app)

    assert token is None
    assert "Admin PIN" not in text
    assert not app.session.unlocked


async def test_token_lifetime_ignores_local_clock(demo_night: DemoNight) -> None:
    # The token's lifetime is the box's time: this computer's clock moving
    # on by the whole lifetime changes nothing. test_op_bad_input.py moves
    # the box's clock into the last minute and sees the PIN asked again.
    app = _demo_app(demo_night)
    now = [1000.0]
    async with app.run_test(size=SIZE):
        await wait_until(
            lambda: app.link.state.box_status is not None, "the box's status"
        )
        session = AdminSession(app, app.link, monotonic=lambda: now[0])
        token = await session.unlock(demo_night.pin)
        lifetime_s = session.remaining_s()
        held = await session.token()
        now[0] += lifetime_s + 1
        unlocked_after_local_jump = session.unlocked

    assert held == token
    assert lifetime_s > RENEW_BEFORE_S
    assert unlocked_after_local_jump
