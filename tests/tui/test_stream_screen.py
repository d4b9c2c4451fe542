"""The stream screen against a box with a simulated camera studio.

The screen shows the studio's state from the box's status, and its keys
stop and start the stream and cut a clip through ``console/stream-*``
after the admin PIN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from op_box import SIZE, message_of, start_console, text_of, unlock, wait_until
from textual.widgets import Button, Static

from appliance.console.pin import PinFile, generate_pin, pin_path
from tests.studio.studio_site import StudioBox, running_studio_box
from tui.app import NightboxApp
from tui.link import LinkSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(name="studio_box", scope="module", loop_scope="module")
async def studio_box_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[StudioBox, str]]:
    """A box streaming the simulator, and its admin PIN."""
    data_dir: Path = tmp_path_factory.mktemp("stream-screen") / "box"
    pin = generate_pin()
    async with running_studio_box(data_dir) as sb:
        PinFile(pin_path(sb.config.data_dir)).set(pin)
        yield sb, pin


def console_app(sb: StudioBox) -> NightboxApp:
    account = sb.credentials.account("terminal-console")
    return NightboxApp(
        LinkSettings(
            host=sb.broker.host,
            port=sb.broker.port,
            site=sb.config.site_id,
            box=sb.config.box_id,
            username=account.username,
            password=account.password,
        )
    )


def state_text(app: NightboxApp) -> str:
    return text_of(app.screen.query_one("#stream-state", Static))


async def test_stream_screen_shows_studio(studio_box: tuple[StudioBox, str]) -> None:
    sb, _pin = studio_box
    app = console_app(sb)
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "v")
        await wait_until(lambda: "showing camera" in state_text(app), "the camera")
        text = state_text(app)
        buttons = [
            app.screen.query_one(f"#stream-{a}", Button)
            for a in ("start", "stop", "clip")
        ]

    assert "stream running, showing camera (simulator camera, 320x180)" in text
    assert "set maya-live by maya" in text
    assert all(not button.disabled for button in buttons)
    assert all(button.tooltip is None for button in buttons)


async def test_stream_screen_controls(studio_box: tuple[StudioBox, str]) -> None:
    sb, pin = studio_box
    studio = sb.studio
    app = console_app(sb)
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "v")
        await wait_until(lambda: "showing camera" in state_text(app), "the camera")

        await pilot.press("x")
        await unlock(app, pilot, pin)
        await wait_until(lambda: not studio.running, "the stream to stop")
        await wait_until(lambda: "stream stopped" in state_text(app), "the stop")
        stopped = message_of(app)

        await pilot.press("a")
        await wait_until(lambda: "showing camera" in state_text(app), "the restart")
        await wait_until(lambda: studio.stream.ring.duration_s >= 1.0, "camera video")
        started = message_of(app)

        clips_before = studio.clips.counts()["written"]
        await pilot.press("g")
        await wait_until(lambda: "is being written" in message_of(app), "the clip")
        clipped = message_of(app)
        await wait_until(
            lambda: studio.clips.counts()["written"] == clips_before + 1,
            "the clip in the store",
        )
        await wait_until(lambda: "last clip" in state_text(app), "the last clip")

    latest = studio.clips.latest()
    assert stopped == "stream stop: stopping"
    assert started == "stream start: starting"
    assert latest is not None
    assert latest.trigger == "console"
    assert f"clip {latest.id[:8]} is being written" in clipped
