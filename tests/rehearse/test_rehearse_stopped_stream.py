"""The rehearsal's camera and stream checks against a box whose stream is stopped.

A studio box runs in this process, with its broker and HTTP server. The
checks pass while it streams. Once its stream is stopped, as the console's
stream screen or a creator station stops it, both must fail and report
that the stream is stopped, although the box still serves its last segments.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.rehearse._checks import Context
from appliance.rehearse._link import RehearsalLink, console_settings
from appliance.rehearse._media_checks import check_camera, check_hls
from appliance.rehearse._target import Target, read_accounts
from provisioning.site_access import CONSOLE, terminal_username
from tests.studio.studio_site import (
    SMALL_STUDIO,
    TIMEOUT_S,
    running_studio_box,
    wait_until,
)

pytestmark = pytest.mark.asyncio


async def test_stopped_stream_fails_media_checks(tmp_path: Path) -> None:
    async with running_studio_box(tmp_path / "box") as sb:
        studio = sb.studio
        http = await studio.serve_http()
        await wait_until(lambda: studio.source == "camera", "the camera's stream")
        # The measured rate covers the last seconds, so it reaches the
        # configured one a moment after the start.
        await wait_until(
            lambda: float(studio.state()["fps"] or 0) >= SMALL_STUDIO.fps * 0.95,
            "the configured frame rate",
        )
        config = sb.config
        target = Target(
            description="studio test box",
            config=config,
            host=sb.broker.host,
            port=sb.broker.port,
            accounts=read_accounts(config.data_dir / "secrets" / "broker.json"),
            tokens=sb.box.tokens,
            store=sb.box.store,
            studio_url=f"http://127.0.0.1:{http.port}",
        )
        settings = console_settings(
            target.host,
            target.port,
            config.site_id,
            target.password(terminal_username(CONSOLE)),
        )
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        async with RehearsalLink(settings, config.box_id) as link:
            await asyncio.wait_for(link.bus.connected.wait(), TIMEOUT_S)
            context = Context(target, link, 1.0, scratch)
            live_camera = await check_camera(context)
            live_stream = await check_hls(context)
            await studio.stop_stream()
            stopped_camera = await check_camera(context)
            stopped_stream = await check_hls(context)

    assert live_camera.ok, live_camera.detail
    assert live_stream.ok, live_stream.detail
    assert not stopped_camera.ok
    assert "not running" in stopped_camera.detail
    assert not stopped_stream.ok
    assert "the stream is stopped" in stopped_stream.detail
    assert "EXT-X-ENDLIST" in stopped_stream.detail
    assert "start it from the console's stream screen" in stopped_stream.detail
